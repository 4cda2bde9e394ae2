"""The files of a run folder and of its parent: the manifest, the readiness report, the README, the
HTML viewer (:mod:`.viewer`), the collection index, and the ``[collect]`` lines of ``collect list``.
Only fixed file names are written, under the run folder and its parent."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from trajforge.collect.readiness import command_line
from trajforge.records import iso_ms, now_ms

MANIFEST = "collection-manifest.json"
README = "README.md"
VIEWER = "analysis/index.html"
READINESS_JSON = "analysis/training-readiness-report.json"
INDEX_JSON = "collection-index.json"
INDEX_HTML = "collection-index.html"


def _write(path: Path, data: bytes) -> None:
    """Write through a temporary file, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _json(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n"


def write_run_files(run_dir: Path, manifest: dict[str, Any]) -> None:
    from trajforge.collect.viewer import render_run

    ready = manifest["readiness"]
    _write(
        run_dir / READINESS_JSON,
        _json(
            {
                "schema": "trajforge_training_readiness",
                "schemaVersion": 1,
                "runId": manifest["id"],
                "generatedAt": manifest["generatedAt"],
                **ready,
            }
        ),
    )
    _write(run_dir / README, readme(manifest).encode())
    _write(run_dir / VIEWER, render_run(manifest).encode())
    _write(run_dir / MANIFEST, _json(manifest))  # last: a folder with a manifest is a complete run


# --- README ---------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    """A markdown table cell: one line, no column breaks, no raw HTML."""
    text = "" if value is None else str(value)
    text = " ".join(text.split())
    for a, b in (("\\", "\\\\"), ("|", "\\|"), ("<", "\\<"), (">", "\\>"), ("`", "\\`")):
        text = text.replace(a, b)
    return text[:300]


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    if not rows:
        return ["_none_", ""]
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return [*out, ""]


def _step(manifest: dict[str, Any], step: str) -> dict[str, Any]:
    for s in manifest["steps"]:
        if s["id"] == step and s["status"] != "skipped":
            result: dict[str, Any] = s["result"]
            return result
    return {}


def readme(m: dict[str, Any]) -> str:
    ready = m["readiness"]
    lines = [
        f"# Collection run {_cell(m['id'])}",
        "",
        f"Generated {m['generatedAt']} ({m['mode']} run) by trajforge {_cell(m['provenance']['version'])} "
        f"from a {_cell(m['provenance']['store']['backend'])} store.",
        "",
        f"**Training readiness: {ready['status']}** — {ready['counts']['ready']} ready, "
        f"{ready['counts']['partial']} partial, {ready['counts']['missing']} missing.",
        "",
        "Open `analysis/index.html` for the full view; `collection-manifest.json` has everything below.",
        "",
        "## Readiness gaps",
        "",
    ]
    lines += _table(
        ["check", "status", "note", "next command"],
        [
            [
                c["label"],
                c["status"],
                c["note"],
                command_line(c["recommendedAction"]) if c["recommendedAction"] else "",
            ]
            for c in ready["checks"]
        ],
    )
    traj = _step(m, "trajectories")
    lines += ["## Sources", ""]
    lines += _table(["source", "trajectories"], [[k, v] for k, v in sorted(traj.get("bySource", {}).items())])
    imports = _step(m, "jsonl_imports").get("files", [])
    if imports:
        lines += ["### JSONL imports", ""]
        lines += _table(
            ["file", "status", "trajectories", "new"],
            [[f["file"], f["status"], f.get("trajectories"), f.get("newTrajectories")] for f in imports],
        )
    pulled = _step(m, "hf_datasets").get("datasets", [])
    if pulled:
        lines += ["### Hugging Face datasets", ""]
        lines += _table(
            ["repo", "status", "revision", "dataset", "rows", "error"],
            [
                [d["repo"], d["status"], d.get("revision"), d.get("datasetId"), d.get("rows"), d.get("error")]
                for d in pulled
            ],
        )
    lines += ["## Tasks", ""]
    lines += _table(
        ["task", "trajectories", "completed", "rewarded or scored", "with a scenario id"],
        [
            [t["task"], t["trajectories"], t["completed"], t["rewardedOrScored"], t["withScenario"]]
            for t in traj.get("tasks", [])
        ],
    )
    lines += ["## Samples (privacy-filtered)", ""]
    lines += _table(
        ["source", "agent", "status", "reward", "prompt", "response"],
        [
            [src, s["agentId"], s["status"], s["totalReward"], s["prompt"], s["response"]]
            for src, rows in sorted(m["samplePreviews"].items())
            for s in rows
        ],
    )
    lines += ["## Datasets", ""]
    lines += _table(
        ["id", "name", "version", "format", "train", "eval", "dropped"],
        [
            [
                d["id"],
                d["name"],
                d["version"],
                d["format"],
                d["rows"].get("train"),
                d["rows"].get("eval"),
                d["droppedCount"],
            ]
            for d in _step(m, "datasets").get("datasets", [])
        ],
    )
    lines += ["## Evals and benchmarks", ""]
    lines += _table(
        ["model", "base", "trained", "points", "percent", "n"],
        [
            [
                c["modelId"],
                c.get("baseScore"),
                c.get("trainedScore"),
                c.get("deltaPoints"),
                c.get("deltaPct"),
                c.get("n"),
            ]
            for c in m["benchmarkComparisons"]
        ],
    )
    live = _step(m, "live_eval")
    if live:
        lines += [
            f"Live evaluation: {_cell(live['model'])} scored {live['score']:.3f} ({live['metric']}, n={live['n']}).",
            "",
        ]
    lines += ["## Models", ""]
    lines += _table(
        ["id", "base", "backend", "active", "weights on disk"],
        [
            [x["id"], x["baseModel"], x["backend"], x["active"], x["weightsOnDisk"]]
            for x in m["modelInventory"]
        ],
    )
    lines += ["## Prompt artifacts", ""]
    lines += _table(
        ["task", "version", "optimizer", "score", "baseline"],
        [
            [p["task"], p["current"], p["optimizer"], p["score"], p["baselineScore"]]
            for p in _step(m, "prompts").get("tasks", [])
        ],
    )
    lines += ["## Steps", ""]
    lines += _table(
        ["step", "status", "output", "error"],
        [
            [s["id"], s["status"], s["outputDir"] or "", s["error"] or s["result"].get("note", "")]
            for s in m["steps"]
        ],
    )
    return "\n".join(lines)


# --- the index and `collect list` ---------------------------------------------------------------------


def index_entry(m: dict[str, Any]) -> dict[str, Any]:
    """What the index (and ``collect list``, the API's list, the dashboard's cards) shows of a run."""
    ready = m["readiness"]
    ev = m.get("evidence", {})
    bench = ev.get("benchmarks") or {}
    models = ev.get("models") or {}
    run_id = m["id"]
    return {
        "id": run_id,
        "generatedAt": m["generatedAt"],
        "mode": m.get("mode"),
        "readiness": ready["status"],
        "counts": ready["counts"],
        "sources": ev.get("sources", {}),
        "evals": {"count": bench.get("count", 0), "firstImprovement": bench.get("firstImprovement")},
        "models": {"count": models.get("count", 0), "active": models.get("active")},
        "gaps": ready["gaps"],
        "steps": {s["id"]: s["status"] for s in m["steps"]},
        "links": {
            "manifest": f"{run_id}/{MANIFEST}",
            "readme": f"{run_id}/{README}",
            "viewer": f"{run_id}/{VIEWER}",
        },
    }


def load_runs(root: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Index entries of the runs under ``root`` (folders holding a manifest), newest first. One
    manifest is read at a time; an unreadable one is left out, not fatal."""
    entries = []
    if not root.is_dir():
        return []
    for child in root.iterdir():
        path = child / MANIFEST
        if not child.is_dir() or child.is_symlink() or not path.is_file():
            continue
        try:
            m = orjson.loads(path.read_bytes())
            if m.get("schema") != "trajforge_collection_run":
                continue
            entries.append(index_entry(m) | {"generatedAtMs": m.get("generatedAtMs", 0)})
        except (OSError, ValueError, KeyError, TypeError):
            continue
    entries.sort(key=lambda e: (e["generatedAtMs"], e["id"]), reverse=True)
    return entries[:limit] if limit is not None else entries


def write_index(root: Path) -> None:
    from trajforge.collect.viewer import render_index

    runs = load_runs(root)
    index = {
        "schema": "trajforge_collection_index",
        "schemaVersion": 1,
        "generatedAt": iso_ms(now_ms()),
        "runs": runs,
    }
    _write(root / INDEX_JSON, _json(index))
    _write(root / INDEX_HTML, render_index(index).encode())


def _gap(g: dict[str, Any]) -> str:
    action = g.get("recommendedAction")
    if not action:
        return f"{g['id']}:{g['status']}"
    text = f"{g['id']}:{g['status']}->{action['capability'].replace(' ', '-')}"
    if action.get("params"):
        text += " params=" + orjson.dumps(action["params"]).decode()
    return text


def list_line(entry: dict[str, Any], root: Path) -> str:
    """One run, in the seed's ``[collect]`` style."""
    counts = entry["counts"]
    sources = ",".join(f"{k}:{v}" for k, v in entry["sources"].items()) or "none"
    first = entry["evals"]["firstImprovement"]
    evals = str(entry["evals"]["count"])
    if first:
        evals += f"({first['modelId']}:{first['deltaPoints']:+.1f}pts"
        evals += f",{first['deltaPct']:+.1f}%)" if first.get("deltaPct") is not None else ")"
    models = str(entry["models"]["count"])
    if entry["models"]["active"]:
        models += f"(active={entry['models']['active']})"
    gaps = ";".join(_gap(g) for g in entry["gaps"]) or "none"
    return (
        f"[collect] run={entry['generatedAt']} readiness={entry['readiness']} ready={counts['ready']} "
        f"partial={counts['partial']} missing={counts['missing']} sources={sources} evals={evals} "
        f"models={models} gaps={gaps} viewer={root / entry['links']['viewer']}"
    )


def list_lines(root: Path, limit: int) -> list[str]:
    """``collect list``: two header lines, then one line per run, newest first."""
    runs = load_runs(root)
    lines = [
        f"[collect] root={root} runs={len(runs)}",
        f"[collect] showing {min(limit, len(runs))} newest (index {root / INDEX_HTML})",
    ]
    return lines + [list_line(e, root) for e in runs[:limit]]
