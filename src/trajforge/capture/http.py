"""The SDK over HTTP: batches go to a trajforge server's ingest endpoint."""

from __future__ import annotations

import gzip
import time

import httpx

from trajforge import jsonutil
from trajforge.capture.transport import (
    Refusal,
    ServerAnswered,
    TransientError,
    _unavailable_is_transient,
    by_trajectory,
    destination_key,
    write_split,
)
from trajforge.records import WriteBatch, batch_to_wire

GZIP_ABOVE = 8 * 1024  # bytes: small batches are not worth compressing

SERVER_ERROR_BACKOFF_S = (0.25, 0.5, 1.0)
"""Waits before sending a batch again after a server error (500, 501, 505…; not 502/503/504): a
blip passes in that time; an error that repeats is about this data and ends as rejected."""


READ_BYTES_PER_S = 200_000
"""The slowest ingest rate a server is given time for, in bytes of batch JSON per second (beyond
the base timeout), before a batch counts as not delivered."""


class HttpSink:
    """POSTs batches to ``/api/trajectories``.

    Connection failures, timeouts, 401/403, 429 and 502/503/504 are outages (the writer spools and
    replays). A server error that repeats over :data:`SERVER_ERROR_BACKOFF_S`, and other 4xx, mean
    the data is bad: the batch is split so that only the trajectories refused on their own are
    returned (the writer keeps them in ``rejected-*.jsonl``); the server also reports the ones its
    store refused.
    """

    def __init__(self, base_url: str, *, token: str | None = None, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.key = destination_key(self.base_url)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Redirects are not followed: a batch must reach the server it was meant for.
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout_s, follow_redirects=False
        )

    def write(self, batch: WriteBatch) -> list[Refusal]:
        results, refused = write_split(self._post, batch, first=self._post_retrying)
        for server_refused in results:
            refused.extend(server_refused)
        return refused

    def _post_retrying(self, batch: WriteBatch) -> list[Refusal]:
        for delay in SERVER_ERROR_BACKOFF_S:
            try:
                return self._post(batch)
            except ServerAnswered as exc:
                if exc.status < 500:
                    raise
            time.sleep(delay)
        return self._post(batch)

    def _post(self, batch: WriteBatch) -> list[Refusal]:
        body = jsonutil.dumps_bytes(batch_to_wire(batch))
        # The server's time grows with the batch: a 5,000-record batch (~3 MB) takes a busy store
        # more than a fixed 10 s, and a timeout there makes the client spool and send it again
        # (nothing lost, but the server does the work twice). So the wait for the answer grows
        # by a second per 200 kB of JSON; connecting keeps the short limit (an outage is still
        # seen at once).
        timeout = httpx.Timeout(self.timeout_s, read=self.timeout_s + len(body) / READ_BYTES_PER_S)
        headers = {"Content-Type": "application/json"}
        if len(body) > GZIP_ABOVE:
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        with _unavailable_is_transient():
            response = self._client.post("/api/trajectories", content=body, headers=headers, timeout=timeout)
            if response.status_code in (401, 403):
                # A token problem is fixed by configuration, not by changing the data: keep the
                # batch in the spool so the next process (with the right token) delivers it.
                raise ServerAnswered(
                    response.status_code, "the server refused the token: check TRAJFORGE_API_TOKEN"
                )
            if response.status_code >= 400:
                raise ServerAnswered(response.status_code, response.text)
        refused = _refused_of(response)
        if not refused:
            return []
        groups = by_trajectory(batch)
        return [Refusal(tid, reason, groups[tid]) for tid, reason in refused if tid in groups]

    def logging_enabled(self) -> bool:
        with _unavailable_is_transient():
            response = self._client.get("/api/trajectories/config")
        if response.status_code != 200:
            raise TransientError(f"server answered {response.status_code}")
        return bool(response.json().get("enabled", True))

    def sweep(self, older_than_ms: int) -> int:
        return 0  # the server sweeps its own store

    def close(self) -> None:
        self._client.close()


def _refused_of(response: httpx.Response) -> list[tuple[str, str]]:
    """The trajectories the server's store refused, from an ingest answer (none from an older server)."""
    try:
        data = response.json()
    except ValueError:
        return []
    items = data.get("refused") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return []
    return [
        (str(r["id"]), str(r.get("reason", "")))
        for r in items
        if isinstance(r, dict) and isinstance(r.get("id"), str)
    ]
