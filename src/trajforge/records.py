"""Typed records of everything trajforge stores, and their camelCase wire form.

Inside Python everything is snake_case dataclasses; the HTTP API and exports use the seed system's
camelCase shapes (``../shared/formats/README.md``). ``to_wire``/``from_wire`` convert between them.
Times are integer milliseconds since the Unix epoch (UTC) unless a field name says otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, TypeVar, get_args

from trajforge import limits
from trajforge.limits import MAX_TIME_MS

__all__ = ["MAX_TIME_MS"]  # re-exported: the store's date parsing bounds dates with it

TrajectoryStatus = Literal["active", "completed", "error", "timeout"]
TRAJECTORY_STATUSES: tuple[str, ...] = get_args(TrajectoryStatus)
LlmPurpose = Literal["action", "reasoning", "evaluation", "response", "other"]
LLM_PURPOSES: tuple[str, ...] = get_args(LlmPurpose)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso_ms(ms: int) -> str:
    """Epoch ms as an ISO 8601 UTC string with milliseconds (``2026-01-31T12:00:00.000Z``)."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _IdGenerator:
    """Time-ordered unique ids: 48-bit ms time | 32 random bits per process | 48-bit counter.

    Time-ordered keys keep B-tree inserts local in both SQLite and PostgreSQL, and generating one
    costs well under a microsecond (no syscall), which matters on the agent's thread. The random
    part is redrawn after ``fork`` so child processes never repeat the parent's ids.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._node = int.from_bytes(os.urandom(4), "big")
        self._counter = int.from_bytes(os.urandom(3), "big")

    def __call__(self) -> str:
        with self._lock:
            self._counter = (self._counter + 1) & 0xFFFFFFFFFFFF
            c = self._counter
        h = f"{now_ms() & 0xFFFFFFFFFFFF:012x}{self._node:08x}{c:012x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


new_id = _IdGenerator()


@dataclass(slots=True)
class LlmCall:
    """One model call: what was asked, what came back, what it cost."""

    call_id: str = field(default_factory=new_id)
    timestamp: int = field(default_factory=now_ms)
    model: str = ""
    model_version: str | None = None
    system_prompt: str | None = None
    user_prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    response: str | None = None
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    purpose: str = "action"
    action_type: str | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    tags: list[str] | None = None


@dataclass(slots=True)
class ProviderAccess:
    """One read of context by the agent (memory, knowledge base, market data, a customer record)."""

    access_id: str = field(default_factory=new_id)
    timestamp: int = field(default_factory=now_ms)
    provider_id: str | None = None
    provider_name: str = ""
    purpose: str = ""
    query: Any = None
    data: Any = None


@dataclass(slots=True)
class ActionResult:
    """What the agent did with its decision and how it went."""

    action_type: str
    action_name: str | None = None
    parameters: Any = None
    reasoning: str | None = None
    llm_call_id: str | None = None
    success: bool = True
    result: Any = None
    error: str | None = None
    immediate_reward: float | None = None
    timestamp: int = field(default_factory=now_ms)


@dataclass(slots=True)
class Step:
    """One decision of the agent: the context it read, the calls it made, the action it took."""

    step_id: str = field(default_factory=new_id)
    step_number: int = 0
    timestamp: int = field(default_factory=now_ms)
    llm_calls: list[LlmCall] = field(default_factory=list)
    provider_accesses: list[ProviderAccess] = field(default_factory=list)
    action: ActionResult | None = None
    reward: float | None = None
    done: bool | None = None
    observation: Any = None
    metadata: dict[str, Any] | None = None


@dataclass(slots=True)
class Score:
    """A judgement attached to a trajectory after the fact: a reward function, a late outcome, a judge."""

    trajectory_id: str
    name: str
    value: float
    comment: str | None = None
    source: str = "api"
    score_id: str = field(default_factory=new_id)
    created_at: int = field(default_factory=now_ms)


@dataclass(slots=True)
class Trajectory:
    """One agent episode: its steps in order, its outcome and the counters the store keeps."""

    id: str = field(default_factory=new_id)
    agent_id: str = ""
    source: str = "api"
    status: str = "active"
    start_time: int = field(default_factory=now_ms)
    end_time: int | None = None
    duration_ms: int | None = None
    scenario_id: str | None = None
    batch_id: str | None = None
    group_index: int | None = None
    is_training_data: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    total_reward: float | None = None
    steps: list[Step] = field(default_factory=list)
    scores: list[Score] = field(default_factory=list)
    # Kept by the store from what was actually written; ignored on input.
    step_count: int = 0
    llm_call_count: int = 0
    provider_access_count: int = 0
    total_prompt_tokens: int = 0
    total_completion_tokens: int = 0
    created_at: int = field(default_factory=now_ms)
    updated_at: int = field(default_factory=now_ms)


class FlatCall(NamedTuple):
    """One LLM call as a flat row with its trajectory's and step's context: what bulk reads yield
    (``store.iter_call_rows``), parquet exports write (one column per field, camelCase: see
    :data:`FLAT_CALL_COLUMNS`) and dataset builds curate. A tuple for speed, read by name: a
    reordering cannot shift one field into another. JSON-valued fields (``step_action``,
    ``messages``, ``tool_calls``, ``tools``) hold JSON text."""

    trajectory_id: str
    agent_id: str
    source: str
    status: str
    scenario_id: str | None
    batch_id: str | None
    trajectory_reward: float | None
    step_id: str | None
    step_number: int | None
    step_reward: float | None
    step_action: str | None
    call_id: str
    timestamp: int
    model: str
    system_prompt: str | None
    user_prompt: str | None
    messages: str | None
    response: str | None
    reasoning: str | None
    tool_calls: str | None
    tools: str | None
    finish_reason: str | None
    temperature: float | None
    max_tokens: int | None
    purpose: str | None
    action_type: str | None
    latency_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None


def task_of(action_type: str | None, purpose: str | None) -> str:
    """A call's *task*: its action type when set, else its purpose (action, reasoning, …). Dataset
    builds split and filter by it; the store counts completed trajectories per task with
    :data:`TASK_SQL`, its twin."""
    return action_type or purpose or "other"


TASK_SQL = "COALESCE(NULLIF(action_type, ''), NULLIF(purpose, ''), 'other')"
""":func:`task_of` as an SQL expression over ``llm_calls``' columns (empty counts as unset, as in
Python)."""


EventKind = Literal[
    "job_started",
    "job_progress",
    "job_log",
    "job_completed",
    "job_failed",
    "job_cancelled",
    "dataset_built",
    "model_activated",
    "model_imported",
]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)


@dataclass(slots=True)
class Dataset:
    """A built dataset snapshot: immutable files under ``path`` described by ``manifest``."""

    id: str
    name: str
    version: int
    format: str
    path: str
    trajectory_count: int
    row_count: int
    manifest: dict[str, Any]
    parent: str | None = None
    created_at: int = field(default_factory=now_ms)


@dataclass(slots=True)
class Model:
    """A trained model in the registry: a LoRA adapter (and optionally its merged model) with the
    job, dataset and base model it came from, its training metrics, its benchmark against the base,
    its Ollama name once imported and whether the agent uses it (``active``)."""

    job_id: str | None
    dataset_id: str | None
    base_model: str
    backend: str
    adapter_path: str | None
    id: str = field(default_factory=lambda: f"model-{new_id()}")
    merged_path: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    ollama_name: str | None = None
    provider_model: str | None = None
    active: bool = False
    activated_at: int | None = None
    created_at: int = field(default_factory=now_ms)


JobStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
JOB_FINISHED = ("completed", "failed", "cancelled")


@dataclass(slots=True)
class Job:
    """A training job: queued in the store, run in a subprocess of whichever runner claims it."""

    id: str = field(default_factory=lambda: f"job-{new_id()}")
    kind: str = "native"
    backend: str = "native"
    status: str = "pending"
    phase: str | None = None
    progress: float = 0.0
    request: dict[str, Any] = field(default_factory=dict)
    dataset_id: str | None = None
    created_at: int = field(default_factory=now_ms)
    started_at: int | None = None
    finished_at: int | None = None
    error: str | None = None
    exit_code: int | None = None
    log_path: str | None = None
    output: dict[str, Any] | None = None
    pid: int | None = None
    host: str | None = None
    cancel_requested: bool = False
    heartbeat_at: int | None = None


@dataclass(slots=True)
class JobEvent:
    """Something that happened in the training loop, in the order the store numbered it (``seq``)."""

    kind: str
    message: str
    ts: int = field(default_factory=now_ms)
    job_id: str | None = None
    dataset_id: str | None = None
    model_id: str | None = None
    progress: float | None = None
    phase: str | None = None
    data: dict[str, Any] | None = None
    seq: int | None = None


@dataclass(slots=True)
class TrajectoryHeader:
    """The trajectory row without its steps: what an upsert from the SDK or ingest carries.

    Fields left ``None`` keep their stored value, so a later write can complete an earlier one.
    """

    id: str
    agent_id: str | None = None
    source: str | None = None
    status: str | None = None
    start_time: int | None = None
    end_time: int | None = None
    scenario_id: str | None = None
    batch_id: str | None = None
    group_index: int | None = None
    is_training_data: bool | None = None
    metadata: dict[str, Any] | None = None
    total_reward: float | None = None


@dataclass(slots=True)
class StepHeader:
    """A step row without its calls; ``None`` fields keep their stored value."""

    trajectory_id: str
    step_id: str
    step_number: int | None = None
    timestamp: int | None = None
    action: ActionResult | None = None
    reward: float | None = None
    done: bool | None = None
    observation: Any = None
    metadata: dict[str, Any] | None = None


@dataclass(slots=True)
class CallRow:
    """An LLM call on its way to the store, with where it belongs."""

    trajectory_id: str
    step_id: str
    call: LlmCall


@dataclass(slots=True)
class AccessRow:
    """A provider access on its way to the store, with where it belongs."""

    trajectory_id: str
    step_id: str
    access: ProviderAccess


@dataclass(slots=True)
class WriteBatch:
    """Everything one store transaction writes. Re-sending the same ids never duplicates anything."""

    trajectories: list[TrajectoryHeader] = field(default_factory=list)
    steps: list[StepHeader] = field(default_factory=list)
    calls: list[CallRow] = field(default_factory=list)
    accesses: list[AccessRow] = field(default_factory=list)
    scores: list[Score] = field(default_factory=list)
    assemble: bool = False
    """Assemble mode (OTLP ingest only): the parts of one trajectory arrive in many writes and out
    of order, so the write also renumbers the touched trajectories' steps by time (``timestamp``,
    then step id), merges trajectory metadata into the stored one instead of replacing it, keeps
    the earliest start time, and fills a stored call's still-empty fields from a later write of
    the same call (never overwriting). Off for every other writer: their path is unchanged."""
    traces: dict[str, str] = field(default_factory=dict)
    """Assemble mode: the trace → trajectory decisions the batch was built on. The write checks
    them in its transaction and raises ``TracesMoved`` when one changed meanwhile (a trace joined
    its conversation): the caller assembles the spans again."""

    def __len__(self) -> int:
        return (
            len(self.trajectories) + len(self.steps) + len(self.calls) + len(self.accesses) + len(self.scores)
        )

    def extend(self, other: WriteBatch) -> None:
        self.trajectories.extend(other.trajectories)
        self.steps.extend(other.steps)
        self.calls.extend(other.calls)
        self.accesses.extend(other.accesses)
        self.scores.extend(other.scores)

    @classmethod
    def from_trajectory(cls, t: Trajectory) -> WriteBatch:
        """The batch that stores a whole trajectory (used by import and HTTP ingest)."""
        batch = cls(
            trajectories=[
                TrajectoryHeader(
                    id=t.id,
                    agent_id=t.agent_id,
                    source=t.source,
                    status=t.status,
                    start_time=t.start_time,
                    end_time=t.end_time,
                    scenario_id=t.scenario_id,
                    batch_id=t.batch_id,
                    group_index=t.group_index,
                    is_training_data=t.is_training_data,
                    metadata=t.metadata,
                    total_reward=t.total_reward,
                )
            ]
        )
        for number, step in enumerate(t.steps):
            batch.steps.append(
                StepHeader(
                    trajectory_id=t.id,
                    step_id=step.step_id,
                    step_number=step.step_number if step.step_number else number,
                    timestamp=step.timestamp,
                    action=step.action,
                    reward=step.reward,
                    done=step.done,
                    observation=step.observation,
                    metadata=step.metadata,
                )
            )
            batch.calls.extend(CallRow(t.id, step.step_id, c) for c in step.llm_calls)
            batch.accesses.extend(AccessRow(t.id, step.step_id, a) for a in step.provider_accesses)
        for score in t.scores:
            score.trajectory_id = t.id
            batch.scores.append(score)
        return batch


# --- wire form -----------------------------------------------------------------------------------


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


_CAMEL_CACHE: dict[str, str] = {}


def camel(name: str) -> str:
    """snake_case → camelCase, cached (field names repeat millions of times in exports)."""
    out = _CAMEL_CACHE.get(name)
    if out is None:
        out = _CAMEL_CACHE[name] = _camel(name)
    return out


FLAT_CALL_COLUMNS = tuple(camel(name) for name in FlatCall._fields)
"""The wire (and parquet column) names of :class:`FlatCall`'s fields, in order."""

_NESTED: dict[str, type] = {
    "llm_calls": LlmCall,
    "provider_accesses": ProviderAccess,
    "action": ActionResult,
    "steps": Step,
    "scores": Score,
}
# Fields of a record that are free-form user data: their keys are passed through untouched.
_OPAQUE = limits.JSON_FIELDS


_PLANS: dict[type, tuple[tuple[str, str, int], ...]] = {}


def _plan(cls: type) -> tuple[tuple[str, str, int], ...]:
    """(attribute, wire key, 0 plain | 1 nested record | 2 list of records) for each field."""
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = tuple(
            (f.name, camel(f.name), 0 if f.name not in _NESTED else (1 if f.name == "action" else 2))
            for f in dataclasses.fields(cls)
        )
    return plan


def to_wire(record: Any) -> dict[str, Any]:
    """A record as the camelCase dict the API and exports emit (hot in exports: kept lean)."""
    out: dict[str, Any] = {}
    for name, key, kind in _plan(type(record)):
        value = getattr(record, name)
        if kind and value is not None:
            value = to_wire(value) if kind == 1 else [to_wire(v) for v in value]
        out[key] = value
    if type(record) is Trajectory:
        out["trajectoryId"] = record.id
    return out


class WireError(ValueError):
    """A wire record did not match its schema; ``field`` names the offending field (camelCase path)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


R = TypeVar("R")

_SNAKE_CACHE: dict[type, dict[str, dataclasses.Field[Any]]] = {}


def _fields_by_wire_name(cls: type) -> dict[str, dataclasses.Field[Any]]:
    cached = _SNAKE_CACHE.get(cls)
    if cached is None:
        cached = {}
        for f in dataclasses.fields(cls):
            cached[camel(f.name)] = f
            cached[f.name] = f
        _SNAKE_CACHE[cls] = cached
    return cached


_NUMERIC = {"int": (int,), "float": (int, float), "int | None": (int,), "float | None": (int, float)}


def from_wire(cls: type[R], data: Any, path: str = "") -> R:
    """Build a record from its wire dict (camelCase or snake_case keys), checking basic types.

    Unknown keys are ignored (forward compatibility); wrong types raise :class:`WireError` naming
    the field, so the API can answer 422 with the exact path.
    """
    if not isinstance(data, dict):
        raise WireError(f"expected an object, got {type(data).__name__}", path or None)
    by_name = _fields_by_wire_name(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        f = by_name.get(key)
        if f is None:
            if cls is Trajectory and key == "trajectoryId":
                f = by_name["id"]
            else:
                continue
        where = f"{path}.{camel(f.name)}" if path else camel(f.name)
        nested = _NESTED.get(f.name)
        if nested is not None and value is not None:
            if f.name == "action":
                value = from_wire(nested, value, where)
            else:
                if not isinstance(value, list):
                    raise WireError("expected an array", where)
                value = [from_wire(nested, v, f"{where}[{i}]") for i, v in enumerate(value)]
        elif value is not None:
            value = _check_scalar(f, value, where) if f.name not in _OPAQUE else _check_json(value, where)
        kwargs[f.name] = value
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in kwargs:
            where = f"{path}.{camel(f.name)}" if path else camel(f.name)
            raise WireError("is required", where)
    return cls(**kwargs)


def _check_scalar(f: dataclasses.Field[Any], value: Any, where: str) -> Any:
    kind = str(f.type)
    if kind in _NUMERIC:
        if isinstance(value, bool) or not isinstance(value, _NUMERIC[kind]):
            raise WireError(f"expected a number, got {type(value).__name__}", where)
        if kind.startswith("int") and isinstance(value, float):
            if not value.is_integer():
                raise WireError("expected an integer", where)
            value = int(value)
    elif kind.startswith("str"):
        if not isinstance(value, str):
            raise WireError(f"expected a string, got {type(value).__name__}", where)
    elif kind.startswith("bool"):
        if not isinstance(value, bool):
            raise WireError(f"expected true or false, got {type(value).__name__}", where)
        return value
    problem = limits.check_field(f.name, value)
    if problem is not None:
        raise WireError(problem, where)
    return value


def _check_json(value: Any, where: str) -> Any:
    problem = limits.check_json(value)
    if problem is not None:
        raise WireError(problem, where)
    return value


def derived_id(step_id: str, kind: str, k: int) -> str:
    """The id of the ``k``-th call or access (``kind``) of a step, for one sent without an id: from
    its place, the same on every way in (HTTP ingest, the importer), so the same content sent
    again, or sent one way and imported the other, is the same record. Ids are scoped to their
    trajectory, so the step's id is enough."""
    return f"{step_id}:{kind}:{k}"


def _check_id(value: Any, limit: int, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise WireError("is required (a non-empty string)", where)
    problem = limits.check_id(value, limit)
    if problem is not None:
        raise WireError(problem, where)
    return value


# --- batches on the wire (HTTP ingest and the SDK's spool file) ----------------------------------

_HEADER_FIELDS = {camel(f.name): f for f in dataclasses.fields(TrajectoryHeader)}
_STEP_FIELDS = {camel(f.name): f for f in dataclasses.fields(StepHeader)}


def batch_to_wire(batch: WriteBatch) -> dict[str, Any]:
    """A batch as ``{"trajectories": [...]}``: partial trajectory objects whose absent fields keep
    their stored values, each with the steps (and their calls/accesses) and scores it adds."""
    out: dict[str, dict[str, Any]] = {}

    def traj(tid: str) -> dict[str, Any]:
        t = out.get(tid)
        if t is None:
            t = out[tid] = {"id": tid, "steps": [], "scores": []}
        return t

    steps: dict[tuple[str, str], dict[str, Any]] = {}  # step ids are unique only within a trajectory

    def step(tid: str, sid: str) -> dict[str, Any]:
        s = steps.get((tid, sid))
        if s is None:
            s = steps[(tid, sid)] = {"stepId": sid, "llmCalls": [], "providerAccesses": []}
            traj(tid)["steps"].append(s)
        return s

    for h in batch.trajectories:
        t = traj(h.id)
        for f in dataclasses.fields(h):
            value = getattr(h, f.name)
            if value is not None and f.name != "id":
                t[camel(f.name)] = value
    for sh in batch.steps:
        s = step(sh.trajectory_id, sh.step_id)
        for f in dataclasses.fields(sh):
            value = getattr(sh, f.name)
            if value is None or f.name in ("trajectory_id", "step_id"):
                continue
            s[camel(f.name)] = to_wire(value) if f.name == "action" else value
    for c in batch.calls:
        step(c.trajectory_id, c.step_id)["llmCalls"].append(to_wire(c.call))
    for a in batch.accesses:
        step(a.trajectory_id, a.step_id)["providerAccesses"].append(to_wire(a.access))
    for sc in batch.scores:
        traj(sc.trajectory_id)["scores"].append(to_wire(sc))
    return {"trajectories": list(out.values())}


def _array(obj: dict[str, Any], key: str, path: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise WireError("expected an array", f"{path}.{key}")
    return value


def batch_from_wire(data: Any) -> WriteBatch:
    """Parse ``{"trajectories": [...]}`` (full or partial trajectories); errors name the field path."""
    if not isinstance(data, dict) or not isinstance(data.get("trajectories"), list):
        raise WireError("expected an object with a 'trajectories' array", "trajectories")
    batch = WriteBatch()
    for i, t in enumerate(data["trajectories"]):
        path = f"trajectories[{i}]"
        if not isinstance(t, dict):
            raise WireError("expected an object", path)
        tid = _check_id(t.get("id", t.get("trajectoryId")), limits.MAX_ID_CHARS, f"{path}.id")
        header: dict[str, Any] = {}
        for key, value in t.items():
            f = _HEADER_FIELDS.get(key)
            if f is None or f.name == "id" or value is None:
                continue
            if f.name == "metadata":
                if not isinstance(value, dict):
                    raise WireError("expected an object", f"{path}.metadata")
                header[f.name] = _check_json(value, f"{path}.{key}")
            else:
                header[f.name] = _check_scalar(f, value, f"{path}.{key}")
        if header.get("status") is not None and header["status"] not in TRAJECTORY_STATUSES:
            raise WireError(f"must be one of {', '.join(TRAJECTORY_STATUSES)}", f"{path}.status")
        batch.trajectories.append(TrajectoryHeader(id=tid, **header))
        steps = _array(t, "steps", path)
        for j, s in enumerate(steps):
            spath = f"{path}.steps[{j}]"
            if not isinstance(s, dict):
                raise WireError("expected an object", spath)
            sid = _check_id(s.get("stepId", s.get("step_id")), limits.MAX_REF_CHARS, f"{spath}.stepId")
            fields: dict[str, Any] = {}
            for key, value in s.items():
                f = _STEP_FIELDS.get(key)
                if f is None or f.name in ("step_id", "trajectory_id") or value is None:
                    continue
                if f.name == "action":
                    value = from_wire(ActionResult, value, f"{spath}.action")
                elif f.name not in _OPAQUE:
                    value = _check_scalar(f, value, f"{spath}.{key}")
                else:
                    value = _check_json(value, f"{spath}.{key}")
                fields[f.name] = value
            if "stepNumber" not in s and "step_number" not in s:
                fields["step_number"] = j
            batch.steps.append(StepHeader(trajectory_id=tid, step_id=sid, **fields))
            # Calls and accesses sent without ids get ids derived from their place, so re-sending
            # the same payload stays idempotent.
            for k, c in enumerate(_array(s, "llmCalls", spath)):
                call = from_wire(LlmCall, c, f"{spath}.llmCalls[{k}]")
                if "callId" not in c and "call_id" not in c:
                    call.call_id = derived_id(sid, "call", k)
                batch.calls.append(CallRow(tid, sid, call))
            for k, a in enumerate(_array(s, "providerAccesses", spath)):
                access = from_wire(ProviderAccess, a, f"{spath}.providerAccesses[{k}]")
                if "accessId" not in a and "access_id" not in a:
                    access.access_id = derived_id(sid, "access", k)
                batch.accesses.append(AccessRow(tid, sid, access))
        for k, sc in enumerate(_array(t, "scores", path)):
            if isinstance(sc, dict):
                sc = {**sc, "trajectoryId": tid}
            batch.scores.append(from_wire(Score, sc, f"{path}.scores[{k}]"))
    return batch
