"""Import trajectories from files: our own ``json``/``jsonl`` exports, and JSONL files of the seed
system's shape (one LLM call per row with ``trajectoryId, stepId, callId, purpose, actionType,
model, request.messages|prompt, response.text, usage``), rebuilt into trajectories.

Import is idempotent: ids are kept, so importing the same file twice stores nothing new.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from trajforge import jsonutil
from trajforge.errors import InvalidInput
from trajforge.records import CallRow, LlmCall, Step, Trajectory, WireError, WriteBatch, from_wire
from trajforge.store import Store
from trajforge.validation import check_record

BATCH = 200


def _is_seed_row(obj: dict[str, Any]) -> bool:
    return (
        "callId" in obj
        and "trajectoryId" in obj
        and ("request" in obj or isinstance(obj.get("response"), dict))
    )


def _seed_call(row: dict[str, Any], where: str) -> LlmCall:
    request = row.get("request") or {}
    response = row.get("response") or {}
    usage = row.get("usage") or response.get("usage") or {}
    if not isinstance(request, dict) or not isinstance(response, dict) or not isinstance(usage, dict):
        raise WireError("request, response and usage must be objects", where)
    messages = request.get("messages")
    system = user = None
    if isinstance(messages, list):
        system = next(
            (m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "system"), None
        )
        user = next(
            (m.get("content") for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"),
            None,
        )
    prompt = request.get("prompt")
    if user is None and isinstance(prompt, str):
        user = prompt
    system = (
        request.get("system", system) if isinstance(request.get("system", system), str | None) else system
    )

    def tokens(*names: str) -> int | None:
        for n in names:
            if isinstance(usage.get(n), int):
                return int(usage[n])
        return None

    ts = row.get("timestamp")
    return LlmCall(
        call_id=str(row["callId"]),
        timestamp=int(ts) if isinstance(ts, int | float) else 0,
        model=str(row.get("model") or request.get("model") or ""),
        system_prompt=system if isinstance(system, str) else None,
        user_prompt=user if isinstance(user, str) else None,
        messages=messages if isinstance(messages, list) else None,
        response=response.get("text") if isinstance(response.get("text"), str) else None,
        reasoning=response.get("reasoning") if isinstance(response.get("reasoning"), str) else None,
        tool_calls=response.get("toolCalls") if isinstance(response.get("toolCalls"), list) else None,
        finish_reason=response.get("finishReason") if isinstance(response.get("finishReason"), str) else None,
        temperature=request.get("temperature")
        if isinstance(request.get("temperature"), int | float)
        else None,
        max_tokens=request.get("maxTokens") if isinstance(request.get("maxTokens"), int) else None,
        purpose=str(row.get("purpose") or "other"),
        action_type=row.get("actionType") if isinstance(row.get("actionType"), str) else None,
        latency_ms=row.get("latencyMs") if isinstance(row.get("latencyMs"), int | float) else None,
        prompt_tokens=tokens("prompt_tokens", "promptTokens", "input_tokens", "inputTokens"),
        completion_tokens=tokens("completion_tokens", "completionTokens", "output_tokens", "outputTokens"),
    )


def _objects(path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """Each JSON object of the file with where it came from (line number or array index)."""
    with open(path, "rb") as fh:
        head = fh.read(1)
        while head.isspace():
            head = fh.read(1)
        fh.seek(0)
        if head == b"[" or (head == b"{" and path.suffix == ".json"):
            data = jsonutil.loads(fh.read())
            items = data.get("trajectories") if isinstance(data, dict) else data
            if not isinstance(items, list):
                raise InvalidInput(f"{path}: expected an array of trajectories", "file")
            for i, obj in enumerate(items):
                yield obj, f"{path.name}[{i}]"
            return
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield jsonutil.loads(line), f"{path.name}:{n}"
                except ValueError as exc:
                    raise InvalidInput(f"{path.name}:{n}: not valid JSON ({exc})", "file") from exc


def import_file(
    store: Store, path: str | Path, on_progress: Callable[[int], None] | None = None
) -> dict[str, int]:
    """Import one file into ``store``; returns counts of trajectories and calls read and stored."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"no such file: {path}", "file")
    batch = WriteBatch()
    seed: dict[str, Trajectory] = {}
    seed_steps: dict[tuple[str, str], Step] = {}
    counts = {"trajectories": 0, "llmCalls": 0, "newTrajectories": 0, "newLlmCalls": 0}

    def flush() -> None:
        nonlocal batch
        if len(batch):
            result = store.write(batch)
            counts["newTrajectories"] += result.new_trajectories
            counts["newLlmCalls"] += result.new_calls
            batch = WriteBatch()

    for obj, where in _objects(path):
        if not isinstance(obj, dict):
            raise InvalidInput(f"{where}: expected a JSON object", "file")
        try:
            if _is_seed_row(obj):
                # Seed step ids are often per-trajectory ("step-0"): scope them so two trajectories
                # never share a step row. Deterministic, so re-importing stays idempotent.
                tid = str(obj["trajectoryId"])
                sid = f"{tid}:{obj.get('stepId') or 'step'}"
                t = seed.get(tid)
                if t is None:
                    t = seed[tid] = Trajectory(
                        id=tid,
                        agent_id=str(obj.get("agentId") or ""),
                        source=str(obj.get("source") or "api"),
                        status="completed",
                        start_time=0,
                    )
                step = seed_steps.get((tid, sid))
                if step is None:
                    step = seed_steps[(tid, sid)] = Step(step_id=sid, step_number=len(t.steps), timestamp=0)
                    t.steps.append(step)
                row = check_record(CallRow(tid, sid, _seed_call(obj, where)), where)
                step.llm_calls.append(row.call)
                counts["llmCalls"] += 1
                continue
            t = from_wire(Trajectory, obj, where)
        except WireError as exc:
            raise InvalidInput(f"{exc.field or where}: {exc}", "file") from exc
        counts["trajectories"] += 1
        counts["llmCalls"] += sum(len(s.llm_calls) for s in t.steps)
        batch.extend(WriteBatch.from_trajectory(t))
        if len(batch.trajectories) >= BATCH:
            flush()
        if on_progress is not None:
            on_progress(counts["trajectories"])
    for t in seed.values():
        times = [c.timestamp for s in t.steps for c in s.llm_calls if c.timestamp]
        t.start_time = min(times) if times else 1
        t.end_time = max(times) if times else 1
        for s in t.steps:
            s.timestamp = min((c.timestamp for c in s.llm_calls if c.timestamp), default=t.start_time)
        counts["trajectories"] += 1
        batch.extend(WriteBatch.from_trajectory(t))
        if len(batch.trajectories) >= BATCH:
            flush()
    flush()
    return counts
