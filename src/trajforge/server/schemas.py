"""Pydantic models of the HTTP API's bodies (camelCase on the wire). Validation happens here, at the
edge; inside, the routes hand typed records to the library."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class TrajectoryListItem(BaseModel):
    id: str
    agentId: str
    source: str
    status: str
    startTime: int
    endTime: int | None
    durationMs: int | None
    llmCallCount: int
    totalPromptTokens: int
    totalCompletionTokens: int
    createdAt: str
    scenarioId: str | None
    batchId: str | None
    isTrainingData: bool
    stepCount: int
    providerAccessCount: int
    totalReward: float | None


class TrajectoryList(BaseModel):
    trajectories: list[TrajectoryListItem]
    total: int
    limit: int
    offset: int


class TrajectoryDetail(BaseModel):
    trajectory: dict[str, Any] = Field(
        description="The trajectory with its steps, LLM calls, provider accesses, actions and scores."
    )


class LoggingConfig(Wire):
    enabled: bool


class DeleteRequest(Wire):
    ids: list[str] | None = Field(default=None, max_length=100_000)
    all: bool = False


class DeleteResult(BaseModel):
    deleted: int


class ExportRequest(Wire):
    format: Literal["json", "jsonl", "csv", "art", "zip", "parquet"]
    includePrompts: bool = True
    trajectoryIds: list[str] | None = Field(default=None, max_length=100_000)
    startDate: str | int | None = None
    endDate: str | int | None = None
    scenarioId: str | None = None
    batchId: str | None = None
    source: str | None = None
    status: Literal["active", "completed", "error", "timeout"] | None = None
    agentId: str | None = None
    search: str | None = Field(default=None, max_length=512)
    isTrainingData: bool | None = None
    minReward: float | None = None
    maxReward: float | None = None
    limit: int | None = Field(default=None, ge=1)


class ScoreRequest(Wire):
    name: str = Field(min_length=1, max_length=200)
    value: float = Field(allow_inf_nan=False)
    comment: str | None = Field(default=None, max_length=10_000)
    source: str = Field(default="api", min_length=1, max_length=100)


class ScoreOut(BaseModel):
    scoreId: str
    trajectoryId: str
    name: str
    value: float
    comment: str | None
    source: str
    createdAt: int


class ScoreResult(BaseModel):
    score: ScoreOut


class IngestCounts(BaseModel):
    trajectories: int
    steps: int
    llmCalls: int
    providerAccesses: int
    scores: int


class IngestResult(BaseModel):
    received: IngestCounts
    stored: IngestCounts = Field(description="What was new; re-sent ids are not stored twice.")


INGEST_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["trajectories"],
    "properties": {
        "trajectories": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id"],
                "description": "A full or partial trajectory: absent fields keep their stored values; "
                "steps (with llmCalls, providerAccesses, action) and scores are added.",
                "properties": {
                    "id": {"type": "string", "minLength": 1},
                    "agentId": {"type": "string"},
                    "source": {"type": "string"},
                    "status": {"type": "string", "enum": ["active", "completed", "error", "timeout"]},
                    "startTime": {"type": "integer"},
                    "endTime": {"type": "integer"},
                    "scenarioId": {"type": "string"},
                    "batchId": {"type": "string"},
                    "isTrainingData": {"type": "boolean"},
                    "metadata": {"type": "object"},
                    "totalReward": {"type": "number"},
                    "steps": {"type": "array", "items": {"type": "object"}},
                    "scores": {"type": "array", "items": {"type": "object"}},
                },
            },
        }
    },
}
