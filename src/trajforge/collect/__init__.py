"""Collection runs: gather every piece of training evidence (trajectories, imports, snapshots,
outcomes, prompt artifacts, models, benchmarks) into one inspectable run folder, check whether it
is enough to train on, and name the command that closes each gap.

    from trajforge import collect
    run = collect.run(store, collect.CollectRequest())   # a dry run: reads and summarises
    print(run.manifest["readiness"]["status"])

The run folder (``<home>/collections/<UTC time>`` unless given)::

    collection-manifest.json            schema trajforge_collection_run, version 1
    README.md                           the same in prose, with tables
    analysis/index.html                 one self-contained page (no scripts, no external resources)
    analysis/training-readiness-report.json
    steps/<step>/…                      what each step found

and its parent folder gets ``collection-index.json`` and ``collection-index.html`` listing every
run. A run writes only there: paths it is given are resolved, a folder that is not new or empty is
refused, and nothing from a trajectory ever becomes part of a path.
"""

from __future__ import annotations

import os
import platform
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trajforge import settings
from trajforge.collect import readiness
from trajforge.collect.report import (
    INDEX_HTML,
    INDEX_JSON,
    MANIFEST,
    READINESS_JSON,
    README,
    VIEWER,
    list_lines,
    load_runs,
    write_index,
    write_run_files,
)
from trajforge.collect.request import FOLDER_NAME, STEP_IDS, CollectRequest
from trajforge.collect.steps import (
    PROBE_TIMEOUT_S,
    Context,
    HfPull,
    StepResult,
    inside,
    live_target,
    run_steps,
    strip_userinfo,
)
from trajforge.errors import InvalidInput, NotFound, TrajforgeError
from trajforge.records import iso_ms, now_ms
from trajforge.store.base import Store

__all__ = [
    "INDEX_HTML",
    "INDEX_JSON",
    "MANIFEST",
    "READINESS_JSON",
    "README",
    "STEP_IDS",
    "VIEWER",
    "CollectRequest",
    "CollectionRun",
    "HfPull",
    "StepResult",
    "default_hf_pull",
    "default_root",
    "get_run",
    "list_lines",
    "list_runs",
    "preflight",
    "run",
]

SCHEMA = "trajforge_collection_run"
SCHEMA_VERSION = 1
_SECRET_KEY = re.compile(r"token|secret|passw|api[-_]?key|apikey|credential|auth|private[-_]?key", re.I)


@dataclass(slots=True)
class CollectionRun:
    """What a run wrote: its folder, files, and the manifest."""

    id: str
    output_dir: Path
    manifest: dict[str, Any]

    @property
    def manifest_path(self) -> Path:
        return self.output_dir / MANIFEST

    @property
    def readme_path(self) -> Path:
        return self.output_dir / README

    @property
    def collection_index(self) -> Path:
        return self.output_dir.parent / INDEX_JSON

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "outputDir": str(self.output_dir),
            "manifestPath": str(self.manifest_path),
            "readmePath": str(self.readme_path),
            "viewerPath": str(self.output_dir / VIEWER),
            "collectionIndex": str(self.collection_index),
            "collectionIndexHtml": str(self.output_dir.parent / INDEX_HTML),
            "manifest": self.manifest,
        }


def default_root(home: Path | None = None) -> Path:
    """``<home>/collections``: where runs go unless a folder is given, and what the API lists."""
    return (home or settings.home()) / "collections"


def default_hf_pull() -> HfPull:
    """The Hugging Face pull of :mod:`trajforge.hub`, loaded only when a run asks for one."""

    def pull(store: Store, repo: str, *, out_dir: Path) -> dict[str, Any]:
        from trajforge import hub

        return hub.pull_for_collect(store, repo, out_dir=out_dir)

    return pull


def redact(value: Any) -> Any:
    """``value`` without any key that looks like a token, secret, password or API key (at any
    depth), and URLs without their ``user:password@``."""
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items() if not _SECRET_KEY.search(str(k))}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and "://" in value and "@" in value:
        return strip_userinfo(value)
    return value


def _run_dir(req: CollectRequest, root: Path | None, trusted: bool, home: Path) -> Path:
    base = (root or default_root(home)).resolve()
    if req.output_dir is None:
        stamp = datetime.now(UTC)
        name = stamp.strftime("%Y%m%dT%H%M%S.") + f"{stamp.microsecond // 1000:03d}Z"
        path, n = base / name, 1
        while path.exists():
            n += 1
            path = base / f"{name}-{n}"
        return path
    given = Path(req.output_dir).expanduser()
    if not trusted:
        # Over HTTP a run goes inside the collections root, nowhere else on the server.
        path = (given if given.is_absolute() else base / given).resolve()
        if path == base or not inside(path, base):
            raise InvalidInput(f"outputDir must be a folder inside {base}", "outputDir")
    else:
        path = given.resolve()
    if not re.match(FOLDER_NAME, path.name):
        raise InvalidInput(
            "the run folder's name must be 1-80 letters, digits, _.- (it is the run's id)", "outputDir"
        )
    try:
        busy = path.exists() and (not path.is_dir() or any(path.iterdir()))
    except OSError as exc:
        raise InvalidInput(f"outputDir {path}: {exc.strerror}", "outputDir") from None
    if busy:
        raise InvalidInput(f"outputDir {path} exists and is not an empty folder", "outputDir")
    return path


def preflight(
    store: Store, req: CollectRequest, *, trusted: bool = True, home: Path | None = None
) -> dict[str, Any]:
    """What a live run needs, checked without writing anything: the store, the model endpoint (and,
    with ``probeEndpoints``, its ``GET /models``), the evaluation items, the files to import."""
    home = home or settings.home()
    checks: list[dict[str, Any]] = []

    def check(check_id: str, ok: bool | None, note: str) -> None:
        checks.append(
            {"id": check_id, "status": "ok" if ok else ("missing" if ok is None else "failed"), "note": note}
        )

    try:
        check("store", True, f"{store.count(_all())} trajectories")
    except Exception as exc:  # noqa: BLE001 - an unreachable database is the answer here, not a crash
        check("store", False, f"{type(exc).__name__}: {exc}")
    ctx = Context(store, req, home / "unused", home, trusted)
    target: tuple[str, str] | None = None
    try:
        target = live_target(ctx)
        check("endpoint", True, f"{target[0]} at {strip_userinfo(target[1])}")
    except TrajforgeError as exc:
        check("endpoint", None, exc.message)
    probe = None
    if req.probe_endpoints:
        base = req.base_url or (target[1] if target else None) or os.environ.get(settings.LM_BASE_URL)
        if base:
            probe = probe_models(base)
            check("probe", probe["ok"], probe.get("error") or f"{len(probe['models'])} model(s) listed")
        else:
            check("probe", None, "no baseUrl to probe")
    try:
        if req.suite:
            from trajforge import evaluate

            if req.suite not in evaluate.SUITES:
                raise InvalidInput(f"unknown suite {req.suite!r}", "suite")
            check("eval_items", True, f"suite {req.suite}")
        else:
            from trajforge.collect.steps import eval_dataset

            ds = eval_dataset(ctx)
            check(
                "eval_items",
                True,
                f"dataset {ds.id} ({ds.manifest['counts']['rows'].get('eval', 0)} eval rows)",
            )
    except TrajforgeError as exc:
        check("eval_items", None, exc.message)
    for given in req.jsonl:
        path = Path(given).expanduser().resolve()
        ok = path.is_file() and os.access(path, os.R_OK) and (trusted or inside(path, home))
        check("jsonl", ok, f"{path}" + ("" if ok else ": missing, unreadable or outside the state dir"))
    ready = all(c["status"] == "ok" for c in checks)
    return {"ready": ready, "checks": checks, "probe": probe}


def _all() -> Any:
    from trajforge.store.filter import TrajectoryFilter

    return TrajectoryFilter()


def probe_models(base_url: str) -> dict[str, Any]:
    """``GET <base_url>/models`` with a short timeout: whether it answered and the models it lists."""
    import httpx

    url = base_url.rstrip("/") + "/models"
    shown = strip_userinfo(url)
    try:
        resp = httpx.get(url, timeout=PROBE_TIMEOUT_S, follow_redirects=False)
    except httpx.HTTPError as exc:
        return {
            "url": shown,
            "ok": False,
            "status": None,
            "models": [],
            "error": f"{type(exc).__name__}: {exc}",
        }
    models: list[str] = []
    try:
        body = resp.json()
        data = body.get("data", []) if isinstance(body, dict) else []
        models = [str(m.get("id")) for m in data if isinstance(m, dict)][:50]
    except ValueError:
        pass
    ok = resp.status_code == 200
    return {
        "url": shown,
        "ok": ok,
        "status": resp.status_code,
        "models": models,
        "error": None if ok else f"answered {resp.status_code}",
    }


def _threshold_of(store: Store) -> Callable[[str], int]:
    from trajforge import autotrain

    config = autotrain.get_config(store)

    def threshold(task: str) -> int:
        return int(config["perTask"].get(task, {}).get("threshold", config["threshold"]))

    return threshold


def run(
    store: Store,
    req: CollectRequest,
    *,
    root: Path | None = None,
    trusted: bool = True,
    home: Path | None = None,
    hf_pull: HfPull | None = None,
    on_step: Callable[[StepResult], None] | None = None,
) -> CollectionRun:
    """Run every step, write the run folder and refresh its parent's index. ``trusted``: the
    request comes from this machine's user; over HTTP (False) the folder and the files to import
    must be inside the state dir. A failing step is recorded and the others run."""
    from trajforge import __version__, evaluate

    if req.preflight_only:
        raise InvalidInput("preflightOnly runs nothing: call preflight()", "preflightOnly")
    home = home or settings.home()
    run_dir = _run_dir(req, root, trusted, home)
    try:
        (run_dir / "analysis").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(f"cannot create the run folder {run_dir}: {exc.strerror}", "outputDir") from None
    generated = now_ms()
    ctx = Context(store, req, run_dir, home, trusted, hf_pull)
    checked = preflight(store, req, trusted=trusted, home=home) if (req.live or req.probe_endpoints) else None
    steps = run_steps(ctx, on_step)
    results = {s.id: (s.result if s.status == "succeeded" else None) for s in steps}
    ready = readiness.report(
        results,
        threshold_of=_threshold_of(store),
        require_score=req.require_score,
        suites=sorted(evaluate.SUITES),
    )
    manifest = {
        "schema": SCHEMA,
        "schemaVersion": SCHEMA_VERSION,
        "id": run_dir.name,
        "generatedAt": iso_ms(generated),
        "generatedAtMs": generated,
        "mode": "live" if req.live else "dry",
        "provenance": {
            "tool": "trajforge",
            "version": __version__,
            "store": {
                "backend": getattr(store, "dialect", type(store).__name__),
                "url": strip_userinfo(store.url),
            },
            "home": str(home),
            "host": socket.gethostname(),
            "python": platform.python_version(),
        },
        "recipe": redact(req.to_wire()),
        "preflight": checked,
        "steps": [s.to_wire() for s in steps],
        "evidence": _evidence(results, {s.id: s.result for s in steps}),
        "readiness": ready,
        "modelInventory": (results.get("models") or {}).get("models", []),
        "benchmarkComparisons": (results.get("benchmarks") or {}).get("comparisons", []),
        "samplePreviews": ctx.samples,
        "files": {"readme": README, "viewer": VIEWER, "readinessReport": READINESS_JSON},
    }
    write_run_files(run_dir, manifest)
    write_index(run_dir.parent)
    return CollectionRun(run_dir.name, run_dir, manifest)


def _evidence(
    results: dict[str, dict[str, Any] | None], partial: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Short summaries of what each step found (the steps carry the detail)."""
    traj = results.get("trajectories")
    # Imports and pulls count what arrived, also when another file or repo of the step failed.
    jsonl = partial.get("jsonl_imports")
    hf = partial.get("hf_datasets")
    ds = results.get("datasets")
    out = results.get("outcomes")
    prompts = results.get("prompts")
    models = results.get("models")
    bench = results.get("benchmarks")
    live = results.get("live_eval")
    improved = [c for c in (bench or {}).get("comparisons", []) if c.get("improved")]
    return {
        "sources": {
            **({f"store:{k}": v for k, v in sorted(traj["bySource"].items())} if traj else {}),
            "jsonl": sum(f.get("status") == "imported" for f in (jsonl or {}).get("files", [])),
            "hf": sum(d.get("status") == "pulled" for d in (hf or {}).get("datasets", [])),
        },
        "trajectories": None
        if traj is None
        else {
            "total": traj["total"],
            "llmCalls": traj["llmCalls"],
            "byStatus": traj["byStatus"],
            "tasks": len(traj["tasks"]),
            "duplicateRate": traj["duplicates"]["rate"],
            "rewarded": traj["reward"]["count"],
        },
        "datasets": None
        if ds is None
        else {"count": ds["count"], "formats": sorted({d["format"] for d in ds["datasets"]})},
        "outcomes": None
        if out is None
        else {"scores": {s["name"]: s["trajectories"] for s in out["scores"]}},
        "prompts": None if prompts is None else {"tasks": prompts["count"]},
        "models": None if models is None else {"count": models["count"], "active": models["active"]},
        "benchmarks": None
        if bench is None
        else {"count": bench["count"], "firstImprovement": improved[0] if improved else None},
        "liveEval": None
        if live is None
        else {k: live[k] for k in ("model", "metric", "n", "score") if k in live},
    }


def _check_id(run_id: str) -> str:
    if not re.match(FOLDER_NAME, run_id):
        raise InvalidInput("a collection id is 1-80 letters, digits, _.-", "id")
    return run_id


def list_runs(root: Path | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Saved runs under ``root`` (default ``<home>/collections``), newest first: each one's index
    entry (id, time, readiness, counts, links)."""
    return load_runs(root or default_root(), limit)


def get_run(run_id: str, root: Path | None = None) -> dict[str, Any]:
    """One run's manifest, by its id (its folder's name under ``root``)."""
    import orjson

    base = (root or default_root()).resolve()
    path = base / _check_id(run_id) / MANIFEST
    if not path.is_file() or not inside(path, base):
        raise NotFound(f"no collection run {run_id!r}", "id")
    data: dict[str, Any] = orjson.loads(path.read_bytes())
    return data


def run_file(run_id: str, name: str, root: Path | None = None) -> Path:
    """A file of a run the dashboard serves (one of the run's fixed file names)."""
    if name not in (MANIFEST, README, VIEWER, READINESS_JSON):
        raise NotFound(f"no such file {name!r}", "name")
    base = (root or default_root()).resolve()
    path = base / _check_id(run_id) / name
    if not path.is_file() or not inside(path, base):
        raise NotFound(f"no {name} in collection run {run_id!r}", "id")
    return path
