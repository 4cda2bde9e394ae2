"""Exports: one streaming function per format.

``stream(store, fmt, filter)`` is what the API and the CLI call: it yields bytes as it goes, so 100k
trajectories export in constant memory, picking the fastest source per format. Each
``iter_<format>`` does the same from record trajectories (any iterable), for library use.

Formats: ``json``, ``jsonl``, ``csv`` (RFC 4180), ``art`` (OpenPipe ART JSONL), ``zip`` (manifest
+ a folder per trajectory) and ``parquet`` (one row per LLM call, zstd).

An unknown format is an error, never a silent fall-through to another format.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field

from trajforge import jsonutil
from trajforge import workers as worker_pool
from trajforge.errors import InvalidInput
from trajforge.formats import art as art_format
from trajforge.formats.examples import example_from_call
from trajforge.privacy import PrivacyFilter, filter_trajectory
from trajforge.records import FLAT_CALL_COLUMNS, FlatCall, LlmCall, Trajectory, iso_ms, now_ms, to_wire
from trajforge.requests import Flag
from trajforge.store.base import Store
from trajforge.store.filter import TrajectoryFilter
from trajforge.workers import prefetch

T = TypeVar("T")
FORMATS = ("json", "jsonl", "csv", "art", "zip", "parquet")
PROMPT_MARKER = "[omitted: includePrompts=false]"
MEDIA_TYPES = {
    "json": "application/json",
    "jsonl": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "art": "application/x-ndjson",
    "zip": "application/zip",
    "parquet": "application/vnd.apache.parquet",
}
EXTENSIONS = {
    "json": "json",
    "jsonl": "jsonl",
    "csv": "csv",
    "art": "jsonl",
    "zip": "zip",
    "parquet": "parquet",
}
CSV_COLUMNS = (
    "trajectoryId",
    "agentId",
    "source",
    "status",
    "startTime",
    "endTime",
    "durationMs",
    "scenarioId",
    "batchId",
    "stepCount",
    "llmCallCount",
    "providerAccessCount",
    "promptTokens",
    "completionTokens",
    "totalReward",
)
ART_FORMAT_VERSION = "art-trajectory/1"


def needs_full(fmt: str) -> bool:
    """Whether a format needs steps and calls (csv reads the summary row only)."""
    return fmt != "csv"


def redact_prompts(t: Trajectory) -> Trajectory:
    """Replace prompt, response, reasoning and message text with a marker (``includePrompts: false``)."""
    for step in t.steps:
        for call in step.llm_calls:
            _redact_call(call)
    return t


def _redact_call(call: LlmCall) -> None:
    for name in ("system_prompt", "user_prompt", "response", "reasoning"):
        if getattr(call, name) is not None:
            setattr(call, name, PROMPT_MARKER)
    if call.messages is not None:
        call.messages = [{**m, "content": PROMPT_MARKER} if isinstance(m, dict) else m for m in call.messages]


def _prepared(trajectories: Iterable[Trajectory], include_prompts: bool) -> Iterator[Trajectory]:
    for t in trajectories:
        yield t if include_prompts else redact_prompts(t)


def iter_json(trajectories: Iterable[Trajectory], include_prompts: bool = True) -> Iterator[bytes]:
    yield b"["
    first = True
    for t in _prepared(trajectories, include_prompts):
        yield (b"" if first else b",") + jsonutil.dumps_bytes(to_wire(t))
        first = False
    yield b"]\n"


def iter_jsonl(trajectories: Iterable[Trajectory], include_prompts: bool = True) -> Iterator[bytes]:
    for t in _prepared(trajectories, include_prompts):
        yield jsonutil.dumps_bytes(to_wire(t)) + b"\n"


def csv_row(t: Trajectory) -> list[Any]:
    return [
        t.id,
        t.agent_id,
        t.source,
        t.status,
        t.start_time,
        t.end_time,
        t.duration_ms,
        t.scenario_id,
        t.batch_id,
        t.step_count,
        t.llm_call_count,
        t.provider_access_count,
        t.total_prompt_tokens,
        t.total_completion_tokens,
        t.total_reward,
    ]


def iter_csv(trajectories: Iterable[Trajectory], include_prompts: bool = True) -> Iterator[bytes]:
    """One row per trajectory, RFC 4180 (CRLF line ends, fields quoted when needed)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(CSV_COLUMNS)
    for i, t in enumerate(trajectories):
        writer.writerow(["" if v is None else v for v in csv_row(t)])
        if i % 256 == 255:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode()


def art_messages(t: Trajectory) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The trajectory as one chat transcript, rendered as dataset builds render an ART trajectory
    (``formats.art.messages``: the conversation once, the system message only when it changes,
    Chat Completions tool calls); and the tools offered, if any. Calls without a completion (no
    response, no tool call) are left out, as in builds."""
    calls = (example_from_call(t, c, None) for step in t.steps for c in step.llm_calls)
    examples = [ex for ex in calls if ex is not None]
    tools = next((ex.tools for ex in examples if ex.tools), None)
    return art_format.messages(examples), tools


def art_record(t: Trajectory) -> dict[str, Any]:
    """One ``art`` export line. Its metadata, metrics and tools are what ART's ``Trajectory``
    accepts (``formats.art``): nested metadata values become their JSON text, metrics a trajectory
    does not have are left out, tools are Chat Completions function specs."""
    messages, tools = art_messages(t)
    actions = [s.action for s in t.steps if s.action is not None]
    metrics: dict[str, Any] = {
        "stepCount": t.step_count or len(t.steps),
        "llmCallCount": t.llm_call_count,
        "providerAccessCount": t.provider_access_count,
        "promptTokens": t.total_prompt_tokens,
        "completionTokens": t.total_completion_tokens,
        "durationMs": t.duration_ms,
    }
    if actions:
        metrics["actionSuccessRate"] = sum(1 for a in actions if a.success) / len(actions)
    for score in t.scores:
        metrics[f"score.{score.source}.{score.name}"] = score.value
    record: dict[str, Any] = {
        "messages": messages,
        "reward": t.total_reward if t.total_reward is not None else 0.0,
        "metadata": art_format.metadata(
            {
                **t.metadata,
                "trajectoryId": t.id,
                "agentId": t.agent_id,
                "source": t.source,
                "status": t.status,
                "scenarioId": t.scenario_id,
                "batchId": t.batch_id,
                "groupIndex": t.group_index,
                "format": ART_FORMAT_VERSION,
            }
        ),
        "metrics": art_format.metrics(metrics),
    }
    if tools:
        record["tools"] = tools
    return record


def iter_art(trajectories: Iterable[Trajectory], include_prompts: bool = True) -> Iterator[bytes]:
    for t in _prepared(trajectories, include_prompts):
        yield jsonutil.dumps_bytes(art_record(t)) + b"\n"


class _Pipe(io.RawIOBase):
    """A write-only stream whose bytes are taken out as they arrive (for zip and parquet writers).
    It knows its position but cannot seek, so zipfile writes data descriptors."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        b = bytes(data)
        self._chunks.append(b)
        self._pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self._pos

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_folder(trajectory_id: str, taken: set[str]) -> str:
    """A folder name from an untrusted id: no separators, no dot-only names, unique, bounded."""
    name = _UNSAFE.sub("_", trajectory_id).strip(".")[:100] or "trajectory"
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    taken.add(candidate)
    return candidate


def iter_zip(trajectories: Iterable[Trajectory], include_prompts: bool = True) -> Iterator[bytes]:
    pipe = _Pipe()
    taken: set[str] = set()
    manifest: list[dict[str, Any]] = []
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=5) as zf:
        for t in _prepared(trajectories, include_prompts):
            folder = safe_folder(t.id, taken)
            wire = to_wire(t)
            zf.writestr(f"{folder}/trajectory.json", jsonutil.dumps_bytes(wire))
            summary = {k: v for k, v in wire.items() if k not in ("steps", "scores")}
            summary["scores"] = [{"name": s.name, "value": s.value, "source": s.source} for s in t.scores]
            zf.writestr(f"{folder}/summary.json", jsonutil.dumps_bytes(summary))
            manifest.append({"trajectoryId": t.id, "folder": folder, "createdAt": _iso(t.created_at)})
            yield pipe.take()
        zf.writestr(
            "manifest.json",
            jsonutil.dumps_bytes({"exportedAt": _iso(None), "trajectories": manifest}),
        )
    yield pipe.take()


def _iso(ms: int | None) -> str:
    return iso_ms(now_ms() if ms is None else ms)


PARQUET_ROW_GROUP = 20_000
_PARQUET_TYPES = {
    "trajectoryReward": "float64",
    "stepNumber": "int32",
    "stepReward": "float64",
    "timestamp": "int64",
    "temperature": "float64",
    "maxTokens": "int64",
    "latencyMs": "float64",
    "promptTokens": "int64",
    "completionTokens": "int64",
}
_TEXT_FIELDS = ("system_prompt", "user_prompt", "response", "reasoning")


def parquet_schema() -> Any:
    """One row per LLM call: :data:`~trajforge.records.FLAT_CALL_COLUMNS`; JSON-valued columns
    (stepAction, messages, toolCalls, tools) are JSON strings."""
    import pyarrow as pa

    return pa.schema(
        [(name, getattr(pa, _PARQUET_TYPES.get(name, "string"))()) for name in FLAT_CALL_COLUMNS]
    )


def call_rows(trajectories: Iterable[Trajectory]) -> Iterator[FlatCall]:
    """The flat call rows of record trajectories (as ``store.iter_call_rows`` reads them)."""
    for t in trajectories:
        for step in t.steps:
            action = None if step.action is None else jsonutil.dumps(to_wire(step.action))
            for c in step.llm_calls:
                yield FlatCall(
                    trajectory_id=t.id,
                    agent_id=t.agent_id,
                    source=t.source,
                    status=t.status,
                    scenario_id=t.scenario_id,
                    batch_id=t.batch_id,
                    trajectory_reward=t.total_reward,
                    step_id=step.step_id,
                    step_number=step.step_number,
                    step_reward=step.reward,
                    step_action=action,
                    call_id=c.call_id,
                    timestamp=c.timestamp,
                    model=c.model,
                    system_prompt=c.system_prompt,
                    user_prompt=c.user_prompt,
                    messages=_opt_dump(c.messages),
                    response=c.response,
                    reasoning=c.reasoning,
                    tool_calls=_opt_dump(c.tool_calls),
                    tools=_opt_dump(c.tools),
                    finish_reason=c.finish_reason,
                    temperature=c.temperature,
                    max_tokens=c.max_tokens,
                    purpose=c.purpose,
                    action_type=c.action_type,
                    latency_ms=c.latency_ms,
                    prompt_tokens=c.prompt_tokens,
                    completion_tokens=c.completion_tokens,
                )


def _opt_dump(value: Any) -> str | None:
    return None if value is None else jsonutil.dumps(value)


def _redact_row(row: FlatCall) -> FlatCall:
    """``includePrompts: false`` for a flat row: prompt, response and message texts become the
    marker."""
    changes: dict[str, Any] = {k: PROMPT_MARKER for k in _TEXT_FIELDS if getattr(row, k) is not None}
    if row.messages is not None:
        messages = jsonutil.loads(row.messages)
        changes["messages"] = jsonutil.dumps(
            [{**m, "content": PROMPT_MARKER} if isinstance(m, dict) else m for m in messages]
        )
    return row._replace(**changes) if changes else row


def parquet_table(rows: Iterable[FlatCall], include_prompts: bool = True) -> Any:
    """Flat call rows as one Arrow table of :func:`parquet_schema`."""
    import pyarrow as pa

    schema = parquet_schema()
    buffer = [row if include_prompts else _redact_row(row) for row in rows]
    columns = list(zip(*buffer, strict=True)) if buffer else [()] * len(FLAT_CALL_COLUMNS)
    arrays = [
        _strings(values) if field.type == pa.string() else pa.array(values, field.type)
        for field, values in zip(schema, columns, strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _strings(values: Sequence[str | None]) -> Any:
    """A string column, each distinct value converted to Arrow once and then repeated in C++: a
    page repeats its agents' system prompts thousands of times, and converting the same long
    Python string over and over was a quarter of a parquet page's time."""
    import pyarrow as pa

    index: dict[str, int] = {}
    codes = [None if v is None else index.setdefault(v, len(index)) for v in values]
    dictionary = pa.array(list(index), pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), dictionary).cast(pa.string())


_UNIQUE_PER_CALL = frozenset(
    ("callId", "timestamp", "userPrompt", "messages", "response", "reasoning", "toolCalls", "latencyMs")
)


def write_parquet(tables: Iterable[Any]) -> Iterator[bytes]:
    """Parquet (zstd, row groups of ~20k calls) from Arrow tables, streamed as it is written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pipe = _Pipe()
    pending: list[Any] = []
    rows = 0
    # Dictionary encoding only where values repeat: for the per-call unique columns Arrow would hash
    # every prompt and response and then fall back to plain pages anyway (~5-15% of writing).
    repeated = [name for name in FLAT_CALL_COLUMNS if name not in _UNIQUE_PER_CALL]
    with pq.ParquetWriter(
        pa.PythonFile(pipe, mode="w"), parquet_schema(), compression="zstd", use_dictionary=repeated
    ) as writer:
        for table in tables:
            pending.append(table)
            rows += table.num_rows
            if rows >= PARQUET_ROW_GROUP:
                writer.write_table(pa.concat_tables(pending), row_group_size=PARQUET_ROW_GROUP)
                pending.clear()
                rows = 0
                yield pipe.take()
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=PARQUET_ROW_GROUP)
    yield pipe.take()


def iter_parquet_rows(rows: Iterable[FlatCall], include_prompts: bool = True) -> Iterator[bytes]:
    """Parquet (zstd, row groups of 20k calls) from flat call rows, streamed."""

    def tables() -> Iterator[Any]:
        chunk: list[FlatCall] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= PARQUET_ROW_GROUP:
                yield parquet_table(chunk, include_prompts)
                chunk = []
        if chunk:
            yield parquet_table(chunk, include_prompts)

    return write_parquet(tables())


def iter_parquet(trajectories: Iterable[Trajectory], include_prompts: bool = True) -> Iterator[bytes]:
    """One row per LLM call with the trajectory's and step's context as flat columns; nested fields
    are JSON strings. zstd-compressed, readable by pyarrow and Hugging Face ``datasets``."""
    return iter_parquet_rows(call_rows(trajectories), include_prompts)


EXPORTERS: dict[str, Callable[[Iterable[Trajectory], bool], Iterator[bytes]]] = {
    "json": iter_json,
    "jsonl": iter_jsonl,
    "csv": iter_csv,
    "art": iter_art,
    "zip": iter_zip,
    "parquet": iter_parquet,
}


def exporter(fmt: str) -> Callable[[Iterable[Trajectory], bool], Iterator[bytes]]:
    try:
        return EXPORTERS[fmt]
    except KeyError:
        raise InvalidInput(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}", "format") from None


def _counted(items: Iterable[T], limit: int | None, on_progress: Callable[[int], None] | None) -> Iterator[T]:
    for n, item in enumerate(items, 1):
        if limit is not None and n > limit:
            return
        if on_progress is not None:
            on_progress(n)
        yield item


EXPORT_PAGE = 500
"""Trajectories per page of a paged export (one unit of work for a worker process)."""
PAGED_FORMATS = ("json", "jsonl", "art", "parquet")


@dataclass(frozen=True, slots=True)
class _PageJob:
    """How one page of a paged export turns into bytes (the same in-process and in a worker)."""

    fmt: str
    include_prompts: bool
    privacy: PrivacyFilter | None

    def render(self, store: Store, ids: list[str]) -> Any:
        """The page as bytes (json: documents joined by commas; jsonl, art: lines) or, for
        parquet, as an Arrow table."""
        flt = TrajectoryFilter(trajectory_ids=ids)
        if self.fmt == "parquet":
            # The privacy filter runs as the rows are assembled: each distinct text of a page once.
            rows: Iterable[FlatCall] = store.iter_call_rows(flt, privacy=self.privacy)
            return parquet_table(rows, self.include_prompts)
        docs: Iterable[bytes]
        lines = self.fmt != "json"
        if self.fmt != "art" and self.include_prompts:
            # Assembled from rows, without building records, the privacy filter applied to each
            # distinct text once; orjson appends the newline itself (a copy of every 40 KB
            # document less: ~6% of a jsonl page).
            docs = store.iter_json_docs(flt, newline=lines, privacy=self.privacy)
        else:
            items: Iterable[Trajectory] = store.iter_trajectories(flt)
            if self.privacy is not None:
                items = (filter_trajectory(self.privacy, t) for t in items)
            items = _prepared(items, self.include_prompts)
            wire = art_record if self.fmt == "art" else to_wire
            docs = (jsonutil.dumps_bytes(wire(t)) for t in items)
            if lines:
                docs = (doc + b"\n" for doc in docs)
        return b"".join(docs) if lines else b",".join(docs)


def _render_in_worker(ids: list[str]) -> Any:
    store, job = worker_pool.state()
    out = job.render(store, ids)
    if job.fmt != "parquet":
        return out
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, out.schema) as w:
        w.write_table(out)
    return sink.getvalue()  # a pyarrow Buffer pickles as its bytes


def _id_pages(store: Store, flt: TrajectoryFilter, limit: int | None, page: int) -> Iterator[list[str]]:
    left = limit
    for ids in store.iter_ids(flt, chunk=page):
        if left is not None:
            ids = ids[:left]
            left -= len(ids)
        if ids:
            yield ids
        if left is not None and left <= 0:
            return


def _paged(
    store: Store,
    flt: TrajectoryFilter,
    job: _PageJob,
    limit: int | None,
    on_progress: Callable[[int], None] | None,
    workers: int | None,
    page: int,
) -> Iterator[Any]:
    """Rendered pages in order: by forked worker processes when the export is long enough (or
    ``workers`` says so), else in this process with the next page read on a thread."""
    pages = _id_pages(store, flt, limit, page)
    head: list[list[str]] = []
    for ids in pages:  # as many pages as tell whether the export is long enough for workers
        head.append(ids)
        if sum(map(len, head)) >= worker_pool.PARALLEL_MIN:
            break
    sizes: list[int] = []

    def sized(it: Iterable[list[str]]) -> Iterator[list[str]]:
        for ids in it:
            sizes.append(len(ids))
            yield ids

    all_pages = sized(itertools.chain(head, pages))
    workers = worker_pool.workers_for(sum(map(len, head)), workers)
    if workers > 1:
        setup = worker_pool.store_setup(store.url, job)
        results: Iterator[Any] = worker_pool.ordered_map(all_pages, _render_in_worker, setup, workers)
    else:
        results = prefetch((job.render(store, ids) for ids in all_pages), depth=2)
    done = 0
    for i, result in enumerate(results):
        done += sizes[i]
        if on_progress is not None:
            on_progress(done)
        yield result


def _from_ipc(buffers: Iterable[Any]) -> Iterator[Any]:
    import pyarrow as pa

    for buf in buffers:
        yield buf if isinstance(buf, pa.Table) else pa.ipc.open_stream(buf).read_all()


def stream(
    store: Store,
    fmt: str,
    flt: TrajectoryFilter,
    *,
    include_prompts: bool = True,
    privacy: PrivacyFilter | None = None,
    limit: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    page: int = EXPORT_PAGE,
) -> Iterator[bytes]:
    """Export what ``flt`` matches from ``store`` in ``fmt``: the function behind both
    ``POST /api/trajectories/export`` and ``trajforge trajectories export``.

    With ``privacy`` every user-content string goes through that filter first (the API and CLI
    pass the store's filter unless asked for a raw export). json, jsonl, art and parquet go a page
    of ``page`` trajectories at a time, rendered by two worker processes once the export is longer
    than a few pages (``workers`` overrides: 1 keeps it in-process); raw json/jsonl documents are
    assembled from rows, the rest from records. csv reads summaries only; zip goes through records.
    """
    make = exporter(fmt)
    if fmt in PAGED_FORMATS:
        pages = _paged(store, flt, _PageJob(fmt, include_prompts, privacy), limit, on_progress, workers, page)
        if fmt == "parquet":
            return write_parquet(_from_ipc(pages))
        if fmt == "json":
            return _json_array(p for p in pages if p)
        return pages
    items: Iterable[Trajectory] = store.iter_trajectories(flt, full=needs_full(fmt))
    if privacy is not None:
        items = (filter_trajectory(privacy, t) for t in items)
    return make(_counted(items, limit, on_progress), include_prompts)


def coalesce(chunks: Iterable[bytes], size: int = 256 * 1024) -> Iterator[bytes]:
    """Merge small chunks into ~``size`` bytes: an HTTP server hands each chunk of a streamed body to
    a worker thread, so thousands of tiny chunks cost more than the data."""
    buf: list[bytes] = []
    n = 0
    for chunk in chunks:
        buf.append(chunk)
        n += len(chunk)
        if n >= size:
            yield b"".join(buf)
            buf.clear()
            n = 0
    if buf:
        yield b"".join(buf)


def _json_array(docs: Iterable[bytes]) -> Iterator[bytes]:
    yield b"["
    first = True
    for doc in docs:
        yield doc if first else b"," + doc
        first = False
    yield b"]\n"


class ExportRequest(TrajectoryFilter):
    """An export: which trajectories (the filter's fields) and how to write them."""

    format: Annotated[
        Literal["json", "jsonl", "csv", "art", "zip", "parquet"],
        Field(description="json, jsonl, csv, art, zip or parquet"),
        Flag("--format", "-f", default="jsonl"),
    ]
    include_prompts: Annotated[
        bool,
        Field(description="false: replace prompt and response texts with a marker"),
        Flag("--include-prompts/--no-prompts"),
    ] = True
    privacy_filter: Annotated[
        bool,
        Field(
            description="Run the privacy filter over every user-content string (false: a raw export "
            "for your own use)"
        ),
        Flag("--privacy-filter/--raw"),
    ] = True
    limit: Annotated[
        int | None, Field(ge=1, le=100_000_000, description="At most this many trajectories")
    ] = None
