"""Whole trajectories, one JSON object each: our own json/jsonl exports and Eliza's trajectory
objects (``trajectoryId, agentId, startTime, steps[{llmCalls, providerAccesses, action}],
totalReward, metrics{episodeLength, finalStatus, ...}, rewardComponents, metadata``).

Every field with a home goes there (``metrics.finalStatus`` is the status when no ``status`` is
given); the others are kept in metadata (``sourceFields`` of the trajectory or step, and
``callSourceFields`` / ``accessSourceFields`` / ``actionSourceFields`` of a step, keyed by id).
Records without an id get one derived from their place (``<trajectory>:step:<j>``,
``<step>:call:<k>``... as HTTP ingest derives them: :func:`trajforge.records.derived_id`), so
importing the same file twice, or importing what was sent over HTTP, stores nothing new.
"""

from __future__ import annotations

from typing import Any

from trajforge.importer.common import (
    ACCESS_SOURCE_FIELDS,
    ACTION_SOURCE_FIELDS,
    CALL_SOURCE_FIELDS,
    SOURCE_FIELDS,
    START_TIME_UNKNOWN,
    TIMES_UNKNOWN,
    opt_dict,
    opt_list,
    wire_names,
)
from trajforge.records import (
    TRAJECTORY_STATUSES,
    ActionResult,
    LlmCall,
    ProviderAccess,
    Score,
    Step,
    Trajectory,
    WireError,
    derived_id,
    from_wire,
)

_TRAJ_KEYS = wire_names(Trajectory) | {"trajectoryId"}
_STEP_KEYS = wire_names(Step)
_CALL_KEYS = wire_names(LlmCall) | {"thinking"}
_ACCESS_KEYS = wire_names(ProviderAccess)
_ACTION_KEYS = wire_names(ActionResult)
# Eliza's metrics.finalStatus → our status; "terminated" (stopped from outside, neither an error
# nor a timeout) is a finished trajectory. The original value stays in sourceFields.metrics.
_FINAL_STATUS = {"completed": "completed", "terminated": "completed", "error": "error", "timeout": "timeout"}


def _given(raw: dict[str, Any], *keys: str) -> bool:
    return any(raw.get(k) is not None for k in keys)


def _foreign(raw: dict[str, Any], known: frozenset[str]) -> dict[str, Any]:
    if raw.keys() <= known:  # the usual case, our own exports: a set operation in C
        return {}
    return {k: v for k, v in raw.items() if k not in known}


def _status(obj: dict[str, Any], where: str) -> str | None:
    status = obj.get("status")
    if status is not None:
        if status not in TRAJECTORY_STATUSES:
            raise WireError(f"must be one of {', '.join(TRAJECTORY_STATUSES)}", f"{where}.status")
        return str(status)
    metrics = opt_dict(obj, "metrics", where) or {}
    final = metrics.get("finalStatus")
    if final is None:
        return None
    if final not in _FINAL_STATUS:
        raise WireError(f"must be one of {', '.join(_FINAL_STATUS)}", f"{where}.metrics.finalStatus")
    return _FINAL_STATUS[final]


def trajectory_from_object(obj: dict[str, Any], where: str, now: int) -> tuple[Trajectory, bool]:
    """The trajectory of one object and whether its start time is unknown (no time in it)."""
    tid, alt = obj.get("id"), obj.get("trajectoryId")
    if tid is None:
        tid = alt
    elif alt is not None and alt != tid:
        raise WireError(f"differs from id {tid!r}", f"{where}.trajectoryId")
    if not isinstance(tid, str) or not tid:
        raise WireError("is required (a non-empty string)", f"{where}.trajectoryId")
    metadata = dict(opt_dict(obj, "metadata", where) or {})
    status = _status(obj, where)
    raw_steps = opt_list(obj, "steps", where) or []
    t = from_wire(Trajectory, obj, where)
    t.id = tid
    t.metadata = metadata
    if status is not None:
        t.status = status
    if not _given(obj, "isTrainingData", "is_training_data") and isinstance(
        metadata.get("isTrainingData"), bool
    ):
        t.is_training_data = metadata["isTrainingData"]
    if foreign := _foreign(obj, _TRAJ_KEYS):
        prior = metadata.get(SOURCE_FIELDS)
        metadata[SOURCE_FIELDS] = {**(prior if isinstance(prior, dict) else {}), **foreign}

    # Times: what the source gives, else the earliest time inside the record (a step starts with
    # its first call), else a neighbour's, flagged in the step's metadata ``timesUnknown``.
    start_given = _given(obj, "startTime", "start_time")
    known: list[int] = [t.start_time] if start_given else []
    step_known: list[list[int]] = []
    for j, (raw, step) in enumerate(zip(raw_steps, t.steps, strict=True)):
        swhere = f"{where}.steps[{j}]"
        own = [
            c.timestamp
            for rc, c in zip(_items(raw, swhere, "llmCalls", "llm_calls"), step.llm_calls, strict=True)
            if _given(rc, "timestamp")
        ]
        own += [
            a.timestamp
            for ra, a in zip(
                _items(raw, swhere, "providerAccesses", "provider_accesses"),
                step.provider_accesses,
                strict=True,
            )
            if _given(ra, "timestamp")
        ]
        if step.action is not None and _given(raw["action"], "timestamp"):
            own.append(step.action.timestamp)
        if _given(raw, "timestamp"):
            own.insert(0, step.timestamp)
        step_known.append(own)
        known += own
    start_unknown = not known
    if not start_given:
        t.start_time = min(known) if known else now
    if start_unknown:
        metadata[START_TIME_UNKNOWN] = True
    elif t.end_time is None and start_given and t.duration_ms is not None:
        t.end_time = t.start_time + t.duration_ms

    previous = t.start_time
    # The store keeps the first of two records with one id: a repeated id would lose the second.
    seen: dict[str, str] = {}

    def once(kind: str, rid: str, at: str) -> None:
        first = seen.setdefault(f"{kind}:{rid}", at)
        if first != at:
            raise WireError(f"{kind} {rid!r} is used twice in this trajectory (first at {first})", at)

    for j, (raw, step) in enumerate(zip(raw_steps, t.steps, strict=True)):
        swhere = f"{where}.steps[{j}]"
        unknown: list[str] = []
        smeta = dict(opt_dict(raw, "metadata", swhere) or {})
        if not _given(raw, "stepId", "step_id"):
            step.step_id = f"{tid}:step:{j}"
        if not _given(raw, "timestamp"):
            own = step_known[j]
            step.timestamp = min(own) if own else previous
            if not own and not start_unknown:
                unknown.append("step")
        previous = step.timestamp
        once("stepId", step.step_id, f"{swhere}.stepId")
        if foreign := _foreign(raw, _STEP_KEYS):
            smeta[SOURCE_FIELDS] = foreign
        per_call: dict[str, Any] = {}
        step_types: list[Any] = []
        for k, (rc, call) in enumerate(
            zip(_items(raw, swhere, "llmCalls", "llm_calls"), step.llm_calls, strict=True)
        ):
            if not _given(rc, "callId", "call_id"):
                call.call_id = derived_id(step.step_id, "call", k)
            once("callId", call.call_id, f"{swhere}.llmCalls[{k}].callId")
            if call.reasoning is None and isinstance(rc.get("thinking"), str):
                call.reasoning = rc["thinking"]
            if not _given(rc, "timestamp"):
                call.timestamp = step.timestamp
                if not start_unknown:
                    unknown.append(f"call:{call.call_id}")
            if foreign := _foreign(rc, _CALL_KEYS):
                per_call[call.call_id] = foreign
            step_types.append(foreign.get("stepType"))
        # A step type all of a step's calls agree on is the step's; otherwise it stays per call.
        if step_types and step_types[0] is not None and all(x == step_types[0] for x in step_types):
            smeta["stepType"] = step_types[0]
            for cid in list(per_call):
                per_call[cid].pop("stepType", None)
                if not per_call[cid]:
                    del per_call[cid]
        if per_call:
            smeta[CALL_SOURCE_FIELDS] = per_call
        per_access: dict[str, Any] = {}
        accesses = _items(raw, swhere, "providerAccesses", "provider_accesses")
        for k, (ra, access) in enumerate(zip(accesses, step.provider_accesses, strict=True)):
            if not _given(ra, "accessId", "access_id"):
                access.access_id = derived_id(step.step_id, "access", k)
            once("accessId", access.access_id, f"{swhere}.providerAccesses[{k}].accessId")
            if not _given(ra, "timestamp"):
                access.timestamp = step.timestamp
                if not start_unknown:
                    unknown.append(f"access:{access.access_id}")
            if foreign := _foreign(ra, _ACCESS_KEYS):
                per_access[access.access_id] = foreign
        if per_access:
            smeta[ACCESS_SOURCE_FIELDS] = per_access
        if step.action is not None:
            if not _given(raw["action"], "timestamp"):
                step.action.timestamp = step.timestamp
                if not start_unknown:
                    unknown.append("action")
            if foreign := _foreign(raw["action"], _ACTION_KEYS):
                smeta[ACTION_SOURCE_FIELDS] = foreign
        if unknown:
            smeta[TIMES_UNKNOWN] = unknown
        if smeta or raw.get("metadata") is not None:
            step.metadata = smeta
    for k, (rs, score) in enumerate(zip(opt_list(obj, "scores", where) or [], t.scores, strict=True)):
        _score_ids(rs, score, f"{tid}:score:{k}", t)
    return t, start_unknown


def _score_ids(raw: dict[str, Any], score: Score, derived: str, t: Trajectory) -> None:
    if not _given(raw, "scoreId", "score_id"):
        score.score_id = derived
    if not _given(raw, "createdAt", "created_at"):
        score.created_at = t.end_time or t.start_time


def _items(raw: dict[str, Any], where: str, *keys: str) -> list[dict[str, Any]]:
    if sum(raw.get(k) is not None for k in keys) > 1:  # from_wire would read only one of them
        raise WireError(f"give {' or '.join(keys)}, not both", f"{where}.{keys[0]}")
    for key in keys:
        value = raw.get(key)
        if value is not None:
            checked: list[dict[str, Any]] = value  # from_wire has checked: a list of objects
            return checked
    return []
