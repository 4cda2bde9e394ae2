"""The SDK over HTTP: batches go to a trajforge server's ingest endpoint."""

from __future__ import annotations

import gzip

import httpx

from trajforge import jsonutil
from trajforge.capture.transport import TransientError, destination_key
from trajforge.records import WriteBatch, batch_to_wire

GZIP_ABOVE = 8 * 1024  # bytes: small batches are not worth compressing


class HttpSink:
    """POSTs batches to ``/api/trajectories``. Connection failures, timeouts, 401/403, 429 and 5xx
    are transient (the writer spools and replays); other 4xx mean the batch itself is bad."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = destination_key(self.base_url)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Redirects are not followed: a batch must reach the server it was meant for.
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout_s, follow_redirects=False
        )

    def write(self, batch: WriteBatch) -> None:
        body = jsonutil.dumps_bytes(batch_to_wire(batch))
        headers = {"Content-Type": "application/json"}
        if len(body) > GZIP_ABOVE:
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        try:
            response = self._client.post("/api/trajectories", content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientError(f"server answered {response.status_code}")
        if response.status_code in (401, 403):
            # A token problem is fixed by configuration, not by changing the data: keep the batch
            # in the spool so the next process (with the right token) delivers it.
            raise TransientError(
                f"server refused the token ({response.status_code}): check TRAJFORGE_API_TOKEN"
            )
        if response.status_code >= 400:
            raise ValueError(f"server rejected the batch ({response.status_code}): {response.text[:500]}")

    def logging_enabled(self) -> bool:
        try:
            response = self._client.get("/api/trajectories/config")
        except httpx.HTTPError as exc:
            raise TransientError(str(exc)) from exc
        if response.status_code != 200:
            raise TransientError(f"server answered {response.status_code}")
        return bool(response.json().get("enabled", True))

    def sweep(self, older_than_ms: int) -> int:
        return 0  # the server sweeps its own store

    def close(self) -> None:
        self._client.close()
