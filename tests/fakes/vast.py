"""A Vast.ai REST API on loopback for tests: the endpoints and JSON shapes of ``/api/v0`` the
``vast`` backend calls, over real HTTP (a thread of this process).

* Auth as the real API takes it: ``Authorization: Bearer <key>`` (or ``?api_key=``); anything else
  is a 401 ``{"success": false, "error": "invalid_user_key", "msg": ...}``.
* ``POST /api/v0/bundles/``: the query's ``{field: {op: value}}`` filters (eq, neq, gt, gte, lt,
  lte, in, notin) applied to the fixture offers, ``order`` and ``limit`` honoured →
  ``{"offers": [...]}``.
* ``PUT /api/v0/asks/{id}/`` → ``{"success": true, "new_contract": N}``; the instance is
  ``loading`` for ``loading_s``, then ``running`` with ``ssh_host``/``ssh_port`` = the SSH server
  the fake was given (the loopback sshd). An unknown or rented offer: 404 ``no_such_ask``.
* ``POST /api/v0/instances/{id}/ssh/``: attaches a public key (appended to ``authorized_keys``
  when the fake was given that file, as the instance's SSH daemon would take it).
* ``GET /api/v0/instances/{id}/`` → ``{"instances": {...}}``, ``GET /api/v0/instances/`` →
  ``{"instances": [...]}``, ``DELETE /api/v0/instances/{id}/`` → ``{"success": true}``.
* ``throttle(n, retry_after)``: the next n requests get a 429 with that ``Retry-After``.

``live()`` counts the instances not destroyed (what a test must see at zero when it ends).
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

KEY = "vast-test-key-0123456789abcdef"

OFFERS: list[dict[str, Any]] = [
    {
        "id": 1001,
        "gpu_name": "RTX 4090",
        "num_gpus": 1,
        "gpu_ram": 24564,
        "dph_total": 0.42,
        "reliability": 0.995,
        "reliability2": 0.995,
        "rentable": True,
        "rented": False,
        "verified": True,
        "external": False,
        "geolocation": "Sweden, SE",
        "cuda_max_good": 12.4,
        "disk_space": 200,
    },
    {
        "id": 1002,
        "gpu_name": "RTX 3090",
        "num_gpus": 1,
        "gpu_ram": 24576,
        "dph_total": 0.21,
        "reliability": 0.97,
        "reliability2": 0.97,
        "rentable": True,
        "rented": False,
        "verified": True,
        "external": False,
        "geolocation": "Poland, PL",
        "cuda_max_good": 12.2,
        "disk_space": 100,
    },
    {
        "id": 1003,
        "gpu_name": "H100 SXM",
        "num_gpus": 8,
        "gpu_ram": 81559,
        "dph_total": 19.9,
        "reliability": 0.999,
        "reliability2": 0.999,
        "rentable": True,
        "rented": False,
        "verified": True,
        "external": False,
        "geolocation": "US",
        "cuda_max_good": 12.6,
        "disk_space": 2000,
    },
]

_OPS = {
    "eq": lambda a, b: a == b,
    "neq": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and a > b,
    "gte": lambda a, b: a is not None and a >= b,
    "lt": lambda a, b: a is not None and a < b,
    "lte": lambda a, b: a is not None and a <= b,
    "in": lambda a, b: a in b,
    "notin": lambda a, b: a not in b,
}
_INSTANCE = re.compile(r"^/api/v0/instances/(\d+)/$")
_SSH = re.compile(r"^/api/v0/instances/(\d+)/ssh/$")
_ASK = re.compile(r"^/api/v0/asks/(\d+)/$")


class FakeVast:
    def __init__(
        self,
        ssh_host: str = "127.0.0.1",
        ssh_port: int = 22,
        *,
        key: str = KEY,
        offers: list[dict[str, Any]] | None = None,
        loading_s: float = 0.3,
        instance_dph: float | None = None,
        authorized_keys: Path | None = None,
    ) -> None:
        self.key = key
        self.offers = [dict(o) for o in (offers if offers is not None else OFFERS)]
        self.ssh_host = ssh_host
        self.ssh_port = ssh_port
        self.loading_s = loading_s
        self.instance_dph = instance_dph
        """The price the instance reports once rented (default: its offer's), as Vast.ai may bill
        more than the offer said (storage, bandwidth)."""
        self.authorized_keys = authorized_keys
        self.start_state = "running"
        """What a new instance becomes after loading (``exited``: its image failed to start)."""
        self.instances: dict[int, dict[str, Any]] = {}
        self.destroyed: set[int] = set()
        self.requests: list[tuple[str, str, Any]] = []
        self.auth_seen: list[str] = []
        self._throttle = 0
        self._retry_after = "0"
        self._next = 7_000_000
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/api/v0"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeVast:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def live(self) -> int:
        with self._lock:
            return len(self.instances)

    def throttle(self, n: int, retry_after: str = "0") -> None:
        with self._lock:
            self._throttle = n
            self._retry_after = retry_after

    def _show(self, inst: dict[str, Any]) -> dict[str, Any]:
        loaded = time.monotonic() - inst["_created"] >= self.loading_s
        running = loaded and inst["_state"] == "running"
        out = {k: v for k, v in inst.items() if not k.startswith("_")}
        out["actual_status"] = (
            "running" if running else "loading" if inst["_state"] == "running" else inst["_state"]
        )
        out["cur_state"] = "running"
        out["ssh_host"] = self.ssh_host if running else None
        out["ssh_port"] = self.ssh_port if running else None
        return out

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                return json.loads(raw) if raw else None

            def _handle(self, method: str) -> None:
                url = urlsplit(self.path)
                body = self._body()
                with fake._lock:
                    fake.requests.append((method, url.path, body))
                    auth = self.headers.get("Authorization", "")
                    fake.auth_seen.append(auth)
                    given = (
                        auth[7:]
                        if auth.startswith("Bearer ")
                        else parse_qs(url.query).get("api_key", [""])[0]
                    )
                    if given != fake.key:
                        self._reply(
                            401, {"success": False, "error": "invalid_user_key", "msg": "Invalid user key"}
                        )
                        return
                    if fake._throttle > 0:
                        fake._throttle -= 1
                        self._reply(
                            429,
                            {
                                "success": False,
                                "error": "too_many_requests",
                                "msg": "API requests too frequent",
                            },
                            {"Retry-After": fake._retry_after},
                        )
                        return
                    status, answer = fake._route(method, url.path, body)
                self._reply(status, answer)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        return Handler

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "POST" and path == "/api/v0/bundles/":
            return 200, {"offers": self._search(body or {})}
        if method == "PUT" and (m := _ASK.match(path)):
            return self._create(int(m.group(1)), body or {})
        if method == "POST" and (m := _SSH.match(path)):
            inst = self.instances.get(int(m.group(1)))
            if inst is None:
                return 404, {"success": False, "error": "no_such_instance", "msg": "Instance not found"}
            key = str((body or {}).get("ssh_key", "")).strip()
            inst["_keys"].append(key)
            if self.authorized_keys is not None and key:
                with open(self.authorized_keys, "a") as f:
                    f.write(key + "\n")
            return 200, {"success": True}
        if method == "GET" and path == "/api/v0/instances/":
            return 200, {"instances": [self._show(i) for i in self.instances.values()]}
        if (m := _INSTANCE.match(path)) and method in ("GET", "DELETE"):
            iid = int(m.group(1))
            inst = self.instances.get(iid)
            if inst is None:
                return 404, {"success": False, "error": "no_such_instance", "msg": "Instance not found"}
            if method == "GET":
                return 200, {"instances": self._show(inst)}
            del self.instances[iid]
            self.destroyed.add(iid)
            for offer in self.offers:
                if offer["id"] == inst["_offer"]:
                    offer["rented"], offer["rentable"] = False, True
            return 200, {"success": True}
        return 404, {"success": False, "error": "not_found", "msg": f"no route {method} {path}"}

    def _search(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        rows = []
        for offer in self.offers:
            ok = True
            for field, cond in query.items():
                if field in ("order", "type", "limit", "allocated_storage") or not isinstance(cond, dict):
                    continue
                for op, want in cond.items():
                    if op in _OPS and not _OPS[op](offer.get(field), want):
                        ok = False
            if ok:
                rows.append(offer)
        for field, direction in reversed(query.get("order") or []):
            rows.sort(key=lambda o, f=field: o.get(f) or 0, reverse=direction == "desc")
        return rows[: int(query.get("limit") or 64)]

    def _create(self, offer_id: int, body: dict[str, Any]) -> tuple[int, Any]:
        offer = next((o for o in self.offers if o["id"] == offer_id and not o["rented"]), None)
        if offer is None:
            return 404, {
                "success": False,
                "error": "no_such_ask",
                "msg": f"Offer {offer_id} is not available",
            }
        if not body.get("image"):
            return 400, {"success": False, "error": "invalid_args", "msg": "image is required"}
        self._next += 1
        offer["rented"], offer["rentable"] = True, False
        self.instances[self._next] = {
            "id": self._next,
            "label": body.get("label"),
            "image_uuid": body.get("image"),
            "disk_space": body.get("disk"),
            "onstart": body.get("onstart"),
            "gpu_name": offer["gpu_name"],
            "num_gpus": offer["num_gpus"],
            "gpu_ram": offer["gpu_ram"],
            "dph_total": self.instance_dph if self.instance_dph is not None else offer["dph_total"],
            "machine_id": offer["id"] * 10,
            "_offer": offer_id,
            "_created": time.monotonic(),
            "_state": self.start_state,
            "_keys": [],
        }
        return 200, {"success": True, "new_contract": self._next}
