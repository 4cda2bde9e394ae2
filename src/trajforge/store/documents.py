"""Bulk reads for exports and dataset builds, with each distinct text read once.

An export of 100k trajectories is mostly text: every call repeats its agent's system prompt, so
reading each call's texts by value (a sub-select per field) makes the database fetch the same
kilobytes a million times. Here the calls come back with their text *ids*; the bodies of a page are
then fetched in one read (``_select_in``: chunks of 500 ids on SQLite, one array parameter on
PostgreSQL), and texts used more than once (system prompts, tool definitions) stay in a bounded
cache for the rest of the read. JSON documents are assembled in Python with the bodies as ``str``
(orjson escapes them while it encodes the whole document) and JSON-valued texts embedded as
``orjson.Fragment``; flat call rows get the very same ``str`` object for every repeat. Both keep
memory constant: ``chunk`` trajectories at a time, plus the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from trajforge.records import ActionResult, FlatCall, LlmCall, camel
from trajforge.store.sqlbase import TRAJ_COLS, SqlHelpers

if TYPE_CHECKING:  # in annotations only; the SDK's write path never imports the filters
    from trajforge.privacy import PrivacyFilter
    from trajforge.store.filter import TrajectoryFilter

_CALL_SQL = (
    "SELECT c.trajectory_id, c.step_id, c.call_id, c.timestamp, c.model, c.model_version, c.system_text, "
    "c.user_text, c.messages_text, c.response_text, c.reasoning_text, c.tool_calls, c.tools_text, "
    "c.finish_reason, c.temperature, c.max_tokens, c.top_p, c.purpose, c.action_type, c.latency_ms, "
    "c.prompt_tokens, c.completion_tokens, c.cache_read_input_tokens, c.cache_creation_input_tokens, c.tags "
    "FROM llm_calls c WHERE c.trajectory_id IN ({marks}) ORDER BY c.timestamp, c.call_id"
)
_ACCESS_SQL = (
    "SELECT a.trajectory_id, a.step_id, a.access_id, a.timestamp, a.provider_id, a.provider_name, a.purpose, "
    "a.query, a.data_text FROM provider_accesses a WHERE a.trajectory_id IN ({marks}) "
    "ORDER BY a.timestamp, a.access_id"
)
_STEP_SQL = (
    "SELECT step_id, trajectory_id, step_number, timestamp, action, reward, done, observation, metadata "
    "FROM steps WHERE trajectory_id IN ({marks}) ORDER BY step_number, timestamp"
)
_SCORE_SQL = (
    "SELECT score_id, trajectory_id, name, value, comment, source, created_at FROM scores "
    "WHERE trajectory_id IN ({marks}) ORDER BY created_at"
)
_ROW_HEAD = {
    "trajectory_id": "id",
    "agent_id": "agent_id",
    "source": "source",
    "status": "status",
    "scenario_id": "scenario_id",
    "batch_id": "batch_id",
    "trajectory_reward": "total_reward",
}
"""FlatCall's trajectory fields (its first ones) and the trajectories column each comes from: they are
taken from the page's trajectory rows (joining them in _ROW_SQL made PostgreSQL hash-join against a
scan of the whole trajectories table for every page)."""
_ROW_EXPRS = {
    "step_id": "c.step_id",
    "step_number": "s.step_number",
    "step_reward": "s.reward",
    "step_action": "s.action",
    "call_id": "c.call_id",
    "timestamp": "c.timestamp",
    "model": "c.model",
    "system_prompt": "c.system_text",
    "user_prompt": "c.user_text",
    "messages": "c.messages_text",
    "response": "c.response_text",
    "reasoning": "c.reasoning_text",
    "tool_calls": "c.tool_calls",
    "tools": "c.tools_text",
    "finish_reason": "c.finish_reason",
    "temperature": "c.temperature",
    "max_tokens": "c.max_tokens",
    "purpose": "c.purpose",
    "action_type": "c.action_type",
    "latency_ms": "c.latency_ms",
    "prompt_tokens": "c.prompt_tokens",
    "completion_tokens": "c.completion_tokens",
}
"""FlatCall's other fields and the expression each is read with; ``*_text`` columns are text ids,
swapped for their bodies in Python."""
if tuple(_ROW_HEAD) + tuple(_ROW_EXPRS) != FlatCall._fields:  # a new or moved field needs a source
    raise RuntimeError("store.documents: _ROW_HEAD and _ROW_EXPRS must name FlatCall's fields in order")
_ROW_SQL = (
    f"SELECT c.trajectory_id, {', '.join(_ROW_EXPRS.values())} "
    "FROM llm_calls c LEFT JOIN steps s ON s.trajectory_id = c.trajectory_id AND s.step_id = c.step_id "
    "WHERE c.trajectory_id IN ({marks})"
)
_ROW_TEXTS = tuple(FlatCall._fields.index(f) for f, expr in _ROW_EXPRS.items() if expr.endswith("_text"))
"""Positions in a FlatCall of the text ids read by _ROW_SQL."""
_TID, _STEP_NO, _TS, _CID = map(
    FlatCall._fields.index, ("trajectory_id", "step_number", "timestamp", "call_id")
)
_CALL_TEXTS = (6, 7, 8, 9, 10, 12)  # and in a _CALL_SQL row
_CALL_KEYS = tuple(camel(f.name) for f in dataclasses.fields(LlmCall))
"""The wire keys of an LLM call (``to_wire``'s order); _CALL_SQL selects its columns from call_id
on in this order (``tests/test_store.py`` checks documents against ``to_wire``)."""

SHARED_TEXTS_BYTES = 64 << 20
"""Budget of the cache of texts used more than once in a bulk read (system prompts, mostly)."""


class _Texts:
    """Text bodies by id for one bulk read. Ids used more than once within a page (system prompts,
    tool definitions) are kept for later pages, up to :data:`SHARED_TEXTS_BYTES`."""

    def __init__(self) -> None:
        self.shared: dict[int, str] = {}
        self.room = SHARED_TEXTS_BYTES

    def page(self, fetch: Callable[[list[int]], list[Any]], refs: Iterable[Any]) -> dict[int, str]:
        """id → body for every id in ``refs`` (``None`` entries are skipped); ``fetch`` reads
        ``(id, body)`` rows for the ids not cached."""
        counts = Counter(refs)
        counts.pop(None, None)
        shared = self.shared
        table = dict(shared)
        table.update(fetch(sorted(i for i in counts if i not in shared)))
        if self.room > 0:
            for i in [i for i, n in counts.items() if n > 1 and i not in shared]:
                body = table[i]
                if len(body) < self.room:
                    shared[i] = body
                    self.room -= len(body)
        return table


class DocumentReads(SqlHelpers):
    """Mixed into the SQL store; uses its ``_pages``, ``_select_in`` and ``_read_tx``."""

    def _fetch_texts(self, cur: Any) -> Callable[[list[int]], list[Any]]:
        return lambda ids: self._text_bodies(cur, ids)

    def iter_json_docs(
        self,
        flt: TrajectoryFilter,
        chunk: int = 500,
        *,
        newline: bool = False,
        privacy: PrivacyFilter | None = None,
    ) -> Iterator[bytes]:
        """Each matching trajectory as its full wire JSON document (same content as
        ``to_wire(store.get_trajectory(id))``), newest first; ``newline`` ends each with ``\\n``.
        With ``privacy``, the same bytes as ``to_wire(filter_trajectory(privacy, t))``: each
        distinct text of a page is filtered once (texts shared between pages, once per read)."""
        option = orjson.OPT_APPEND_NEWLINE if newline else None
        texts = _Texts()
        parts: _RawDocs | _PrivateDocs = _RawDocs() if privacy is None else _PrivateDocs(privacy)
        for rows in self._pages(flt, chunk):
            with self._read_tx() as cur:
                ids = [r[0] for r in rows]
                steps = self._select_in(cur, _STEP_SQL, ids)
                calls = self._select_in(cur, _CALL_SQL, ids)
                accesses = self._select_in(cur, _ACCESS_SQL, ids)
                scores = self._select_in(cur, _SCORE_SQL, ids)
                refs = [r[k] for r in calls for k in _CALL_TEXTS]
                refs.extend(r[8] for r in accesses)
                table = texts.page(self._fetch_texts(cur), refs)
            yield from _assemble(parts, rows, steps, calls, accesses, scores, table, texts.shared, option)

    def iter_call_rows(
        self, flt: TrajectoryFilter, chunk: int = 500, *, privacy: PrivacyFilter | None = None
    ) -> Iterator[FlatCall]:
        """One :class:`~trajforge.records.FlatCall` per LLM call, trajectories newest first, calls
        in order. JSON-valued fields are JSON text. With ``privacy``, each row as
        ``filter_flat_call(privacy, row)`` makes it, each distinct value filtered once per page."""
        texts = _Texts()
        make = FlatCall._make
        private = None if privacy is None else _PrivateRows(privacy)
        for rows in self._pages(flt, chunk):
            order = {r[0]: i for i, r in enumerate(rows)}
            head = _head_positions()
            heads = {r[0]: tuple(r[k] for k in head) for r in rows}
            with self._read_tx() as cur:
                got = [heads[r[0]] + r[1:] for r in self._select_in(cur, _ROW_SQL, list(order))]
                table = texts.page(self._fetch_texts(cur), [r[k] for r in got for k in _ROW_TEXTS])
            # Plain tuples until the text bodies are in (one FlatCall per row, not two), read by
            # positions taken from FlatCall's field names.
            got.sort(
                key=lambda r: (
                    order[r[_TID]],
                    r[_STEP_NO] if r[_STEP_NO] is not None else -1,
                    r[_TS],
                    r[_CID],
                )
            )
            if private is not None:
                yield from private.rows(got, table, texts.shared)
                continue
            for r in got:
                out = list(r)
                for k in _ROW_TEXTS:
                    if out[k] is not None:
                        out[k] = table[out[k]]
                yield make(out)


@functools.cache
def _head_positions() -> tuple[int, ...]:
    """Where _ROW_HEAD's columns are in a page's trajectory rows (``sqlbase.TRAJ_COLS``)."""

    columns = [c.strip() for c in TRAJ_COLS.split(",")]
    return tuple(columns.index(c) for c in _ROW_HEAD.values())


def _fragment(text: str | None) -> orjson.Fragment | None:
    return None if text is None else orjson.Fragment(text)


def _trajectory_doc(r: Sequence[Any]) -> dict[str, Any]:
    return {
        "id": r[0],
        "agentId": r[1],
        "source": r[2],
        "status": r[3],
        "startTime": r[4],
        "endTime": r[5],
        "durationMs": r[6],
        "scenarioId": r[7],
        "batchId": r[8],
        "groupIndex": r[9],
        "isTrainingData": bool(r[10]),
        "metadata": orjson.Fragment(r[11] or "{}"),
        "totalReward": r[12],
        "steps": [],
        "scores": [],
        "stepCount": r[13],
        "llmCallCount": r[14],
        "providerAccessCount": r[15],
        "totalPromptTokens": r[16],
        "totalCompletionTokens": r[17],
        "createdAt": r[18],
        "updatedAt": r[19],
        "trajectoryId": r[0],
    }


def _step_doc(
    steps: dict[tuple[str, str], dict[str, Any]], doc: dict[str, Any], step_id: str
) -> dict[str, Any]:
    """The step a call belongs to (step ids are unique only within their trajectory); a call whose
    step row never arrived still shows up."""
    step = steps.get((doc["id"], step_id))
    if step is None:
        step = steps[(doc["id"], step_id)] = {
            "stepId": step_id,
            "stepNumber": len(doc["steps"]),
            "timestamp": 0,
            "llmCalls": [],
            "providerAccesses": [],
            "action": None,
            "reward": None,
            "done": None,
            "observation": None,
            "metadata": None,
        }
        doc["steps"].append(step)
    return step


# --- privacy-filtered reads -------------------------------------------------------------------
# The privacy filter applied where documents and rows are assembled, in the export workers: the
# records path (build a Trajectory, filter_trajectory, to_wire) spent more time building and walking
# records than filtering. The fields are privacy.py's policy (TRAJECTORY_CONTENT, STEP_CONTENT,
# ACTION_CONTENT, CALL_CONTENT, ACCESS_CONTENT, SCORE_CONTENT; FLAT_CALL_CONTENT for rows), and
# tests/test_export.py checks both against the records path byte for byte.

_MEMO_MAX = 50_000
"""Distinct JSON values (metadata, actions, queries) remembered across pages before starting over."""


class _Memo:
    """Filtered results by input: per page for texts by id, across pages for the shared ones."""

    def __init__(self) -> None:
        self.shared: dict[Any, Any] = {}

    def page(
        self, table: dict[int, str], ids: Iterable[int | None], shared: dict[int, str], how: Any
    ) -> dict[int, Any]:
        """id → filtered body for every distinct id (``None`` skipped); ids in ``shared`` (texts
        used more than once, kept by _Texts) are filtered once per read."""
        out: dict[int, Any] = {}
        keep = self.shared
        for i in ids:
            if i is None or i in out:
                continue
            hit = keep.get(i)
            if hit is None:
                hit = how(table[i])
                if i in shared:
                    keep[i] = hit
            out[i] = hit
        return out


class _PrivateDocs:
    """JSON documents with the privacy filter applied (``iter_json_docs(privacy=...)``)."""

    def __init__(self, pf: PrivacyFilter) -> None:
        from trajforge import jsonutil
        from trajforge.privacy import ACTION_CONTENT
        from trajforge.records import to_wire
        from trajforge.store.sql import _action

        self.pf = pf
        self._texts = _Memo()
        self._jsons = _Memo()
        self._values: dict[str, orjson.Fragment] = {}
        self._actions: dict[str, orjson.Fragment] = {}
        self._dumps = jsonutil.dumps_bytes
        self._loads = jsonutil.loads
        self._to_wire = to_wire
        self._action = _action
        self._action_fields = ACTION_CONTENT
        self._action_keys = tuple(camel(f.name) for f in dataclasses.fields(ActionResult))
        self._action_content = frozenset(camel(f) for f in ACTION_CONTENT)

    def text(self, s: str | None) -> str | None:
        return None if s is None else self.pf.text(s)

    def _json_body(self, body: str) -> orjson.Fragment:
        # What the records path does to a JSON-valued field: parse, filter every string, and
        # serialize with the document (a fragment of the same bytes); when the filter can change
        # nothing in it, those bytes are the stored text (as in a raw export).
        if self.pf.unchanged_json(body):
            return orjson.Fragment(body)
        return orjson.Fragment(self._dumps(self.pf.value(self._loads(body))))

    def value(self, s: str | None) -> orjson.Fragment | None:
        """A JSON-valued column (metadata, observation, query, tool calls), once per distinct value."""
        if s is None:
            return None
        memo = self._values
        hit = memo.get(s)
        if hit is None:
            if len(memo) >= _MEMO_MAX:
                memo.clear()
            hit = memo[s] = self._json_body(s)
        return hit

    def step_action(self, s: str | None) -> orjson.Fragment | None:
        if s is None:
            return None
        memo = self._actions
        hit = memo.get(s)
        if hit is None:
            stored = self._loads(s)
            if type(stored) is dict and tuple(stored) == self._action_keys:
                # Stored in its wire form (what the store writes): to_wire of the record would
                # give back these keys in this order and these values.
                wire = (
                    None
                    if self.pf.unchanged_json(s)
                    else {k: self.pf.value(v) if k in self._action_content else v for k, v in stored.items()}
                )
            else:
                # Through the record, as the records path does (snake_case keys, missing fields).
                action = self._action(stored)
                for name in self._action_fields:
                    setattr(action, name, self.pf.value(getattr(action, name)))
                wire = self._to_wire(action)
            if len(memo) >= _MEMO_MAX:
                memo.clear()
            hit = memo[s] = orjson.Fragment(s if wire is None else self._dumps(wire))
        return hit

    def plain_page(self, table: dict[int, str], ids: Iterable[int | None], shared: dict[int, str]) -> Any:
        return self._texts.page(table, ids, shared, self.pf.text)

    def json_page(self, table: dict[int, str], ids: Iterable[int | None], shared: dict[int, str]) -> Any:
        return self._jsons.page(table, ids, shared, self._json_body)


class _RawDocs:
    """The stored values as they are: texts by id, JSON-valued columns embedded as stored."""

    @staticmethod
    def text(s: str | None) -> str | None:
        return s

    value = step_action = staticmethod(_fragment)

    @staticmethod
    def plain_page(table: dict[int, str], ids: Iterable[int | None], shared: dict[int, str]) -> Any:
        return table

    @staticmethod
    def json_page(table: dict[int, str], ids: Iterable[int | None], shared: dict[int, str]) -> Any:
        fragment = orjson.Fragment
        return {i: fragment(table[i]) for i in ids if i is not None}


def _assemble(
    parts: _RawDocs | _PrivateDocs,
    rows: Sequence[Any],
    steps: Sequence[Any],
    calls: Sequence[Any],
    accesses: Sequence[Any],
    scores: Sequence[Any],
    table: dict[int, str],
    shared: dict[int, str],
    option: int | None,
) -> Iterator[bytes]:
    """A page's JSON documents: the columns come in the wire keys' order, text ids become their
    bodies and JSON-valued columns are embedded as fragments, each through ``parts`` (as stored,
    or privacy-filtered once per distinct value)."""
    text, value, action = parts.text, parts.value, parts.step_action
    plain = parts.plain_page(table, (r[k] for r in calls for k in (6, 7, 9, 10)), shared)
    jsons = parts.json_page(
        table, itertools.chain((r[k] for r in calls for k in (8, 12)), (r[8] for r in accesses)), shared
    )
    docs: dict[str, dict[str, Any]] = {}
    for r in rows:
        doc = _trajectory_doc(r)
        doc["agentId"] = text(r[1])
        doc["scenarioId"] = text(r[7])
        doc["metadata"] = value(r[11] or "{}")
        docs[r[0]] = doc
    step_docs: dict[tuple[str, str], dict[str, Any]] = {}
    for r in steps:
        step = {
            "stepId": r[0],
            "stepNumber": r[2],
            "timestamp": r[3],
            "llmCalls": [],
            "providerAccesses": [],
            "action": action(r[4]),
            "reward": r[5],
            "done": None if r[6] is None else bool(r[6]),
            "observation": value(r[7]),
            "metadata": value(r[8]),
        }
        step_docs[(r[1], r[0])] = step
        docs[r[1]]["steps"].append(step)
    for r in calls:
        call = dict(zip(_CALL_KEYS, r[2:]))  # noqa: B905 - same length by construction
        call["systemPrompt"] = plain.get(r[6])
        call["userPrompt"] = plain.get(r[7])
        call["response"] = plain.get(r[9])
        call["reasoning"] = plain.get(r[10])
        call["messages"] = jsons.get(r[8])
        call["toolCalls"] = value(r[11])
        call["tools"] = jsons.get(r[12])
        call["actionType"] = text(r[18])
        if r[24] is not None:
            call["tags"] = orjson.Fragment(r[24])
        _step_doc(step_docs, docs[r[0]], r[1])["llmCalls"].append(call)
    for r in accesses:
        _step_doc(step_docs, docs[r[0]], r[1])["providerAccesses"].append(
            {
                "accessId": r[2],
                "timestamp": r[3],
                "providerId": r[4],
                "providerName": r[5],
                "purpose": r[6],
                "query": value(r[7]),
                "data": jsons.get(r[8]),
            }
        )
    for r in scores:
        docs[r[1]]["scores"].append(
            {
                "trajectoryId": r[1],
                "name": r[2],
                "value": r[3],
                "comment": text(r[4]),
                "source": r[5],
                "scoreId": r[0],
                "createdAt": r[6],
            }
        )
    for doc in docs.values():
        yield orjson.dumps(doc, option=option)


class _PrivateRows:
    """Flat call rows with the privacy filter applied (``iter_call_rows(privacy=...)``)."""

    def __init__(self, pf: PrivacyFilter) -> None:
        from trajforge.privacy import flat_plan, flat_value

        self.pf = pf
        self._memos: dict[int, _Memo] = {}
        # (position, how) of every user-content field; the text ids among them are filtered by id.
        self._by_id = [(k, how) for k, how in flat_plan() if k in _ROW_TEXTS]
        self._inline = [(k, how) for k, how in flat_plan() if k not in _ROW_TEXTS]
        self._filter = flat_value

    def rows(
        self, got: Sequence[Sequence[Any]], table: dict[int, str], shared: dict[int, str]
    ) -> Iterator[FlatCall]:
        pf, flt = self.pf, self._filter
        # One filtered body per (text id, kind): the same text may be a plain and a JSON field.
        bodies: dict[Any, dict[int, Any]] = {}
        for how in {h for _, h in self._by_id}:
            ks = [k for k, h in self._by_id if h == how]
            memo_how = self._memos.setdefault(how, _Memo())
            bodies[how] = memo_how.page(
                table, (r[k] for r in got for k in ks), shared, lambda b, how=how: flt(pf, how, b)
            )
        make = FlatCall._make
        by_id = [(k, bodies[how]) for k, how in self._by_id]
        # Per page, one memo per field: trajectory ids, step actions, short values repeat.
        inline: list[tuple[int, int, dict[str, Any]]] = [(k, how, {}) for k, how in self._inline]
        for r in got:
            out = list(r)
            for k, table_k in by_id:
                if out[k] is not None:
                    out[k] = table_k[out[k]]
            for k, how, memo in inline:
                v = out[k]
                if v is not None:
                    hit = memo.get(v)
                    if hit is None:
                        hit = memo[v] = flt(pf, how, v)
                    out[k] = hit
            yield make(out)
