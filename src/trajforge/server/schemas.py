"""Pydantic models of the HTTP API's responses, and of the bodies that exist only over HTTP
(ingest, scores, delete, logging, activation). Requests the CLI and the library share are declared
once beside their noun (:mod:`trajforge.requests`: the filter, exports, dataset builds, jobs,
benchmarks, Ollama imports) and taken from there."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool

from trajforge.limits import (
    MAX_ABS_REAL,
    MAX_ID_CHARS,
    MAX_INT,
    MAX_NAME_CHARS,
    MAX_REF_CHARS,
    MAX_TIME_MS,
    MIN_INT,
)
from trajforge.requests import TrajectoryId

# JSON numbers only: lax pydantic would take `false` or "1" for a float.
Number = Annotated[float, Strict()]


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
    totalIsLowerBound: bool = Field(
        default=False,
        description="True when `total` is a lower bound, not the count: a search for a word in most "
        "trajectories finds its page among the newest and counts only the matches it walked past. "
        "There are at least `total` matches, and more pages while a page comes back full.",
    )


class TrajectoryDetail(BaseModel):
    trajectory: dict[str, Any] = Field(
        description="The trajectory with its steps, LLM calls, provider accesses, actions and scores."
    )


class LoggingConfig(Wire):
    enabled: StrictBool


class DeleteIds(Wire):
    ids: list[TrajectoryId] = Field(min_length=1, max_length=100_000, description="Trajectory ids to delete")


class DeleteAll(Wire):
    all: Literal[True] = Field(description="Delete every trajectory")


DeleteRequest = DeleteIds | DeleteAll


class DeleteResult(BaseModel):
    deleted: int


class ScoreRequest(Wire):
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    value: Number = Field(allow_inf_nan=False, ge=-MAX_ABS_REAL, le=MAX_ABS_REAL)
    comment: str | None = Field(default=None, max_length=10_000)
    source: str = Field(default="api", min_length=1, max_length=MAX_NAME_CHARS)


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


class IngestRefusal(BaseModel):
    id: str = Field(description="The trajectory's id")
    reason: str = Field(description="Why the store refused it")


class IngestResult(BaseModel):
    received: IngestCounts
    stored: IngestCounts = Field(description="What was new; re-sent ids are not stored twice.")
    refused: list[IngestRefusal] = Field(
        default_factory=list,
        description="Trajectories the store refused (a value it cannot hold): nothing of them is "
        "stored; the rest of the batch is.",
    )


def _nullable(props: dict[str, Any], keep: tuple[str, ...]) -> dict[str, Any]:
    """Mark optional properties nullable: on ingest, null means "keep the stored value"."""
    return {k: v if k in keep else {**v, "type": [v["type"], "null"]} for k, v in props.items()}


# The limits of trajforge.limits, as JSON Schema (the parser enforces them; this documents them).
_NAME = {"type": "string", "maxLength": MAX_NAME_CHARS}
_TIME = {"type": "integer", "minimum": 0, "maximum": MAX_TIME_MS}
_INT = {"type": "integer", "minimum": MIN_INT, "maximum": MAX_INT}
_REAL = {"type": "number", "minimum": -MAX_ABS_REAL, "maximum": MAX_ABS_REAL}

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
                "properties": _nullable(
                    {
                        "id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS},
                        "agentId": _NAME,
                        "source": _NAME,
                        "status": {"type": "string", "enum": ["active", "completed", "error", "timeout"]},
                        "startTime": _TIME,
                        "endTime": _TIME,
                        "scenarioId": _NAME,
                        "batchId": _NAME,
                        "isTrainingData": {"type": "boolean"},
                        "metadata": {"type": "object"},
                        "totalReward": _REAL,
                        "steps": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["stepId"],
                                "properties": _nullable(
                                    {
                                        "stepId": {
                                            "type": "string",
                                            "minLength": 1,
                                            "maxLength": MAX_REF_CHARS,
                                        },
                                        "stepNumber": _INT,
                                        "timestamp": _TIME,
                                        "llmCalls": {"type": "array", "items": {"type": "object"}},
                                        "providerAccesses": {"type": "array", "items": {"type": "object"}},
                                        "action": {"type": "object", "required": ["actionType"]},
                                        "reward": _REAL,
                                        "done": {"type": "boolean"},
                                    },
                                    ("stepId",),
                                ),
                            },
                        },
                        "scores": {"type": "array", "items": {"type": "object"}},
                    },
                    ("id",),
                ),
            },
        }
    },
}


class DatasetSummary(BaseModel):
    id: str
    name: str
    version: int
    parent: str | None
    format: str
    trajectoryCount: int
    rowCount: int
    rows: dict[str, int]
    tasks: list[str]
    path: str
    createdAt: str
    contentSha256: str | None
    warnings: list[str]


class DatasetDetail(DatasetSummary):
    manifest: dict[str, Any]


class DatasetResult(BaseModel):
    dataset: DatasetDetail


class DatasetList(BaseModel):
    datasets: list[DatasetSummary]


class JobOut(BaseModel):
    id: str
    kind: str
    backend: str
    status: str
    phase: str | None
    progress: float
    request: dict[str, Any]
    datasetId: str | None
    createdAt: int
    startedAt: int | None
    finishedAt: int | None
    error: str | None
    exitCode: int | None
    logPath: str | None
    output: dict[str, Any] | None
    cancelRequested: bool


class JobResult(BaseModel):
    job: JobOut


class JobList(BaseModel):
    jobs: list[JobOut]


class AutoTrigger(Wire):
    task: str | None = Field(default=None, min_length=1, max_length=200)


class ModelOut(BaseModel):
    id: str
    jobId: str | None
    datasetId: str | None
    baseModel: str
    backend: str
    adapterPath: str | None
    mergedPath: str | None
    metrics: dict[str, Any]
    evaluation: dict[str, Any] | None
    ollamaName: str | None
    providerModel: str | None
    active: bool
    activatedAt: int | None
    createdAt: int


class ModelResult(BaseModel):
    model: ModelOut


class ModelList(BaseModel):
    models: list[ModelOut]


class ActiveModel(BaseModel):
    model: ModelOut | None
    providerModel: str | None


class BenchmarkQueued(BaseModel):
    job: JobOut
    model: ModelOut


class ImportOllamaResult(BaseModel):
    model: ModelOut
    modelName: str
    ollamaUrl: str
    mode: str
    request: dict[str, Any]
    baseModel: str | None = Field(description="The Ollama base the adapter went on (None for a merged model)")
    baseModelDefaulted: bool = Field(
        description="True when baseModel was not given and came from the registry"
    )
    note: str | None = None


class ActivateRequest(Wire):
    providerModel: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="e.g. ollama/my-agent (default: its Ollama name)",
    )
