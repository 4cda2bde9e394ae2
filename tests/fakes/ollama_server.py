"""An Ollama-compatible server on loopback for tests: the parts of Ollama's HTTP API an import uses.

* ``GET /api/version``
* ``HEAD /api/blobs/sha256:<hex>`` (200 if stored, 404 if not); ``POST /api/blobs/sha256:<hex>``
  stores the body when its sha256 matches the name (201), else 400 — as Ollama does.
* ``POST /api/show {"model"}``: ``model_info`` of the base models it was given (404 otherwise).
* ``POST /api/create``: checks the payload as Ollama would — ``from`` is a known model, every
  ``adapters``/``files`` digest is a stored blob, adapters only on llama/gemma2, an
  ``adapter_config.json`` that is a PEFT LoRA config — then streams status lines (NDJSON) or answers
  once with ``stream: false``.
* ``redirect_to``: every request is answered with a 307 to that URL (to test that it is not followed).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_DIGEST = re.compile(r"^/api/blobs/(sha256:[0-9a-f]{64})$")


def llama_info(hidden: int, layers: int, heads: int) -> dict[str, Any]:
    """``/api/show`` model_info for a llama model of this shape."""
    return {
        "general.architecture": "llama",
        "llama.embedding_length": hidden,
        "llama.block_count": layers,
        "llama.attention.head_count": heads,
    }


class FakeOllama:
    def __init__(
        self, models: dict[str, dict[str, Any]] | None = None, redirect_to: str | None = None
    ) -> None:
        self.models: dict[str, dict[str, Any]] = dict(models or {})
        """name → model_info (base models known to this Ollama)."""
        self.blobs: dict[str, bytes] = {}
        self.created: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.redirect_to = redirect_to
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any = None, content_type: str = "application/json") -> None:
                data = (
                    b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
                )
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _redirected(self) -> bool:
                fake.requests.append((self.command, self.path))
                if fake.redirect_to is None:
                    return False
                if self.command in ("POST", "PUT"):
                    self._body()
                self.send_response(307)
                self.send_header("Location", fake.redirect_to + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return True

            def do_GET(self) -> None:
                if self._redirected():
                    return
                if self.path == "/api/version":
                    self._reply(200, {"version": "0.12.0-fake"})
                elif self.path == "/api/tags":
                    names = [*fake.models, *fake.created]
                    self._reply(200, {"models": [{"name": n, "model": n} for n in names]})
                else:
                    self._reply(404, {"error": "not found"})

            def do_HEAD(self) -> None:
                if self._redirected():
                    return
                m = _DIGEST.match(self.path)
                self._reply(200 if m and m.group(1) in fake.blobs else 404)

            def do_POST(self) -> None:
                if self._redirected():
                    return
                body = self._body()
                m = _DIGEST.match(self.path)
                if m:
                    digest = m.group(1)
                    if f"sha256:{hashlib.sha256(body).hexdigest()}" != digest:
                        self._reply(400, {"error": "digest mismatch"})
                        return
                    fake.blobs[digest] = body
                    self._reply(201)
                    return
                try:
                    req = json.loads(body or b"{}")
                except ValueError:
                    self._reply(400, {"error": "invalid JSON"})
                    return
                if self.path == "/api/show":
                    name = req.get("model")
                    if name in fake.models:
                        info = fake.models[name]
                        family = info.get("general.architecture")
                        self._reply(200, {"model_info": info, "details": {"family": family}})
                    else:
                        self._reply(404, {"error": f"model '{name}' not found"})
                elif self.path == "/api/create":
                    self._create(req)
                else:
                    self._reply(404, {"error": "not found"})

            def _create(self, req: dict[str, Any]) -> None:
                error = fake.check_create(req)
                if error:
                    self._reply(400, {"error": error})
                    return
                fake.created[req["model"]] = req
                statuses = ["parsing modelfile", "using existing layer", "writing manifest", "success"]
                if req.get("stream") is False:
                    self._reply(200, {"status": "success"})
                    return
                lines = b"".join(json.dumps({"status": s}).encode() + b"\n" for s in statuses)
                self._reply(200, lines, "application/x-ndjson")

        return Handler

    def check_create(self, req: dict[str, Any]) -> str | None:
        """What Ollama would refuse in a create request (None when it would accept it)."""
        if not req.get("model"):
            return "a model name is required"
        digests = {**(req.get("adapters") or {}), **(req.get("files") or {})}
        if not digests and not req.get("from"):
            return "neither from nor files given"
        missing = [n for n, d in digests.items() if d not in self.blobs]
        if missing:
            return f"blobs not found: {missing}"
        if req.get("adapters"):
            base = req.get("from")
            if base not in self.models:
                return f"base model {base!r} not found"
            arch = self.models[base].get("general.architecture")
            if arch not in ("llama", "gemma2"):
                return f"adapters are not supported for {arch}"
            names = set(req["adapters"])
            if names != {"adapter_config.json", "adapter_model.safetensors"}:
                return f"unexpected adapter files {sorted(names)}"
            config = json.loads(self.blobs[req["adapters"]["adapter_config.json"]])
            if config.get("peft_type") != "LORA":
                return "adapter_config.json is not a LoRA adapter"
            weights = self.blobs[req["adapters"]["adapter_model.safetensors"]]
            header_len = int.from_bytes(weights[:8], "little")
            header = json.loads(weights[8 : 8 + header_len])
            if not any("lora_A" in k for k in header):
                return "adapter_model.safetensors has no LoRA tensors"
        return None

    def __enter__(self) -> FakeOllama:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
