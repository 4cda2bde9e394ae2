"""The job queue in the store: submit (checked before anything is queued), look up, cancel, show."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from trajforge.errors import Conflict, InvalidInput, NotFound, Unavailable
from trajforge.jobs import kinds
from trajforge.records import JOB_FINISHED, JOB_STATUSES, Job, now_ms
from trajforge.store.base import Store

if TYPE_CHECKING:
    from trajforge.jobs.request import JobOptions


def submit(store: Store, request: Mapping[str, Any] | JobOptions) -> Job:
    """Queue a job for ``request`` (a job request's options, or its wire form, camelCase). Bad
    options, unavailable backends, unknown optimizers, models that cannot load here and datasets
    that do not exist are refused here, before anything is queued. The stored request is what was
    given (and what the kind spells out, such as the optimizer)."""
    from trajforge.jobs.request import parse

    options = parse(request) if isinstance(request, Mapping) else request
    backend = options.backend
    kind = kinds.for_backend(backend)
    status = kinds.backends()[backend]
    if not status["available"]:
        raise Unavailable(
            f"the {backend} backend is not available on this machine: {status['reason']}", "backend"
        )
    request = kind.queued(options)  # validated already: no second parse
    from trajforge.train import backends as train_backends

    # A model the job could not load fails here (offline checks), not minutes later in the job.
    train_backends.check_model(backend, request.get("model"), request.get("baseUrl"))
    dataset_id = request.get("datasetId")
    ds = None if dataset_id is None else store.get_dataset(dataset_id)
    if dataset_id is not None and ds is None:
        raise NotFound(f"no dataset {dataset_id!r}", "datasetId")
    reads = kind.reads()
    if ds is not None and reads is not None and ds.format not in reads:
        raise InvalidInput(
            f"{kind.what} reads {', '.join(reads)} datasets; {dataset_id} is {ds.format!r}", "datasetId"
        )
    from trajforge.train.lora import LoraOptions, check_submit

    if isinstance(options, LoraOptions):
        check_submit(store, options, ds.format if ds is not None else None)
    job = Job(kind=kind.name, backend=backend, request=request, dataset_id=dataset_id)
    store.add_job(job)
    return job


def submit_benchmark(store: Store, model_id: str, request: dict[str, Any]) -> Job:
    """Queue a base-vs-trained benchmark of a registered model (see :mod:`trajforge.evaluate`)."""
    from trajforge import evaluate

    evaluate.check_request(store, model_id, request)
    kind = kinds.BENCHMARK
    job = Job(kind=kind.name, backend=kind.backends[0], request={**request, "modelId": model_id})
    store.add_job(job)
    return job


def counts(store: Store, recent: int = 1000) -> dict[str, int]:
    """Jobs by status among the ``recent`` newest (what the status views show)."""
    jobs = store.list_jobs(limit=recent)
    return {s: sum(1 for j in jobs if j.status == s) for s in JOB_STATUSES}


def get(store: Store, job_id: str) -> Job:
    job = store.get_job(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}", "id")
    return job


def cancel(store: Store, job_id: str) -> Job:
    """Ask for a job to stop: a pending job ends ``cancelled`` now; a running one sees the request
    in the store and stops, and the runner supervising it sends SIGTERM, then SIGKILL. Cancelling
    a finished job is a conflict."""
    job = get(store, job_id)
    if job.status in JOB_FINISHED:
        raise Conflict(f"job {job_id} has already ended ({job.status})", "id")
    pending = job.status == "pending"
    if not (pending and store.finish_job(job_id, "cancelled", now_ms(), error="cancelled before it started")):
        store.update_job(job_id, cancel_requested=True)
    return get(store, job_id)


def wire(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "backend": job.backend,
        "status": job.status,
        "phase": job.phase,
        "progress": job.progress,
        "request": job.request,
        "datasetId": job.dataset_id,
        "createdAt": job.created_at,
        "startedAt": job.started_at,
        "finishedAt": job.finished_at,
        "error": job.error,
        "exitCode": job.exit_code,
        "logPath": job.log_path,
        "output": job.output,
        "cancelRequested": job.cancel_requested,
    }
