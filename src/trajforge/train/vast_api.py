"""A small client of the Vast.ai REST API (``/api/v0``): the calls the ``vast`` backend makes.

* ``POST /bundles/`` searches offers (a query of ``{field: {op: value}}`` filters plus ``order``);
* ``PUT /asks/{offer_id}/`` rents one → ``{"success": true, "new_contract": <instance id>}``;
* ``POST /instances/{id}/ssh/`` attaches a public key to the instance;
* ``GET /instances/{id}/`` → ``{"instances": {...}}`` and ``GET /instances/`` → ``{"instances": [...]}``;
* ``DELETE /instances/{id}/`` destroys it (billing stops).

The key goes in ``Authorization: Bearer`` (as the official ``vastai`` client sends it), never in a
URL, so it cannot reach a log through an error that quotes the URL; every message made from a
Vast.ai answer has the key blanked out. A 429 is retried with backoff, honouring ``Retry-After``.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from trajforge import settings
from trajforge.errors import TrajforgeError, Unavailable

log = logging.getLogger(__name__)

RETRIES = 6
"""Attempts per call when Vast.ai answers 429 (or an idempotent call cannot connect)."""
MAX_WAIT_S = 30.0
"""The longest single wait a ``Retry-After`` may ask for."""


class VastError(TrajforgeError):
    """Vast.ai answered with an error (or could not be reached)."""

    status = 502
    code = "vast_error"


def missing_key() -> Unavailable:
    return Unavailable(
        f"{settings.VAST_API_KEY} is not set: the vast backend needs a Vast.ai API key "
        "(https://cloud.vast.ai/account/) in that environment variable",
        settings.VAST_API_KEY,
    )


@dataclass(frozen=True, slots=True)
class Offer:
    """One machine for rent, as ``/bundles/`` lists it."""

    id: int
    gpu_name: str
    num_gpus: int
    gpu_ram_mb: float
    dph_total: float
    """Dollars per hour, all costs included for the storage asked for."""
    reliability: float
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Offer:
        return cls(
            id=int(row["id"]),
            gpu_name=str(row.get("gpu_name") or "?"),
            num_gpus=int(row.get("num_gpus") or 1),
            gpu_ram_mb=float(row.get("gpu_ram") or 0),
            dph_total=float(row.get("dph_total") or 0),
            reliability=float(row.get("reliability2", row.get("reliability")) or 0),
            raw=row,
        )

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "gpuName": self.gpu_name,
            "numGpus": self.num_gpus,
            "gpuRamGb": round(self.gpu_ram_mb / 1000, 1),
            "dphTotal": round(self.dph_total, 4),
            "reliability": round(self.reliability, 4),
            "geolocation": self.raw.get("geolocation"),
            "cudaMaxGood": self.raw.get("cuda_max_good"),
        }


@dataclass(frozen=True, slots=True)
class Instance:
    """A rented machine, as ``/instances/`` shows it."""

    id: int
    actual_status: str | None
    """``loading`` while the image is pulled, then ``running`` (or ``exited``, ``offline``...)."""
    ssh_host: str | None
    ssh_port: int | None
    dph_total: float
    gpu_name: str
    num_gpus: int
    label: str | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Instance:
        port = row.get("ssh_port")
        return cls(
            id=int(row["id"]),
            actual_status=row.get("actual_status"),
            ssh_host=row.get("ssh_host") or None,
            ssh_port=int(port) if port else None,
            dph_total=float(row.get("dph_total") or 0),
            gpu_name=str(row.get("gpu_name") or "?"),
            num_gpus=int(row.get("num_gpus") or 1),
            label=row.get("label"),
            raw=row,
        )


def offer_query(
    *,
    gpu: str | None = None,
    min_gpu_ram_gb: float | None = None,
    max_dph: float | None = None,
    num_gpus: int | None = None,
    min_reliability: float | None = None,
    disk_gb: float = 40,
    offer_id: int | None = None,
    limit: int = 20,
) -> dict[str, Any]:
    """The ``/bundles/`` query for these filters: rentable on-demand verified machines, cheapest
    first (the defaults the ``vastai search offers`` command adds)."""
    q: dict[str, Any] = {
        "verified": {"eq": True},
        "external": {"eq": False},
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "type": "on-demand",
        "order": [["dph_total", "asc"]],
        "allocated_storage": disk_gb,
        "limit": limit,
    }
    if gpu:
        q["gpu_name"] = {"eq": gpu.replace("_", " ")}  # the CLI's RTX_4090 is "RTX 4090" in the API
    if min_gpu_ram_gb is not None:
        q["gpu_ram"] = {"gte": min_gpu_ram_gb * 1000}  # the API counts GPU RAM in MB
    if max_dph is not None:
        q["dph_total"] = {"lte": max_dph}
    if num_gpus is not None:
        q["num_gpus"] = {"eq": num_gpus}
    if min_reliability is not None:
        q["reliability"] = {"gte": min_reliability}
    if offer_id is not None:
        q["id"] = {"eq": offer_id}
    return q


def _retry_after(value: str | None, fallback: float) -> float:
    if not value:
        return fallback
    try:
        return min(MAX_WAIT_S, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return fallback
    return min(MAX_WAIT_S, max(0.0, when - time.time()))


class Client:
    """Calls one Vast.ai API (``url``, e.g. ``https://console.vast.ai/api/v0``) with ``key``."""

    def __init__(
        self,
        key: str,
        url: str | None = None,
        *,
        timeout_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._key = key
        self.url = (url or settings.vast_url()).rstrip("/")
        self._sleep = sleep
        self._http = httpx.Client(
            timeout=timeout_s,
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _clean(self, text: str) -> str:
        """``text`` with the key blanked out (an error body may quote the request)."""
        return text.replace(self._key, "***") if self._key else text

    def request(
        self, method: str, path: str, body: Any = None, params: Mapping[str, Any] | None = None
    ) -> Any:
        """One call; its JSON answer. 429: waits (``Retry-After``, else backoff) and tries again;
        401/403: :class:`Unavailable` naming the key's setting; other errors: :class:`VastError`;
        404 on a GET or DELETE: None (the thing is gone)."""
        url = self.url + path
        wait = 0.5
        idempotent = method in ("GET", "DELETE")
        for attempt in range(RETRIES):
            try:
                resp = self._http.request(method, url, json=body, params=params)
            except httpx.TransportError as exc:
                if idempotent and attempt < RETRIES - 1:
                    self._sleep(wait)
                    wait *= 2
                    continue
                raise VastError(f"could not reach Vast.ai at {self.url}: {self._clean(str(exc))}") from None
            if resp.status_code == 429 and attempt < RETRIES - 1:
                delay = _retry_after(resp.headers.get("retry-after"), wait)
                log.info("Vast.ai answered 429 to %s %s; retrying in %.1f s", method, path, delay)
                self._sleep(delay)
                wait *= 2
                continue
            return self._answer(method, path, resp)
        raise AssertionError("unreachable")

    def _answer(self, method: str, path: str, resp: httpx.Response) -> Any:
        if resp.status_code in (401, 403):
            raise Unavailable(
                f"Vast.ai refused the API key in {settings.VAST_API_KEY} (HTTP {resp.status_code}: "
                f"{self._reason(resp)})",
                settings.VAST_API_KEY,
            )
        if resp.status_code == 404 and method in ("GET", "DELETE"):
            return None
        if resp.status_code >= 400:
            raise VastError(
                f"Vast.ai answered {method} {path} with HTTP {resp.status_code}: {self._reason(resp)}"
            )
        try:
            data = resp.json()
        except ValueError:
            raise VastError(f"Vast.ai answered {method} {path} with something that is not JSON") from None
        if isinstance(data, dict) and data.get("success") is False:
            raise VastError(f"Vast.ai refused {method} {path}: {self._reason(resp)}")
        return data

    def _reason(self, resp: httpx.Response) -> str:
        try:
            data = resp.json()
        except ValueError:
            return self._clean(resp.text[:200]) or resp.reason_phrase
        if isinstance(data, dict):
            parts = [str(data[k]) for k in ("error", "msg") if data.get(k)]
            if parts:
                return self._clean(": ".join(parts))[:300]
        return self._clean(str(data))[:300]

    # --- the calls --------------------------------------------------------------------------

    def offers(self, query: Mapping[str, Any]) -> list[Offer]:
        data = self.request("POST", "/bundles/", dict(query))
        rows = data.get("offers") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise VastError("Vast.ai answered /bundles/ without an offers list")
        return [Offer.of(r) for r in rows if isinstance(r, dict) and "id" in r]

    def create(self, offer_id: int, *, image: str, disk_gb: float, label: str, onstart: str) -> int:
        """Rent ``offer_id``; the new instance's id. ``runtype: ssh`` gives it an SSH daemon that
        takes the keys attached to it."""
        body = {
            "client_id": "me",
            "image": image,
            "disk": disk_gb,
            "label": label,
            "onstart": onstart,
            "runtype": "ssh_direc ssh_proxy",
        }
        data = self.request("PUT", f"/asks/{int(offer_id)}/", body)
        contract = data.get("new_contract") if isinstance(data, dict) else None
        if not isinstance(contract, int):
            raise VastError(f"Vast.ai did not say which instance it created for offer {offer_id}")
        return contract

    def attach_ssh_key(self, instance_id: int, public_key: str) -> None:
        self.request("POST", f"/instances/{int(instance_id)}/ssh/", {"ssh_key": public_key.strip()})

    def instance(self, instance_id: int) -> Instance | None:
        data = self.request("GET", f"/instances/{int(instance_id)}/", params={"owner": "me"})
        row = data.get("instances") if isinstance(data, dict) else None
        return Instance.of(row) if isinstance(row, dict) and "id" in row else None

    def instances(self) -> list[Instance]:
        data = self.request("GET", "/instances/", params={"owner": "me"})
        rows = data.get("instances") if isinstance(data, dict) else None
        return [Instance.of(r) for r in rows or [] if isinstance(r, dict) and "id" in r]

    def destroy(self, instance_id: int) -> None:
        """Destroy the instance (gone already: nothing to do)."""
        self.request("DELETE", f"/instances/{int(instance_id)}/", {})


def client() -> Client:
    """A client of the configured API; :class:`Unavailable` naming the setting without a key."""
    key = settings.vast_api_key()
    if key is None:
        raise missing_key()
    return Client(key)
