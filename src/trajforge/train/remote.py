"""The ``ssh`` backend: the LoRA job of ``cpu``/``cuda``, trained on any host reachable over SSH.

``uploading → training → downloading``, over one SSH connection (:mod:`.ssh`):

* **uploading**: checks the remote Python (3.11+), creates a venv in the remote work dir (or uses
  ``remoteVenv``), installs a trajforge wheel built from this very install (pinned: version +
  content hash, built once per hash and cached in the state dir) with ``--no-deps``, installing
  ``trajforge[train]`` only when the venv cannot import the training stack; uploads the base model
  (a local folder, cached on the remote by content key) and the dataset snapshot with its manifest,
  and a list of the sha256 of everything sent, which the remote checks before it trains.
* **training**: runs our own entry point there (:mod:`.remote_entry`: the same ``lora.load_data`` /
  ``lora.fit``; CUDA when the host has it, every GPU under ``accelerate launch`` when it has more
  than one); its JSON progress lines become this job's progress events as they arrive.
* **downloading**: fetches the adapter, checks each file's sha256 against the one computed
  remotely, registers the model (lineage: dataset, base, host, GPU, cost) and removes the job's
  remote folder (the venv, wheels and base models stay for the next job).

A cancel stops the remote process group, fetches its log and last checkpoint into
``<state>/jobs/<job id>-remote/``, and removes the job's remote folder. A failed remote run fails
the job with the last lines of its log (kept there too).

:func:`train_on_host` is the whole body given a :class:`~trajforge.train.ssh.Host`; the ``vast``
backend calls it once its instance is up.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import shlex
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel

from trajforge import settings
from trajforge.errors import Cancelled, InvalidInput
from trajforge.records import Model
from trajforge.requests import Flag
from trajforge.train import lora
from trajforge.train.ssh import Connection, Host, check_identity, quote_path

__all__ = ["Host", "RemoteError", "RemoteOptions", "run", "train_on_host"]

Report = Callable[[float, str, str], None]
ShouldStop = Callable[[], bool]

TRAIN_IMPORTS = "torch, transformers, peft, trl, datasets, accelerate"
STOP_GRACE_S = 6.0
"""How long a stopped remote run gets to save its checkpoint before it is killed (the job process
itself is killed GRACE_S = 10 s after its SIGTERM, and still has to fetch and tear down)."""


class RemoteError(RuntimeError):
    """The remote run failed; the message ends with the last lines of its log."""


class RemoteOptions(lora.LoraOptions):
    """A LoRA job trained on a host reachable over SSH (backend ``ssh``)."""

    backend: Annotated[Literal["ssh"], Field(description="ssh: train on a host reachable over SSH")] = "ssh"  # type: ignore[assignment]
    host: Annotated[
        str,
        Field(min_length=3, max_length=300, description="ssh: the host, user@host[:port]"),
        Flag("--host"),
    ]
    identity: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=4096,
            description="ssh: private key file to log in with (default: the ssh agent and ~/.ssh keys)",
        ),
    ] = None
    remote_dir: Annotated[
        str,
        Field(min_length=1, max_length=1024, description="ssh: work dir on the remote (venv, caches, jobs)"),
    ] = "~/.trajforge-remote"
    remote_venv: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=1024,
            description="ssh: an existing venv on the remote to use (default: one made in remoteDir)",
        ),
    ] = None
    remote_python: Annotated[
        str,
        Field(
            min_length=1,
            max_length=1024,
            description="ssh: the remote interpreter (3.11+) that creates the venv",
        ),
    ] = "python3"
    device: Annotated[
        Literal["auto", "cuda", "cpu"],
        Field(description="ssh: auto (CUDA when the host has it), cuda (fail without), or cpu"),
    ] = "auto"
    gpus: Annotated[
        int | None,
        Field(ge=1, le=64, description="ssh: GPUs to train on, data-parallel (default: all the host has)"),
    ] = None

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        Host.parse(v)  # raises InvalidInput naming host
        return v

    @field_validator("identity")
    @classmethod
    def _identity(cls, v: str | None) -> str | None:
        check_identity(v)
        return v

    @field_validator("remote_dir", "remote_venv", "remote_python")
    @classmethod
    def _no_newline(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and ("\n" in v or "\x00" in v):
            field = to_camel(info.field_name or "")
            raise InvalidInput(f"{field}: must be one line without a NUL byte", field)
        return v

    def lora_request(self) -> dict[str, Any]:
        """The LoRA options the remote entry point trains with (wire names; no SSH fields)."""
        own = set(RemoteOptions.model_fields) - set(lora.LoraOptions.model_fields)
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"backend", *own})
        return data


# --- the wheel --------------------------------------------------------------------------------------


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(cache: Path | None = None) -> Path:
    """A wheel of the trajforge this process runs (its package files as they are now), versioned
    ``<version>+g<content hash>`` so the remote runs exactly this code; built once per content
    and cached in ``<state>/remote/wheels``. Built directly (a wheel is a zip with a RECORD), not
    with ``pip wheel``: no build backend, no network, and it works from a non-editable install."""
    import trajforge

    pkg = Path(trajforge.__file__).parent
    files = sorted(
        p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(pkg.parent).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    try:
        meta = importlib.metadata.metadata("trajforge")
        base_version = meta["Version"].split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        meta, base_version = None, "0.0.0"
    version = f"{base_version}+g{h.hexdigest()[:16]}"
    cache = cache or settings.home() / "remote" / "wheels"
    out = cache / f"trajforge-{version}-py3-none-any.whl"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    dist = f"trajforge-{version}.dist-info"
    metadata = ["Metadata-Version: 2.1", "Name: trajforge", f"Version: {version}"]
    if meta is not None:
        for key in ("Requires-Python", "Provides-Extra", "Requires-Dist"):
            metadata += [f"{key}: {v}" for v in meta.get_all(key) or []]
    extra = {
        f"{dist}/METADATA": "\n".join(metadata) + "\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: trajforge\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": "[console_scripts]\ntrajforge = trajforge.cli:main\n",
    }
    record: list[str] = []
    tmp = Path(tempfile.mkstemp(dir=cache, suffix=".partial")[1])
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in files:
            rel = p.relative_to(pkg.parent).as_posix()
            data = p.read_bytes()
            zf.writestr(rel, data)
            record.append(f"{rel},{_record_hash(data)},{len(data)}")
        for rel, text in extra.items():
            data = text.encode()
            zf.writestr(rel, data)
            record.append(f"{rel},{_record_hash(data)},{len(data)}")
        record.append(f"{dist}/RECORD,,")
        zf.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    tmp.rename(out)
    return out


def wheel_version(path: Path) -> str:
    return path.name.split("-")[1]


# --- the remote side, step by step -----------------------------------------------------------------


class Remote:
    """One job's view of its host: the connection, the remote paths, what it found there."""

    def __init__(self, conn: Connection, opts: RemoteOptions, job_id: str) -> None:
        self.conn = conn
        self.opts = opts
        _, out = conn.run(
            f"mkdir -p {quote_path(opts.remote_dir)} && cd {quote_path(opts.remote_dir)} && pwd"
        )
        self.root = out.strip().splitlines()[-1]
        self.job_dir = f"{self.root}/jobs/{job_id}"
        self.python = ""
        self.gpu = "cpu"
        self.gpu_count = 0

    def sh(self, command: str, **kw: Any) -> tuple[int, str]:
        return self.conn.run(command, **kw)

    def probe_gpus(self) -> None:
        _, out = self.sh("nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || true")
        names = [line.strip() for line in out.splitlines() if line.strip()]
        if names:
            self.gpu, self.gpu_count = names[0], len(names)

    def _version(self, python: str, field: str) -> None:
        check = "import sys; print(sys.version.split()[0]); print(sys.version_info >= (3, 11))"
        status, out = self.sh(f"{python} -c {shlex.quote(check)}", check=False)
        lines = out.strip().splitlines()
        if status != 0 or not lines:
            raise InvalidInput(
                f"{field}: {python} does not run on {self.conn.host}: {out.strip()[-300:]}", field
            )
        if lines[-1] != "True":
            raise InvalidInput(
                f"{field}: {python} on {self.conn.host} is Python {lines[0]}; trajforge needs 3.11+", field
            )

    def venv(self) -> str:
        """The remote venv's python (created when it is ours and missing); Python 3.11+ checked."""
        if self.opts.remote_venv:
            python = f"{quote_path(self.opts.remote_venv.rstrip('/'))}/bin/python"
            self._version(python, "remoteVenv")
        else:
            python = f"{shlex.quote(self.root)}/venv/bin/python"
            if self.sh(f"test -x {python}", check=False)[0] != 0:
                interpreter = quote_path(self.opts.remote_python)
                self._version(interpreter, "remotePython")
                # --system-site-packages: a GPU image's own CUDA torch is used, not downloaded again.
                status, out = self.sh(
                    f"{interpreter} -m venv --system-site-packages {shlex.quote(self.root)}/venv",
                    check=False,
                )
                if status != 0:
                    raise InvalidInput(
                        f"remotePython: `{self.opts.remote_python} -m venv` failed on {self.conn.host}: "
                        f"{out.strip()[-500:]}",
                        "remotePython",
                    )
            self._version(python, "remotePython")
        self.python = python
        return python

    def install(self, wheel: Path) -> bool:
        """Our wheel in the venv (skipped when that exact version is there); the training stack
        when the venv cannot import it. Returns whether anything was installed."""
        version = wheel_version(wheel)
        probe = "import importlib.metadata as m; print(m.version('trajforge'))"
        status, out = self.sh(f"{self.python} -c {shlex.quote(probe)} 2>/dev/null", check=False)
        installed = False
        if status != 0 or out.strip() != version:
            remote = f"{self.root}/wheels/{wheel.name}"
            if not self.conn.exists(remote):
                self.sh(f"mkdir -p {shlex.quote(self.root)}/wheels")
                self.conn.put(wheel, remote + ".partial")
                self.conn.sftp.posix_rename(remote + ".partial", remote)
            self.sh(
                f"{self.python} -m pip install -q --no-deps --no-index --force-reinstall "
                f"--disable-pip-version-check {shlex.quote(remote)}"
            )
            installed = True
        # Importing the training stack takes seconds (torch): checked once per venv and wheel,
        # remembered by a marker in the work dir, so a warm job does not pay for it again.
        key = hashlib.sha256(f"{self.python}\0{version}".encode()).hexdigest()[:16]
        marker = shlex.quote(f"{self.root}/checked/{key}")
        if self.sh(f"test -f {marker}", check=False)[0] == 0:
            return installed
        status, out = self.sh(f"{self.python} -c {shlex.quote('import ' + TRAIN_IMPORTS)}", check=False)
        if status != 0:
            remote = f"{self.root}/wheels/{wheel.name}"
            status, pip_out = self.sh(
                f"{self.python} -m pip install -q --disable-pip-version-check {shlex.quote(remote + '[train]')}",
                check=False,
                timeout=3600,
            )
            field = "remoteVenv" if self.opts.remote_venv else "remotePython"
            if status != 0:
                raise InvalidInput(
                    f"{field}: the remote venv cannot import the training stack ({_tail(out, 3)}) "
                    f"and installing trajforge[train] there failed: {_tail(pip_out, 5)}; give a "
                    "remoteVenv with torch, transformers, peft, trl, datasets and accelerate",
                    field,
                )
            installed = True
        self.sh(f"mkdir -p {shlex.quote(self.root)}/checked && touch {marker}")
        return installed

    def upload_tree(self, local: Path, remote: str, hashes: dict[str, str] | None, prefix: str) -> None:
        """Every file under ``local`` to ``remote``, recording each sha256 in ``hashes``."""
        dirs = sorted({p.parent.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()})
        self.sh("mkdir -p " + " ".join(shlex.quote(f"{remote}/{d}" if d != "." else remote) for d in dirs))
        for p in sorted(local.rglob("*")):
            if p.is_file():
                rel = p.relative_to(local).as_posix()
                self.conn.put(p, f"{remote}/{rel}")
                if hashes is not None:
                    hashes[f"{prefix}{rel}"] = _sha256(p)

    def base_model(self, spec: str) -> str:
        """The base model as the remote loads it: a local folder is uploaded once (cached by its
        files' names, sizes and times), a hub id is left for the remote to resolve."""
        local = _local_base(spec)
        if local is None:
            return spec
        files = sorted(p for p in local.rglob("*") if p.is_file())
        key = hashlib.sha256(
            "".join(
                f"{p.relative_to(local).as_posix()}\0{p.stat().st_size}\0{p.stat().st_mtime_ns}\n"
                for p in files
            ).encode()
        ).hexdigest()[:24]
        remote = f"{self.root}/models/{key}"
        if self.sh(f"test -f {shlex.quote(remote)}/.complete", check=False)[0] != 0:
            partial = remote + ".partial"
            self.sh(f"rm -rf {shlex.quote(partial)}")
            self.upload_tree(local, partial, None, "")
            self.sh(
                f"rm -rf {shlex.quote(remote)} && mv {shlex.quote(partial)} {shlex.quote(remote)} && "
                f"touch {shlex.quote(remote)}/.complete"
            )
        return remote

    def pgid(self) -> int | None:
        status, out = self.sh(f"cat {shlex.quote(self.job_dir)}/pid 2>/dev/null", check=False)
        return int(out.strip()) if status == 0 and out.strip().isdigit() else None

    def stop(self) -> None:
        """TERM the run's process group (it saves a checkpoint between steps), KILL it after
        :data:`STOP_GRACE_S`."""
        pgid = self.pgid()
        if pgid is None:
            return
        self.sh(
            f"kill -TERM -- -{pgid} 2>/dev/null; i=0; "
            f"while kill -0 -- -{pgid} 2>/dev/null && [ $i -lt {int(STOP_GRACE_S * 10)} ]; do sleep 0.1; i=$((i+1)); done; "
            f"kill -KILL -- -{pgid} 2>/dev/null; true",
            check=False,
        )

    def fetch_leftovers(self, dest: Path) -> list[str]:
        """The run's log and last checkpoint (whatever there is), into ``dest``."""
        got = []
        for rel in (
            "remote.log",
            *(f"out/checkpoint/{r}" for r in self.conn.walk(f"{self.job_dir}/out/checkpoint")),
        ):
            if self.conn.exists(f"{self.job_dir}/{rel}"):
                self.conn.get(f"{self.job_dir}/{rel}", dest / rel.removeprefix("out/"))
                got.append(rel.removeprefix("out/"))
        return got

    def teardown(self) -> None:
        self.sh(f"rm -rf {shlex.quote(self.job_dir)}", check=False)


def _sha256(path: Path) -> str:
    from trajforge.datasets.builder import sha256_of

    return sha256_of(path)


def _local_base(spec: str) -> Path | None:
    """The local folder of a base-model spec (None: a hub id the remote resolves itself)."""
    if spec.startswith(("bundled:", "local:")) or Path(spec).is_dir():
        return Path(lora.resolve_base(spec))
    return None


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --- the job --------------------------------------------------------------------------------------


def leftovers_dir(job_id: str, home: Path | None) -> Path:
    """Where a remote job's log and checkpoint are kept locally (beside the job's own log)."""
    return (home or settings.home()) / "jobs" / f"{job_id}-remote"


def train_on_host(
    store: Any,
    job: Any,
    opts: RemoteOptions,
    host: Host,
    report: Report,
    home: Path | None,
    should_stop: ShouldStop,
    *,
    backend: str = "ssh",
    lineage: dict[str, Any] | None = None,
    phase_times: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Train ``job`` on ``host`` and register the model; the output of ``lora.run``
    (``modelId``, ``adapterPath``, ``metrics``) with ``metrics.phaseSeconds`` (``phase_times``
    given by the caller, e.g. ``provisioning``, included) and ``metrics.lineage``."""
    times: dict[str, float] = dict(phase_times or {})
    started = time.monotonic()
    ds = _dataset(store, job, opts, report, home)
    report(0.02, "uploading", f"connecting to {host}")
    with Connection(host) as conn:
        remote = Remote(conn, opts, job.id)
        try:
            return _run(
                store,
                job,
                opts,
                host,
                remote,
                ds,
                report,
                home,
                should_stop,
                backend,
                lineage,
                times,
                started,
            )
        except BaseException:
            # Whatever happened (a failure, a cancel, the job process told to stop), nothing of
            # this job keeps running or stays behind on the host.
            try:
                remote.stop()
                remote.teardown()
            except Exception:  # noqa: BLE001 - the connection itself may be what failed
                pass
            raise


def _run(
    store: Any,
    job: Any,
    opts: RemoteOptions,
    host: Host,
    remote: Remote,
    ds: Any,
    report: Report,
    home: Path | None,
    should_stop: ShouldStop,
    backend: str,
    lineage: dict[str, Any] | None,
    times: dict[str, float],
    started: float,
) -> dict[str, Any]:
    def check_stop() -> None:
        if should_stop():
            raise Cancelled("cancelled before training started")

    remote.probe_gpus()
    report(
        0.03,
        "uploading",
        f"{host}: {remote.gpu_count or 'no'} GPU{'s' if remote.gpu_count != 1 else ''} ({remote.gpu})",
    )
    remote.venv()
    check_stop()
    wheel = build_wheel()
    if remote.install(wheel):
        report(0.05, "uploading", f"installed trajforge {wheel_version(wheel)} in the remote venv")
    check_stop()
    base = remote.base_model(opts.model)
    check_stop()
    remote.sh(f"rm -rf {shlex.quote(remote.job_dir)} && mkdir -p {shlex.quote(remote.job_dir)}")
    hashes: dict[str, str] = {}
    remote.upload_tree(Path(ds.path), f"{remote.job_dir}/snapshot", hashes, "snapshot/")
    with tempfile.TemporaryDirectory() as tmp:
        options = Path(tmp) / "options.json"
        options.write_text(json.dumps(opts.lora_request()))
        hashes["options.json"] = _sha256(options)
        remote.conn.put(options, f"{remote.job_dir}/options.json")
        expected = Path(tmp) / "expected.json"
        expected.write_text(json.dumps(hashes))
        remote.conn.put(expected, f"{remote.job_dir}/expected.json")
    times["uploading"] = round(time.monotonic() - started, 2)
    check_stop()

    report(0.1, "training", f"training on {host} ({remote.gpu})")
    t0 = time.monotonic()
    events: dict[str, Any] = {}

    def on_line(line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return  # not ours (a library printing to stdout): it is in no protocol
        if not isinstance(event, dict):
            return
        if event.get("event") == "progress":
            # The entry point's own 0..1 scale, into this job's training span (0.1 .. 0.9).
            report(0.1 + 0.8 * float(event.get("progress") or 0), "training", str(event.get("message", "")))
        else:
            events[str(event.get("event"))] = event

    args = [
        "--job-dir",
        remote.job_dir,
        "--base",
        base,
        "--device",
        opts.device,
        *(["--gpus", str(opts.gpus)] if opts.gpus else []),
    ]
    command = (
        f"cd {shlex.quote(remote.job_dir)} && exec {remote.python} -u -m trajforge.train.remote_entry "
        + " ".join(shlex.quote(a) for a in args)
        + " 2>> remote.log"
    )
    status, stopped = remote.conn.stream(command, on_line, should_stop)
    times["training"] = round(time.monotonic() - t0, 2)
    keep = leftovers_dir(job.id, home)
    if stopped:
        report(0.9, "downloading", "cancelled: stopping the remote run, fetching its log and checkpoint")
        remote.stop()
        got = remote.fetch_leftovers(keep)
        remote.teardown()
        saved = f"; kept {', '.join(sorted({g.split('/')[0] for g in got}))} in {keep}" if got else ""
        raise Cancelled(f"cancelled on {host}{saved}")
    result = events.get("result")
    if status != 0 or result is None:
        remote.fetch_leftovers(keep)
        log = (keep / "remote.log").read_text(errors="replace") if (keep / "remote.log").exists() else ""
        remote.teardown()
        error = events.get("error") or {}
        if error.get("field"):
            raise InvalidInput(f"{error['field']}: {error.get('message')}", error["field"])
        raise RemoteError(
            f"the training run on {host} failed (exit {status}): {error.get('message') or ''}\n"
            f"{_tail(log)}\n(the remote log is in {keep / 'remote.log'})"
        )

    report(0.9, "downloading", f"downloading the adapter from {host}")
    t0 = time.monotonic()
    model = Model(job_id=job.id, dataset_id=ds.id, base_model=opts.model, backend=backend, adapter_path=None)
    out = lora.models_root(home) / model.id
    try:
        for rel, digest in result["files"].items():
            local = out / rel
            remote.conn.get(f"{remote.job_dir}/out/{rel}", local)
            if _sha256(local) != digest:
                raise RemoteError(f"{rel} downloaded from {host} does not have the sha256 computed there")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    times["downloading"] = round(time.monotonic() - t0, 2)
    t0 = time.monotonic()
    remote.teardown()
    times["teardown"] = round(time.monotonic() - t0, 2)

    metrics: dict[str, Any] = dict(result["metrics"])
    metrics["options"] = {**opts.summary()}
    metrics["host"] = str(host)
    metrics["gpu"] = remote.gpu
    metrics["gpus"] = metrics.get("processes", 1) if remote.gpu_count else 0
    metrics["baseDir"] = base
    metrics["lineage"] = {
        "dataset": ds.id,
        "base": opts.model,
        "host": str(host),
        "gpu": remote.gpu,
        "backend": backend,
        "cost": None,
        **(lineage or {}),
    }
    metrics["phaseSeconds"] = times
    metrics["overheadSeconds"] = round(sum(v for k, v in times.items() if k != "training"), 2)
    model.adapter_path = str(out / "adapter")
    if (out / "merged").is_dir():
        model.merged_path = str(out / "merged")
    model.metrics = metrics
    store.add_model(model)
    report(
        1.0, "done", f"model {model.id}: loss {metrics.get('finalLoss')} (trained on {host}, {remote.gpu})"
    )
    return {
        "modelId": model.id,
        "adapterPath": model.adapter_path,
        "mergedPath": model.merged_path,
        "metrics": metrics,
    }


def _dataset(store: Any, job: Any, opts: lora.LoraOptions, report: Report, home: Path | None) -> Any:
    """The job's dataset snapshot (built here first when the job names none, as lora.run does)."""
    from trajforge import datasets

    if job.dataset_id:
        return datasets.get(store, job.dataset_id)
    fmt = opts.format or "sft"
    report(0.01, "dataset", f"building an {fmt} dataset from the store")
    ds = datasets.build(
        store,
        datasets.BuildRequest(format=fmt, limit=opts.max_trajectories, task=opts.task),
        root=(home / "datasets") if home else None,
    )
    store.update_job(job.id, dataset_id=ds.id)
    return ds


def run(
    store: Any, job: Any, report: Report, home: Path | None = None, should_stop: ShouldStop = lambda: False
) -> dict[str, Any]:
    """The ``ssh`` job body."""
    opts = RemoteOptions.from_stored(job.request)
    host = Host.parse(opts.host, opts.identity)
    return train_on_host(store, job, opts, host, report, home, should_stop)
