"""``/api/training/vast``: Vast.ai GPU jobs (the seed's ``/api/training/vast/*``), thin views over
the same jobs as ``/api/training/jobs`` (backend ``vast``), plus the offers they can rent and each
job's budget. Every route answers 400 naming ``TRAJFORGE_VAST_API_KEY`` when it is not set."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from trajforge import jobs, settings
from trajforge.errors import NotFound
from trajforge.limits import MAX_OFFSET
from trajforge.records import JOB_STATUSES, Job
from trajforge.server.schemas import JobList, JobResult
from trajforge.store import Store
from trajforge.train import vast
from trajforge.train.vast_api import missing_key


def _configured() -> None:
    if settings.vast_api_key() is None:
        raise missing_key()


router = APIRouter(prefix="/api/training/vast", tags=["vast"], dependencies=[Depends(_configured)])
JobId = Annotated[str, Path(min_length=1, max_length=200)]


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _vast_job(store: Store, job_id: str) -> Job:
    job = jobs.get(store, job_id)
    if job.backend != "vast":
        raise NotFound(f"{job_id} is a {job.backend} job, not a vast one", "id")
    return job


@router.get("/offers", summary="Vast.ai offers matching the filters, cheapest first")
def list_offers(query: Annotated[vast.OffersQuery, Query()]) -> dict[str, Any]:
    return {"offers": vast.offers(query)}


@router.post("/jobs", status_code=201, response_model=JobResult, summary="Queue a LoRA job on a rented GPU")
def start_job(request: Request, body: vast.VastOptions) -> dict[str, Any]:
    return {"job": jobs.wire(jobs.submit(_store(request), body))}


@router.get("/jobs", response_model=JobList, summary="Vast.ai jobs, newest first")
def list_jobs(
    request: Request,
    status: Annotated[str | None, Query(description=", ".join(JOB_STATUSES))] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    if status is not None and status not in JOB_STATUSES:
        from trajforge.errors import InvalidInput

        raise InvalidInput(f"status must be one of {', '.join(JOB_STATUSES)}", "status")
    # The store lists jobs of every backend: these are the vast ones among them.
    found = [j for j in _store(request).list_jobs(status, 10_000, 0) if j.backend == "vast"]
    return {"jobs": [jobs.wire(j) for j in found[offset : offset + limit]]}


@router.get("/jobs/{job_id}", response_model=JobResult, summary="One Vast.ai job")
def get_job(request: Request, job_id: JobId) -> dict[str, Any]:
    return {"job": jobs.wire(_vast_job(_store(request), job_id))}


@router.post(
    "/jobs/{job_id}/cancel", response_model=JobResult, summary="Cancel it (the instance is destroyed)"
)
def cancel_job(request: Request, job_id: JobId) -> dict[str, Any]:
    store = _store(request)
    _vast_job(store, job_id)
    return {"job": jobs.wire(jobs.cancel(store, job_id))}


@router.get("/jobs/{job_id}/logs", summary="Its events and the end of its log")
def job_logs(
    request: Request,
    job_id: JobId,
    tail: Annotated[int, Query(ge=1, le=100_000, description="Last N bytes of the log")] = 8000,
) -> dict[str, Any]:
    from trajforge.server.training import event_wire

    store = _store(request)
    job = _vast_job(store, job_id)
    text = ""
    if job.log_path:
        try:
            with open(job.log_path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - tail))
                text = f.read().decode(errors="replace")
        except OSError:
            text = ""  # the log lives on the runner's host
    events = store.list_events(job_id=job_id, limit=10_000)
    return {"jobId": job_id, "events": [event_wire(e) for e in events], "log": text}


@router.get("/jobs/{job_id}/budget", summary="maxCost, the instance's $/h, spent so far and what remains")
def job_budget(request: Request, job_id: JobId) -> dict[str, Any]:
    return {"budget": vast.budget(_vast_job(_store(request), job_id))}
