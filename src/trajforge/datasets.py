"""From trajectories to training data: curated, private, reproducible, versioned dataset snapshots.

``build(store, BuildRequest(...))`` is the function behind ``trajforge datasets build`` and
``POST /api/training/datasets/build``. It reads LLM calls as flat rows (the database does the
joins), keeps the trajectories the request selects (filters, reward range by a named score, a
required late outcome, a minimum number of calls), turns each call into an *example* (prompt
messages, the assistant's completion, the tools offered), runs every string through the privacy
filter, drops duplicates, splits train/eval by scenario (so no scenario is in both) and writes rows
in one of the named formats below. The result is an immutable folder
``<state>/datasets/<id>/`` with ``train.jsonl``, ``eval.jsonl``, their ``.parquet`` twins,
per-task files and ``manifest.json`` (the request, counts, source trajectory ids, the privacy
report and the sha256 of every file). The same store, request and seed give byte-identical files.

Formats follow Hugging Face TRL's conventions, each a converter plus a check (TRL style):

=====================  ======================================================================
``sft``                ``{"messages": [...], "tools"?}`` conversational language modeling
``prompt_completion``  ``{"prompt": [...], "completion": [assistant], "tools"?}``
``preference``         ``{"prompt", "chosen", "rejected"}``: pairs of completions to one prompt
                       (or scenario) whose rewards differ by at least ``preferenceMargin``
``grpo``               ``{"prompt", "group", "reward", "task"}`` prompt-only rows
``openai``             OpenAI fine-tuning SFT JSONL (tool arguments as JSON strings, ``weight``)
``openai_dpo``         OpenAI fine-tuning DPO JSONL (``input``/``preferred_output``/…)
``art``                OpenPipe ART trajectory groups: one line per scenario
=====================  ======================================================================

A call's *task* is its ``actionType`` when set, else its ``purpose`` (action, reasoning, …).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from trajforge import settings
from trajforge import workers as worker_pool
from trajforge.errors import InvalidInput, NotFound
from trajforge.export import prefetch
from trajforge.formats import art as art_format
from trajforge.formats import openai as openai_format
from trajforge.formats.openai import Conversation, IdEntry, function_tools
from trajforge.paths import hashed_name
from trajforge.privacy import CATEGORIES, PrivacyFilter, PrivacyReport, store_salt
from trajforge.records import Dataset, JobEvent, camel, iso_ms, new_id, now_ms
from trajforge.store.base import Store
from trajforge.store.filter import TrajectoryFilter

FORMATS = ("sft", "prompt_completion", "preference", "grpo", "openai", "openai_dpo", "art")
PAIR_FORMATS = ("preference", "openai_dpo")
FORMAT_VERSION = "trajforge-dataset/1"
_ROLES = {"system", "developer", "user", "assistant", "tool"}
_MAX_LISTED_IDS = 10_000

# Call row columns (store.documents.CALL_ROW_COLUMNS) by name, for readability below.
(
    _TID,
    _AGENT,
    _SOURCE,
    _STATUS,
    _SCENARIO,
    _BATCH,
    _TREWARD,
    _STEP_ID,
    _STEP_NO,
    _STEP_REWARD,
    _ACTION,
    _CALL_ID,
    _TS,
    _MODEL,
    _SYSTEM,
    _USER,
    _MESSAGES,
    _RESPONSE,
    _REASONING,
    _TOOL_CALLS,
    _TOOLS,
    _FINISH,
    _TEMP,
    _MAX_TOKENS,
    _PURPOSE,
    _ACTION_TYPE,
    _LATENCY,
    _PTOK,
    _CTOK,
) = range(29)


@dataclass(slots=True)
class PrivacyOptions:
    """``extra_patterns``: label → regex to redact; ``allow``: literals never redacted;
    ``drop_on``: categories that drop the whole trajectory instead of redacting it."""

    extra_patterns: dict[str, str] = field(default_factory=dict)
    allow: list[str] = field(default_factory=list)
    drop_on: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = [c for c in self.drop_on if c not in CATEGORIES and c not in self.extra_patterns]
        if unknown:
            raise InvalidInput(
                f"privacy.dropOn names unknown categories {unknown}; known: {', '.join(CATEGORIES)}",
                "privacy.dropOn",
            )


@dataclass(slots=True)
class BuildRequest:
    """What to build. Field names are the snake_case twins of the API's camelCase body."""

    format: str = "sft"
    limit: int = 1000
    """Most trajectories to include (newest first, after every other condition)."""
    min_llm_calls_per_trajectory: int = 0
    reward_score: str | None = None
    """Which score is the reward for curation: a score name, or None for the trajectory's own
    ``totalReward``."""
    min_reward: float | None = None
    max_reward: float | None = None
    require_score: str | None = None
    """Leave out trajectories without this score yet (a late outcome still to come)."""
    task: str | None = None
    """Only calls of this task; None builds every task, with one file per task as well."""
    eval_fraction: float = 0.1
    seed: int = 0
    dedup: bool = True
    preference_margin: float = 0.1
    pair_by: str = "prompt"
    """``prompt``: pair completions of the same prompt; ``scenario``: of the same scenario."""
    name: str | None = None
    """Dataset name; builds with the same name are versions 1, 2, … of it (default: the format)."""
    filter: TrajectoryFilter = field(default_factory=TrajectoryFilter)
    privacy: PrivacyOptions = field(default_factory=PrivacyOptions)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InvalidInput(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}", "format")
        if not 1 <= self.limit <= 10_000_000:
            raise InvalidInput("limit must be between 1 and 10,000,000", "limit")
        if self.min_llm_calls_per_trajectory < 0:
            raise InvalidInput("minLlmCallsPerTrajectory must be 0 or more", "minLlmCallsPerTrajectory")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise InvalidInput("evalFraction must be at least 0 and below 1", "evalFraction")
        if self.preference_margin < 0:
            raise InvalidInput("preferenceMargin must be 0 or more", "preferenceMargin")
        if self.pair_by not in ("prompt", "scenario"):
            raise InvalidInput("pairBy must be 'prompt' or 'scenario'", "pairBy")
        if self.min_reward is not None and self.max_reward is not None and self.min_reward > self.max_reward:
            raise InvalidInput("minReward is greater than maxReward", "minReward")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}", self.name):
            raise InvalidInput(
                "name must be 1-80 letters, digits, _.- starting with a letter or digit", "name"
            )

    def to_wire(self) -> dict[str, Any]:
        flt = {
            k: getattr(self.filter, k)
            for k in type(self.filter).model_fields
            if getattr(self.filter, k) is not None
        }
        if "trajectory_ids" in flt:
            flt["trajectory_ids"] = list(flt["trajectory_ids"])
        return {
            "format": self.format,
            "limit": self.limit,
            "minLlmCallsPerTrajectory": self.min_llm_calls_per_trajectory,
            "rewardScore": self.reward_score,
            "minReward": self.min_reward,
            "maxReward": self.max_reward,
            "requireScore": self.require_score,
            "task": self.task,
            "evalFraction": self.eval_fraction,
            "seed": self.seed,
            "dedup": self.dedup,
            "preferenceMargin": self.preference_margin,
            "pairBy": self.pair_by,
            "name": self.name,
            "filter": {camel(k): v for k, v in sorted(flt.items())},
            "privacy": {
                "extraPatterns": self.privacy.extra_patterns,
                "allow": self.privacy.allow,
                "dropOn": self.privacy.drop_on,
            },
        }


# --- examples ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Example:
    """One LLM call ready for training: what the model saw, what it answered, how it went."""

    trajectory_id: str
    scenario_id: str | None
    agent_id: str
    source: str
    task: str
    reward: float | None
    prompt: list[dict[str, Any]]
    completion: dict[str, Any]
    tools: list[dict[str, Any]] | None
    call_id: str
    model: str
    own_reward: float | None = None
    """The trajectory's own total reward (kept when ``reward`` comes from a named score)."""
    reward_from: str | None = None
    """The score name ``reward`` comes from; None for the trajectory's own reward."""
    ids: list[IdEntry] | None = None
    """The tool-call ids recorded for ``[*prompt, completion]``, one entry per message (see
    ``formats.openai.IdEntry``); None when none were. They are kept beside the messages, not in
    them: TRL rows carry no ids, and equal conversations stay equal (dedup, pairing by prompt)
    whatever ids a provider made up for them."""

    @property
    def group(self) -> str:
        """What train/eval are split by: the scenario, else the trajectory."""
        return self.scenario_id or self.trajectory_id


def _loads(text: Any) -> Any:
    if text is None or not isinstance(text, str | bytes):
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _content(value: Any) -> str:
    """Message content as a string: text parts of a multi-part content joined, others as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts: list[str] = [
            p["text"] for p in value if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
        if texts and len(texts) == len(value):
            return "".join(texts)
    return orjson.dumps(value).decode()


def _tool_call(tc: Any) -> dict[str, Any] | None:
    """A tool call in TRL's form: ``{"type": "function", "function": {"name", "arguments": {…}}}``."""
    if not isinstance(tc, dict):
        return None
    fn: dict[str, Any] = tc["function"] if isinstance(tc.get("function"), dict) else tc
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        return None
    args = fn.get("arguments", fn.get("input", {}))
    if isinstance(args, str):
        parsed = _loads(args) if args.strip() else {}
        args = parsed if isinstance(parsed, dict) else {"_raw": args}
    elif not isinstance(args, dict):
        args = {"_value": args}
    return {"type": "function", "function": {"name": name, "arguments": args}}


def _tool_calls(raw: Any) -> tuple[list[dict[str, Any]], list[str | None]]:
    """The tool calls in TRL's form, and the id recorded for each (OpenAI's and Anthropic's
    shapes both carry an ``id``)."""
    calls: list[dict[str, Any]] = []
    ids: list[str | None] = []
    for tc in raw if isinstance(raw, list) else ():
        call = _tool_call(tc)
        if call is not None:
            calls.append(call)
            ids.append(tc["id"] if isinstance(tc.get("id"), str) and tc["id"] else None)
    return calls, ids


def _message(m: Any) -> tuple[dict[str, Any], IdEntry] | None:
    """The message normalized, and the ids recorded in it."""
    if not isinstance(m, dict):
        return None
    role = m.get("role")
    if role not in _ROLES:
        return None
    out: dict[str, Any] = {
        "role": "system" if role == "developer" else role,
        "content": _content(m.get("content")),
    }
    ids: IdEntry = None
    calls, call_ids = _tool_calls(m.get("tool_calls"))
    if calls:
        out["tool_calls"] = calls
        ids = call_ids if any(call_ids) else None
    if role == "tool":
        if isinstance(m.get("name"), str):
            out["name"] = m["name"]
        if isinstance(m.get("tool_call_id"), str) and m["tool_call_id"]:
            ids = m["tool_call_id"]
    return out, ids


def task_of(row: Sequence[Any]) -> str:
    return row[_ACTION_TYPE] or row[_PURPOSE] or "other"


def example_from_row(row: Sequence[Any], reward: float | None) -> Example | None:
    """The example of one call row; None when the call has no completion to learn from (no
    response text and no tool call)."""
    tool_calls, call_ids = _tool_calls(_loads(row[_TOOL_CALLS]))
    if not row[_RESPONSE] and not tool_calls:
        return None
    raw_messages = _loads(row[_MESSAGES])
    prompt: list[dict[str, Any]] = []
    ids: list[IdEntry] | None = None
    if isinstance(raw_messages, list) and raw_messages:
        ids = []
        for m in raw_messages:
            got = _message(m)
            if got is not None:
                prompt.append(got[0])
                ids.append(got[1])
        if row[_SYSTEM] is not None and not any(m["role"] == "system" for m in prompt):
            prompt.insert(0, {"role": "system", "content": row[_SYSTEM]})
            ids.insert(0, None)
        if ids.count(None) == len(ids):
            ids = None
    else:
        if row[_SYSTEM] is not None:
            prompt.append({"role": "system", "content": row[_SYSTEM]})
        if row[_USER] is not None:
            prompt.append({"role": "user", "content": row[_USER]})
    if not any(m["role"] != "system" for m in prompt):
        return None
    completion: dict[str, Any] = {"role": "assistant", "content": row[_RESPONSE] or ""}
    if tool_calls:
        completion["tool_calls"] = tool_calls
    completion_ids = call_ids if any(call_ids) else None
    if ids is not None or completion_ids is not None:
        ids = [*(ids or [None] * len(prompt)), completion_ids]
    return Example(
        trajectory_id=row[_TID],
        scenario_id=row[_SCENARIO],
        agent_id=row[_AGENT] or "",
        source=row[_SOURCE] or "",
        task=task_of(row),
        reward=reward,
        prompt=prompt,
        completion=completion,
        tools=function_tools(_loads(row[_TOOLS])),
        call_id=row[_CALL_ID],
        model=row[_MODEL] or "",
        ids=ids,
    )


# --- formats -----------------------------------------------------------------------------------


def _with_tools(row: dict[str, Any], ex: Example) -> dict[str, Any]:
    if ex.tools:
        row["tools"] = ex.tools
    return row


def to_sft(ex: Example) -> dict[str, Any]:
    return _with_tools({"messages": [*ex.prompt, ex.completion]}, ex)


def to_prompt_completion(ex: Example) -> dict[str, Any]:
    return _with_tools({"prompt": ex.prompt, "completion": [ex.completion]}, ex)


def to_grpo(ex: Example) -> dict[str, Any]:
    return {"prompt": ex.prompt, "group": ex.group, "reward": ex.reward, "task": ex.task}


def _split_ids(ex: Example) -> tuple[list[IdEntry], IdEntry]:
    """The ids of the prompt's messages, and those of the completion."""
    if ex.ids is None:
        return [None] * len(ex.prompt), None
    return ex.ids[:-1], ex.ids[-1]


def to_openai(ex: Example) -> dict[str, Any]:
    """OpenAI SFT: earlier assistant turns of the prompt are context (weight 0), the completion
    trains (weight 1); tool call arguments become JSON strings, recorded call ids are kept."""
    conv = Conversation(ex.ids)
    add = conv.add
    if ex.ids is None:
        messages = [add(m, None, 0) for m in ex.prompt]
        messages.append(add(ex.completion, None, 1))
    else:
        messages = [add(m, i, 0) for m, i in zip(ex.prompt, ex.ids, strict=False)]
        messages.append(add(ex.completion, ex.ids[-1], 1))
    row: dict[str, Any] = {"messages": messages}
    if ex.tools:
        row["tools"] = ex.tools
    return row


def to_preference(chosen: Example, rejected: Example) -> dict[str, Any]:
    return _with_tools(
        {"prompt": chosen.prompt, "chosen": [chosen.completion], "rejected": [rejected.completion]}, chosen
    )


def to_openai_dpo(chosen: Example, rejected: Example) -> dict[str, Any]:
    conv = Conversation(chosen.ids, rejected.ids)
    prompt_ids, chosen_ids = _split_ids(chosen)
    return {
        "input": {
            "messages": [conv.add(m, i) for m, i in zip(chosen.prompt, prompt_ids, strict=True)],
            "tools": chosen.tools or [],
        },
        "preferred_output": [conv.add(chosen.completion, chosen_ids)],
        "non_preferred_output": [conv.add(rejected.completion, _split_ids(rejected)[1])],
    }


def _transcript(examples: Sequence[Example]) -> tuple[list[dict[str, Any]], list[IdEntry]]:
    """One trajectory's calls as one conversation: a call whose prompt continues the conversation
    so far adds only its new messages; the system message appears only when it changes. With the
    ids recorded for each message."""
    out: list[dict[str, Any]] = []
    out_ids: list[IdEntry] = []
    last_system: str | None = None
    for ex in examples:
        prompt = ex.prompt
        prompt_ids, completion_ids = _split_ids(ex)
        if out and prompt[: len(out)] == out:
            out.extend(prompt[len(out) :])
            out_ids.extend(prompt_ids[len(out_ids) :])
        else:
            for m, i in zip(prompt, prompt_ids, strict=True):
                if m["role"] == "system":
                    if m["content"] == last_system:
                        continue
                    last_system = m["content"]
                out.append(m)
                out_ids.append(i)
        out.append(ex.completion)
        out_ids.append(completion_ids)
    return out, out_ids


def to_art_group(task: str, scenario: str, trajectories: Sequence[Sequence[Example]]) -> dict[str, Any]:
    """An ART ``TrajectoryGroup``: the scenario's trajectories, each with its messages (in Chat
    Completions' shape, which ART's tokenizer reads) and reward. Only keys ART's models take:
    what identifies the group goes in its metadata (see ``formats.art``)."""
    group = []
    for examples in trajectories:
        first = examples[0]
        tools = next((ex.tools for ex in examples if ex.tools), None)
        messages, ids = _transcript(examples)
        conv = Conversation(ids)
        metrics: dict[str, Any] = {"llm_calls": len(examples)}
        meta: dict[str, Any] = {
            "trajectory_id": first.trajectory_id,
            "agent_id": first.agent_id,
            "source": first.source,
            "scenario_id": first.scenario_id,
            "task": first.task,
        }
        if first.reward_from is not None:
            # RULER's convention: the judged (or otherwise named) score is the reward; the
            # trajectory's own reward stays as a metric (when it has one), the score's name goes
            # in metadata (ART's metrics are numbers).
            metrics["independent_reward"] = first.own_reward
            meta["reward_score"] = first.reward_from
        group.append(
            {
                "messages_and_choices": [conv.add(m, i) for m, i in zip(messages, ids, strict=True)],
                "tools": tools or [],
                "reward": first.reward if first.reward is not None else 0.0,
                "metrics": art_format.metrics(metrics),
                "metadata": meta,
                "logs": [],
            }
        )
    return {"trajectories": group, "metadata": {"scenario_id": scenario, "task": task}}


def _is_messages(value: Any, *, last_assistant: bool = False) -> bool:
    if not isinstance(value, list) or not value:
        return False
    if not all(isinstance(m, dict) and m.get("role") in _ROLES for m in value):
        return False
    return not last_assistant or value[-1]["role"] == "assistant"


def check_row(fmt: str, row: dict[str, Any]) -> str | None:
    """Why ``row`` is not a valid ``fmt`` row, or None. Run on every row a build writes."""
    if fmt == "sft":
        ok = _is_messages(row.get("messages"), last_assistant=True)
    elif fmt == "prompt_completion":
        ok = _is_messages(row.get("prompt")) and _is_messages(row.get("completion"), last_assistant=True)
    elif fmt == "preference":
        ok = (
            _is_messages(row.get("prompt"))
            and _is_messages(row.get("chosen"), last_assistant=True)
            and _is_messages(row.get("rejected"), last_assistant=True)
            and row["chosen"] != row["rejected"]
        )
    elif fmt == "grpo":
        ok = _is_messages(row.get("prompt")) and isinstance(row.get("reward"), int | float)
    elif fmt == "openai":
        return openai_format.check_sft(row)
    elif fmt == "openai_dpo":
        return openai_format.check_dpo(row)
    elif fmt == "art":
        problem = art_format.check_group(row)
        for i, t in enumerate(row["trajectories"] if problem is None else ()):
            # ART's tokenizer reads the messages as Chat Completions messages.
            problem = openai_format.check_messages(
                t["messages_and_choices"], f"trajectories[{i}].messages_and_choices", allow_empty=True
            )
            if problem:
                break
        return problem
    else:
        return f"unknown format {fmt!r}"
    return None if ok else f"not a valid {fmt} row"


# --- the build ---------------------------------------------------------------------------------


_PARQUET_CHUNK_ROWS = 5000


class _Files:
    """Open JSONL files of one build: the combined split files and, per task, its own.

    The combined files also get parquet twins, converted chunk by chunk on a background thread
    while the build goes on (Arrow parses JSON without the GIL, so this uses the second core);
    chunks are concatenated with permissive schema promotion, in order, so the result does not
    depend on timing.
    """

    def __init__(self, root: Path, per_task: bool) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.root = root
        self.per_task = per_task
        self.handles: dict[str, BinaryIO] = {}
        self._buffers: dict[str, list[bytes]] = {}
        self.hashes: dict[str, Any] = {}
        self.rows: dict[str, int] = defaultdict(int)
        self.task_dirs: dict[str, str] = {}
        self._pending: dict[str, list[bytes]] = defaultdict(list)
        self._tables: dict[str, list[Any]] = defaultdict(list)
        self._writers: dict[str, Any] = {}
        self._mixed: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trajforge-parquet")

    def write(self, split: str, task: str, line: bytes) -> None:
        rel = f"{split}.jsonl"
        self._put(rel, line)
        pending = self._pending[rel]
        pending.append(line)
        if len(pending) >= _PARQUET_CHUNK_ROWS:
            self._flush(rel)
        if self.per_task:
            self._put(f"tasks/{self.task_dir(task)}/{split}.jsonl", line)

    def task_dir(self, task: str) -> str:
        """A folder name for a task: its characters made safe, plus a hash so two tasks never
        share a folder (task names come from user data; they are never a path as given)."""
        name = self.task_dirs.get(task)
        if name is None:
            name = self.task_dirs[task] = hashed_name(task)
        return name

    def _put(self, rel: str, line: bytes) -> None:
        # Lines are gathered and written 512 at a time: one write call per line costs more than
        # the copy itself.
        buf = self._buffers.get(rel)
        if buf is None:
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handles[rel] = open(path, "wb")  # noqa: SIM115 - closed in close()
            self.hashes[rel] = hashlib.sha256()
            buf = self._buffers[rel] = []
        buf.append(line)
        self.rows[rel] += 1
        if len(buf) >= 512:
            self._drain(rel)

    def _drain(self, rel: str) -> None:
        block = b"".join(self._buffers[rel])
        self._buffers[rel].clear()
        # Hashed on the way out (the manifest needs every file's sha256): no second read.
        self.hashes[rel].update(block)
        self.handles[rel].write(block)

    def _flush(self, rel: str) -> None:
        chunk = b"".join(self._pending.pop(rel, []))
        if chunk:
            self._tables[rel].append(self._pool.submit(self._convert, rel, chunk))

    def _convert(self, rel: str, chunk: bytes) -> Any:
        """Parse a chunk and, while every chunk has the first one's schema, append it to the
        parquet file as a row group (runs on the single background thread, in chunk order)."""
        import pyarrow.parquet as pq

        table = _arrow_table(chunk)
        writer = self._writers.get(rel)
        if writer is None and rel not in self._mixed:
            writer = self._writers[rel] = pq.ParquetWriter(
                self.root / (rel.removesuffix(".jsonl") + ".parquet"), table.schema, compression="zstd"
            )
        if writer is not None:
            if table.schema.equals(writer.schema):
                writer.write_table(table)
            else:  # rows grew a field (tool calls, say): rewrite at the end from all chunks, promoted
                writer.close()
                del self._writers[rel]
                self._mixed.add(rel)
        return table

    def close(self) -> None:
        for rel, fh in self.handles.items():
            if not fh.closed:
                self._drain(rel)
                fh.close()

    def write_parquet(self) -> list[str]:
        """Finish the parquet twins of the combined files; returns their relative paths."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        for rel in list(self._pending):
            self._flush(rel)
        written = []
        try:
            for rel, futures in sorted(self._tables.items()):
                tables = [f.result() for f in futures]
                out = rel.removesuffix(".jsonl") + ".parquet"
                if rel in self._mixed:
                    table = pa.concat_tables(tables, promote_options="permissive")
                    pq.write_table(table, self.root / out, compression="zstd")
                else:
                    self._writers.pop(rel).close()
                written.append(out)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            for w in self._writers.values():
                w.close()
        return written

    def abort(self) -> None:
        for fh in self.handles.values():
            fh.close()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _arrow_table(chunk: bytes) -> Any:
    import pyarrow as pa
    import pyarrow.json as pj

    # One block, one thread: measured twice as fast as Arrow's threaded reader on chunks this size.
    options = pj.ReadOptions(block_size=max(1 << 20, len(chunk) + 1), use_threads=False)
    return pj.read_json(pa.BufferReader(chunk), read_options=options)


@dataclass(slots=True)
class _Selection:
    """Which trajectories made it in, and why the others did not."""

    included: list[str] = field(default_factory=list)
    tasks: dict[str, dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: {"train": 0, "eval": 0})
    )
    duplicates: int = 0


def _is_eval(seed: int, key: str, fraction: float) -> bool:
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class _Splitter:
    """``train`` or ``eval`` for a group key, decided by a seeded hash and remembered (groups repeat)."""

    def __init__(self, seed: int, fraction: float) -> None:
        self.seed, self.fraction = seed, fraction
        self.known: dict[str, str] = {}

    def __call__(self, key: str) -> str:
        split = self.known.get(key)
        if split is None:
            split = self.known[key] = "eval" if _is_eval(self.seed, key, self.fraction) else "train"
        return split


def _groups(rows: Iterator[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    """Call rows grouped per trajectory (the store yields them trajectory by trajectory)."""
    current: list[tuple[Any, ...]] = []
    for row in rows:
        if current and row[_TID] != current[0][_TID]:
            yield current
            current = []
        current.append(row)
    if current:
        yield current


def _batches(
    groups: Iterator[list[tuple[Any, ...]]], size: int = 500
) -> Iterator[list[list[tuple[Any, ...]]]]:
    batch: list[list[tuple[Any, ...]]] = []
    for g in groups:
        batch.append(g)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _score_value(scores: Sequence[Any], name: str) -> float | None:
    values = [s for s in scores if s.name == name]
    return max(values, key=lambda s: s.created_at).value if values else None


@dataclass(slots=True)
class _Outcome:
    """What curation decided for one trajectory: dropped (and why), or its filtered examples,
    with the redactions made in it."""

    trajectory_id: str
    drop: str | None = None
    examples: list[Example] = field(default_factory=list)
    redactions: dict[str, int] = field(default_factory=dict)
    strings_changed: int = 0
    lines: list[tuple[str, str, bytes, bytes]] | None = None
    """(task, group, JSONL line, dedup key) per example, when converted where it was curated."""


def _effective_filter(req: BuildRequest) -> TrajectoryFilter:
    flt = req.filter
    if req.reward_score is None and (req.min_reward is not None or req.max_reward is not None):
        # The trajectory's own reward is a column: let the database filter it.
        flt = TrajectoryFilter(
            **{k: getattr(flt, k) for k in type(flt).model_fields if k not in ("min_reward", "max_reward")},
            min_reward=req.min_reward,
            max_reward=req.max_reward,
        )
    return flt


def _curate(
    store: Store, req: BuildRequest, pf: PrivacyFilter, batches: Iterator[list[list[tuple[Any, ...]]]]
) -> Iterator[_Outcome]:
    """Decide, trajectory by trajectory in store order, what goes into the dataset."""
    need_scores = req.reward_score is not None or req.require_score is not None
    drop_on = set(req.privacy.drop_on)
    counts = pf.report.counts
    for batch in batches:
        scores = store.get_scores([g[0][_TID] for g in batch]) if need_scores else {}
        for rows in batch:
            tid = rows[0][_TID]
            mine = scores.get(tid, [])
            if req.require_score is not None and _score_value(mine, req.require_score) is None:
                yield _Outcome(tid, f"awaiting score {req.require_score!r}")
                continue
            reward = rows[0][_TREWARD] if req.reward_score is None else _score_value(mine, req.reward_score)
            if req.min_reward is not None or req.max_reward is not None:
                if reward is None:
                    yield _Outcome(tid, "no reward")
                    continue
                if req.min_reward is not None and reward < req.min_reward:
                    yield _Outcome(tid, "reward below minReward")
                    continue
                if req.max_reward is not None and reward > req.max_reward:
                    yield _Outcome(tid, "reward above maxReward")
                    continue
            if len(rows) < req.min_llm_calls_per_trajectory:
                yield _Outcome(tid, "fewer LLM calls than minLlmCallsPerTrajectory")
                continue
            examples = []
            for row in rows:
                if req.task is not None and task_of(row) != req.task:
                    continue
                ex = example_from_row(row, reward)
                if ex is not None:
                    ex.own_reward, ex.reward_from = row[_TREWARD], req.reward_score
                    examples.append(ex)
            if not examples:
                why = "no LLM call with a completion" + (f" for task {req.task!r}" if req.task else "")
                yield _Outcome(tid, why)
                continue
            before, changed = dict(counts), pf.report.strings_changed
            found: set[str] = set()
            for ex in examples:
                if drop_on:
                    found |= pf.categories_in([ex.prompt, ex.completion, ex.tools, ex.agent_id, ex.ids])
                _filter_messages(pf, ex.prompt)
                _filter_messages(pf, [ex.completion])
                if ex.tools:
                    ex.tools = pf.value(ex.tools)
                if ex.ids is not None:
                    # Recorded ids are free text too; a call and its answer filter alike.
                    ex.ids = pf.value(ex.ids)
                # Ids and task names end up in rows (grpo groups, ART metadata) and file names too.
                ex.agent_id = pf.text(ex.agent_id)
                ex.task = pf.text(ex.task)
                if ex.scenario_id is not None:
                    ex.scenario_id = pf.text(ex.scenario_id)
            out = _Outcome(tid, examples=examples, strings_changed=pf.report.strings_changed - changed)
            if out.strings_changed:
                out.redactions = {k: n - before.get(k, 0) for k, n in counts.items() if n != before.get(k, 0)}
            hit = sorted(found & drop_on)
            if hit:
                out.drop, out.examples = f"privacy: contains {', '.join(hit)}", []
            yield out


def _accept(
    outcomes: Iterator[_Outcome],
    req: BuildRequest,
    report: PrivacyReport,
    sel: _Selection,
    on_progress: Callable[[int], None] | None,
) -> Iterator[_Outcome]:
    """Account for each outcome in the build's report and stop at ``limit`` included trajectories."""
    for out in outcomes:
        if out.strings_changed:
            report.strings_changed += out.strings_changed
            report.trajectories_with_redactions += 1
            report.counts.update(out.redactions)
        if out.drop is not None:
            report.drop(out.trajectory_id, out.drop)
            continue
        sel.included.append(out.trajectory_id)
        if on_progress is not None:
            on_progress(len(sel.included))
        yield out
        if len(sel.included) >= req.limit:
            return


def _local_outcomes(store: Store, req: BuildRequest, pf: PrivacyFilter) -> Iterator[_Outcome]:
    # The next batch is read on a thread while this one is processed: SQLite and PostgreSQL drivers
    # release the GIL while the database works.
    rows = store.iter_call_rows(_effective_filter(req))
    return _curate(store, req, pf, prefetch(_batches(_groups(rows)), depth=2))


# --- parallel curation: worker processes for big builds of per-example formats ---------------------

_PARALLEL_MIN = 2000
"""Builds that may include fewer trajectories run in-process: starting workers costs ~1 s."""
_PAGE = 200


def _worker_setup(
    url: str, req: BuildRequest, salt: str
) -> Callable[[], tuple[Store, BuildRequest, PrivacyFilter]]:
    def setup() -> tuple[Store, BuildRequest, PrivacyFilter]:
        from trajforge.store import open_store

        pf = PrivacyFilter(salt, extra_patterns=req.privacy.extra_patterns, allow=req.privacy.allow)
        return open_store(url), req, pf

    return setup


_Meta = tuple[str, str | None, dict[str, int], int, list[tuple[str, str, int, bytes]]]


def _worker_page(ids: list[str]) -> tuple[list[_Meta], bytes]:
    """Curate and convert one page of trajectories (in a worker process). Returns what the parent
    needs per trajectory, and all the page's JSONL lines as one blob: one big bytes object crosses
    the process boundary far cheaper than many small ones."""
    store, req, pf = worker_pool.state()
    rows = store.iter_call_rows(TrajectoryFilter(trajectory_ids=ids))
    metas: list[_Meta] = []
    lines: list[bytes] = []
    for out in _curate(store, req, pf, _batches(_groups(rows))):
        placed = []
        for ex in out.examples:
            task, group, line, key = _line(req.format, ex, check=len(lines) % _CHECK_EVERY == 0)
            lines.append(line)
            placed.append((task, group, len(line), key))
        metas.append((out.trajectory_id, out.drop, out.redactions, out.strings_changed, placed))
    return metas, b"".join(lines)


def _unpack(metas: list[_Meta], blob: bytes) -> Iterator[_Outcome]:
    pos = 0
    for tid, drop, redactions, changed, placed in metas:
        lines = []
        for task, group, n, key in placed:
            lines.append((task, group, blob[pos : pos + n], key))
            pos += n
        yield _Outcome(tid, drop, redactions=redactions, strings_changed=changed, lines=lines)


def _parallel_outcomes(store: Store, req: BuildRequest, salt: str, n: int) -> Iterator[_Outcome]:
    """Outcomes in store order, curated by ``n`` worker processes a page at a time. The parent only
    lists ids and writes; the order of results never depends on which worker finished first."""
    pages = store.iter_ids(_effective_filter(req), chunk=_PAGE)
    for result in worker_pool.ordered_map(pages, _worker_page, _worker_setup(store.url, req, salt), n):
        yield from _unpack(*result)


def _line(fmt: str, ex: Example, check: bool = True) -> tuple[str, str, bytes, bytes]:
    """(task, group, JSONL line, dedup key) of one example."""
    row = _CONVERTERS[fmt](ex)
    if check:
        problem = check_row(fmt, row)
        if problem:
            raise AssertionError(f"{problem}: {row}")  # a converter bug, not bad input
    line = orjson.dumps(row, option=_DUMP)
    # Equal rows are equal bytes: orjson keeps key order, and the converters build every row the
    # same way. OpenAI rows with recorded tool-call ids carry what a provider made up, which
    # differs between equal conversations: those are keyed by their content without the ids (the
    # sft row's bytes). Rows without recorded ids have ids made from their content: their bytes do.
    keyed = orjson.dumps(to_sft(ex)) if fmt == "openai" and ex.ids is not None else line
    return ex.task, ex.group, line, hashlib.blake2b(keyed, digest_size=16).digest()


_CHECK_EVERY = 16
"""Rows are checked against their format's check function the way TRL detects formats: not every
one (the converters are the same code for every row; the test suite checks every row of every
format), but the first of each page and one in 16 after it."""


_DUMP = orjson.OPT_APPEND_NEWLINE
_CONVERTERS: dict[str, Callable[[Example], dict[str, Any]]] = {
    "sft": to_sft,
    "prompt_completion": to_prompt_completion,
    "grpo": to_grpo,
    "openai": to_openai,
}


def _filter_messages(pf: PrivacyFilter, messages: list[dict[str, Any]]) -> None:
    """Filter the user content of normalized messages in place: their text, tool call arguments
    and tool names (roles are ours, not user content)."""
    for m in messages:
        m["content"] = pf.text(m["content"])
        if "tool_calls" in m:
            m["tool_calls"] = pf.value(m["tool_calls"])
        if "name" in m:
            m["name"] = pf.text(m["name"])


def _dedup_key(ex: Example) -> bytes:
    return hashlib.blake2b(orjson.dumps([ex.task, ex.prompt, ex.completion]), digest_size=16).digest()


def _write_examples(req: BuildRequest, outcomes: Iterator[_Outcome], files: _Files, sel: _Selection) -> None:
    seen: set[bytes] = set()
    split_of = _Splitter(req.seed, req.eval_fraction)
    n = 0
    for out in outcomes:
        lines = out.lines
        if lines is None:
            lines = [
                _line(req.format, ex, check=(n + i) % _CHECK_EVERY == 0) for i, ex in enumerate(out.examples)
            ]
            n += len(lines)
        for task, group, line, key in lines:
            if req.dedup:
                if key in seen:
                    sel.duplicates += 1
                    continue
                seen.add(key)
            split = split_of(group)
            files.write(split, task, line)
            sel.tasks[task][split] += 1


def _write_pairs(req: BuildRequest, outcomes: Iterator[_Outcome], files: _Files, sel: _Selection) -> None:
    """Preference pairs: within a group, the best completion against the worst, the second best
    against the second worst, … while their rewards differ by at least the margin."""
    groups: dict[tuple[str, str], list[Example]] = defaultdict(list)
    seen: set[bytes] = set()
    split_of = _Splitter(req.seed, req.eval_fraction)
    for out in outcomes:
        for ex in out.examples:
            if ex.reward is None:
                continue
            if req.dedup:
                key = _dedup_key(ex)
                if key in seen:
                    sel.duplicates += 1
                    continue
                seen.add(key)
            prompt_key = hashlib.blake2b(orjson.dumps(ex.prompt), digest_size=16).hexdigest()
            by = prompt_key if req.pair_by == "prompt" or ex.scenario_id is None else ex.scenario_id
            groups[(ex.task, by)].append(ex)
    convert = to_preference if req.format == "preference" else to_openai_dpo
    for task, by in sorted(groups):
        members = sorted(groups[(task, by)], key=lambda e: (-(e.reward or 0.0), e.trajectory_id, e.call_id))
        for i in range(len(members) // 2):
            chosen, rejected = members[i], members[-1 - i]
            if (chosen.reward or 0.0) - (rejected.reward or 0.0) < req.preference_margin:
                break
            if chosen.completion == rejected.completion:
                continue
            row = convert(chosen, rejected)
            problem = check_row(req.format, row)
            if problem:
                raise AssertionError(f"{problem}: {row}")
            split = split_of(chosen.scenario_id or by)
            files.write(split, task, orjson.dumps(row, option=_DUMP))
            sel.tasks[task][split] += 1


def _write_art(req: BuildRequest, outcomes: Iterator[_Outcome], files: _Files, sel: _Selection) -> None:
    scenarios: dict[tuple[str, str], list[list[Example]]] = defaultdict(list)
    split_of = _Splitter(req.seed, req.eval_fraction)
    for out in outcomes:
        by_task: dict[str, list[Example]] = defaultdict(list)
        for ex in out.examples:
            by_task[ex.task].append(ex)
        for task, exs in by_task.items():
            scenarios[(task, exs[0].group)].append(exs)
    for task, scenario in sorted(scenarios):
        members = sorted(scenarios[(task, scenario)], key=lambda exs: exs[0].trajectory_id)
        row = to_art_group(task, scenario, members)
        problem = check_row("art", row)
        if problem:
            raise AssertionError(f"{problem}: {row}")
        split = split_of(scenario)
        files.write(split, task, orjson.dumps(row, option=_DUMP))
        sel.tasks[task][split] += 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build(
    store: Store,
    req: BuildRequest,
    *,
    root: Path | None = None,
    on_progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> Dataset:
    """Build the dataset ``req`` describes from ``store`` into ``root`` (default
    ``<state>/datasets``) and record it in the store. Never modifies trajectories.

    Large builds of per-example formats curate in ``workers`` processes (default: 2 when the
    machine has the cores and ``limit`` is at least 2,000); the files are the same either way."""
    root = Path(root) if root is not None else settings.datasets_dir()
    root.mkdir(parents=True, exist_ok=True)
    name = req.name or req.format
    parent = store.latest_dataset(name)
    dataset_id = f"dataset-{new_id()}"
    tmp = root / f".{dataset_id}.tmp"
    final = root / dataset_id
    # Every build runs the privacy filter: there is deliberately no way to turn it off. Its
    # counts go to a scratch report; _accept adds each included or dropped trajectory's share.
    report = PrivacyReport()
    salt = store_salt(store)
    pf = PrivacyFilter(salt, extra_patterns=req.privacy.extra_patterns, allow=req.privacy.allow)
    sel = _Selection()
    files = _Files(tmp, per_task=req.task is None)
    try:
        tmp.mkdir()
        if workers is None:
            workers = worker_pool.default_workers() if req.limit >= _PARALLEL_MIN else 1
        if workers > 1 and req.format in _CONVERTERS:
            raw = _parallel_outcomes(store, req, salt, workers)
        else:
            raw = _local_outcomes(store, req, pf)
        stream = _accept(raw, req, report, sel, on_progress)
        if req.format in PAIR_FORMATS:
            _write_pairs(req, stream, files, sel)
        elif req.format == "art":
            _write_art(req, stream, files, sel)
        else:
            _write_examples(req, stream, files, sel)
        files.close()
        files.write_parquet()
        for split in ("train", "eval"):  # both files always exist, even when empty
            (tmp / f"{split}.jsonl").touch()
        if req.task is None and len(sel.tasks) < 2:
            shutil.rmtree(tmp / "tasks", ignore_errors=True)
            files.task_dirs.clear()
        manifest = _manifest(dataset_id, name, parent, req, store, sel, report, files, tmp)
        (tmp / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
        for path in tmp.rglob("*"):
            if path.is_file():
                path.chmod(0o444)
        tmp.rename(final)
    except BaseException:
        files.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    rows = sum(manifest["counts"]["rows"].values())
    ds = Dataset(
        id=dataset_id,
        name=name,
        version=manifest["version"],
        parent=manifest["parent"],
        format=req.format,
        path=str(final),
        trajectory_count=len(sel.included),
        row_count=rows,
        manifest=manifest,
        created_at=manifest["createdAtMs"],
    )
    try:
        store.add_dataset(ds)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise
    store.add_event(
        JobEvent(
            kind="dataset_built",
            message=f"dataset {name} v{ds.version}: {rows} rows from {ds.trajectory_count} trajectories",
            dataset_id=dataset_id,
            data={"format": req.format, "rows": rows, "trajectories": ds.trajectory_count},
        )
    )
    return ds


def _manifest(
    dataset_id: str,
    name: str,
    parent: Dataset | None,
    req: BuildRequest,
    store: Store,
    sel: _Selection,
    report: PrivacyReport,
    files: _Files,
    tmp: Path,
) -> dict[str, Any]:
    file_info: dict[str, Any] = {}
    for path in sorted(p for p in tmp.rglob("*") if p.suffix in (".jsonl", ".parquet")):
        rel = path.relative_to(tmp).as_posix()
        rows = files.rows.get(rel.removesuffix(".parquet") + ".jsonl", 0)
        digest = files.hashes[rel].hexdigest() if rel in files.hashes else _sha256(path)
        file_info[rel] = {"rows": rows, "bytes": path.stat().st_size, "sha256": digest}
    ids = sorted(sel.included)
    ids_hash = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    sources: dict[str, Any] = {"count": len(ids), "sha256": ids_hash}
    if len(ids) <= _MAX_LISTED_IDS:
        sources["ids"] = ids
    content = hashlib.sha256(
        "".join(
            f"{k}\x00{v['sha256']}\n" for k, v in sorted(file_info.items()) if k.endswith(".jsonl")
        ).encode()
    ).hexdigest()
    warnings = []
    train_rows = files.rows.get("train.jsonl", 0)
    if req.format in ("openai", "openai_dpo") and train_rows < 10:
        warnings.append(
            f"OpenAI fine-tuning needs at least 10 training examples; this build has {train_rows}"
        )
    if not train_rows:
        warnings.append("the training split is empty: no trajectory matched, or every one was dropped")
    created = now_ms()
    privacy = report.to_wire()
    privacy["duplicatesSkipped"] = sel.duplicates
    return {
        "id": dataset_id,
        "name": name,
        "version": (parent.version + 1) if parent else 1,
        "parent": parent.id if parent else None,
        "formatVersion": FORMAT_VERSION,
        "format": req.format,
        "createdAt": iso_ms(created),
        "createdAtMs": created,
        "request": req.to_wire(),
        "store": {"backend": getattr(store, "dialect", type(store).__name__)},
        "counts": {
            "trajectories": len(ids),
            "rows": {"train": train_rows, "eval": files.rows.get("eval.jsonl", 0)},
            "tasks": {
                task: {
                    **counts,
                    **({"folder": f"tasks/{files.task_dirs[task]}"} if task in files.task_dirs else {}),
                }
                for task, counts in sorted(sel.tasks.items())
            },
        },
        "sourceTrajectories": sources,
        "privacy": privacy,
        "files": file_info,
        "contentSha256": content,
        "warnings": warnings,
    }


def get(store: Store, dataset_id: str) -> Dataset:
    ds = store.get_dataset(dataset_id)
    if ds is None:
        raise NotFound(f"no dataset {dataset_id!r}", "id")
    return ds


def summary(ds: Dataset) -> dict[str, Any]:
    """The wire form of a dataset in lists (the manifest has everything else)."""
    m = ds.manifest
    return {
        "id": ds.id,
        "name": ds.name,
        "version": ds.version,
        "parent": ds.parent,
        "format": ds.format,
        "trajectoryCount": ds.trajectory_count,
        "rowCount": ds.row_count,
        "rows": m["counts"]["rows"],
        "tasks": sorted(m["counts"]["tasks"]),
        "path": ds.path,
        "createdAt": iso_ms(ds.created_at),
        "contentSha256": m.get("contentSha256"),
        "warnings": m.get("warnings", []),
    }
