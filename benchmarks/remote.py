"""Fixed overhead of an ``ssh`` job: the same LoRA job run locally (``cpu``) and on the loopback
sshd (``ssh``, warm remote venv), alternated; the difference is what the orchestration costs.

    python benchmarks/remote.py [--steps 4] [--rounds 3] [--model tiny|bundled:smollm2-135m]

The remote host is Debian's real OpenSSH server on loopback (``tests/fakes/sshd.py``), the remote
venv a throwaway venv that sees this venv's packages (as in tests/test_remote.py), so "remote"
training runs on this very CPU: the training itself costs the same on both sides and the
difference is upload + venv/wheel check + process start + streaming + download + teardown. One
warm-up remote job first (creates the venv's wheel install and the base model cache on the host,
as a user's first job does). Goal: ≤ 20 s of overhead per job (issue 20). Prints medians per phase.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' sshd and corpus helpers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="tiny", help="tiny (a tiny random Llama) or a base-model spec")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    os.environ["TRAJFORGE_HOME"] = str(work / "home")
    from tests.fakes.sshd import Sshd
    from tests.helpers import make_support_corpus

    from trajforge import datasets
    from trajforge.records import Job, WriteBatch
    from trajforge.store import open_store
    from trajforge.train import remote
    from trajforge.train.ssh import Host

    if args.model == "tiny":
        from trajforge.demo.tiny import build_tiny_model

        model = f"local:{build_tiny_model(work / 'tiny')}"
    else:
        model = args.model
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "dev.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    store = open_store(str(work / "store.db"))
    for t in make_support_corpus(scenarios=6):
        store.write(WriteBatch.from_trajectory(t))
    ds = datasets.build(store, datasets.BuildRequest(format="sft", seed=1), root=work / "datasets")
    common = {"model": model, "datasetId": ds.id, "iterations": args.steps, "batchSize": 2}

    with Sshd(work / "sshd") as server:
        ssh_request = {
            **common,
            "backend": "ssh",
            "host": server.spec,
            "identity": str(server.identity),
            "remoteVenv": str(venv),
            "remoteDir": str(work / "remote"),
        }

        def local() -> dict[str, Any]:
            """The local job in a fresh process, as the job runner runs it (imports included, as
            the remote entry point's are)."""
            job = Job(kind="lora", backend="cpu", request={**common, "backend": "cpu"}, dataset_id=ds.id)
            store.add_job(job)
            code = (
                "import sys; from pathlib import Path; from trajforge.store import open_store; "
                "from trajforge.train import lora; s = open_store(sys.argv[1]); "
                "out = lora.run(s, s.get_job(sys.argv[2]), lambda *a: None, Path(sys.argv[3])); "
                "print(out['metrics']['trainSeconds'])"
            )
            t0 = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-c", code, str(work / "store.db"), job.id, str(work / "home")],
                capture_output=True,
                text=True,
                check=True,
            )
            return {"total": time.monotonic() - t0, "train": float(done.stdout.strip().splitlines()[-1])}

        def ssh() -> dict[str, Any]:
            job = Job(kind="remote", backend="ssh", request=ssh_request, dataset_id=ds.id)
            store.add_job(job)
            opts = remote.RemoteOptions.from_stored(job.request)
            t0 = time.monotonic()
            out = remote.train_on_host(
                store,
                job,
                opts,
                Host.parse(opts.host, opts.identity),
                lambda *a: None,
                work / "home",
                lambda: False,
            )
            m = out["metrics"]
            return {"total": time.monotonic() - t0, "train": m["trainSeconds"], **m["phaseSeconds"]}

        t0 = time.monotonic()
        first = ssh()
        print(
            f"warm-up (cold host: venv wheel install, base model upload): {time.monotonic() - t0:.1f} s {first}"
        )
        runs: dict[str, list[dict[str, Any]]] = {"local": [], "ssh": []}
        for _ in range(args.rounds):
            runs["local"].append(local())
            runs["ssh"].append(ssh())
    store.close()

    def med(kind: str, key: str) -> float:
        return median(r[key] for r in runs[kind])

    overhead = [s["total"] - loc["total"] for s, loc in zip(runs["ssh"], runs["local"], strict=True)]
    print(f"\n{args.steps} steps on {model}, {args.rounds} rounds, medians:")
    print(f"  local job total        {med('local', 'total'):7.2f} s (trainer {med('local', 'train'):.2f} s)")
    print(f"  ssh job total          {med('ssh', 'total'):7.2f} s (trainer {med('ssh', 'train'):.2f} s)")
    for phase in ("uploading", "training", "downloading", "teardown"):
        print(f"    {phase:<20} {med('ssh', phase):7.2f} s")
    print(f"    remote process outside the trainer {med('ssh', 'training') - med('ssh', 'train'):7.2f} s")
    print(f"  fixed overhead (ssh − local, paired) {median(overhead):7.2f} s  (goal ≤ 20 s)")
    print(f"  ratio ssh / local      {med('ssh', 'total') / med('local', 'total'):7.2f}x")


if __name__ == "__main__":
    main()
