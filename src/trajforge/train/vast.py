"""The ``vast`` backend: rent a GPU on Vast.ai, run the ``ssh`` path on it, destroy it.

``provisioning`` searches offers with the job's filters (cheapest first, or the ``offerId`` it
names), rents one labelled with the job id, attaches an SSH key, and waits until Vast.ai says it
runs and its SSH port answers; then :func:`trajforge.train.remote.train_on_host` uploads, trains,
downloads and registers the model as for any SSH host. The instance is destroyed when the job
completes, fails or is cancelled; one a dead job left behind (a process killed -9) is destroyed by
every job runner at start and every half minute after (:func:`reap`, a runner hook), found by its
label.

The budget: from the moment the instance exists, spend is its ``dph_total`` × elapsed hours (what
Vast.ai bills). When it reaches ``maxCost`` the job stops (its remote run too), the instance is
destroyed, and the job ends ``cancelled`` with the reason. ``maxCost`` must cover at least one
hour of the cheapest matching offer, checked at submit and again when renting.

The API key is read from ``TRAJFORGE_VAST_API_KEY`` by the client alone (:mod:`.vast_api`): it is
never part of a request, an event, the job's output or a message.
"""

from __future__ import annotations

import importlib.util
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator

from trajforge import settings
from trajforge.errors import Cancelled, InvalidInput, TrajforgeError, Unavailable
from trajforge.records import Job, JobEvent, now_ms
from trajforge.requests import Flag, Request
from trajforge.train import remote
from trajforge.train.lora import LoraOptions
from trajforge.train.remote import Host, RemoteOptions
from trajforge.train.vast_api import Client, Instance, Offer, VastError, offer_query

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
"""A CUDA image with Python 3.11 (what trajforge needs on the remote)."""
SSH_USER = "root"
"""Vast.ai instances take SSH logins as root."""
POLL_S = 1.0
"""How often provisioning asks Vast.ai how the instance is doing."""
PROVISION_TIMEOUT_S = 1800.0
"""Longest wait for an instance to run and answer SSH (a large image can take many minutes)."""
REAP_EVERY_S = 30.0
ONSTART = "mkdir -p /workspace/trajforge"


class OfferFilters(Request):
    """Which Vast.ai offers a job (or ``trajforge vast offers``) may rent: all filters optional,
    cheapest first."""

    gpu: Annotated[
        str | None,
        Field(
            min_length=1, max_length=100, description="GPU model, e.g. RTX_4090 or H100_SXM (default: any)"
        ),
    ] = None
    min_gpu_ram: Annotated[
        float | None, Field(gt=0, le=10_000, allow_inf_nan=False, description="Least GPU RAM per GPU, in GB")
    ] = None
    max_dph: Annotated[
        float | None,
        Field(gt=0, le=10_000, allow_inf_nan=False, description="Highest price, in dollars per hour"),
    ] = None
    num_gpus: Annotated[
        int | None, Field(ge=1, le=64, description="Exactly this many GPUs (default: any)")
    ] = None
    min_reliability: Annotated[
        float | None, Field(ge=0, le=1, allow_inf_nan=False, description="Least host reliability, 0..1")
    ] = None
    disk: Annotated[
        float, Field(ge=8, le=10_000, allow_inf_nan=False, description="Disk to rent with it, in GB")
    ] = 40

    def query(self, *, offer_id: int | None = None, limit: int = 20) -> dict[str, Any]:
        return offer_query(
            gpu=self.gpu,
            min_gpu_ram_gb=self.min_gpu_ram,
            max_dph=self.max_dph,
            num_gpus=self.num_gpus,
            min_reliability=self.min_reliability,
            disk_gb=self.disk,
            offer_id=offer_id,
            limit=limit,
        )

    def described(self) -> tuple[str, str | None]:
        """The filters given, as ``gpu=RTX_4090, maxDph=0.5`` (or ``no filters``), and the first
        one's wire name (what an error about them names)."""
        wire = self.aliases()
        given = [
            (wire[name], value)
            for name in ("gpu", "min_gpu_ram", "max_dph", "num_gpus", "min_reliability")
            if (value := getattr(self, name)) is not None
        ]
        text = ", ".join(f"{k}={v}" for k, v in given) or "no filters"
        return text, given[0][0] if given else None


class VastOptions(RemoteOptions, OfferFilters):
    """A LoRA job on a rented Vast.ai GPU: the ``ssh`` options (but ``host``: the instance is the
    host), the offer filters and the budget."""

    backend: Annotated[
        Literal["vast"], Field(description="vast: rent a GPU on Vast.ai (needs TRAJFORGE_VAST_API_KEY)")
    ] = "vast"  # type: ignore[assignment]
    host: Annotated[
        str | None,
        Field(min_length=3, max_length=300, description="ssh: the host, user@host[:port] (not for vast)"),
        Flag("--host"),
    ] = None  # type: ignore[assignment]
    max_cost: Annotated[
        float | None,
        Field(
            gt=0,
            le=100_000,
            allow_inf_nan=False,
            description="vast: the most dollars the job may spend (required; at least one hour of the "
            "cheapest matching offer); reaching it stops the job and destroys the instance",
        ),
    ] = None
    image: Annotated[
        str, Field(min_length=1, max_length=300, description="vast: the CUDA Docker image to run")
    ] = DEFAULT_IMAGE
    offer_id: Annotated[
        int | None, Field(ge=1, le=2**53, description="vast: rent this offer (from `trajforge vast offers`)")
    ] = None

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:  # type: ignore[override]
        if v is not None:
            raise InvalidInput("host does not apply to vast jobs: the rented instance is the host", "host")
        return v

    def lora_request(self) -> dict[str, Any]:
        """The LoRA options alone (no SSH, offer or budget fields): what the remote trains with."""
        own = set(type(self).model_fields) - set(LoraOptions.model_fields)
        data: dict[str, Any] = self.model_dump(
            mode="json", by_alias=True, exclude_none=True, exclude={"backend", *own}
        )
        return data


class OffersQuery(OfferFilters):
    """``GET /api/training/vast/offers``' query string and ``trajforge vast offers``' options."""

    model_config = ConfigDict(strict=False)
    limit: Annotated[int, Field(ge=1, le=200, description="Most offers to list")] = 20


class BudgetReached(TrajforgeError):
    status = 400
    code = "budget_reached"


# --- offers and the budget ---------------------------------------------------------------------


def choose(api: Client, opts: VastOptions) -> Offer:
    """The offer the job rents: ``offerId`` when given (it must match the filters), else the
    cheapest matching one. Refuses (naming the option) when none matches or ``maxCost`` would
    not pay for one hour of it."""
    described, first = opts.described()
    if opts.offer_id is not None:
        offers = api.offers(opts.query(offer_id=opts.offer_id, limit=1))
        if not offers:
            raise Unavailable(
                f"Vast.ai offer {opts.offer_id} is not for rent now, or does not match {described}", "offerId"
            )
    else:
        offers = api.offers(opts.query())
        if not offers:
            raise Unavailable(f"no Vast.ai offer for rent matches {described}", first or "gpu")
    offer = min(offers, key=lambda o: o.dph_total)
    if opts.max_cost is not None and opts.max_cost < offer.dph_total:
        which = f"offer {offer.id}" if opts.offer_id is not None else "the cheapest matching offer"
        raise Unavailable(
            f"maxCost ${opts.max_cost:g} does not pay for one hour of {which} "
            f"({offer.num_gpus}x {offer.gpu_name} at ${offer.dph_total:.4g}/h)",
            "maxCost",
        )
    return offer


def check_request(request: dict[str, Any], opts: VastOptions) -> dict[str, Any]:
    """At submit: ``maxCost`` is given, the key works, an offer matches and the budget pays for an
    hour of it (so a bad request fails now, before anything is rented)."""
    if opts.max_cost is None:
        raise Unavailable(
            "maxCost is required for vast jobs: the most dollars the job may spend on Vast.ai", "maxCost"
        )
    with client() as api:
        choose(api, opts)
    return request


def client() -> Client:
    from trajforge.train import vast_api

    return vast_api.client()


def status() -> tuple[bool, str]:
    """Whether the ``vast`` backend is configured here (no network: the key is only checked when
    used)."""
    if settings.vast_api_key() is None:
        return False, f"{settings.VAST_API_KEY} is not set (a Vast.ai API key)"
    if importlib.util.find_spec("paramiko") is None:
        return False, "needs paramiko (pip install 'trajforge[remote]')"
    return True, f"LoRA training on a rented Vast.ai GPU ({settings.vast_url()})"


def hours(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


@dataclass
class Rental:
    """The instance a job rents and what it has cost: recorded on the job (``output.vast``) as it
    changes, so the budget route, the job view and a later runner see it."""

    store: Any
    job: Job
    offer: Offer
    max_cost: float
    instance_id: int | None = None
    created_ms: int | None = None
    destroyed_ms: int | None = None
    dph: float = 0.0
    ssh: str | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    tripped: bool = False

    def spent(self, at_ms: int | None = None) -> float:
        if self.created_ms is None:
            return 0.0
        end = self.destroyed_ms or at_ms or now_ms()
        return self.dph * max(0, end - self.created_ms) / 3_600_000

    def over(self) -> bool:
        if self.spent() >= self.max_cost:
            self.tripped = True
        return self.tripped

    def reason(self) -> str:
        elapsed = max(0, (self.destroyed_ms or now_ms()) - (self.created_ms or now_ms())) / 1000
        return (
            f"budget of ${self.max_cost:g} reached after {hours(elapsed)} at ${self.dph:.4g}/h "
            f"(${self.spent():.4f} spent); instance {self.instance_id} "
            + ("destroyed" if self.destroyed_ms else "not confirmed destroyed")
        )

    def wire(self) -> dict[str, Any]:
        return {
            "instanceId": self.instance_id,
            "offerId": self.offer.id,
            "gpu": self.offer.gpu_name,
            "numGpus": self.offer.num_gpus,
            "dphTotal": self.dph,
            "maxCost": self.max_cost,
            "createdAt": self.created_ms,
            "destroyedAt": self.destroyed_ms,
            "ssh": self.ssh,
            "spent": round(self.spent(), 6),
        }

    def record(self) -> None:
        self.store.update_job(self.job.id, output={"vast": self.wire()})


def budget(job: Job, at_ms: int | None = None) -> dict[str, Any]:
    """The job's budget as the ``/budget`` route shows it: ``maxCost``, the instance's price,
    what it has spent (the rental so far, or in all once destroyed) and what remains."""
    vast = (job.output or {}).get("vast") or {}
    max_cost = vast.get("maxCost", job.request.get("maxCost"))
    dph = float(vast.get("dphTotal") or 0)
    created, destroyed = vast.get("createdAt"), vast.get("destroyedAt")
    end = destroyed or (job.finished_at if job.finished_at else None) or at_ms or now_ms()
    spent = dph * max(0, end - created) / 3_600_000 if created else 0.0
    return {
        "jobId": job.id,
        "status": job.status,
        "maxCost": max_cost,
        "dphTotal": dph or None,
        "spent": round(spent, 6),
        "remaining": None if max_cost is None else round(max(0.0, float(max_cost) - spent), 6),
        "instanceId": vast.get("instanceId"),
        "gpu": vast.get("gpu"),
        "numGpus": vast.get("numGpus"),
        "running": created is not None and destroyed is None,
    }


# --- the job -----------------------------------------------------------------------------------


def identity(opts: VastOptions, home: Path | None, job_id: str) -> tuple[str, str]:
    """The private key path SSH logs in with, and its public key (attached to the instance): the
    job's ``identity`` when given, else a key made for this job under ``<home>/jobs`` (paramiko
    makes it: no ssh-keygen needed)."""
    import paramiko

    if opts.identity:
        path = Path(opts.identity).expanduser()
        pub = path.with_name(path.name + ".pub")
        if pub.is_file():
            return str(path), pub.read_text().strip()
        try:
            key = paramiko.PKey.from_path(path)
        except (OSError, paramiko.SSHException) as exc:
            raise InvalidInput(f"identity {opts.identity}: cannot read its key ({exc})", "identity") from None
        return str(path), f"{key.get_name()} {key.get_base64()}"
    folder = (home or settings.home()) / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job_id}.vast_key"
    if not path.exists():
        made = paramiko.ECDSAKey.generate(bits=256)
        made.write_private_key_file(str(path))
        path.chmod(0o600)
    key = paramiko.ECDSAKey.from_private_key_file(str(path))
    return str(path), f"{key.get_name()} {key.get_base64()} trajforge-{job_id}"


def forget_host_key(hostname: str, port: int) -> None:
    """Drop the instance's entry from trajforge's known_hosts once it is destroyed: Vast.ai hands
    the same ``sshN.vast.ai:port`` to another instance later, with another host key, and the
    accept-new check would then refuse the next job."""
    from trajforge.train.ssh import known_hosts_file

    path = known_hosts_file()
    name = hostname if port == 22 else f"[{hostname}]:{port}"
    lines = path.read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if name not in (ln.split(" ", 1)[0].split(","))]
    if len(kept) != len(lines):
        path.write_text("".join(kept))


def _wait_running(api: Client, rental: Rental, stop: Callable[[], bool], report: Any) -> Instance:
    assert rental.instance_id is not None
    deadline = time.monotonic() + PROVISION_TIMEOUT_S
    seen = None
    while True:
        if stop():
            raise Cancelled("stopped while the instance was starting")
        inst = api.instance(rental.instance_id)
        if inst is None:
            raise VastError(f"Vast.ai instance {rental.instance_id} disappeared while starting")
        if inst.dph_total:
            rental.dph = inst.dph_total
        if inst.actual_status != seen:
            seen = inst.actual_status
            report(0.03, "provisioning", f"instance {inst.id}: {seen or 'created'}")
            rental.record()
        if inst.actual_status == "running" and inst.ssh_host and inst.ssh_port:
            return inst
        if inst.actual_status in ("exited", "offline", "unknown"):
            raise VastError(f"Vast.ai instance {inst.id} is {inst.actual_status} instead of running")
        if time.monotonic() > deadline:
            raise VastError(f"Vast.ai instance {inst.id} was not running after {hours(PROVISION_TIMEOUT_S)}")
        time.sleep(POLL_S)


def _wait_ssh(host: str, port: int, stop: Callable[[], bool]) -> None:
    """Until the instance's SSH port accepts a connection (it opens a little after ``running``)."""
    deadline = time.monotonic() + PROVISION_TIMEOUT_S
    while True:
        if stop():
            raise Cancelled("stopped while waiting for SSH")
        try:
            with socket.create_connection((host, port), timeout=5):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise VastError(f"the instance's SSH ({host}:{port}) did not answer: {exc}") from None
        time.sleep(POLL_S)


def _destroy(api: Client, rental: Rental) -> None:
    """Destroy the instance, trying hard (each try retries 429s itself): a rented GPU left
    running is the one failure this module exists to prevent. What cannot be destroyed now is
    left to :func:`reap`."""
    if rental.instance_id is None or rental.destroyed_ms is not None:
        return
    for attempt in range(3):
        try:
            api.destroy(rental.instance_id)
            break
        except TrajforgeError as exc:
            log.warning("destroying Vast.ai instance %s failed (%s)", rental.instance_id, exc)
            if attempt == 2:
                return
            time.sleep(1.0)
    rental.destroyed_ms = now_ms()
    rental.record()
    if rental.ssh_host is not None and rental.ssh_port is not None:
        forget_host_key(rental.ssh_host, rental.ssh_port)
    rental.store.add_event(
        JobEvent(
            "job_log",
            f"destroyed Vast.ai instance {rental.instance_id} (${rental.spent():.4f} spent)",
            job_id=rental.job.id,
            data={"vast": rental.wire()},
        )
    )


def run(
    store: Any,
    job: Job,
    report: Callable[[float, str, str], None],
    home: Path | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """The ``vast`` job body: rent, train over SSH, destroy. Returns the job's output."""
    opts = VastOptions.from_stored(job.request)
    if opts.max_cost is None:  # queued without submit's check (an older request, say)
        raise Unavailable("maxCost is required for vast jobs", "maxCost")
    started = time.monotonic()
    described, _ = opts.described()
    report(0.01, "provisioning", f"searching Vast.ai offers: {described}")
    with client() as api:
        offer = choose(api, opts)
        rental = Rental(store, job, offer, opts.max_cost, dph=offer.dph_total)

        def stop() -> bool:
            return should_stop() or rental.over()

        try:
            try:
                key_path, public_key = identity(opts, home, job.id)
                report(
                    0.02,
                    "provisioning",
                    f"renting offer {offer.id}: {offer.num_gpus}x {offer.gpu_name} at ${offer.dph_total:.4g}/h",
                )
                rental.instance_id = api.create(
                    offer.id, image=opts.image, disk_gb=opts.disk, label=job.id, onstart=ONSTART
                )
                rental.created_ms = now_ms()
                rental.record()  # before anything else can fail: a restart finds it by its id
                store.add_event(
                    JobEvent(
                        "job_log",
                        f"rented Vast.ai instance {rental.instance_id} (offer {offer.id})",
                        job_id=job.id,
                        data={"vast": rental.wire()},
                    )
                )
                api.attach_ssh_key(rental.instance_id, public_key)
                inst = _wait_running(api, rental, stop, report)
                assert inst.ssh_host is not None and inst.ssh_port is not None
                _wait_ssh(inst.ssh_host, inst.ssh_port, stop)
                rental.ssh = f"{SSH_USER}@{inst.ssh_host}:{inst.ssh_port}"
                rental.ssh_host, rental.ssh_port = inst.ssh_host, inst.ssh_port
                rental.record()
                provisioning_s = time.monotonic() - started
                report(0.05, "provisioning", f"instance {inst.id} answers SSH at {rental.ssh}")
                store.add_event(
                    JobEvent(
                        "job_log", f"instance {inst.id} is up", job_id=job.id, data={"vast": rental.wire()}
                    )
                )
                host = Host(SSH_USER, inst.ssh_host, inst.ssh_port, key_path)
                lineage = {
                    "gpu": inst.gpu_name,
                    "numGpus": inst.num_gpus,
                    "dphTotal": rental.dph,
                    "instanceId": inst.id,
                    "costSoFar": round(rental.spent(), 6),
                }
                out: dict[str, Any] = remote.train_on_host(
                    store,
                    job,
                    opts,
                    host,
                    report,
                    home,
                    stop,
                    backend="vast",
                    lineage=lineage,
                    phase_times={"provisioning": round(provisioning_s, 3)},
                )
                # The budget may have run out as the remote run finished: its model is registered
                # and whole (a stopped run raises Cancelled), so the job keeps it, saying so.
                out["budgetReached"] = rental.tripped
            finally:
                teardown = time.monotonic()
                _destroy(api, rental)
                teardown_s = time.monotonic() - teardown
        except Cancelled:
            if rental.tripped:
                # Ended here, with the reason: the job process's own cancel path would only say
                # "cancelled" (and finds the job already ended).
                store.finish_job(job.id, "cancelled", now_ms(), error=rental.reason())
            raise
    return _finish(store, out, rental, teardown_s)


def _finish(store: Any, out: dict[str, Any], rental: Rental, teardown_s: float) -> dict[str, Any]:
    """The output with the rental's cost; the model's metrics get it too (what it cost to train)."""
    vast = {**rental.wire(), "teardownSeconds": round(teardown_s, 3)}
    model_id = out.get("modelId")
    model = store.get_model(model_id) if isinstance(model_id, str) else None
    if model is not None:
        store.update_model(model.id, metrics={**(model.metrics or {}), "vast": vast, "cost": vast["spent"]})
    return {**out, "vast": vast}


# --- instances a dead job left behind ---------------------------------------------------------


def reap(store: Any, home: Path | None = None, starting: bool = False) -> int:
    """Destroy every instance labelled with a job of this store that is not running (its process
    was killed before it could). Only with a key configured; a Vast.ai error is logged, never
    raised (a runner's start-up must not fail on it). Returns how many it destroyed."""
    if settings.vast_api_key() is None:
        return 0
    n = 0
    try:
        with client() as api:
            for inst in api.instances():
                job = store.get_job(inst.label) if inst.label and inst.label.startswith("job-") else None
                if job is None or job.status in ("pending", "running"):
                    continue
                api.destroy(inst.id)
                n += 1
                vast = (job.output or {}).get("vast")
                if isinstance(vast, dict) and vast.get("destroyedAt") is None:
                    # The spend stops here: the budget route reads it from this.
                    store.update_job(
                        job.id, output={**(job.output or {}), "vast": {**vast, "destroyedAt": now_ms()}}
                    )
                store.add_event(
                    JobEvent(
                        "job_log",
                        f"destroyed Vast.ai instance {inst.id}, left behind by {job.id} ({job.status})",
                        job_id=job.id,
                        data={"vast": {"instanceId": inst.id, "reaped": True}},
                    )
                )
    except Exception as exc:  # noqa: BLE001 - logged: a runner goes on without it
        log.warning("vast: could not look for instances left behind: %s", exc)
    return n


def _register_hook() -> None:
    from trajforge.jobs import hooks

    hooks.register(hooks.RunnerHook("vast-reaper", lambda s, h, st: reap(s, h, st), every_s=REAP_EVERY_S))


_register_hook()


def offers(query: Mapping[str, Any] | OffersQuery) -> list[dict[str, Any]]:
    """Offers matching the filters, cheapest first, in wire form (``trajforge vast offers``, the
    ``/offers`` route, the dashboard's picker)."""
    q = query if isinstance(query, OffersQuery) else OffersQuery.parse(query)
    with client() as api:
        found = api.offers(q.query(limit=q.limit))
    return [o.wire() for o in sorted(found, key=lambda o: o.dph_total)[: q.limit]]
