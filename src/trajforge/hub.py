"""Hugging Face Hub, both ways, through ``huggingface_hub`` (no HTTP of our own).

``push(store, dataset_id, PushRequest(repo="org/name"))`` uploads a dataset snapshot to a Hub
dataset repo in one commit: every file its manifest lists (the split files as JSONL and their
parquet twins, per-task files), ``manifest.json`` itself and a dataset card (``README.md``: YAML
front matter whose ``configs`` point the Hub's viewer and ``datasets.load_dataset`` at the parquet
files, then the format, counts, privacy report and lineage in prose). Only snapshots can be pushed:
datasets built here (so privacy-filtered) whose files are still the bytes their manifest hashed.
``trajforge datasets push`` calls it; ``POST /api/training/datasets/{id}/push`` queues it as a
``hub_push`` job (:func:`submit_push`, :func:`run_push_job`).

``pull(store, "org/name")`` imports a Hub dataset as a new snapshot, registered like a built one
(training reads it the same way), with lineage to the Hub commit it read:

* a trajforge snapshot (its ``manifest.json`` there): every file downloaded, checked against the
  manifest's sha256 and written as it was, so push and pull round-trip byte for byte;
* otherwise rows in one of our formats, or in ``messages`` or ``prompt``/``completion`` columns
  (strings or message lists), from its parquet files (or JSONL), converted to ``sft``,
  ``prompt_completion``, ``preference`` or ``rewarded`` rows (``grpo``, ``openai_dpo`` and ``art``
  rows taken as they are) and checked like built rows. The
  Hub's ``train`` split becomes ours, every other split (``test``, ``validation``) our ``eval``.

The token is huggingface_hub's business: ``HF_TOKEN`` or what ``hf auth login`` stored. trajforge
never reads it, so it is in no request, manifest, job or log. A Hub error is a
:class:`HubError` naming the repo (401 token refused, 404 no such repo or revision, 409 conflict);
a failed pull leaves nothing behind and registers nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, Field

from trajforge import settings
from trajforge.datasets import builder
from trajforge.datasets.builder import FORMAT_VERSION
from trajforge.datasets.request import FORMATS
from trajforge.errors import InvalidInput, NotFound, TrajforgeError
from trajforge.limits import check_json
from trajforge.records import Dataset, Job, iso_ms, new_id, now_ms
from trajforge.requests import Flag, Request
from trajforge.store.base import Store

ENDPOINT = "HF_ENDPOINT"
"""huggingface_hub's own variable for the Hub's URL (default https://huggingface.co). Read at each
call and passed on, since the library reads it once, when it is imported."""

REPO_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$"
_REVISION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
_SPLIT_PATTERN = r"^[A-Za-z0-9_]{1,64}$"
_SNAPSHOT_FILE = re.compile(r"^(?:tasks/[A-Za-z0-9_-]{1,60}/)?(?:train|eval)\.(?:jsonl|parquet)$")
"""The files a snapshot has (``datasets.files``): what a pulled manifest may name, nothing else,
so a manifest from the Hub never chooses where a file is written."""
_MAX_MANIFEST_BYTES = 64 << 20
_EVAL_SPLITS = {"test", "validation", "valid", "val", "dev", "eval", "evaluation"}
Report = Callable[[float, str, str], None]


class HubError(TrajforgeError):
    """The Hub refused or failed a request; the message names the repo."""

    def __init__(self, status: int, message: str, field: str | None = "repo") -> None:
        super().__init__(message, field)
        self.status = status
        self.code = {401: "hub_unauthorized", 403: "hub_forbidden", 404: "hub_not_found"}.get(
            status, "hub_conflict" if status == 409 else "hub_error"
        )


class PushRequest(Request):
    """Where a dataset snapshot goes on the Hub."""

    repo: Annotated[
        str,
        Field(pattern=REPO_PATTERN, description="Hub dataset repo ORG/NAME (created when missing)"),
        Flag("--repo", metavar="ORG/NAME"),
    ]
    private: Annotated[
        bool, Field(description="Create the repo private (an existing repo keeps its visibility)")
    ] = False
    revision: Annotated[
        str | None,
        Field(
            pattern=_REVISION_PATTERN,
            description="Branch to commit to, created from main when missing (default: main)",
        ),
    ] = None
    license: Annotated[
        str | None,
        Field(
            pattern=r"^[a-z0-9][a-z0-9.+-]{0,63}$",
            description="License id for the dataset card, e.g. cc-by-4.0 (default: other)",
        ),
    ] = None


def _no_dots(value: str | None) -> str | None:
    if value is not None and ".." in value:
        raise InvalidInput(f"revision must not contain '..', got {value[:200]!r}", "revision")
    return value


class PullRequest(Request):
    """How a Hub dataset is imported (the repo is given beside it)."""

    revision: Annotated[
        Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,199}$")] | None,
        AfterValidator(_no_dots),
        Field(description="Branch, tag or commit to read, e.g. refs/convert/parquet (default: main)"),
    ] = None
    split: Annotated[
        str | None,
        Field(
            pattern=_SPLIT_PATTERN,
            description="Only this Hub split (train becomes our train split, any other our eval)",
        ),
    ] = None
    name: Annotated[
        str | None,
        Field(
            pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$",
            description="Dataset name (default: the repo's ORG--NAME); pulls with one name are its versions",
        ),
    ] = None
    limit: Annotated[
        int,
        Field(ge=1, le=10_000_000, description="Most rows to import from a dataset not built by trajforge"),
    ] = 1_000_000


def check_repo(repo: str) -> str:
    if not isinstance(repo, str) or not re.match(REPO_PATTERN, repo) or ".." in repo:
        raise InvalidInput(f"repo must be ORG/NAME (letters, digits, _.-), got {str(repo)[:200]!r}", "repo")
    return repo


def _api() -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=os.environ.get(ENDPOINT) or None, library_name="trajforge")


@contextlib.contextmanager
def _hub_errors(repo: str, revision: str | None = None) -> Iterator[None]:
    """Turn what huggingface_hub raises into a :class:`HubError` naming the repo."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except OfflineModeIsEnabled:
        raise HubError(503, f"HF_HUB_OFFLINE is set: cannot reach the Hub for {repo}") from None
    except RevisionNotFoundError:
        raise HubError(
            404, f"dataset repo {repo} has no revision {revision or 'main'!r}", "revision"
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            404,
            f"no dataset repo {repo} on the Hub, or the token cannot see it (a private repo needs HF_TOKEN)",
        ) from None
    except EntryNotFoundError as exc:
        raise HubError(404, f"dataset repo {repo}: a file is missing ({_first_line(exc)})") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 502
        said = _server_message(exc)
        if status == 401:
            message = (
                f"the Hub refused the token for {repo} (401: {said}); set HF_TOKEN or run `hf auth login`"
            )
        elif status == 403:
            message = f"the token may not write to {repo} (403: {said})"
        elif status == 409:
            message = f"conflict on {repo} (409: {said}); if the repo exists, this token cannot see it"
        else:
            message, status = f"the Hub answered {status} for {repo}: {said}", 502
        raise HubError(status, message) from None
    except ValueError as exc:  # huggingface_hub's checks of answers (malformed, invalid card)
        raise HubError(502, f"the Hub's answer for {repo} was not usable: {_first_line(exc)}") from None
    except Exception as exc:
        # Connection errors come from huggingface_hub's HTTP client (httpx), not as OSError.
        if type(exc).__module__.split(".")[0].startswith("httpx"):
            raise HubError(502, f"cannot reach the Hub for {repo}: {_first_line(exc)}") from None
        raise


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _server_message(exc: Any) -> str:
    server = getattr(exc, "server_message", None)
    if server:
        return str(server).strip().splitlines()[0][:300]
    return _first_line(exc)


# --- push ---------------------------------------------------------------------------------------


def snapshot(store: Store, dataset_id: str) -> tuple[Dataset, list[tuple[str, Path]]]:
    """The dataset and its files, if it is a snapshot that may be pushed: a dataset of this store,
    privacy-filtered here, every file of its manifest present with the bytes it hashed."""
    ds = store.get_dataset(dataset_id)
    if ds is None:
        raise NotFound(f"no dataset {dataset_id!r}: only dataset snapshots can be pushed", "id")
    m = ds.manifest
    if m.get("formatVersion") != FORMAT_VERSION or not isinstance(m.get("files"), dict):
        raise InvalidInput(f"{dataset_id} is not a trajforge dataset snapshot", "id")
    if (m.get("privacy") or {}).get("filtered") is False:
        raise InvalidInput(
            f"{dataset_id} was imported as is and never went through the privacy filter: "
            "only snapshots built here can be pushed",
            "id",
        )
    folder = Path(ds.path)
    files = []
    for rel, info in sorted(m["files"].items()):
        path = folder / rel
        if (
            not _SNAPSHOT_FILE.match(rel)
            or not path.is_file()
            or builder.sha256_of(path) != info.get("sha256")
        ):
            raise InvalidInput(
                f"{dataset_id} is not an intact snapshot: {rel} is missing or changed since it was built",
                "id",
            )
        files.append((rel, path))
    if not (folder / "manifest.json").is_file():
        raise InvalidInput(f"{dataset_id} is not an intact snapshot: manifest.json is missing", "id")
    return ds, files


def _size_category(n: int) -> str:
    for bound, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < bound:
            return label
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def _cell(value: Any) -> str:
    """A markdown table cell (user content: task names): no pipes, no line breaks, bounded."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")[:200]


def card(ds: Dataset, files: list[tuple[str, Path]], license: str | None = None) -> str:
    """The dataset card: YAML front matter (license, tags, size, the parquet files per split)
    and the manifest in prose."""
    import yaml

    m = ds.manifest
    rows = m["counts"]["rows"]
    parquet = [rel for rel, _ in files if rel.endswith(".parquet") and "/" not in rel]
    meta: dict[str, Any] = {
        "license": license or "other",
        "pretty_name": f"{ds.name} v{ds.version}",
        "tags": ["trajforge", f"trajforge-{ds.format}"],
        "size_categories": [_size_category(sum(rows.values()))],
    }
    if parquet:
        meta["configs"] = [
            {
                "config_name": "default",
                "data_files": [{"split": rel.removesuffix(".parquet"), "path": rel} for rel in parquet],
            }
        ]
    p = m.get("privacy", {})
    redactions = ", ".join(f"{k} {v}" for k, v in (p.get("redactions") or {}).items()) or "none"
    dropped = ", ".join(f"{k} ({v})" for k, v in (p.get("droppedByReason") or {}).items()) or "none"
    src = m.get("sourceTrajectories", {})
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip("\n"),
        "---",
        "",
        f"# {ds.name} v{ds.version}",
        "",
        f"A `{ds.format}` dataset built by trajforge from {ds.trajectory_count} agent trajectories "
        f"on {m.get('createdAt', iso_ms(ds.created_at))}. `manifest.json` holds everything below "
        "and the build request; the JSONL files are the rows as built, the parquet files the same rows.",
        "",
        "## Rows",
        "",
        "| split | rows |",
        "|---|---|",
        *(f"| {split} | {n} |" for split, n in rows.items()),
        "",
    ]
    tasks = m["counts"].get("tasks") or {}
    if tasks:
        lines += ["| task | train | eval |", "|---|---|---|"]
        lines += [f"| {_cell(t)} | {c.get('train', 0)} | {c.get('eval', 0)} |" for t, c in tasks.items()]
        lines.append("")
    lines += [
        "## Privacy",
        "",
        "Every string went through trajforge's privacy filter before any row was written.",
        "",
        f"- redactions: {redactions} ({p.get('totalRedactions', 0)} in all)",
        f"- trajectories dropped: {p.get('droppedCount', 0)} ({dropped})",
        f"- duplicates skipped: {p.get('duplicatesSkipped', 0)}",
        "",
        "## Lineage",
        "",
        f"- dataset: `{ds.id}` (version {ds.version}, parent `{ds.parent}`)",
        f"- source trajectories: {src.get('count', 0)} (sha256 of their sorted ids `{src.get('sha256')}`)",
        f"- content sha256: `{m.get('contentSha256')}`",
        "",
        "## Files",
        "",
        "| file | rows | bytes | sha256 |",
        "|---|---|---|---|",
        *(
            f"| {rel} | {i.get('rows')} | {i.get('bytes')} | `{i.get('sha256')}` |"
            for rel, i in m["files"].items()
        ),
        "",
    ]
    return "\n".join(lines)


def push(store: Store, dataset_id: str, req: PushRequest, report: Report | None = None) -> dict[str, Any]:
    """Upload snapshot ``dataset_id`` to ``req.repo`` in one commit (creating the repo, and the
    branch ``req.revision``, when missing). Returns where it went: the repo, the branch, the commit."""
    say = report or (lambda progress, phase, message: None)
    ds, files = snapshot(store, dataset_id)
    say(0.05, "check", f"{dataset_id}: {len(files)} files, intact")
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import RepositoryNotFoundError

    readme = card(ds, files, req.license).encode()
    manifest = (Path(ds.path) / "manifest.json").read_bytes()
    api = _api()
    branch = req.revision or "main"
    created = False
    with _hub_errors(req.repo, req.revision):
        try:
            api.repo_info(req.repo, repo_type="dataset")
        except RepositoryNotFoundError:
            say(0.1, "repo", f"creating dataset repo {req.repo}")
            api.create_repo(req.repo, repo_type="dataset", private=req.private)
            created = True
        if branch != "main":
            api.create_branch(req.repo, branch=branch, repo_type="dataset", exist_ok=True)
        ops = [CommitOperationAdd(rel, str(path)) for rel, path in files]
        ops += [CommitOperationAdd("manifest.json", manifest), CommitOperationAdd("README.md", readme)]
        say(0.2, "upload", f"uploading {len(ops)} files to {req.repo}@{branch}")
        info = api.create_commit(
            req.repo,
            ops,
            commit_message=f"trajforge: {ds.name} v{ds.version} ({ds.id})",
            commit_description=f"{ds.format} dataset, {ds.row_count} rows, content sha256 {ds.manifest.get('contentSha256')}",
            repo_type="dataset",
            revision=branch,
        )
    say(1.0, "done", f"pushed {dataset_id} to {req.repo}@{branch} ({info.oid})")
    return {
        "datasetId": dataset_id,
        "repo": req.repo,
        "revision": branch,
        "commit": info.oid,
        "commitUrl": str(info.commit_url),
        "created": created,
        "files": [rel for rel, _ in files] + ["manifest.json", "README.md"],
    }


def submit_push(store: Store, dataset_id: str, req: PushRequest) -> Job:
    """Queue a ``hub_push`` job; a dataset that is not a pushable snapshot is refused now."""
    snapshot(store, dataset_id)
    job = Job(
        kind="hub_push",
        backend="hub",
        request={"datasetId": dataset_id, **req.given()},
        dataset_id=dataset_id,
    )
    store.add_job(job)
    return job


def run_push_job(
    store: Store, job: Job, report: Report, home: Path | None = None, should_stop: Any = None
) -> dict[str, Any]:
    """The ``hub_push`` job body."""
    return push(store, job.request["datasetId"], PushRequest.from_stored(job.request), report)


# --- pull ---------------------------------------------------------------------------------------


def _their_manifest(path: Path) -> dict[str, Any] | None:
    """The repo's ``manifest.json`` when it is a trajforge snapshot's, else None."""
    if path.stat().st_size > _MAX_MANIFEST_BYTES:
        return None
    try:
        m = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError:
        return None
    ok = (
        isinstance(m, dict)
        and m.get("formatVersion") == FORMAT_VERSION
        and m.get("format") in FORMATS
        and isinstance(m.get("files"), dict)
        and isinstance(m.get("counts"), dict)
    )
    return m if ok else None


def _hub_split(path: str) -> str:
    """A data file's split by the Hub's file naming conventions (``data/train-0000.parquet``,
    ``test.jsonl``, ``validation/…``); ``train`` when the name says nothing."""
    for token in re.split(r"[/_.\-]", path.lower()):
        if token == "train" or token in _EVAL_SPLITS:
            return token
    return "train"


def _ours(hub_split: str) -> str:
    return "train" if hub_split == "train" else "eval"


def _drop_nulls(value: Any) -> Any:
    """Parquet gives every struct all its fields, absent ones as null: drop those again."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _as_messages(value: Any, role: str) -> list[dict[str, Any]] | None:
    from trajforge.formats.examples import normalize_message

    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        return None
    out = [normalize_message(m) for m in value]
    return None if any(m is None for m in out) else [m for m in out if m is not None]


def convert_row(row: dict[str, Any], fmt: str | None = None) -> tuple[str, dict[str, Any]] | None:
    """A row of a Hub dataset as one of our formats' rows (``fmt``'s, when the dataset says which),
    checked like a built row; None when it is none of them."""
    from trajforge.datasets.rows import check_row

    row = _drop_nulls(row)
    out: dict[str, Any] | None = None
    if fmt is not None:
        out = row
    elif "messages" in row:
        fmt, msgs = "sft", _as_messages(row["messages"], "user")
        out = None if msgs is None else {"messages": msgs}
    elif {"prompt", "chosen", "rejected"} <= row.keys():
        fmt = "preference"
        parts = [_as_messages(row["prompt"], "user")]
        parts += [_as_messages(row[k], "assistant") for k in ("chosen", "rejected")]
        out = None if None in parts else dict(zip(("prompt", "chosen", "rejected"), parts, strict=True))
    elif {"prompt", "completion"} <= row.keys():
        fmt = "prompt_completion"
        prompt, completion = _as_messages(row["prompt"], "user"), _as_messages(row["completion"], "assistant")
        out = None if prompt is None or completion is None else {"prompt": prompt, "completion": completion}
    elif {"prompt", "response", "reward"} <= row.keys():
        fmt = "rewarded"
        out = {
            "prompt": row["prompt"],
            "response": row["response"],
            "reward": row["reward"],
            "context": row.get("context", []),
            "metadata": row.get("metadata", {}),
        }
    else:  # rows already in a format of ours that has no columns to convert: taken as they are
        fmt = next((f for f in ("grpo", "openai_dpo", "art") if check_row(f, row) is None), None)
        out = row
    if out is None or fmt is None:
        return None
    if (
        fmt in ("sft", "prompt_completion", "preference")
        and isinstance(row.get("tools"), list)
        and row["tools"]
    ):
        out["tools"] = row["tools"]
    return (fmt, out) if check_row(fmt, out) is None else None


def _rows_of(path: Path, repo: str, rel: str) -> Iterator[dict[str, Any] | None]:
    """The rows of a downloaded data file; None for a JSONL line that is not a JSON object (a
    file parquet cannot read is an error naming it)."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=2000):
                yield from batch.to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise InvalidInput(
                f"{repo}: {rel} is not a readable parquet file ({_first_line(exc)})", "repo"
            ) from None
        return
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError:
                    value = None
                yield value if isinstance(value, dict) else None


def pull(
    store: Store,
    repo: str,
    revision: str | None = None,
    split: str | None = None,
    *,
    name: str | None = None,
    limit: int = 1_000_000,
    root: Path | None = None,
) -> Dataset:
    """Import Hub dataset ``repo`` (at ``revision``, default main; only ``split`` when given) as a
    new snapshot in ``root`` (default ``<state>/datasets``), registered in the store with lineage
    to the Hub commit it read. See the module's docstring for what it reads."""
    req = PullRequest(revision=revision, split=split, name=name, limit=limit)
    check_repo(repo)
    root = Path(root) if root is not None else settings.datasets_dir()
    root.mkdir(parents=True, exist_ok=True)
    api = _api()
    with _hub_errors(repo, req.revision):
        info = api.dataset_info(repo, revision=req.revision, files_metadata=True)
    commit: str = info.sha
    on_hub = {s.rfilename for s in info.siblings or []}
    dataset_id = f"dataset-{new_id()}"
    tmp, final = root / f".{dataset_id}.tmp", root / dataset_id
    cache = root / f".{dataset_id}.hub-cache"

    def fetch(rel: str) -> Path:
        with _hub_errors(repo, req.revision):
            got = api.hf_hub_download(repo, rel, repo_type="dataset", revision=commit, cache_dir=cache)
        return Path(got)

    name = req.name or repo.replace("/", "--")[:80]
    parent = store.latest_dataset(name)
    lineage = {"repo": repo, "revision": req.revision or "main", "commit": commit}
    try:
        tmp.mkdir()
        theirs = _their_manifest(fetch("manifest.json")) if "manifest.json" in on_hub else None
        if theirs is not None and req.split is None:
            manifest = _copy_snapshot(theirs, on_hub, fetch, tmp, repo)
            manifest["lineage"] = {
                "hub": {**lineage, "files": sorted(theirs["files"])},
                "pushedFrom": {k: theirs.get(k) for k in ("id", "name", "version", "createdAt")},
            }
        else:
            manifest = _import_rows(theirs, on_hub, fetch, tmp, repo, req)
            manifest["lineage"] = {"hub": {**lineage, "files": manifest.pop("_read")}}
        created = now_ms()
        manifest.update(
            id=dataset_id,
            name=name,
            version=(parent.version + 1) if parent else 1,
            parent=parent.id if parent else None,
            createdAt=iso_ms(created),
            createdAtMs=created,
        )
        builder.seal(tmp, final, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return builder.register(
        store,
        dataset_id,
        final,
        manifest,
        f"pulled from {repo}@{commit[:12]}",
        {"hub": {"repo": repo, "commit": commit}},
    )


def _copy_snapshot(
    theirs: dict[str, Any], on_hub: set[str], fetch: Callable[[str], Path], tmp: Path, repo: str
) -> dict[str, Any]:
    """A trajforge snapshot's files, each checked against its manifest, written as they were.
    The manifest comes from the Hub: its counts and task folders are checked too (training reads
    ``counts.tasks[*].folder`` as a path)."""
    problem = check_json(theirs)
    if problem is not None:
        raise InvalidInput(f"{repo}: its manifest.json {problem}", "repo")
    tasks = theirs["counts"].get("tasks") or {}
    rows = theirs["counts"].get("rows")
    if not isinstance(tasks, dict) or not isinstance(rows, dict) or set(rows) != {"train", "eval"}:
        raise InvalidInput(f"{repo}: its manifest's counts are not a snapshot's", "repo")
    for info in tasks.values():
        folder = info.get("folder") if isinstance(info, dict) else None
        if folder is not None and not (
            isinstance(folder, str) and re.fullmatch(r"tasks/[A-Za-z0-9_-]{1,60}", folder)
        ):
            raise InvalidInput(f"{repo}: its manifest names a task folder a snapshot does not have", "repo")
    for rel, info in sorted(theirs["files"].items()):
        if not _SNAPSHOT_FILE.match(rel) or not isinstance(info, dict):
            raise InvalidInput(
                f"{repo}: its manifest names a file a snapshot does not have: {rel[:200]!r}", "repo"
            )
        if rel not in on_hub:
            raise HubError(404, f"{repo}: {rel} is in its manifest but not in the repo")
        got = fetch(rel)
        if builder.sha256_of(got) != info.get("sha256") or got.stat().st_size != info.get("bytes"):
            raise InvalidInput(f"{repo}: {rel} does not match the sha256 its manifest records", "repo")
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(got, tmp / rel)
    for split in ("train", "eval"):
        path = tmp / f"{split}.jsonl"
        path.touch()
        with open(path, "rb") as fh:
            lines = sum(1 for _ in fh)
        if rows[split] != lines:
            raise InvalidInput(
                f"{repo}: its manifest counts {rows[split]!r} {split} rows, the file has {lines}", "repo"
            )
    return dict(theirs)


def _import_rows(
    theirs: dict[str, Any] | None,
    on_hub: set[str],
    fetch: Callable[[str], Path],
    tmp: Path,
    repo: str,
    req: PullRequest,
) -> dict[str, Any]:
    """Rows of a dataset not built here (or one split of one that was), converted and checked,
    written like a build's (JSONL and parquet twins)."""
    from trajforge.datasets.files import Files
    from trajforge.datasets.rows import DUMP

    fmt: str | None = None
    declared: str | None = None
    if theirs is not None:  # one split of a trajforge snapshot: its own JSONL, its own format
        fmt = declared = theirs["format"]
        sources = [f for f in (f"{req.split}.jsonl",) if f in on_hub and req.split in ("train", "eval")]
    else:
        data = sorted(f for f in on_hub if f.endswith(".parquet"))
        data = data or sorted(f for f in on_hub if f.endswith((".jsonl", ".json")) and f != "manifest.json")
        sources = [f for f in data if req.split is None or _hub_split(f) == req.split.lower()]
    if not sources:
        what = f"no split {req.split!r}" if req.split else "no parquet or JSONL data files"
        raise InvalidInput(f"{repo} has {what}", "split" if req.split else "repo")
    files = Files(tmp, per_task=False)
    counts = {"train": 0, "eval": 0}
    skipped = 0
    read = 0
    warnings: list[str] = []
    try:
        for rel in sources:
            ours = _ours(req.split.lower() if req.split else _hub_split(rel))
            for row in _rows_of(fetch(rel), repo, rel):
                if read >= req.limit:
                    warnings.append(f"stopped at limit={req.limit} rows")
                    break
                read += 1
                # Untrusted content: too deep, too long or not finite is left out, not stored.
                got = None if row is None or check_json(row) is not None else convert_row(row, declared)
                if got is None or (fmt is not None and got[0] != fmt):
                    skipped += 1
                    continue
                fmt = got[0]
                files.write(ours, "default", orjson.dumps(got[1], option=DUMP))
                counts[ours] += 1
            if warnings:
                break
        files.close()
        files.write_parquet()
    except BaseException:
        files.abort()
        raise
    if fmt is None or not sum(counts.values()):
        raise InvalidInput(
            f"{repo}: no row is in one of our formats or has messages or prompt/completion columns", "repo"
        )
    if skipped:
        warnings.append(f"{skipped} rows were not valid {fmt} rows and were left out")
    for split in ("train", "eval"):
        (tmp / f"{split}.jsonl").touch()
    file_info: dict[str, Any] = {}
    for path in sorted(p for p in tmp.rglob("*") if p.suffix in (".jsonl", ".parquet")):
        rel = path.relative_to(tmp).as_posix()
        n = files.rows.get(rel.removesuffix(".parquet") + ".jsonl", 0)
        file_info[rel] = {"rows": n, "bytes": path.stat().st_size, "sha256": builder.sha256_of(path)}
    content = hashlib.sha256(
        "".join(
            f"{k}\x00{v['sha256']}\n" for k, v in sorted(file_info.items()) if k.endswith(".jsonl")
        ).encode()
    ).hexdigest()
    empty = hashlib.sha256(b"").hexdigest()
    return {
        "formatVersion": FORMAT_VERSION,
        "format": fmt,
        "request": {"pull": {"repo": repo, **req.given()}},
        "counts": {
            "trajectories": 0,
            "rows": counts,
            "tasks": {"default": dict(counts)},
        },
        "sourceTrajectories": {"count": 0, "sha256": empty, "ids": []},
        "privacy": {
            "filtered": False,
            "note": "imported from the Hub as is: trajforge's privacy filter did not run on it",
            "redactions": {},
            "totalRedactions": 0,
            "droppedCount": 0,
            "droppedByReason": {},
            "duplicatesSkipped": 0,
        },
        "files": file_info,
        "contentSha256": content,
        "warnings": warnings,
        "_read": sources,
    }


def pull_for_collect(store: Store, repo: str, *, out_dir: Path) -> dict[str, Any]:
    """A collection run's ``hf_datasets`` step (:class:`trajforge.collect.HfPull`): ``repo`` pulled
    as a new snapshot (see :func:`pull`), summarised. The snapshot lives with the other datasets,
    so ``out_dir`` keeps nothing."""
    ds = pull(store, repo)
    lineage = ds.manifest.get("lineage", {}).get("hub", {})
    return {
        "revision": lineage.get("revision"),
        "commit": lineage.get("commit"),
        "datasetId": ds.id,
        "name": ds.name,
        "version": ds.version,
        "format": ds.format,
        "rows": ds.row_count,
    }
