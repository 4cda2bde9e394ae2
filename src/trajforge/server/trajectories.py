"""``/api/trajectories``: list, detail, stats, logging config, export, delete, ingest, scores."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from trajforge import export, jsonutil, privacy
from trajforge.capture.transport import LOGGING_ENABLED, StoredBatch, TransientError, store_batch
from trajforge.errors import InvalidInput, NotFound, StoreError, TooLarge, TrajforgeError
from trajforge.export import ExportRequest
from trajforge.limits import MAX_ID_CHARS
from trajforge.records import (
    Score,
    Trajectory,
    WireError,
    WriteBatch,
    batch_from_wire,
    iso_ms,
    to_wire,
)
from trajforge.server.schemas import (
    INGEST_BODY_SCHEMA,
    DeleteAll,
    DeleteRequest,
    DeleteResult,
    ErrorResponse,
    IngestCounts,
    IngestResult,
    LoggingConfig,
    ScoreOut,
    ScoreRequest,
    ScoreResult,
    TrajectoryDetail,
    TrajectoryList,
)
from trajforge.store import Store
from trajforge.store.filter import ListQuery, TrajectoryFilter
from trajforge.validation import check_readable

router = APIRouter(prefix="/api/trajectories", tags=["trajectories"])


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def list_item(t: Trajectory) -> dict[str, Any]:
    return {
        "id": t.id,
        "agentId": t.agent_id,
        "source": t.source,
        "status": t.status,
        "startTime": t.start_time,
        "endTime": t.end_time,
        "durationMs": t.duration_ms,
        "llmCallCount": t.llm_call_count,
        "totalPromptTokens": t.total_prompt_tokens,
        "totalCompletionTokens": t.total_completion_tokens,
        "createdAt": iso_ms(t.created_at),
        "scenarioId": t.scenario_id,
        "batchId": t.batch_id,
        "isTrainingData": t.is_training_data,
        "stepCount": t.step_count,
        "providerAccessCount": t.provider_access_count,
        "totalReward": t.total_reward,
    }


# The list's query parameters are the filter's fields (text parsed) plus the page.
_MULTI = frozenset({"trajectoryIds"})


@router.get("", response_model=TrajectoryList, summary="List trajectories, newest first")
def list_trajectories(request: Request, query: Annotated[ListQuery, Query()]) -> dict[str, Any]:
    # Unknown names are refused by the model (a misspelt filter silently ignored would return the
    # wrong rows); a name given twice would be read once, so it is refused too.
    names = [k for k, _ in request.query_params.multi_items() if k not in _MULTI]
    repeated = sorted({k for k in names if names.count(k) > 1})
    if repeated:
        raise InvalidInput(f"query parameter {repeated[0]!r} is given more than once", repeated[0])
    page = _store(request).list_trajectories(query.only_filter(), limit=query.limit, offset=query.offset)
    return {
        "trajectories": [list_item(t) for t in page.items],
        "total": page.total,
        "limit": query.limit,
        "offset": query.offset,
        "totalIsLowerBound": page.total_is_lower_bound,
    }


@router.get("/stats", summary="Totals, by source/status/model, tokens, latency percentiles, rewards, per day")
def stats(request: Request) -> dict[str, Any]:
    return _store(request).stats()


@router.get("/config", response_model=LoggingConfig, summary="Is trajectory logging on?")
def get_config(request: Request) -> dict[str, Any]:
    return {"enabled": bool(_store(request).get_setting(LOGGING_ENABLED, True))}


@router.put(
    "/config", response_model=LoggingConfig, summary="Turn logging on/off for every recorder of this store"
)
def put_config(request: Request, body: LoggingConfig) -> dict[str, Any]:
    _store(request).set_setting(LOGGING_ENABLED, body.enabled)
    return {"enabled": body.enabled}


@router.post(
    "/export",
    summary="Export trajectories (streamed)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {mt: {} for mt in set(export.MEDIA_TYPES.values())}, "description": "The export"}
    },
)
def export_trajectories(request: Request, body: ExportRequest) -> StreamingResponse:
    flt = body.only_filter()
    store = _store(request)
    pf = privacy.for_store(store) if body.privacy_filter else None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    filename = f"trajectories-{stamp}.{export.EXTENSIONS[body.format]}"
    return StreamingResponse(
        export.coalesce(
            export.stream(
                store, body.format, flt, include_prompts=body.include_prompts, privacy=pf, limit=body.limit
            )
        ),
        media_type=export.MEDIA_TYPES[body.format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.delete("", response_model=DeleteResult, summary="Delete trajectories by id, or all")
def delete_trajectories(request: Request, body: DeleteRequest) -> dict[str, Any]:
    if isinstance(body, DeleteAll):
        return {"deleted": _store(request).delete(all=True)}
    return {"deleted": _store(request).delete(body.ids)}


async def _read_body(request: Request) -> bytes:
    limit: int = request.app.state.max_ingest_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body is over the {limit} byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is over the {limit} byte limit")
        chunks.append(chunk)
    raw = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding == "gzip":
        try:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            raw = d.decompress(raw, limit + 1)  # bounded: a gzip bomb stops at the limit
        except zlib.error as exc:
            raise InvalidInput(f"the body is not valid gzip: {exc}", "Content-Encoding") from exc
        if len(raw) > limit or d.unconsumed_tail:
            raise TooLarge(f"the decompressed body is over the {limit} byte limit")
    elif encoding not in ("identity", ""):
        raise InvalidInput("Content-Encoding must be gzip or identity", "Content-Encoding")
    return raw


@router.post(
    "",
    response_model=IngestResult,
    summary="Ingest trajectories (full, or partial with appended steps); idempotent by ids",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": INGEST_BODY_SCHEMA}},
            "description": "gzip accepted with Content-Encoding: gzip",
        }
    },
    responses={
        413: {"model": ErrorResponse, "description": "The body is over the size limit"},
        503: {"model": ErrorResponse, "description": "The store is unavailable: send it again later"},
    },
)
async def ingest(request: Request) -> dict[str, Any]:
    """Trajectories the store refuses (listed in ``refused``) do not stop the rest of the batch."""
    raw = await _read_body(request)
    try:
        data = jsonutil.loads(raw)
    except ValueError as exc:
        raise TrajforgeError(f"the body is not valid JSON: {exc}") from exc
    try:
        batch = batch_from_wire(data)
    except WireError as exc:
        raise InvalidInput(str(exc), exc.field) from exc
    written = await run_in_threadpool(_store_batch, _store(request), batch)
    result = written.result
    received = IngestCounts(
        trajectories=len(batch.trajectories),
        steps=len(batch.steps),
        llmCalls=len(batch.calls),
        providerAccesses=len(batch.accesses),
        scores=len(batch.scores),
    )
    stored = IngestCounts(
        trajectories=result.new_trajectories,
        steps=result.new_steps,
        llmCalls=result.new_calls,
        providerAccesses=result.new_accesses,
        scores=result.scores,
    )
    refused = [{"id": r.trajectory_id, "reason": r.reason} for r in written.refused]
    return {"received": received, "stored": stored, "refused": refused}


def _store_batch(store: Store, batch: WriteBatch) -> StoredBatch:
    """Store the good trajectories of a batch and report the refused ones. A store that is down or
    locked answers 503, which clients treat as an outage (spool, retry); a 500 would make them give
    the batch up as bad data."""
    try:
        return store_batch(store, batch)
    except TransientError as exc:
        raise StoreError(f"the store is unavailable: {exc}") from exc


@router.get("/{trajectory_id}", response_model=TrajectoryDetail, summary="One trajectory, organized by step")
def get_trajectory(
    request: Request, trajectory_id: Annotated[str, Path(max_length=MAX_ID_CHARS)]
) -> dict[str, Any]:
    t = _store(request).get_trajectory(trajectory_id)
    if t is None:
        raise NotFound(f"no trajectory with id {trajectory_id!r}", "id")
    wire = to_wire(check_readable(t))
    wire["createdAt"] = iso_ms(t.created_at)
    wire["updatedAt"] = iso_ms(t.updated_at)
    return {"trajectory": wire}


@router.post(
    "/{trajectory_id}/scores",
    response_model=ScoreResult,
    status_code=201,
    summary="Attach a score or late outcome (replaces the same name + source)",
)
def add_score(
    request: Request,
    trajectory_id: Annotated[str, Path(max_length=MAX_ID_CHARS)],
    body: Annotated[ScoreRequest, Body()],
) -> dict[str, Any]:
    store = _store(request)
    if store.count(TrajectoryFilter(trajectory_ids=[trajectory_id])) == 0:
        raise NotFound(f"no trajectory with id {trajectory_id!r}", "id")
    score = Score(
        trajectory_id=trajectory_id,
        name=body.name,
        value=body.value,
        comment=body.comment,
        source=body.source,
    )
    store.add_scores([score])
    stored = next(
        s
        for s in store.get_scores([trajectory_id])[trajectory_id]
        if (s.name, s.source) == (score.name, score.source)
    )
    return {"score": ScoreOut(**to_wire(stored))}
