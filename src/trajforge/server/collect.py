"""``/api/training/collect`` and ``/api/training/collections``: collection runs over HTTP (the same
library call as ``trajforge collect run``), and the runs' files served read-only for the dashboard.

Over HTTP a run is untrusted: its folder must be inside ``<home>/collections`` and the files it
imports inside ``<home>`` (see :func:`trajforge.collect.run`). The served files are a fixed list
of names per run; the pages carry no script and are sent under a CSP that allows none.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from trajforge import collect
from trajforge.collect.request import CollectRequest
from trajforge.errors import InvalidInput, NotFound
from trajforge.server import dashboard
from trajforge.store import Store

router = APIRouter(prefix="/api/training", tags=["training"])
pages = APIRouter(include_in_schema=False)

RunId = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$", description="The run's id (its folder name)")
]
# The viewer has no script: none may run, styles are inline, images only data: URLs.
FILE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".json": "application/json",
}


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


@router.post(
    "/collect",
    status_code=201,
    summary="Run a collection (a dry run unless live), or only its preflight",
    responses={200: {"description": "preflightOnly: what a live run needs, checked"}},
)
def run_collection(request: Request, body: CollectRequest) -> Any:
    store = _store(request)
    if body.preflight_only:
        return JSONResponse({"preflight": collect.preflight(store, body, trusted=False)}, status_code=200)
    run = collect.run(store, body, trusted=False, hf_pull=collect.default_hf_pull())
    wire = run.to_wire()
    return {
        k: wire[k] for k in ("id", "outputDir", "manifestPath", "readmePath", "collectionIndex", "manifest")
    }


@router.get("/collections", summary="Saved collection runs, newest first")
def list_collections(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
    root = collect.default_root()
    return {"root": str(root), "collections": collect.list_runs(root, limit)}


@router.get("/collections/{run_id}", summary="One collection run's manifest")
def get_collection(run_id: RunId) -> dict[str, Any]:
    return {"manifest": collect.get_run(run_id)}


def _file(request: Request, path: Any) -> Response:
    if not dashboard.cookie_ok(request):
        return RedirectResponse("/login?next=/fine-tuning", status_code=303)
    response = FileResponse(path, media_type=_TYPES.get(path.suffix, "application/octet-stream"))
    response.headers["Content-Security-Policy"] = FILE_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@pages.get("/training/collections/collection-index.html")
def collection_index(request: Request) -> Response:
    path = collect.default_root().resolve() / collect.INDEX_HTML
    if not path.is_file():
        raise NotFound("no collection runs yet")
    return _file(request, path)


@pages.get("/training/collections/{run_id}/{name:path}")
def collection_file(request: Request, run_id: str, name: str) -> Response:
    try:
        path = collect.run_file(run_id, name)
    except InvalidInput as exc:  # a malformed id names nothing there is
        raise NotFound(exc.message) from None
    return _file(request, path)
