"""The web dashboard: server-rendered pages (Jinja2, autoescaped) over the same store and library
functions as the API, with a little hand-written JavaScript for the live parts (forms that call the
API, Server-Sent Events for job progress). No build step, nothing fetched from the internet, charts
as inline SVG.

Security: every prompt, response, id and metadata value is attacker-controlled text; templates
escape everything (no ``|safe`` on user content) and the page sets a Content-Security-Policy that
allows scripts only from this server. With an API token, the dashboard asks for it once
(``/login``): the browser keeps it in ``sessionStorage`` and sends it as a bearer header on every API
call, and the server sets a ``SameSite=Strict`` HttpOnly cookie that authorizes *reading* (pages,
GET requests, the event stream) only. State-changing calls need the bearer header, which another
site cannot make a browser send; unsafe methods from another origin are refused outright.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from trajforge import jobs, models
from trajforge.datasets.request import FORMATS
from trajforge.errors import TrajforgeError
from trajforge.limits import MAX_OFFSET
from trajforge.records import iso_ms
from trajforge.store import Store
from trajforge.store.filter import FilterQuery, TrajectoryFilter
from trajforge.validation import OverLimit, check_readable

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals["iso"] = lambda ms: iso_ms(ms) if ms else ""
PAGE_SIZE = 50
MAX_PAGE = MAX_OFFSET // PAGE_SIZE + 1
COOKIE = "trajforge_session"
SOURCES = ("chat", "autonomy", "telegram", "discord", "api")
STATUSES = ("active", "completed", "error", "timeout")
# Every filter field but the id list can sit in the page's URL.
FILTER_KEYS = tuple(v for k, v in TrajectoryFilter.aliases().items() if k != "trajectory_ids")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

router = APIRouter(include_in_schema=False)


def session_value(token: str) -> str:
    """What the session cookie holds: derived from the token, never the token itself."""
    return hmac.new(token.encode(), b"trajforge-dashboard-session", hashlib.sha256).hexdigest()


def cookie_ok(request: Request) -> bool:
    token: str | None = request.app.state.api_token
    if token is None:
        return True
    given = request.cookies.get(COOKIE, "")
    return hmac.compare_digest(given.encode(), session_value(token).encode())


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    if not cookie_ok(request):
        return RedirectResponse(f"/login?{urlencode({'next': request.url.path})}", status_code=303)
    response = templates.TemplateResponse(
        request,
        name,
        {"token_required": request.app.state.api_token is not None, **context},
        status_code=status,
    )
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@router.get("/", response_class=HTMLResponse)
def home() -> Response:
    return RedirectResponse("/trajectories", status_code=303)


def safe_next(target: str, default: str = "/trajectories") -> str:
    """``target`` if it is a path on this site, else ``default``: never a way to another site.

    Browsers read ``/\\evil.example`` as ``//evil.example`` (a backslash is a slash in http URLs) and
    drop tabs and newlines from URLs, so ``/\t/evil.example`` is one too: besides ``//`` and
    schemes, backslashes and control characters are refused outright.
    """
    if not target.startswith("/") or target.startswith("//"):
        return default
    if "\\" in target or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target


@router.get("/login", response_class=HTMLResponse)
def login(request: Request, next: str = "/trajectories") -> Response:
    target = safe_next(next)
    response = templates.TemplateResponse(request, "login.html", {"next": target, "token_required": True})
    response.headers["Content-Security-Policy"] = CSP
    return response


@router.post("/session")
async def session(request: Request) -> Response:
    """Exchange the API token (JSON ``{"token"}``) for the read-only session cookie."""
    token: str | None = request.app.state.api_token
    try:
        body = await request.json()
    except ValueError:
        body = {}
    given = str(body.get("token", "")) if isinstance(body, dict) else ""
    if token is not None and not hmac.compare_digest(given.encode(), token.encode()):
        return Response(status_code=401)
    response = Response(status_code=204)
    if token is not None:
        response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict", path="/")
    return response


def _filters(request: Request) -> dict[str, str]:
    return {k: v for k in FILTER_KEYS if (v := request.query_params.get(k, "").strip())}


def _histogram(values: list[float], bins: int = 10) -> list[dict[str, Any]]:
    if not values:
        return []
    lo, hi = min(values), max(values)
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    return [{"from": lo + i * width, "to": lo + (i + 1) * width, "count": c} for i, c in enumerate(counts)]


def _bars(items: list[tuple[str, float]], width: int = 360, height: int = 90) -> dict[str, Any]:
    """Geometry of a small bar chart (the template draws it as SVG)."""
    top = max((v for _, v in items), default=0) or 1
    n = max(1, len(items))
    bw = width / n
    return {
        "width": width,
        "height": height,
        "bars": [
            {
                "x": round(i * bw + 1, 1),
                "w": round(max(1.0, bw - 2), 1),
                "h": round((height - 14) * v / top, 1),
                "y": round(height - 14 - (height - 14) * v / top, 1),
                "label": label,
                "value": v,
            }
            for i, (label, v) in enumerate(items)
        ],
    }


def _line(points: list[tuple[int, float]], width: int = 200, height: int = 60) -> dict[str, Any] | None:
    """Geometry of a small line chart (step → value; the template draws it as SVG)."""
    if not points:
        return None
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    x0, x1 = min(xs), max(xs)
    lo, hi = min(ys), max(ys)
    plot = height - 14

    def at(x: int, y: float) -> str:
        px = 2 + (width - 4) * ((x - x0) / (x1 - x0) if x1 > x0 else 0.5)
        py = 2 + (plot - 4) * (1 - ((y - lo) / (hi - lo) if hi > lo else 0.5))
        return f"{px:.1f},{py:.1f}"

    return {
        "width": width,
        "height": height,
        "points": " ".join(at(x, y) for x, y in points),
        "first": ys[0],
        "last": ys[-1],
        "lo": lo,
        "hi": hi,
        "steps": x1,
    }


_REWARD_STEP = re.compile(r"^step (\d+)/\d+ reward (-?\d+(?:\.\d+)?)")


def _reward_curve(store: Store, job: Any) -> dict[str, Any] | None:
    """A GRPO job's mean reward per step, read from its progress events (what its log says)."""
    if job.kind != "lora" or (job.request.get("method") != "grpo" and not job.request.get("reward")):
        return None
    points = []
    for e in store.list_events(job_id=job.id, kinds=["job_progress"], limit=5000):
        m = _REWARD_STEP.match(e.message or "")
        if m:
            points.append((int(m.group(1)), float(m.group(2))))
    return _line(points)


@router.get("/trajectories", response_class=HTMLResponse)
def trajectories_page(request: Request) -> Response:
    store = _store(request)
    params = _filters(request)
    error = None
    raw_page = request.query_params.get("page", "1").strip() or "1"
    page = int(raw_page) if raw_page.isascii() and raw_page.isdigit() and len(raw_page) < 9 else 0
    if not 1 <= page <= MAX_PAGE:  # a bigger one would be an offset past what SQL takes
        error, page = f"page must be a number from 1 to {MAX_PAGE}", 1
    items: list[Any] = []
    total, at_least = 0, False
    stats: dict[str, Any] = {}
    rewards: list[float] = []
    # What the export buttons send: the filter as the export body takes it (typed), or as typed in
    # the URL when it does not parse (the export then answers the same error).
    export_filter: dict[str, Any] = dict(params)
    try:
        flt = FilterQuery.parse(params)
        export_filter = flt.only_filter().to_wire()
        result = store.list_trajectories(flt, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
        items, total, at_least = result.items, result.total, result.total_is_lower_bound
        stats = store.stats(flt)
        sample = store.list_trajectories(flt, limit=500).items
        rewards = [
            t.total_reward for t in sample if t.total_reward is not None and math.isfinite(t.total_reward)
        ]
    except TrajforgeError as exc:
        error = error or exc.message
    pages = max(1, math.ceil(total / PAGE_SIZE))
    per_day = stats.get("perDay", [])[-30:]
    hist = _histogram(rewards)
    return _page(
        request,
        "trajectories.html",
        {
            "items": items,
            "total": total,
            "total_at_least": at_least,
            "page": page,
            "pages": pages,
            "filters": params,
            "export_filter": export_filter,
            "error": error,
            "sources": SOURCES,
            "statuses": STATUSES,
            "stats": stats,
            "prev_url": "?" + urlencode({**params, "page": page - 1}) if page > 1 else None,
            "next_url": "?" + urlencode({**params, "page": page + 1}) if page < pages else None,
            "reward_chart": _bars([(f"{b['from']:.2g}–{b['to']:.2g}", b["count"]) for b in hist]),
            "day_chart": _bars([(d["date"], d["llmCalls"]) for d in per_day]),
            "reward_sample": len(rewards),
        },
    )


@router.get("/trajectories/{trajectory_id}", response_class=HTMLResponse)
def trajectory_page(request: Request, trajectory_id: str) -> Response:
    t = _store(request).get_trajectory(trajectory_id)
    if t is None:
        return _page(request, "not_found.html", {"what": f"trajectory {trajectory_id}"}, status=404)
    try:
        check_readable(t)
    except OverLimit as exc:
        return _page(request, "error.html", {"title": "Cannot show it", "message": exc.message}, exc.status)
    return _page(request, "trajectory.html", {"t": t})


def _remote(job: Any) -> dict[str, Any] | None:
    """Where a remote job runs and, on Vast.ai, what it has spent: the job view's line under its
    backend (the page ticks the spend on from ``dph`` and ``createdAt`` while it runs)."""
    if job.backend == "vast":
        from trajforge.train import vast

        b = vast.budget(job)
        ssh = ((job.output or {}).get("vast") or {}).get("ssh")
        gpu = f"{b['numGpus']}x {b['gpu']}" if b.get("gpu") else "no instance yet"
        created = ((job.output or {}).get("vast") or {}).get("createdAt")
        return {**b, "where": f"{gpu} · {ssh}" if ssh else gpu, "createdAt": created}
    host = (job.request or {}).get("host")
    if job.backend == "ssh" and isinstance(host, str):
        return {"where": host, "maxCost": None}
    return None


@router.get("/fine-tuning", response_class=HTMLResponse)
def fine_tuning_page(request: Request) -> Response:
    from trajforge import autotrain, collect, ollama
    from trajforge.collect.readiness import command_line
    from trajforge.optimize import artifacts

    store = _store(request)
    recent = store.list_jobs(limit=50)
    prompts = artifacts.tasks()
    model_rows = []
    for m in store.list_models(limit=50):
        ev = m.evaluation or {}
        chart = None
        if ev.get("status") == "completed":
            chart = _bars([("base", float(ev["baseScore"])), ("trained", float(ev["trainedScore"]))], 160, 70)
        model_rows.append(
            {"m": models.wire(m, per_item=False), "chart": chart, "ollama_base": ollama.default_base(m)}
        )
    return _page(
        request,
        "fine_tuning.html",
        {
            "trajectory_count": store.count(TrajectoryFilter()),
            "jobs": [{**jobs.wire(j), "rewardCurve": _reward_curve(store, j)} for j in recent],
            "remote": {j.id: r for j in recent if (r := _remote(j))},
            "job_counts": jobs.counts(store),
            "backends": jobs.backends(),
            "datasets": store.list_datasets(limit=50),
            "formats": FORMATS,
            "models": model_rows,
            "prompts": prompts,
            "auto_config": autotrain.get_config(store),
            "auto_status": autotrain.status(store),
            "last_seq": store.last_event_seq(),
            "collections": collect.list_runs(limit=10),
            "collect_command": command_line,
        },
    )
