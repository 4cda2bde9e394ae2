"""The run's HTML viewer and the parent's collection index: one self-contained page each.

Everything shown is escaped (Jinja2 with autoescape on, and no ``|safe`` anywhere: agent ids,
prompts, task names and paths are attacker-controlled text). The pages load nothing: the styles are
inline, the charts are inline SVG computed here, and there is no script, so they open the same from
disk, from the dashboard (served under a CSP that allows no script), or from an archive.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from trajforge.collect.readiness import command_line

TEMPLATES = Path(__file__).parent / "templates"


@cache
def _env() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,  # a partial manifest still renders
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["command_line"] = command_line
    env.filters["num"] = _num
    return env


def _num(value: Any, digits: int = 3) -> str:
    import jinja2

    if value is None or isinstance(value, jinja2.Undefined):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def bars(items: list[tuple[str, float]], width: int = 420, row: int = 18) -> dict[str, Any]:
    """Geometry of a horizontal bar chart (label, value), drawn by the template as SVG."""
    top = max((v for _, v in items), default=0) or 1
    label_w = 150
    return {
        "width": width,
        "height": row * max(1, len(items)) + 4,
        "label_w": label_w,
        "bars": [
            {
                "y": i * row + 2,
                "w": round(max(1.0, (width - label_w - 60) * v / top), 1) if v else 0,
                "label": label[:24],
                "value": v,
            }
            for i, (label, v) in enumerate(items)
        ],
    }


def _step(m: dict[str, Any], step: str) -> dict[str, Any]:
    for s in m["steps"]:
        if s["id"] == step and s["status"] != "skipped":
            result: dict[str, Any] = s["result"]
            return result
    return {}


def render_run(m: dict[str, Any]) -> str:
    traj = _step(m, "trajectories")
    tasks = traj.get("tasks", [])
    bench = m["benchmarkComparisons"]
    charts = {
        "sources": bars(sorted(traj.get("bySource", {}).items(), key=lambda kv: -kv[1])[:20]),
        "tasks": bars([(t["task"], t["completed"]) for t in tasks[:20]]),
        "coverage": bars(
            [
                (t["task"], round(100 * t["rewardedOrScored"] / t["trajectories"], 1))
                for t in tasks[:20]
                if t["trajectories"]
            ]
        ),
        "readiness": bars([(k, v) for k, v in m["readiness"]["counts"].items()]),
        "benchmarks": [
            {"c": c, "chart": bars([("base", c["baseScore"]), ("trained", c["trainedScore"])], 320)}
            for c in bench
            if c.get("status") == "completed"
        ],
    }
    return str(
        _env()
        .get_template("collection_run.html")
        .render(
            m=m,
            traj=traj,
            imports=_step(m, "jsonl_imports").get("files", []),
            hf=_step(m, "hf_datasets").get("datasets", []),
            datasets=_step(m, "datasets").get("datasets", []),
            outcomes=_step(m, "outcomes"),
            prompts=_step(m, "prompts").get("tasks", []),
            live=_step(m, "live_eval"),
            charts=charts,
        )
    )


def render_index(index: dict[str, Any]) -> str:
    return str(_env().get_template("collection_index.html").render(index=index))
