"""``/api/training``: datasets, jobs, the event log, models, auto-training."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from trajforge import datasets, hub, jobs, jsonutil, models, ollama
from trajforge.errors import InvalidInput
from trajforge.evaluate import BenchmarkRequest
from trajforge.hub import PushRequest
from trajforge.jobs.request import JobRequest
from trajforge.limits import MAX_OFFSET, MAX_SEQ
from trajforge.records import JOB_STATUSES, JobEvent, to_wire
from trajforge.server import trajectories as trajectory_routes
from trajforge.server.schemas import (
    ActivateRequest,
    ActiveModel,
    AutoTrigger,
    BenchmarkQueued,
    DatasetList,
    DatasetResult,
    ImportOllamaResult,
    JobList,
    JobResult,
    ModelList,
    ModelResult,
    TrajectoryDetail,
    TrajectoryList,
)
from trajforge.store import Store

router = APIRouter(prefix="/api/training", tags=["training"])


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _detail(ds: Any) -> dict[str, Any]:
    return {**datasets.summary(ds), "manifest": ds.manifest}


@router.post(
    "/datasets/build",
    status_code=201,
    response_model=DatasetResult,
    summary="Build a private, versioned dataset snapshot from trajectories",
)
def build_dataset(request: Request, body: datasets.BuildRequest) -> dict[str, Any]:
    # A sync route: FastAPI runs it on a worker thread, so a long build never blocks the loop.
    return {"dataset": _detail(datasets.build(_store(request), body))}


@router.get("/datasets", response_model=DatasetList, summary="Dataset snapshots, newest first")
def list_datasets(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    return {"datasets": [datasets.summary(ds) for ds in _store(request).list_datasets(limit, offset)]}


@router.get("/datasets/{dataset_id}", response_model=DatasetResult, summary="One dataset with its manifest")
def get_dataset(
    request: Request, dataset_id: Annotated[str, Path(min_length=1, max_length=200)]
) -> dict[str, Any]:
    return {"dataset": _detail(datasets.get(_store(request), dataset_id))}


@router.post(
    "/datasets/{dataset_id}/push",
    status_code=202,
    response_model=JobResult,
    summary="Queue a push of a dataset snapshot to a Hugging Face Hub dataset repo (a hub_push job)",
)
def push_dataset(
    request: Request, dataset_id: Annotated[str, Path(min_length=1, max_length=200)], body: PushRequest
) -> dict[str, Any]:
    return {"job": jobs.wire(hub.submit_push(_store(request), dataset_id, body))}


def event_wire(e: JobEvent) -> dict[str, Any]:
    """An event's wire form: its camelCase fields, absent ones left out."""
    return {k: v for k, v in to_wire(e).items() if v is not None}


def _last_event_id(request: Request, after: int | None) -> int:
    if after is not None:
        return after
    raw = request.headers.get("last-event-id", "").strip()
    if not raw:
        return 0
    # isascii: str.isdigit also takes other scripts' digits; the length check keeps int() from
    # parsing thousands of digits (Python refuses past 4300) before the range check.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(MAX_SEQ)) or int(raw) > MAX_SEQ:
        raise InvalidInput(
            f"Last-Event-ID must be an event sequence number from 0 to {MAX_SEQ}", "Last-Event-ID"
        )
    return int(raw)


async def event_stream(
    request: Request, store: Store, after: int, job_id: str | None, follow: bool, poll_s: float = 0.5
) -> AsyncIterator[bytes]:
    """Server-Sent Events from the store's event log: ``id`` is the sequence number, so a client
    that reconnects with ``Last-Event-ID`` resumes exactly after what it saw. Every process on the
    store writes to the same log, so jobs run by another server or the CLI show up here too."""
    last_beat = time.monotonic()
    while True:
        events = await run_in_threadpool(store.list_events, after=after, job_id=job_id, limit=500)
        for e in events:
            after = e.seq or after
            payload = jsonutil.dumps(event_wire(e))
            yield f"id: {e.seq}\nevent: {e.kind}\ndata: {payload}\n\n".encode()
        if len(events) == 500:
            continue
        if not follow or await request.is_disconnected():
            return
        if time.monotonic() - last_beat > 15:
            last_beat = time.monotonic()
            yield b": keep-alive\n\n"
        await asyncio.sleep(poll_s)


@router.get(
    "/events",
    summary="The training event log as Server-Sent Events (resume with Last-Event-ID)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(
    request: Request,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_SEQ, description="Send events after this sequence number")
    ] = None,
    follow: Annotated[bool, Query(description="Keep the stream open for new events")] = True,
) -> StreamingResponse:
    start = _last_event_id(request, after)
    return StreamingResponse(
        event_stream(request, _store(request), start, None, follow),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post("/jobs", status_code=201, response_model=JobResult, summary="Queue a training job")
def start_job(request: Request, body: JobRequest) -> dict[str, Any]:
    job = jobs.submit(_store(request), body)
    return {"job": jobs.wire(job)}


@router.get("/jobs", response_model=JobList, summary="Training jobs, newest first")
def list_jobs(
    request: Request,
    status: Annotated[str | None, Query(description=", ".join(JOB_STATUSES))] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    if status is not None and status not in JOB_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(JOB_STATUSES)}", "status")
    return {"jobs": [jobs.wire(j) for j in _store(request).list_jobs(status, limit, offset)]}


@router.get("/jobs/{job_id}", response_model=JobResult, summary="One training job")
def get_job(request: Request, job_id: Annotated[str, Path(min_length=1, max_length=200)]) -> dict[str, Any]:
    return {"job": jobs.wire(jobs.get(_store(request), job_id))}


@router.post("/jobs/{job_id}/cancel", response_model=JobResult, summary="Cancel a pending or running job")
def cancel_job(
    request: Request, job_id: Annotated[str, Path(min_length=1, max_length=200)]
) -> dict[str, Any]:
    return {"job": jobs.wire(jobs.cancel(_store(request), job_id))}


@router.get(
    "/jobs/{job_id}/events",
    summary="One job's events as Server-Sent Events (resume with Last-Event-ID)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def job_events(
    request: Request,
    job_id: Annotated[str, Path(min_length=1, max_length=200)],
    after: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    follow: Annotated[bool, Query(description="Keep the stream open until the job ends")] = True,
) -> StreamingResponse:
    store = _store(request)
    await run_in_threadpool(jobs.get, store, job_id)
    return StreamingResponse(
        event_stream(request, store, _last_event_id(request, after), job_id, follow),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# The seed lists trajectories under the training service too: the same routes as /api/trajectories
# (same filters, bounds and answers), so the two can never drift apart.
router.add_api_route(
    "/trajectories",
    trajectory_routes.list_trajectories,
    methods=["GET"],
    response_model=TrajectoryList,
    summary="List trajectories, newest first (the same as GET /api/trajectories)",
    name="list_training_trajectories",
)
router.add_api_route(
    "/trajectories/{trajectory_id}",
    trajectory_routes.get_trajectory,
    methods=["GET"],
    response_model=TrajectoryDetail,
    summary="One trajectory, organized by step (the same as GET /api/trajectories/{id})",
    name="get_training_trajectory",
)


@router.get("/backends", summary="Which training backends work on this machine, and why not")
def get_backends() -> dict[str, Any]:
    return {"backends": jobs.backends()}


@router.get(
    "/status",
    summary="Training status: jobs by status, datasets, trajectories",
    description="`runtimeAvailable`: this server runs queued jobs itself (`trajforge serve` does unless "
    "`--no-jobs`; otherwise jobs wait for a runner elsewhere on the store). `jobCount`: jobs among the "
    "1000 newest, which `jobs` breaks down by status.",
)
def training_status(request: Request) -> dict[str, Any]:
    from trajforge.store import TrajectoryFilter

    store = _store(request)
    counts = jobs.counts(store)
    return {
        # The seed's fields first (its tutorial shows exactly these three), ours beside them.
        "runtimeAvailable": bool(request.app.state.run_jobs),
        "jobCount": sum(counts.values()),
        "trajectoryCount": store.count(TrajectoryFilter()),
        "datasetCount": len(store.list_datasets(limit=1000)),
        "jobs": counts,
        "running": [jobs.wire(j) for j in store.list_jobs(status="running", limit=1000)],
        "backends": jobs.backends(),
    }


@router.get("/auto/config", summary="Auto-training settings")
def get_auto_config(request: Request) -> dict[str, Any]:
    from trajforge import autotrain

    return autotrain.get_config(_store(request))


@router.put("/auto/config", summary="Change auto-training settings (validated; partial bodies keep defaults)")
def put_auto_config(request: Request, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    from trajforge import autotrain

    return autotrain.set_config(_store(request), body)


@router.post("/auto/config", summary="Change auto-training settings (the same as PUT)")
def post_auto_config(request: Request, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    # The seed's own text says "Adjust via POST" in one place and PUT in others: both work.
    return put_auto_config(request, body)


@router.get(
    "/auto/status", summary="Per task: trajectories since the last run, threshold, cooldown, pending job"
)
def get_auto_status(request: Request) -> dict[str, Any]:
    from trajforge import autotrain

    return autotrain.status(_store(request))


@router.post("/auto/trigger", summary="Start auto-training now for one task, or every counted task")
def post_auto_trigger(request: Request, body: Annotated[AutoTrigger | None, Body()] = None) -> dict[str, Any]:
    from trajforge import autotrain

    started = autotrain.trigger(_store(request), body.task if body else None)
    return {"jobs": [jobs.wire(j) for j in started]}


ModelId = Annotated[str, Path(min_length=1, max_length=200)]


@router.get("/models", response_model=ModelList, summary="Trained models, newest first")
def list_models(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    return {"models": [models.wire(m, per_item=False) for m in _store(request).list_models(limit, offset)]}


@router.get("/models/active", response_model=ActiveModel, summary="The model the agent should use")
def get_active_model(request: Request) -> dict[str, Any]:
    model = _store(request).active_model()
    return {
        "model": None if model is None else models.wire(model, per_item=False),
        "providerModel": None if model is None else model.provider_model,
    }


@router.get("/models/{model_id}", response_model=ModelResult, summary="One model with its benchmark")
def get_model(request: Request, model_id: ModelId) -> dict[str, Any]:
    return {"model": models.wire(models.get(_store(request), model_id))}


@router.post(
    "/models/{model_id}/benchmark",
    status_code=202,
    response_model=BenchmarkQueued,
    summary="Queue a base-vs-trained benchmark; the result is stored on the model",
)
def benchmark_model(
    request: Request, model_id: ModelId, body: Annotated[BenchmarkRequest | None, Body()] = None
) -> dict[str, Any]:
    store = _store(request)
    job = jobs.submit_benchmark(store, model_id, body.given() if body else {})
    return {"job": jobs.wire(job), "model": models.wire(models.get(store, model_id), per_item=False)}


@router.post(
    "/models/{model_id}/import-ollama",
    response_model=ImportOllamaResult,
    summary="Import the model into a local (loopback) Ollama",
)
def import_ollama(request: Request, model_id: ModelId, body: ollama.ImportRequest) -> dict[str, Any]:
    store = _store(request)
    result = ollama.import_model(
        store, model_id, body.model_name, body.base_model, body.ollama_url, system=body.system
    )
    return {**result, "model": models.wire(models.get(store, model_id), per_item=False)}


@router.post(
    "/models/{model_id}/activate", response_model=ModelResult, summary="Make the agent use this model"
)
def activate_model(
    request: Request, model_id: ModelId, body: Annotated[ActivateRequest | None, Body()] = None
) -> dict[str, Any]:
    model = models.activate(_store(request), model_id, body.providerModel if body else None)
    return {"model": models.wire(model, per_item=False)}


@router.get(
    "/jobs/{job_id}/log",
    summary="The end of a job's log (plain text)",
    # Not response_class=PlainTextResponse: that would document the JSON errors (404, 422) as
    # text/plain too. The 200 is declared text/plain here and returned as such.
    response_model=None,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def job_log(
    request: Request,
    job_id: Annotated[str, Path(min_length=1, max_length=200)],
    tail: Annotated[int, Query(ge=1, le=100_000, description="Last N bytes")] = 8000,
) -> PlainTextResponse:
    job = jobs.get(_store(request), job_id)
    text = ""
    if job.log_path:
        try:
            with open(job.log_path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - tail))
                text = f.read().decode(errors="replace")
        except OSError:
            text = ""  # the log lives on the runner's host; this server may not see it
    return PlainTextResponse(text)


@router.get("/prompts", summary="Optimized prompt artifacts: every task with its current version")
def list_prompts() -> dict[str, Any]:
    from trajforge.optimize import artifacts

    return {
        "prompts": [
            {**t, "artifact": t["artifact"].to_wire() if t["artifact"] else None} for t in artifacts.tasks()
        ]
    }


@router.post("/prompts/{task}/rollback", summary="Make a task's previous promoted prompt current again")
def rollback_prompt(task: Annotated[str, Path(min_length=1, max_length=200)]) -> dict[str, Any]:
    from trajforge.optimize import artifacts

    return {"artifact": artifacts.rollback(task).to_wire()}
