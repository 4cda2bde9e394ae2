"""The build: a request in, an immutable dataset folder and its record out (see the package's
docstring for what a build does)."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from trajforge import settings
from trajforge import workers as worker_pool
from trajforge.datasets.curation import Selection, accept, local_outcomes, parallel_outcomes
from trajforge.datasets.files import Files, write_art, write_examples, write_pairs
from trajforge.datasets.request import PAIR_FORMATS, BuildRequest
from trajforge.datasets.rows import CONVERTERS
from trajforge.errors import NotFound
from trajforge.privacy import PrivacyFilter, PrivacyReport, store_salt
from trajforge.records import Dataset, JobEvent, iso_ms, new_id, now_ms
from trajforge.store.base import Store

FORMAT_VERSION = "trajforge-dataset/1"
_MAX_LISTED_IDS = 10_000


def sha256_of(path: Path) -> str:
    """The sha256 of a file, read a MiB at a time (what a manifest records for each file)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build(
    store: Store,
    req: BuildRequest,
    *,
    root: Path | None = None,
    on_progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> Dataset:
    """Build the dataset ``req`` describes from ``store`` into ``root`` (default
    ``<state>/datasets``) and record it in the store. Never modifies trajectories.

    Large builds of per-example formats curate in ``workers`` processes (default: 2 when the
    machine has the cores and ``limit`` is at least 2,000); the files are the same either way."""
    req = req.resolved(now_ms())  # `since 7d` means the same 7 days for the whole build
    root = Path(root) if root is not None else settings.datasets_dir()
    root.mkdir(parents=True, exist_ok=True)
    name = req.name or req.format
    parent = store.latest_dataset(name)
    dataset_id = f"dataset-{new_id()}"
    tmp = root / f".{dataset_id}.tmp"
    final = root / dataset_id
    # Every build runs the privacy filter: there is deliberately no way to turn it off. Its
    # counts go to a scratch report; accept adds each included or dropped trajectory's share.
    report = PrivacyReport()
    pf = PrivacyFilter(store_salt(store), extra_patterns=req.privacy.extra_patterns, allow=req.privacy.allow)
    sel = Selection()
    files = Files(tmp, per_task=req.task is None)
    try:
        tmp.mkdir()
        workers = worker_pool.workers_for(req.limit, workers)
        if workers > 1 and req.format in CONVERTERS:
            raw = parallel_outcomes(store, req, pf, workers)
        else:
            raw = local_outcomes(store, req, pf)
        stream = accept(raw, req, report, sel, on_progress)
        if req.format in PAIR_FORMATS:
            write_pairs(req, stream, files, sel)
        elif req.format == "art":
            write_art(req, stream, files, sel)
        else:
            write_examples(req, stream, files, sel)
        files.close()
        files.write_parquet()
        for split in ("train", "eval"):  # both files always exist, even when empty
            (tmp / f"{split}.jsonl").touch()
        if req.task is None and len(sel.tasks) < 2:
            shutil.rmtree(tmp / "tasks", ignore_errors=True)
            files.task_dirs.clear()
        manifest = _manifest(dataset_id, name, parent, req, store, sel, report, files, tmp)
        seal(tmp, final, manifest)
    except BaseException:
        files.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return register(
        store,
        dataset_id,
        final,
        manifest,
        f"from {len(sel.included)} trajectories",
        {"trajectories": len(sel.included)},
    )


def seal(tmp: Path, final: Path, manifest: dict[str, Any]) -> None:
    """Finish a snapshot written in ``tmp``: its manifest beside the files, every file read-only,
    and the folder moved to ``final`` in one rename (a reader never sees half a snapshot)."""
    (tmp / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    for path in tmp.rglob("*"):
        if path.is_file():
            path.chmod(0o444)
    tmp.rename(final)


def register(
    store: Store, dataset_id: str, final: Path, manifest: dict[str, Any], source: str, data: dict[str, Any]
) -> Dataset:
    """Record the sealed snapshot in ``final`` (its folder removed if the store refuses it, so no
    unrecorded snapshot is left behind) and announce it with a ``dataset_built`` event; ``source``
    ends the event's message (where the rows came from), ``data`` joins its data."""
    rows = sum(manifest["counts"]["rows"].values())
    name = manifest["name"]
    ds = Dataset(
        id=dataset_id,
        name=name,
        version=manifest["version"],
        parent=manifest["parent"],
        format=manifest["format"],
        path=str(final),
        trajectory_count=int(manifest["counts"].get("trajectories") or 0),
        row_count=rows,
        manifest=manifest,
        created_at=manifest["createdAtMs"],
    )
    try:
        store.add_dataset(ds)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise
    store.add_event(
        JobEvent(
            kind="dataset_built",
            message=f"dataset {name} v{ds.version}: {rows} rows {source}",
            dataset_id=dataset_id,
            data={"format": ds.format, "rows": rows, **data},
        )
    )
    return ds


def _manifest(
    dataset_id: str,
    name: str,
    parent: Dataset | None,
    req: BuildRequest,
    store: Store,
    sel: Selection,
    report: PrivacyReport,
    files: Files,
    tmp: Path,
) -> dict[str, Any]:
    file_info: dict[str, Any] = {}
    for path in sorted(p for p in tmp.rglob("*") if p.suffix in (".jsonl", ".parquet")):
        rel = path.relative_to(tmp).as_posix()
        rows = files.rows.get(rel.removesuffix(".parquet") + ".jsonl", 0)
        digest = files.hashes[rel].hexdigest() if rel in files.hashes else sha256_of(path)
        file_info[rel] = {"rows": rows, "bytes": path.stat().st_size, "sha256": digest}
    ids = sorted(sel.included)
    ids_hash = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    sources: dict[str, Any] = {"count": len(ids), "sha256": ids_hash}
    if len(ids) <= _MAX_LISTED_IDS:
        sources["ids"] = ids
    content = hashlib.sha256(
        "".join(
            f"{k}\x00{v['sha256']}\n" for k, v in sorted(file_info.items()) if k.endswith(".jsonl")
        ).encode()
    ).hexdigest()
    warnings = []
    train_rows = files.rows.get("train.jsonl", 0)
    if req.format in ("openai", "openai_dpo") and train_rows < 10:
        warnings.append(
            f"OpenAI fine-tuning needs at least 10 training examples; this build has {train_rows}"
        )
    if not train_rows:
        warnings.append("the training split is empty: no trajectory matched, or every one was dropped")
    if sel.calls_without_content:
        warnings.append(
            f"{sel.calls_without_content} LLM calls had no message content and cannot become rows: the "
            "OpenTelemetry emitter's content capture was off (set "
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=SPAN_ONLY, true on older versions, or "
            "TRACELOOP_TRACE_CONTENT=true for OpenLLMetry, in the agent's environment)"
        )
    created = now_ms()
    privacy = report.to_wire()
    privacy["duplicatesSkipped"] = sel.duplicates
    return {
        "id": dataset_id,
        "name": name,
        "version": (parent.version + 1) if parent else 1,
        "parent": parent.id if parent else None,
        "formatVersion": FORMAT_VERSION,
        "format": req.format,
        "createdAt": iso_ms(created),
        "createdAtMs": created,
        "request": req.manifest_request(),
        "store": {"backend": getattr(store, "dialect", type(store).__name__)},
        "counts": {
            "trajectories": len(ids),
            "rows": {"train": train_rows, "eval": files.rows.get("eval.jsonl", 0)},
            "callsWithoutContent": sel.calls_without_content,
            "tasks": {
                task: {
                    **counts,
                    **({"folder": f"tasks/{files.task_dirs[task]}"} if task in files.task_dirs else {}),
                }
                for task, counts in sorted(sel.tasks.items())
            },
        },
        "sourceTrajectories": sources,
        "privacy": privacy,
        "files": file_info,
        "contentSha256": content,
        "warnings": warnings,
    }


def get(store: Store, dataset_id: str) -> Dataset:
    ds = store.get_dataset(dataset_id)
    if ds is None:
        raise NotFound(f"no dataset {dataset_id!r}", "id")
    return ds


def summary(ds: Dataset) -> dict[str, Any]:
    """The wire form of a dataset in lists (the manifest has everything else)."""
    m = ds.manifest
    return {
        "id": ds.id,
        "name": ds.name,
        "version": ds.version,
        "parent": ds.parent,
        "format": ds.format,
        "trajectoryCount": ds.trajectory_count,
        "rowCount": ds.row_count,
        "rows": m["counts"]["rows"],
        "tasks": sorted(m["counts"]["tasks"]),
        "path": ds.path,
        "createdAt": iso_ms(ds.created_at),
        "contentSha256": m.get("contentSha256"),
        "warnings": m.get("warnings", []),
    }
