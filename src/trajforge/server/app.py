"""The FastAPI application factory: error shape, bearer auth, lifespan (the timeout sweep)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trajforge import __version__, settings
from trajforge.errors import TrajforgeError, Unauthorized
from trajforge.server import dashboard
from trajforge.server.migration import MigrationGate, MigrationStatus
from trajforge.server.schemas import ErrorResponse
from trajforge.store import Store, open_store
from trajforge.store.migrations import Progress

log = logging.getLogger("trajforge.server")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "Bad request (e.g. a malformed search)"),
        (401, "Missing or wrong bearer token"),
        (404, "Not found"),
        (421, "Without a token: the Host is not a loopback name or an allowed host (DNS rebinding)"),
        (422, "A field has a wrong value; `error.field` names it"),
    )
}


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": body}, status_code=status, headers=headers or None)


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_methods(request: Request) -> list[str]:
    """The methods /openapi.json documents for the request's path (for the ``Allow`` header)."""
    table = getattr(request.app.state, "allow_table", None)
    if table is None:
        table = [
            (
                re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(path)) + "$"),
                "{" not in path,
                sorted(m.upper() for m in ops),
            )
            for path, ops in request.app.openapi()["paths"].items()
        ]
        request.app.state.allow_table = table
    matches = [(literal, ops) for pattern, literal, ops in table if pattern.match(request.url.path)]
    # A literal path (/api/trajectories/export) is what the schema names; templated siblings
    # ({trajectory_id}) only answer when no literal path matches.
    if any(literal for literal, _ in matches):
        matches = [m for m in matches if m[0]]
    return sorted({op for _, ops in matches for op in ops})


def host_allowed(host_header: str | None, allowed: Sequence[str]) -> bool:
    """Whether a tokenless server should answer a request whose ``Host`` header is ``host_header``:
    a loopback name (``127.0.0.1``, ``localhost``, ``[::1]``, any port) or one of ``allowed``
    (``name`` matches any port, ``name:port`` only that port).

    Why: a page on ``rebind.evil.example`` whose DNS name is rebound to 127.0.0.1 reaches this
    server as same-origin for the browser, and its requests carry ``Host: rebind.evil.example``.
    The Host is the one thing such a page cannot choose, so it is what is checked.
    """
    if host_header is None:
        return True  # HTTP/1.0 without Host: no browser sends that, so no page can be behind it
    host = host_header.strip().lower()
    if host in allowed:
        return True
    # A strict grammar of its own (RFC 9110's uri-host [":" port], reg-name or bracketed IPv6):
    # a lenient URL parser reads "[::1]evil.example" as host ::1.
    m = _HOST.fullmatch(host)
    if m is None:
        return False
    name = m.group("v6") or m.group("name")
    return is_loopback(name) or name in allowed


_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::[0-9]{1,5})?")


class _Guard:
    """Refuses, on every route: requests addressed to a name other than loopback or ``hosts`` when
    ``hosts`` is given (a tokenless server: DNS rebinding, see :func:`host_allowed`; reads too,
    since a rebinding page could read every trajectory; with a token the token guards, whatever
    the name); state-changing requests a browser sends on another site's behalf (CSRF: with or
    without a token, a page elsewhere must not cancel jobs or delete trajectories here); and
    request bodies over ``max_body`` bytes (413).

    Plain ASGI, not ``BaseHTTPMiddleware``: that one ends a streamed response cleanly when the app
    fails midway, so an export cut short by an error looked like a complete 200. Here the error
    reaches the server, which drops the connection: the client sees an incomplete body.
    """

    def __init__(self, app: ASGIApp, max_body: int, hosts: Sequence[str] | None) -> None:
        self.app = app
        self.max_body = max_body
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host")
        if self.hosts is not None and not host_allowed(host, self.hosts):
            response = error_response(
                421,
                "misdirected",
                f"this server answers only loopback host names (127.0.0.1, localhost, [::1]), not Host "
                f"{host!r}; to serve it under that name, start it with --allow-host NAME (or set "
                f"{settings.ALLOWED_HOSTS}) or set {settings.API_TOKEN}",
                "Host",
            )
            await response(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get("origin")
            cross = headers.get("sec-fetch-site") == "cross-site"
            if cross or (origin is not None and urlsplit(origin).netloc != headers.get("host")):
                response = error_response(
                    403, "forbidden", "cross-origin requests may not change anything here"
                )
                await response(scope, receive, send)
                return
        limit = self.max_body
        declared = headers.get("content-length", "")
        if declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
            await error_response(413, "too_large", f"the body is over the {limit} byte limit")(
                scope, receive, send
            )
            return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # a chunked body that does not say its length
                    raise StarletteHTTPException(413, f"the body is over the {limit} byte limit")
            return message

        await self.app(scope, bounded, send)


_bearer = HTTPBearer(auto_error=False, description="Required when the server has TRAJFORGE_API_TOKEN set.")


_TYPE_TAGS = {"int", "float", "str", "bool", "datetime", "date", "list", "dict", "none", "constrained-str"}


def _union_tag(part: object) -> bool:
    """Pydantic names the member of a union that failed (``DeleteIds``, ``int``,
    ``function-after[...]``) in an error's location: not a field name."""
    return isinstance(part, str) and (part[:1].isupper() or part in _TYPE_TAGS or "[" in part)


def create_app(
    store: Store | str | None = None,
    *,
    token: str | None = None,
    sweep_interval_s: float = 60.0,
    max_ingest_bytes: int = 32 * 1024 * 1024,
    run_jobs: bool = False,
    allowed_hosts: Sequence[str] | None = None,
    proxy_upstream: str | None = None,
    on_migration: Progress | None = None,
) -> FastAPI:
    """Build the app over ``store`` (a Store, a URL, or the configured default).

    ``token`` (default ``$TRAJFORGE_API_TOKEN``) makes every ``/api/`` route require
    ``Authorization: Bearer <token>``. ``run_jobs`` starts a job runner with the app (``trajforge
    serve`` does); without one, queued jobs wait for a runner elsewhere on the same store.

    Without a token, only requests whose ``Host`` is a loopback name or one of ``allowed_hosts``
    (default ``$TRAJFORGE_ALLOWED_HOSTS``) are answered: see :func:`host_allowed`.

    ``proxy_upstream`` (an OpenAI base URL) also serves the capture proxy under ``/proxy/v1/...``,
    recording into this store (:mod:`trajforge.proxy`).

    A store given as a URL is opened without running a pending data migration: the app runs it
    after it starts (reporting each batch to ``on_migration``, and in ``/healthz``), answering 503
    on every other route until it is done (:mod:`trajforge.server.migration`). A store given as a
    Store may have been opened the same way (``open_store(url, migrate_data=False)``).
    """
    owns_store = store is None or isinstance(store, str)
    the_store: Store = (
        open_store(store, migrate_data=False) if store is None or isinstance(store, str) else store
    )
    pending = the_store.pending_data_migration()
    migration = MigrationStatus() if pending is None else MigrationStatus(state="running", name=pending)
    api_token = token if token is not None else settings.api_token()
    capture_proxy = None
    if proxy_upstream is not None:
        from trajforge.proxy import ProxyApp, check_upstream, store_writer

        url = check_upstream(proxy_upstream)  # before the writer's thread starts
        capture_proxy = ProxyApp(url, store_writer(the_store), token=api_token, max_body=max_ingest_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner = None

        async def sweeper() -> None:
            while True:
                try:
                    await run_in_threadpool(the_store.sweep_timeouts, int(settings.active_timeout_s() * 1000))
                except Exception:
                    log.exception("timeout sweep failed")
                await asyncio.sleep(sweep_interval_s)

        async def start_job_runner() -> None:
            nonlocal runner
            if run_jobs:
                from trajforge.jobs import JobRunner

                runner = await run_in_threadpool(lambda: JobRunner(the_store.url).start())

        async def start() -> None:
            if not migration.ready:
                # In a thread, after startup: the server answers /healthz (and 503 elsewhere)
                # meanwhile; the job runner and the sweep need the migrated store.
                await run_in_threadpool(migration.run, the_store, on_migration)
                if not migration.ready:
                    return  # failed (503 stays, /healthz says why) or stopped
                await start_job_runner()
            await sweeper()

        if migration.ready:
            await start_job_runner()  # as before: the runner is up when startup ends
        task = asyncio.create_task(start())
        try:
            yield
        finally:
            # A running data migration ends after its current batch, before the store closes.
            await run_in_threadpool(migration.stop)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if runner is not None:
                await run_in_threadpool(runner.stop)
            if capture_proxy is not None:
                await capture_proxy.aclose()
            if owns_store:
                the_store.close()

    async def require_token(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> None:
        assert api_token is not None
        given = credentials.credentials if credentials is not None else ""
        if hmac.compare_digest(given.encode(), api_token.encode()):
            return
        # The dashboard's session cookie (SameSite=Strict) may read — pages, the event stream —
        # but never change anything: state-changing calls need the bearer header.
        if request.method in ("GET", "HEAD") and dashboard.cookie_ok(request):
            return
        raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")

    app = FastAPI(
        title="trajforge",
        version=__version__,
        description="Capture, browse, curate and train on agent trajectories.",
        lifespan=lifespan,
    )
    app.state.store = the_store
    app.state.max_ingest_bytes = max_ingest_bytes
    app.state.api_token = api_token
    app.state.run_jobs = run_jobs
    app.state.migration = migration
    hosts = [
        h.strip().lower() for h in (settings.allowed_hosts() if allowed_hosts is None else allowed_hosts)
    ]

    app.add_middleware(MigrationGate, status=migration)
    app.add_middleware(_Guard, max_body=max_ingest_bytes, hosts=None if api_token is not None else hosts)

    @app.exception_handler(TrajforgeError)
    async def trajforge_error(request: Request, exc: TrajforgeError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        # Keep field names only: drop the request part and union member names (DeleteIds, ...).
        loc = [
            str(p)
            for p in first.get("loc", ())
            if p not in ("body", "query", "path", "header") and not _union_tag(p)
        ]
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            return error_response(400, "invalid_json", f"the body is not valid JSON: {message}")
        return error_response(422, "invalid", message, ".".join(loc) or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette lists only the first matching route's methods; RFC 9110 wants all of them.
            headers["Allow"] = ", ".join(allowed_methods(request))
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        # ``migration``: the store's data migration, ``running`` (with done/total/progress) while
        # the other routes answer 503, ``done``, or ``failed`` (then this answers 503 too).
        ok = migration.state != "failed"
        body = {"ok": ok, "version": __version__, "migration": migration.as_json()}
        return JSONResponse(body, status_code=200 if ok else 503)

    from fastapi.staticfiles import StaticFiles

    from trajforge.server import collect, otel, training, trajectories, vast

    # The bearer scheme is declared (and enforced) only when a token is set, so /openapi.json says
    # exactly what the server requires.
    guard = [Depends(require_token)] if api_token is not None else []
    app.include_router(trajectories.router, dependencies=guard, responses=ERROR_RESPONSES)
    app.include_router(training.router, dependencies=guard, responses=ERROR_RESPONSES)
    app.include_router(vast.router, dependencies=guard, responses=ERROR_RESPONSES)
    app.include_router(otel.router, dependencies=guard)
    app.include_router(collect.router, dependencies=guard, responses=ERROR_RESPONSES)
    app.include_router(dashboard.router)
    app.include_router(collect.pages)
    app.mount("/static", StaticFiles(directory=str(dashboard.HERE / "static")), name="static")
    if capture_proxy is not None:
        app.mount("/proxy", capture_proxy)
    return app
