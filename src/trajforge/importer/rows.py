"""Per-call rows: one LLM call per JSON object, rebuilt into trajectories.

The seed system's JSONL (``trajectoryId, stepId, callId, purpose, actionType, model,
request.messages|prompt, response.text, usage``) and Eliza's ``eliza_native_v1`` model-boundary
rows (the same plus ``format, schemaVersion, boundary, stepIndex, stepType, request.settings,
response.usage, metadata, ...``). Every field with a home in our records goes there; the rest is
kept in metadata (``sourceFields``: what all rows of a trajectory share on the trajectory, the
rest per call on its step, under ``callSourceFields[callId]``), so nothing read is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trajforge.importer.common import (
    CALL_SOURCE_FIELDS,
    SOURCE_FIELDS,
    START_TIME_UNKNOWN,
    TIMES_UNKNOWN,
    common_items,
    content_digest,
    opt_bool,
    opt_count,
    opt_dict,
    opt_list,
    opt_number,
    opt_str,
    opt_time,
)
from trajforge.records import TRAJECTORY_STATUSES, CallRow, LlmCall, Step, Trajectory, WireError
from trajforge.validation import check_record

ELIZA_NATIVE = "eliza_native_v1"
FORMATS = (ELIZA_NATIVE,)

# Row keys read into our records (everything else is kept as a source field).
_ROW_KEYS = frozenset(
    {
        "trajectoryId",
        "agentId",
        "source",
        "status",
        "scenarioId",
        "batchId",
        "groupIndex",
        "isTrainingData",
        "stepId",
        "stepIndex",
        "stepNumber",
        "stepTimestamp",
        "stepType",
        "stepKind",
        "callId",
        "timestamp",
        "model",
        "modelVersion",
        "purpose",
        "actionType",
        "latencyMs",
        "tags",
        "promptTokens",
        "completionTokens",
        "cacheReadInputTokens",
        "cacheCreationInputTokens",
        "temperature",
        "maxTokens",
        "topP",
        "finishReason",
        "request",
        "response",
        "usage",
        "reward",
        "metadata",
    }
)
_REQUEST_KEYS = frozenset(
    {"messages", "prompt", "system", "tools", "settings", "temperature", "maxTokens", "topP", "model"}
)
_SETTINGS_KEYS = frozenset({"temperature", "maxTokens", "maxOutputTokens", "topP"})
_RESPONSE_KEYS = frozenset({"text", "reasoning", "toolCalls", "finishReason", "usage"})
_TOKENS = {
    "prompt_tokens": ("promptTokens", "prompt_tokens", "inputTokens", "input_tokens"),
    "completion_tokens": ("completionTokens", "completion_tokens", "outputTokens", "output_tokens"),
    "cache_read_input_tokens": ("cacheReadInputTokens", "cache_read_input_tokens"),
    "cache_creation_input_tokens": ("cacheCreationInputTokens", "cache_creation_input_tokens"),
}
_TOKEN_KEYS = frozenset(k for names in _TOKENS.values() for k in names)
# Trajectory and step fields a row carries; rows of one trajectory (step) may disagree, and the
# ones that do keep their value as a source field of their call.
_TRAJ_FIELDS = {
    "agentId": "agent_id",
    "source": "source",
    "status": "status",
    "scenarioId": "scenario_id",
    "batchId": "batch_id",
    "groupIndex": "group_index",
    "isTrainingData": "is_training_data",
}
_STEP_FIELDS = ("stepIndex", "stepTimestamp", "stepType", "stepKind", "reward")


def is_call_row(obj: dict[str, Any]) -> bool:
    """A per-call row rather than a whole trajectory (which has ``steps``)."""
    return "steps" not in obj and ("request" in obj or "response" in obj or "callId" in obj)


@dataclass(slots=True)
class RowCall:
    """One row, read: the call and what it says about its step and trajectory."""

    where: str
    trajectory_id: str
    step_id: str
    call: LlmCall
    has_time: bool
    traj: dict[str, Any] = field(default_factory=dict)
    step: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def same_content(self, other: RowCall) -> bool:
        return (self.step_id, self.call, self.traj, self.step, self.metadata, self.extra) == (
            other.step_id,
            other.call,
            other.traj,
            other.step,
            other.metadata,
            other.extra,
        )


def _text(content: Any) -> str | None:
    """A message's text: a string, or the text parts of a content array (AI SDK style)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [str(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(parts) if parts else None
    return None


def _tokens(sources: list[tuple[dict[str, Any], str]], out: dict[str, int | None]) -> None:
    # Plain loops: this runs for every row, and generator expressions cost more than the lookups.
    for name, keys in _TOKENS.items():
        for obj, where in sources:
            if not obj:
                continue
            for k in keys:
                if obj.get(k) is not None:
                    out[name] = opt_count(obj, k, where)
                    break
            else:
                continue
            break


def _rest(obj: dict[str, Any], known: frozenset[str]) -> dict[str, Any]:
    if obj.keys() <= known:  # a set operation in C: the common case of nothing foreign
        return {}
    return {k: v for k, v in obj.items() if k not in known}


class RowReader:
    """Reads rows of one file; remembers the content of rows without ids so that identical ones
    get distinct (and still stable) ids: the n-th copy of a row is ``row-<sha256>-<n>``."""

    def __init__(self) -> None:
        self._copies: dict[str, int] = {}

    def read(self, row: dict[str, Any], where: str) -> RowCall:
        fmt = row.get("format")
        if fmt is not None and fmt not in FORMATS:
            raise WireError(
                f"unsupported row format {fmt!r} (per-call rows: {', '.join(FORMATS)})", f"{where}.format"
            )
        if fmt == ELIZA_NATIVE and row.get("schemaVersion") not in (None, 1):
            raise WireError(
                f"unsupported {ELIZA_NATIVE} schemaVersion {row['schemaVersion']!r} (reads 1)",
                f"{where}.schemaVersion",
            )
        metadata = dict(opt_dict(row, "metadata", where) or {})
        tid = opt_str(row, "trajectoryId", where)
        cid = opt_str(row, "callId", where)
        if not tid or not cid:
            if fmt != ELIZA_NATIVE:
                missing = "trajectoryId" if not tid else "callId"
                raise WireError("is required (a non-empty string)", f"{where}.{missing}")
            if tid and not cid:
                raise WireError(
                    "is required (a non-empty string) when trajectoryId is given", f"{where}.callId"
                )
            # An eliza_native_v1 model-boundary row may stand alone (a training example): its
            # trajectory is named by its metadata when it says, else by the row's own content.
            digest = content_digest(row)
            n = self._copies[digest] = self._copies.get(digest, 0) + 1
            own = f"row-{digest[:32]}" + (f"-{n}" if n > 1 else "")
            meta_tid = metadata.get("trajectoryId", metadata.get("trajectory_id"))
            meta_cid = metadata.get("callId", metadata.get("call_id"))
            tid = meta_tid if isinstance(meta_tid, str) and meta_tid else own
            if not cid:
                cid = meta_cid if isinstance(meta_cid, str) and meta_cid else f"{own}:call"
        return self._read(row, where, tid, cid, metadata)

    def _read(self, row: dict[str, Any], where: str, tid: str, cid: str, metadata: dict[str, Any]) -> RowCall:
        request = opt_dict(row, "request", where) or {}
        response = opt_dict(row, "response", where) or {}
        rq, rs = f"{where}.request", f"{where}.response"
        usage = opt_dict(response, "usage", rs) or {}
        row_usage = opt_dict(row, "usage", where) or {}
        settings = opt_dict(request, "settings", rq) or {}
        messages = opt_list(request, "messages", rq)
        system = user = None
        for m in messages or []:
            if isinstance(m, dict) and m.get("role") == "system" and system is None:
                system = _text(m.get("content"))
            if isinstance(m, dict) and m.get("role") == "user":
                user = _text(m.get("content"))
        prompt = opt_str(request, "prompt", rq)
        if user is None:
            user = prompt
        system = opt_str(request, "system", rq) or system
        timestamp = opt_time(row, "timestamp", where)
        tokens: dict[str, int | None] = {}
        _tokens([(usage, f"{rs}.usage"), (row_usage, f"{where}.usage"), (row, where)], tokens)
        max_tokens = next(
            (
                opt_count(obj, key, w)
                for obj, key, w in (
                    (settings, "maxTokens", f"{rq}.settings"),
                    (settings, "maxOutputTokens", f"{rq}.settings"),
                    (request, "maxTokens", rq),
                    (row, "maxTokens", where),
                )
                if obj.get(key) is not None
            ),
            None,
        )

        def first_number(key: str) -> float | None:
            for obj, w in ((settings, f"{rq}.settings"), (request, rq), (row, where)):
                if obj.get(key) is not None:
                    return opt_number(obj, key, w)
            return None

        tags = opt_list(row, "tags", where)
        if tags is not None and not all(isinstance(x, str) for x in tags):
            raise WireError("expected an array of strings", f"{where}.tags")
        # The AI SDK also gives tools as an object keyed by name: not our list, so kept as it is.
        tools = request.get("tools") if isinstance(request.get("tools"), list) else None
        call = LlmCall(
            call_id=cid,
            timestamp=timestamp if timestamp is not None else 0,
            model=opt_str(row, "model", where) or opt_str(request, "model", rq) or "",
            model_version=opt_str(row, "modelVersion", where),
            system_prompt=system,
            user_prompt=user,
            messages=messages,
            response=opt_str(response, "text", rs),
            reasoning=opt_str(response, "reasoning", rs),
            tool_calls=opt_list(response, "toolCalls", rs),
            tools=tools,
            finish_reason=opt_str(response, "finishReason", rs) or opt_str(row, "finishReason", where),
            temperature=first_number("temperature"),
            max_tokens=max_tokens,
            top_p=first_number("topP"),
            purpose=opt_str(row, "purpose", where) or "other",
            action_type=opt_str(row, "actionType", where),
            latency_ms=opt_number(row, "latencyMs", where),
            tags=tags,
            **tokens,
        )
        status = opt_str(row, "status", where)
        if status is not None and status not in TRAJECTORY_STATUSES:
            raise WireError(f"must be one of {', '.join(TRAJECTORY_STATUSES)}", f"{where}.status")
        agent = opt_str(row, "agentId", where)
        if agent is None:
            meta_agent = metadata.get("agentId", metadata.get("agent_id"))
            agent = meta_agent if isinstance(meta_agent, str) else None
        traj = {
            "agentId": agent,
            "source": opt_str(row, "source", where),
            "status": status,
            "scenarioId": opt_str(row, "scenarioId", where),
            "batchId": opt_str(row, "batchId", where),
            "groupIndex": opt_count(row, "groupIndex", where),
            "isTrainingData": opt_bool(row, "isTrainingData", where),
        }
        step_index = opt_count(row, "stepIndex", where)
        if step_index is None:
            step_index = opt_count(row, "stepNumber", where)
        step = {
            "stepIndex": step_index,
            "stepTimestamp": opt_time(row, "stepTimestamp", where),
            "stepType": opt_str(row, "stepType", where),
            "stepKind": opt_str(row, "stepKind", where),
            "reward": opt_number(row, "reward", where),
        }
        extra = _rest(row, _ROW_KEYS)
        if rest := _rest(row_usage, _TOKEN_KEYS):
            extra["usage"] = rest
        req_rest = _rest(request, _REQUEST_KEYS)
        if tools is None and request.get("tools") is not None:
            req_rest["tools"] = request["tools"]
        if set_rest := _rest(settings, _SETTINGS_KEYS):
            req_rest["settings"] = set_rest
        if req_rest:
            extra["request"] = req_rest
        resp_rest = _rest(response, _RESPONSE_KEYS)
        if use_rest := _rest(usage, _TOKEN_KEYS):
            resp_rest["usage"] = use_rest
        if resp_rest:
            extra["response"] = resp_rest
        # Seed step ids are often per-trajectory ("step-0"): scope them so two trajectories never
        # share a step row. Deterministic, so re-importing stays idempotent.
        sid = f"{tid}:{opt_str(row, 'stepId', where) or 'step'}"
        # The limits every way in enforces (trajforge.limits), checked here so a row over them is a
        # bad row of the check pass naming its field; the trajectory the rows make is checked
        # whole once the file is read (metadata can move deeper there).
        check_record(CallRow(tid, sid, call), where)
        return RowCall(
            where=where,
            trajectory_id=tid,
            step_id=sid,
            call=call,
            has_time=timestamp is not None,
            traj={k: v for k, v in traj.items() if v is not None},
            step={k: v for k, v in step.items() if v is not None},
            metadata=metadata,
            extra=extra,
        )


class RowTrajectories:
    """The rows of a file grouped by trajectory, until the file has been read to its end (a
    trajectory's rows may be anywhere in it)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[RowCall]] = {}
        self._calls: dict[tuple[str, str], RowCall] = {}
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self.rows)

    def check(self, rc: RowCall) -> bool:
        """False for an exact copy of a row already read; an error for another row reusing its
        call id (the store keeps the first, so the second would be lost)."""
        prev = self._calls.get((rc.trajectory_id, rc.call.call_id))
        if prev is None:
            return True
        if prev.same_content(rc):
            return False
        raise WireError(
            f"callId {rc.call.call_id!r} is already used in this trajectory by {prev.where} with other content",
            f"{rc.where}.callId",
        )

    def add(self, rc: RowCall) -> None:
        if not self.check(rc):
            self.duplicates += 1
            return
        self._calls[(rc.trajectory_id, rc.call.call_id)] = rc
        self.rows.setdefault(rc.trajectory_id, []).append(rc)

    def build(self, tid: str, now: int) -> tuple[Trajectory, bool]:
        """The trajectory of ``tid`` and whether its start time is unknown (no row had a time)."""
        rows = self.rows[tid]
        chosen: dict[str, Any] = {}
        for key in _TRAJ_FIELDS:
            values = [r.traj[key] for r in rows if key in r.traj]
            if key == "status":
                finished = [v for v in values if v != "active"]
                values = finished[-1:] or values
            chosen[key] = values[0] if values else None
        for r in rows:  # rows disagreeing with the chosen value keep theirs
            for key, value in r.traj.items():
                if value != chosen[key]:
                    r.extra[key] = value
        steps: dict[str, list[RowCall]] = {}
        for r in rows:
            steps.setdefault(r.step_id, []).append(r)
        step_fields: dict[str, dict[str, Any]] = {}
        for sid, srows in steps.items():
            fields = step_fields[sid] = {}
            for key in _STEP_FIELDS:
                value = next((r.step[key] for r in srows if key in r.step), None)
                fields[key] = value
                for r in srows:
                    if key in r.step and r.step[key] != value:
                        r.extra[key] = r.step[key]
        shared_meta = common_items([r.metadata for r in rows])
        for r in rows:
            if rest := {k: v for k, v in r.metadata.items() if k not in shared_meta}:
                r.extra["metadata"] = rest
        shared = common_items([r.extra for r in rows])

        known = [r.call.timestamp for r in rows if r.has_time]
        known += [f["stepTimestamp"] for f in step_fields.values() if f["stepTimestamp"] is not None]
        start = min(known) if known else None
        metadata = dict(shared_meta)
        if shared:
            metadata[SOURCE_FIELDS] = shared
        if start is None:
            metadata[START_TIME_UNKNOWN] = True
        t = Trajectory(
            id=tid,
            agent_id=chosen["agentId"] or "",
            source=chosen["source"] or "api",
            # A file of calls is a record of finished work unless a row says otherwise.
            status=chosen["status"] or "completed",
            start_time=start if start is not None else now,
            end_time=max(known) if known else None,
            scenario_id=chosen["scenarioId"],
            batch_id=chosen["batchId"],
            group_index=chosen["groupIndex"],
            is_training_data=bool(chosen["isTrainingData"]),
            metadata=metadata,
        )
        rewards = []
        for number, (sid, srows) in enumerate(steps.items()):
            fields = step_fields[sid]
            own = [r.call.timestamp for r in srows if r.has_time]
            step_time = fields["stepTimestamp"]
            if step_time is None and own:
                step_time = min(own)
            unknown: list[str] = []
            if step_time is None:
                step_time = start if start is not None else now
                if start is not None:
                    unknown.append("step")
            step_meta: dict[str, Any] = {}
            for key in ("stepType", "stepKind"):
                if fields[key] is not None:
                    step_meta[key] = fields[key]
            per_call = {}
            for r in srows:
                if not r.has_time:
                    r.call.timestamp = step_time
                    if start is not None:
                        unknown.append(f"call:{r.call.call_id}")
                if rest := {k: v for k, v in r.extra.items() if k not in shared}:
                    per_call[r.call.call_id] = rest
            if per_call:
                step_meta[CALL_SOURCE_FIELDS] = per_call
            if unknown:
                step_meta[TIMES_UNKNOWN] = unknown
            if fields["reward"] is not None:
                rewards.append(fields["reward"])
            index = fields["stepIndex"]
            t.steps.append(
                Step(
                    step_id=sid,
                    step_number=index if index is not None else number,
                    timestamp=step_time,
                    llm_calls=[r.call for r in srows],
                    reward=fields["reward"],
                    metadata=step_meta or None,
                )
            )
        if rewards:
            t.total_reward = sum(rewards)
        return t, start is None
