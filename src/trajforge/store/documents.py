"""Bulk reads for exports and dataset builds, done by the database rather than Python.

Building records for every call costs Python far more than reading them: here each LLM call and
provider access comes back as a finished JSON object built in C by the database (SQLite's
``json_object``, PostgreSQL's ``json_build_object``), and Python only stitches them into the
trajectory document as ``orjson.Fragment``s. Flat per-call rows (for parquet and datasets) come
straight from one joined query. Both keep memory constant: ``chunk`` trajectories at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from trajforge.store.base import TrajectoryFilter


def _text(col: str) -> str:
    return f"(SELECT body FROM texts WHERE id = {col})"


CALL_ROW_COLUMNS = (
    "trajectoryId",
    "agentId",
    "source",
    "status",
    "scenarioId",
    "batchId",
    "trajectoryReward",
    "stepId",
    "stepNumber",
    "stepReward",
    "stepAction",
    "callId",
    "timestamp",
    "model",
    "systemPrompt",
    "userPrompt",
    "messages",
    "response",
    "reasoning",
    "toolCalls",
    "tools",
    "finishReason",
    "temperature",
    "maxTokens",
    "purpose",
    "actionType",
    "latencyMs",
    "promptTokens",
    "completionTokens",
)


class DocumentReads:
    """Mixed into the SQL store; uses its ``_where``, ``_select_in``, ``_read_tx`` and hooks."""

    json_object_fn = "json_object"

    def _as_json(self, expr: str) -> str:
        """Embed a column holding JSON text as JSON (not as a string)."""
        return f"json({expr})"

    def _object(self, pairs: Sequence[tuple[str, str]]) -> str:
        """A JSON object built by the database, returned as text (not decoded by the driver)."""
        return self._json_text(f"{self.json_object_fn}(" + ", ".join(f"'{k}', {v}" for k, v in pairs) + ")")

    def _json_text(self, expr: str) -> str:
        return expr

    def _num(self, expr: str) -> str:
        """A REAL column rendered exactly: SQLite's JSON prints 15 significant digits, which does not
        always round-trip a double; 17 always does (used only when 15 would lose the value)."""
        return (
            f"CASE WHEN {expr} IS NULL THEN NULL WHEN CAST(printf('%!.15g', {expr}) AS REAL) = {expr} "
            f"THEN json(printf('%!.15g', {expr})) ELSE json(printf('%!.17g', {expr})) END"
        )

    def _call_json_sql(self) -> str:
        j = self._as_json
        pairs = (
            ("callId", "c.call_id"),
            ("timestamp", "c.timestamp"),
            ("model", "c.model"),
            ("modelVersion", "c.model_version"),
            ("systemPrompt", _text("c.system_text")),
            ("userPrompt", _text("c.user_text")),
            ("messages", j(_text("c.messages_text"))),
            ("response", _text("c.response_text")),
            ("reasoning", _text("c.reasoning_text")),
            ("toolCalls", j("c.tool_calls")),
            ("tools", j(_text("c.tools_text"))),
            ("finishReason", "c.finish_reason"),
            ("temperature", self._num("c.temperature")),
            ("maxTokens", "c.max_tokens"),
            ("topP", self._num("c.top_p")),
            ("purpose", "c.purpose"),
            ("actionType", "c.action_type"),
            ("latencyMs", self._num("c.latency_ms")),
            ("promptTokens", "c.prompt_tokens"),
            ("completionTokens", "c.completion_tokens"),
            ("cacheReadInputTokens", "c.cache_read_input_tokens"),
            ("cacheCreationInputTokens", "c.cache_creation_input_tokens"),
            ("tags", j("c.tags")),
        )
        return (
            f"SELECT c.trajectory_id, c.step_id, {self._object(pairs)} FROM llm_calls c "
            "WHERE c.trajectory_id IN ({marks}) ORDER BY c.timestamp, c.call_id"
        )

    def _access_json_sql(self) -> str:
        j = self._as_json
        pairs = (
            ("accessId", "a.access_id"),
            ("timestamp", "a.timestamp"),
            ("providerId", "a.provider_id"),
            ("providerName", "a.provider_name"),
            ("purpose", "a.purpose"),
            ("query", j("a.query")),
            ("data", j(_text("a.data_text"))),
        )
        return (
            f"SELECT a.trajectory_id, a.step_id, {self._object(pairs)} FROM provider_accesses a "
            "WHERE a.trajectory_id IN ({marks}) ORDER BY a.timestamp, a.access_id"
        )

    def iter_json_docs(self, flt: TrajectoryFilter, chunk: int = 500) -> Iterator[bytes]:
        """Each matching trajectory as its full wire JSON document (same content as
        ``to_wire(store.get_trajectory(id))``), newest first."""
        call_sql, access_sql = self._call_json_sql(), self._access_json_sql()
        for rows in self._pages(flt, chunk):  # type: ignore[attr-defined]
            with self._read_tx() as cur:  # type: ignore[attr-defined]
                ids = [r[0] for r in rows]
                steps = self._select_in(  # type: ignore[attr-defined]
                    cur,
                    "SELECT step_id, trajectory_id, step_number, timestamp, action, reward, done, observation, "
                    "metadata FROM steps WHERE trajectory_id IN ({marks}) ORDER BY step_number, timestamp",
                    ids,
                )
                calls = self._select_in(cur, call_sql, ids)  # type: ignore[attr-defined]
                accesses = self._select_in(cur, access_sql, ids)  # type: ignore[attr-defined]
                scores = self._select_in(  # type: ignore[attr-defined]
                    cur,
                    "SELECT score_id, trajectory_id, name, value, comment, source, created_at FROM scores "
                    "WHERE trajectory_id IN ({marks}) ORDER BY created_at",
                    ids,
                )
            docs: dict[str, dict[str, Any]] = {r[0]: _trajectory_doc(r) for r in rows}
            step_docs: dict[str, dict[str, Any]] = {}
            for r in steps:
                step = {
                    "stepId": r[0],
                    "stepNumber": r[2],
                    "timestamp": r[3],
                    "llmCalls": [],
                    "providerAccesses": [],
                    "action": _fragment(r[4]),
                    "reward": r[5],
                    "done": None if r[6] is None else bool(r[6]),
                    "observation": _fragment(r[7]),
                    "metadata": _fragment(r[8]),
                }
                step_docs[r[0]] = step
                docs[r[1]]["steps"].append(step)
            for r in calls:
                _step_doc(step_docs, docs[r[0]], r[1])["llmCalls"].append(orjson.Fragment(r[2]))
            for r in accesses:
                _step_doc(step_docs, docs[r[0]], r[1])["providerAccesses"].append(orjson.Fragment(r[2]))
            for r in scores:
                docs[r[1]]["scores"].append(
                    {
                        "trajectoryId": r[1],
                        "name": r[2],
                        "value": r[3],
                        "comment": r[4],
                        "source": r[5],
                        "scoreId": r[0],
                        "createdAt": r[6],
                    }
                )
            for doc in docs.values():
                yield orjson.dumps(doc)

    def iter_call_rows(self, flt: TrajectoryFilter, chunk: int = 500) -> Iterator[tuple[Any, ...]]:
        """One flat row per LLM call (columns :data:`CALL_ROW_COLUMNS`), trajectories newest first,
        calls in order. JSON-valued columns are JSON text."""
        sql = (
            "SELECT t.id, t.agent_id, t.source, t.status, t.scenario_id, t.batch_id, t.total_reward, "
            "c.step_id, s.step_number, s.reward, s.action, c.call_id, c.timestamp, c.model, "
            f"{_text('c.system_text')}, {_text('c.user_text')}, {_text('c.messages_text')}, "
            f"{_text('c.response_text')}, {_text('c.reasoning_text')}, c.tool_calls, {_text('c.tools_text')}, "
            "c.finish_reason, c.temperature, c.max_tokens, c.purpose, c.action_type, c.latency_ms, "
            "c.prompt_tokens, c.completion_tokens "
            "FROM llm_calls c JOIN trajectories t ON t.id = c.trajectory_id "
            "LEFT JOIN steps s ON s.step_id = c.step_id "
            "WHERE c.trajectory_id IN ({marks})"
        )
        for rows in self._pages(flt, chunk):  # type: ignore[attr-defined]
            order = {r[0]: i for i, r in enumerate(rows)}
            with self._read_tx() as cur:  # type: ignore[attr-defined]
                got = self._select_in(cur, sql, list(order))  # type: ignore[attr-defined]
            got.sort(key=lambda r: (order[r[0]], r[8] if r[8] is not None else -1, r[12], r[11]))
            yield from got


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


def _step_doc(steps: dict[str, dict[str, Any]], doc: dict[str, Any], step_id: str) -> dict[str, Any]:
    """The step a call belongs to; a call whose step row never arrived still shows up."""
    step = steps.get(step_id)
    if step is None:
        step = steps[step_id] = {
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
