"""Import a fine-tuned model into the user's local Ollama.

The adapter's files are uploaded as blobs (``HEAD``/``POST /api/blobs/sha256:…``, skipped when
Ollama already has them), then ``POST /api/create`` makes a model ``from`` the Ollama base model
with the LoRA ``adapters``. Ollama converts safetensors adapters only for the ``llama`` and
``gemma2`` architectures; for any other architecture the merged model's safetensors folder is sent
as ``files`` instead (train with ``merge: true``), or the import is refused with that advice.

Before uploading, the Ollama base model is checked against the model the adapter was trained on
(architecture, width, depth, heads): an adapter on the wrong base would load and produce garbage.

Security: the URL must be loopback (``localhost``, 127.0.0.0/8, ``::1``) and redirects are never
followed, so the server cannot be used to reach other hosts.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
from pydantic import Field

from trajforge.errors import InvalidInput, LMError, Unavailable
from trajforge.records import JobEvent, Model
from trajforge.requests import Flag, Request
from trajforge.store.base import TrainingStore

DEFAULT_URL = "http://127.0.0.1:11434"
ADAPTER_ARCHITECTURES = ("llama", "gemma2")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".model", ".txt", ".jinja")
_NAME = re.compile(
    r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,63}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,127}(?::[A-Za-z0-9._-]{1,64})?$"
)
_CHECKED = (  # (Ollama model_info key after "<arch>.", transformers config attribute)
    ("embedding_length", "hidden_size"),
    ("block_count", "num_hidden_layers"),
    ("attention.head_count", "num_attention_heads"),
)

OLLAMA_BASES = {
    "bundled:smollm2-135m": "smollm2:135m",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2:135m",
}
"""Base models the trainer knows → the same model's name in the Ollama library, so an import of a
model trained on one of them need not be told ``baseModel``."""

Report = Callable[[float, str], None]


def check_url(url: str | None, field: str = "ollamaUrl") -> str:
    """``url`` if it is an http(s) URL of a loopback host, else an InvalidInput naming ``field``.

    The URL is parsed once, by httpx (the client that will send the requests), and the returned URL
    is rebuilt from those parsed parts: a guard with a parser of its own can be shown a URL that it
    reads one way and the client another (``http://[::1]evil.com``, ``http://127.0.0.1\\@evil``).
    """
    raw = (url or DEFAULT_URL).strip()
    try:
        parts = httpx.URL(raw)
    except httpx.InvalidURL as exc:
        raise InvalidInput(f"{field} is not a valid URL ({exc}), got {raw!r}", field) from exc
    if parts.scheme not in ("http", "https") or not parts.host:
        raise InvalidInput(f"{field} must be an http:// URL of a local Ollama, got {raw!r}", field)
    if parts.userinfo:
        raise InvalidInput(f"{field} must not carry credentials", field)
    if parts.query or parts.fragment:
        raise InvalidInput(f"{field} must not have a query or fragment, got {raw!r}", field)
    host = parts.host
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False  # any other name could resolve anywhere (127.0.0.1.nip.io, rebinding)
    if not loopback:
        raise InvalidInput(
            f"{field} must be a loopback address (localhost, 127.0.0.0/8, ::1), got host {host!r}", field
        )
    if parts.port is not None and not 0 < parts.port < 65536:
        raise InvalidInput(f"{field} has a bad port {parts.port}: ports are 1-65535", field)
    rebuilt = httpx.URL(scheme=parts.scheme, host=host, port=parts.port, path=parts.path.rstrip("/"))
    return str(rebuilt).rstrip("/")


def check_name(name: str | None, field: str = "modelName") -> str:
    if not name or not _NAME.match(name):
        raise InvalidInput(
            f"{field} must be an Ollama model name (letters, digits, . _ -, optional namespace/ and :tag), "
            f"got {name!r}",
            field,
        )
    return name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


class OllamaClient:
    """The few Ollama calls an import needs, with no redirects and errors that say what to do."""

    def __init__(self, url: str, timeout_s: float = 600.0) -> None:
        self.url = check_url(url)
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.ConnectError as exc:
            raise Unavailable(
                f"Ollama is not running at {self.url} (start it with `ollama serve`): {exc}", "ollamaUrl"
            ) from exc
        except httpx.HTTPError as exc:
            raise LMError(f"Ollama at {self.url}: {exc}") from exc
        if resp.is_redirect:
            raise _redirected(self.url, path, resp)
        return resp

    def version(self) -> str:
        resp = self._send("GET", "/api/version")
        if resp.status_code != 200:
            raise LMError(f"{self.url} does not look like Ollama (/api/version answered {resp.status_code})")
        return str(resp.json().get("version", "?"))

    def show(self, model: str) -> dict[str, Any] | None:
        resp = self._send("POST", "/api/show", json={"model": model})
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise LMError(f"Ollama /api/show {model!r} answered {resp.status_code}: {resp.text[:300]}")
        body: dict[str, Any] = resp.json()
        return body

    def has_blob(self, digest: str) -> bool:
        return self._send("HEAD", f"/api/blobs/{digest}").status_code == 200

    def push_blob(self, digest: str, path: Path) -> None:
        with open(path, "rb") as f:
            resp = self._send("POST", f"/api/blobs/{digest}", content=f)
        if resp.status_code not in (200, 201):
            raise LMError(f"Ollama refused blob {path.name} ({digest}): {resp.status_code} {resp.text[:300]}")

    def create(self, body: dict[str, Any], report: Report) -> None:
        """``POST /api/create``, streaming its status lines into ``report``."""
        try:
            with self._http.stream("POST", "/api/create", json={**body, "stream": True}) as resp:
                if resp.is_redirect:
                    raise _redirected(self.url, "/api/create", resp)
                if resp.status_code != 200:
                    resp.read()
                    raise LMError(f"Ollama /api/create answered {resp.status_code}: {resp.text[:500]}")
                last = ""
                for line in resp.iter_lines():
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    if msg.get("error"):
                        raise LMError(f"Ollama could not create {body['model']!r}: {msg['error']}")
                    last = str(msg.get("status", ""))
                    report(0.9, f"ollama: {last}")
                if last != "success":
                    raise LMError(
                        f"Ollama's create of {body['model']!r} ended without success (last: {last!r})"
                    )
        except httpx.ConnectError as exc:
            raise Unavailable(f"Ollama is not running at {self.url}: {exc}", "ollamaUrl") from exc


def _redirected(url: str, path: str, resp: httpx.Response) -> Unavailable:
    return Unavailable(
        f"{url} answered {path} with a redirect to {resp.headers.get('location')!r}; redirects are not "
        "followed: point ollamaUrl at the Ollama server itself",
        "ollamaUrl",
    )


def _base_config(model: Model) -> dict[str, Any]:
    from trajforge.train.lora import resolve_base

    folder = Path(model.metrics.get("baseDir") or resolve_base(model.base_model))
    config: dict[str, Any] = json.loads((folder / "config.json").read_text())
    return config


def check_base(info: dict[str, Any], config: dict[str, Any], base_model: str) -> None:
    """Refuse an Ollama base model that is not the model the adapter was trained on."""
    model_info = info.get("model_info") or {}
    arch = model_info.get("general.architecture") or (info.get("details") or {}).get("family")
    trained = config.get("model_type")
    if arch != trained:
        raise InvalidInput(
            f"the Ollama model {base_model!r} is a {arch!r} model but the adapter was trained on a "
            f"{trained!r} model: pass the same base model as baseModel",
            "baseModel",
        )
    for key, attr in _CHECKED:
        theirs, ours = model_info.get(f"{arch}.{key}"), config.get(attr)
        if theirs is not None and ours is not None and int(theirs) != int(ours):
            raise InvalidInput(
                f"the Ollama model {base_model!r} has {key} {theirs} but the adapter's base has "
                f"{attr} {ours}: it is not the model the adapter was trained on",
                "baseModel",
            )


def default_base(model: Model) -> str | None:
    """The Ollama name of the base ``model`` was trained on, when the registry knows one."""
    return OLLAMA_BASES.get(model.base_model)


class ImportRequest(Request):
    """Import a registered model into a local Ollama."""

    model_name: Annotated[
        str, Field(min_length=1, max_length=200, description="Name of the new Ollama model"), Flag("--name")
    ]
    base_model: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=200,
            description="The Ollama model the adapter was trained on (default: the Ollama name of the "
            "model's base when known, e.g. smollm2:135m for bundled:smollm2-135m)",
        ),
        Flag("--base"),
    ] = None
    ollama_url: Annotated[
        str | None,
        Field(min_length=1, max_length=500, description="Loopback only (default http://127.0.0.1:11434)"),
    ] = None
    system: Annotated[
        str | None, Field(max_length=100_000, description="System prompt baked into the model")
    ] = None


def import_model(
    store: TrainingStore,
    model_id: str,
    model_name: str,
    base_model: str | None,
    ollama_url: str | None = None,
    *,
    system: str | None = None,
    report: Report | None = None,
) -> dict[str, Any]:
    """Import a registered model into Ollama as ``model_name``; records the name on the model and
    emits ``model_imported``. Returns what was sent.

    ``base_model`` (the Ollama model the adapter goes on) may be None when the registry maps the
    model's base to an Ollama name (:data:`OLLAMA_BASES`); the result says when it was defaulted.
    """
    from trajforge import models

    say = report or (lambda p, m: None)
    model_name = check_name(model_name)
    if base_model is not None:
        base_model = check_name(base_model, "baseModel")
    url = check_url(ollama_url)
    model = models.get(store, model_id)
    config = _base_config(model)
    arch = config.get("model_type")
    defaulted = False
    if base_model is None and arch in ADAPTER_ARCHITECTURES and model.adapter_path:
        base_model = default_base(model)
        defaulted = base_model is not None
        if base_model is None:
            raise InvalidInput(
                f"baseModel is required: the name in Ollama of the model {model_id} was trained on "
                f'({model.base_model!r}), e.g. "baseModel": "smollm2:135m" for bundled:smollm2-135m '
                "(pull it first: ollama pull …)",
                "baseModel",
            )
    client = OllamaClient(url)
    try:
        say(0.05, f"Ollama {client.version()} at {url}")
        body: dict[str, Any] = {"model": model_name}
        if base_model is not None and arch in ADAPTER_ARCHITECTURES and model.adapter_path:
            info = client.show(base_model)
            if info is None:
                raise InvalidInput(
                    f"Ollama has no model {base_model!r}: pull or create the base first (ollama pull …)",
                    "baseModel",
                )
            check_base(info, config, base_model)
            folder, names, key = Path(model.adapter_path), list(ADAPTER_FILES), "adapters"
            body["from"] = base_model
        elif model.merged_path:
            folder, key = Path(model.merged_path), "files"
            names = sorted(p.name for p in folder.iterdir() if p.suffix in MODEL_FILE_SUFFIXES)
        else:
            raise InvalidInput(
                f"Ollama converts safetensors adapters only for {' and '.join(ADAPTER_ARCHITECTURES)}; "
                f"this model is {arch!r}. Train with merge: true to import the merged model, or convert "
                "it to GGUF with llama.cpp's convert_hf_to_gguf.py",
                "id",
            )
        digests: dict[str, str] = {}
        for i, name in enumerate(names):
            path = folder / name
            if not path.is_file():
                raise InvalidInput(f"model {model_id} is missing {path}", "id")
            digest = sha256_file(path)
            if client.has_blob(digest):
                say(0.1 + 0.7 * (i + 1) / len(names), f"{name}: already in Ollama")
            else:
                client.push_blob(digest, path)
                say(0.1 + 0.7 * (i + 1) / len(names), f"{name}: uploaded ({path.stat().st_size} bytes)")
            digests[name] = digest
        body[key] = digests
        if system:
            body["system"] = system
        client.create(body, say)
    finally:
        client.close()
    store.update_model(model_id, ollama_name=model_name)
    store.add_event(
        JobEvent(
            "model_imported",
            f"imported as {model_name} into Ollama at {url}",
            model_id=model_id,
            job_id=model.job_id,
            data={"modelName": model_name, "baseModel": base_model, "ollamaUrl": url},
        )
    )
    say(1.0, f"imported as {model_name}")
    sent = {k: v for k, v in body.items() if k != "system"}
    result: dict[str, Any] = {
        "modelName": model_name,
        "ollamaUrl": url,
        "mode": key,
        "request": sent,
        "baseModel": body.get("from"),
        "baseModelDefaulted": defaulted,
    }
    if defaulted:
        result["note"] = f"baseModel defaulted to {base_model!r}, Ollama's name for {model.base_model!r}"
    return result
