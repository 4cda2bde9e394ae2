"""Hugging Face Hub, both ways: the real ``huggingface_hub`` client against the fake Hub on
loopback (tests/fakes/hf_hub.py), and the ``rewarded`` format RL pipelines read from it."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.fakes.hf_hub import FakeHub
from tests.helpers import free_port, make_support_corpus, make_trajectory
from trajforge import datasets, hub
from trajforge.cli import app as cli_app
from trajforge.datasets import BuildRequest, check_row
from trajforge.errors import InvalidInput, NotFound
from trajforge.hub import HubError, PushRequest
from trajforge.records import WriteBatch
from trajforge.server import create_app
from trajforge.store import Store

TOKEN = "hf_test_token_5f0c2e9a"


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The fake Hub, and huggingface_hub pointed at it: its endpoint and token from the
    environment (as a user sets them; job processes inherit them), no telemetry, not offline, and
    Xet off (the fake speaks the Git LFS protocol, which the client uses without Xet). The library
    reads these variables once, at import, so its constants are set too."""
    import huggingface_hub.constants as hf_constants

    with FakeHub(tokens={TOKEN: ("alice", ("alice", "org"))}) as fake:
        for name, value in (
            ("HF_ENDPOINT", fake.endpoint),
            ("HF_TOKEN", TOKEN),
            ("HF_HUB_DISABLE_TELEMETRY", "1"),
            ("HF_HUB_DISABLE_XET", "1"),
            ("HF_HUB_OFFLINE", "0"),
            ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ):
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
        yield fake


def _fill(store: Store, scenarios: int = 6) -> None:
    for t in make_support_corpus(scenarios):
        store.write(WriteBatch.from_trajectory(t))


def _built(store: Store, tmp_path: Path, **kw: Any) -> Any:
    _fill(store)
    return datasets.build(
        store, BuildRequest(**{"format": "sft", "eval_fraction": 0.5, **kw}), root=tmp_path / "ds"
    )


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def _front_matter(readme: bytes) -> dict[str, Any]:
    text = readme.decode()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text[4:].split("\n---\n", 1)[0])
    assert isinstance(meta, dict)
    return meta


def test_push_uploads_the_snapshot_and_pull_round_trips_it_byte_for_byte(
    store: Store, tmp_path: Path, fake_hub: FakeHub
) -> None:
    ds = _built(store, tmp_path)
    folder = Path(ds.path)
    out = hub.push(store, ds.id, PushRequest(repo="org/support", private=True, license="cc-by-4.0"))
    assert out["created"] and out["revision"] == "main"
    assert out["commit"] == fake_hub.repos["org/support"].refs["main"]
    assert fake_hub.repos["org/support"].private

    on_hub = fake_hub.files("org/support")
    for rel in ds.manifest["files"]:
        assert on_hub[rel] == (folder / rel).read_bytes(), rel
    assert on_hub["manifest.json"] == (folder / "manifest.json").read_bytes()
    assert {"train.parquet", "eval.parquet"} <= set(on_hub)
    # Parquet went through LFS (binary), JSONL and the card inline: what the Hub decides.
    assert fake_hub.lfs_paths("org/support") == {"train.parquet", "eval.parquet"}
    meta = _front_matter(on_hub["README.md"])
    assert meta["license"] == "cc-by-4.0" and "trajforge" in meta["tags"]
    assert meta["configs"][0]["data_files"] == [
        {"split": "eval", "path": "eval.parquet"},
        {"split": "train", "path": "train.parquet"},
    ]
    # Pushing the same snapshot again changes nothing: no new commit (the Hub's oids match ours).
    commits = len(fake_hub.repos["org/support"].commits)
    same = hub.push(store, ds.id, PushRequest(repo="org/support", license="cc-by-4.0"))
    assert same["commit"] == out["commit"] and not same["created"]
    assert len(fake_hub.repos["org/support"].commits) == commits
    card = on_hub["README.md"].decode()
    assert ds.id in card and ds.manifest["contentSha256"] in card and "privacy filter" in card
    assert f"| train | {ds.manifest['counts']['rows']['train']} |" in card

    pulled = hub.pull(store, "org/support", root=tmp_path / "ds")
    assert pulled.id != ds.id and store.get_dataset(pulled.id) is not None
    assert pulled.format == "sft" and pulled.row_count == ds.row_count
    back = Path(pulled.path)
    assert sorted(p.relative_to(back).as_posix() for p in back.rglob("*") if p.is_file()) == sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
    )
    for rel in ds.manifest["files"]:
        assert (back / rel).read_bytes() == (folder / rel).read_bytes(), rel
    m = pulled.manifest
    assert m["contentSha256"] == ds.manifest["contentSha256"] and m["files"] == ds.manifest["files"]
    assert m["lineage"]["hub"]["commit"] == out["commit"] and m["lineage"]["pushedFrom"]["id"] == ds.id
    assert json.loads((back / "manifest.json").read_bytes())["id"] == pulled.id

    # Registered like a built dataset: training reads it, and it can be pushed on again.
    from trajforge.train.lora import load_data

    assert len(load_data(back).train) == ds.manifest["counts"]["rows"]["train"]
    again = hub.push(store, pulled.id, PushRequest(repo="org/support", revision="v2"))
    assert (
        not again["created"] and fake_hub.files("org/support", "v2")["train.jsonl"] == on_hub["train.jsonl"]
    )


def test_pull_imports_prompt_completion_and_messages_columns(
    store: Store, tmp_path: Path, fake_hub: FakeHub
) -> None:
    pc_train = [{"prompt": f"What is {i}+{i}?", "completion": str(2 * i)} for i in range(5)]
    pc_test = [{"prompt": "What is 9+9?", "completion": "18"}]
    commit = fake_hub.add_repo(
        "someone/arith",
        {
            "data/train-00000-of-00001.parquet": _parquet(pc_train),
            "data/test-00000-of-00001.parquet": _parquet(pc_test),
            "README.md": b"---\nlicense: mit\n---\n# arithmetic\n",
        },
    )
    ds = hub.pull(store, "someone/arith", root=tmp_path)
    assert ds.format == "prompt_completion" and ds.manifest["counts"]["rows"] == {"train": 5, "eval": 1}
    assert ds.manifest["lineage"]["hub"]["commit"] == commit and ds.name == "someone--arith"
    assert ds.manifest["privacy"]["filtered"] is False
    rows = [json.loads(line) for line in (Path(ds.path) / "train.jsonl").read_text().splitlines()]
    assert rows[0] == {
        "prompt": [{"role": "user", "content": "What is 0+0?"}],
        "completion": [{"role": "assistant", "content": "0"}],
    }
    assert all(check_row("prompt_completion", r) is None for r in rows)
    assert pq.read_table(Path(ds.path) / "train.parquet").num_rows == 5

    only_test = hub.pull(store, "someone/arith", split="test", root=tmp_path)
    assert only_test.manifest["counts"]["rows"] == {"train": 0, "eval": 1} and only_test.version == 2
    # The Hub's parquet conversion lives on a branch with slashes in its name.
    fake_hub.repos["someone/arith"].refs["refs/convert/parquet"] = commit
    converted = hub.pull(store, "someone/arith", revision="refs/convert/parquet", root=tmp_path)
    assert converted.manifest["lineage"]["hub"]["revision"] == "refs/convert/parquet"
    assert converted.manifest["contentSha256"] == ds.manifest["contentSha256"]

    messages = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": f"hi {i}"}]},
                {"role": "assistant", "content": f"hello {i}"},
            ]
        }
        for i in range(3)
    ]
    jsonl = b"".join(json.dumps(r).encode() + b"\n" for r in messages)
    fake_hub.add_repo("someone/chat", {"train.jsonl": jsonl})
    chat = hub.pull(store, "someone/chat", name="chat", root=tmp_path)
    assert chat.format == "sft" and chat.row_count == 3
    first = json.loads((Path(chat.path) / "train.jsonl").read_text().splitlines()[0])
    assert first["messages"][1] == {"role": "user", "content": "hi 0"}
    from trajforge.train.lora import load_data

    assert len(load_data(Path(chat.path)).train) == 3

    # A dataset pulled as is never went through the privacy filter: it is not pushed on.
    with pytest.raises(InvalidInput, match="privacy filter"):
        hub.push(store, chat.id, PushRequest(repo="org/chat"))

    grpo = [{"prompt": [{"role": "user", "content": "2+2?"}], "reward": 1.0, "group": "g", "task": "t"}]
    fake_hub.add_repo("someone/grpo", {"data/train.parquet": _parquet(grpo)})
    taken = hub.pull(store, "someone/grpo", root=tmp_path)
    assert taken.format == "grpo"
    assert json.loads((Path(taken.path) / "train.jsonl").read_text()) == grpo[0]

    deep: Any = "x"
    for _ in range(200):
        deep = [deep]
    lines = [
        b"not json",
        json.dumps({"prompt": "a", "completion": deep}).encode(),
        json.dumps(pc_test[0]).encode(),
    ]
    fake_hub.add_repo("someone/messy", {"train.jsonl": b"\n".join(lines) + b"\n"})
    messy = hub.pull(store, "someone/messy", root=tmp_path)
    assert messy.row_count == 1 and messy.manifest["warnings"] == [
        "2 rows were not valid prompt_completion rows and were left out"
    ]
    fake_hub.add_repo("someone/broken", {"train.parquet": b"PAR1\x00 not really parquet"})
    with pytest.raises(InvalidInput, match=r"someone/broken: train\.parquet is not a readable parquet file"):
        hub.pull(store, "someone/broken", root=tmp_path)

    fake_hub.add_repo("someone/other", {"data.parquet": _parquet([{"text": "just text"}])})
    before = len(store.list_datasets())
    with pytest.raises(InvalidInput, match="someone/other"):
        hub.pull(store, "someone/other", root=tmp_path)
    assert len(store.list_datasets()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_hub_errors_name_the_repo_and_leave_nothing_behind(
    store: Store, tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = _built(store, tmp_path)
    before = len(store.list_datasets())

    with pytest.raises(HubError) as missing:
        hub.pull(store, "org/nothing-here", root=tmp_path / "ds")
    assert missing.value.status == 404 and "org/nothing-here" in missing.value.message

    fake_hub.add_repo("org/hidden", {"train.jsonl": b""}, owner="bob", private=True)
    with pytest.raises(HubError) as conflict:
        hub.push(store, ds.id, PushRequest(repo="org/hidden"))
    assert conflict.value.status == 409 and "org/hidden" in conflict.value.message

    fake_hub.add_repo("org/public", {"train.jsonl": b'{"messages": []}\n'})
    with pytest.raises(HubError) as revision:
        hub.pull(store, "org/public", revision="nope", root=tmp_path / "ds")
    assert revision.value.status == 404 and "org/public" in revision.value.message
    assert revision.value.field == "revision"

    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(HubError) as refused:
        hub.push(store, ds.id, PushRequest(repo="org/support"))
    assert refused.value.status == 401 and "org/support" in refused.value.message
    with pytest.raises(HubError) as refused_pull:
        hub.pull(store, "org/public", root=tmp_path / "ds")
    assert refused_pull.value.status == 401 and "org/public" in refused_pull.value.message

    assert len(store.list_datasets()) == before
    assert not [p for p in (tmp_path / "ds").iterdir() if p.name.startswith(".")]
    assert not [c for c in fake_hub.requests if "/commit/" in c[1]]

    # A manifest from the Hub never chooses where a file goes.
    evil = {**ds.manifest, "files": {"../../escaped.jsonl": {"rows": 1, "bytes": 3, "sha256": "0" * 64}}}
    fake_hub.add_repo("org/evil", {"manifest.json": json.dumps(evil).encode(), "x.jsonl": b"{}\n"})
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(InvalidInput, match="org/evil"):
        hub.pull(store, "org/evil", root=tmp_path / "ds")
    assert not list(tmp_path.rglob("escaped.jsonl"))
    tasks = {"t": {"train": 1, "eval": 0, "folder": "../../elsewhere"}}
    evil = {**ds.manifest, "counts": {**ds.manifest["counts"], "tasks": tasks}}
    fake_hub.add_repo("org/evil2", {"manifest.json": json.dumps(evil).encode()})
    with pytest.raises(InvalidInput, match="task folder"):
        hub.pull(store, "org/evil2", root=tmp_path / "ds")

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(HubError) as unreachable:
        hub.pull(store, "org/public", root=tmp_path / "ds")
    assert unreachable.value.status == 502 and "org/public" in unreachable.value.message
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)

    assert len(store.list_datasets()) == before
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    r = CliRunner().invoke(cli_app, ["datasets", "pull", "org/public", "--db", store.url])
    assert r.exit_code == 2 and "org/public" in r.output and "401" in r.output, r.output
    r = CliRunner().invoke(cli_app, ["datasets", "pull", "org/../x", "--db", store.url])
    assert r.exit_code == 2 and "ORG/NAME" in r.output, r.output


def test_only_intact_snapshots_are_pushed(store: Store, tmp_path: Path, fake_hub: FakeHub) -> None:
    ds = _built(store, tmp_path)
    with pytest.raises(NotFound, match="only dataset snapshots"):
        hub.push(store, "trajectory-1", PushRequest(repo="org/x"))
    changed = Path(ds.path) / "train.jsonl"
    changed.chmod(0o644)
    changed.write_bytes(changed.read_bytes() + b'{"messages": []}\n')
    with pytest.raises(InvalidInput, match=r"not an intact snapshot: train\.jsonl"):
        hub.push(store, ds.id, PushRequest(repo="org/x"))
    with pytest.raises(InvalidInput, match="repo"):
        PushRequest(repo="no-namespace")
    assert "org/x" not in fake_hub.repos and fake_hub.requests == []


def test_cli_push_and_pull(store: Store, tmp_path: Path, fake_hub: FakeHub) -> None:
    ds = _built(store, tmp_path)
    r = CliRunner().invoke(
        cli_app,
        ["datasets", "push", ds.id, "--repo", "alice/support", "--revision", "dev", "--db", store.url],
    )
    assert r.exit_code == 0, r.output
    commit = fake_hub.repos["alice/support"].refs["dev"]
    assert commit in r.output and "(created)" in r.output
    assert "train.jsonl" not in fake_hub.files("alice/support", "main")  # the commit went to dev
    r = CliRunner().invoke(
        cli_app,
        ["datasets", "pull", "alice/support", "--revision", "dev", "--name", "mine", "--db", store.url],
    )
    assert r.exit_code == 0, r.output
    pulled = store.latest_dataset("mine")
    assert pulled is not None and commit in r.output
    assert pulled.manifest["lineage"]["hub"] == {
        "repo": "alice/support",
        "revision": "dev",
        "commit": commit,
        "files": sorted(ds.manifest["files"]),
    }
    r = CliRunner().invoke(cli_app, ["datasets", "push", ds.id, "--repo", "x", "--db", store.url])
    assert r.exit_code == 2 and "--repo" in r.output, r.output


def _wait_job(client: TestClient, job_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/training/jobs/{job_id}").json()["job"]
        if job["status"] in ("completed", "failed", "cancelled") and job["exitCode"] is not None:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end: {job}")


def test_the_api_pushes_as_a_job_and_no_file_holds_the_token(
    store: Store, tmp_path: Path, fake_hub: FakeHub
) -> None:
    ds = _built(store, tmp_path)
    with TestClient(create_app(store, run_jobs=True), base_url="http://127.0.0.1") as client:
        r = client.post(
            f"/api/training/datasets/{ds.id}/push", json={"repo": "org/api-push", "private": True}
        )
        assert r.status_code == 202, r.text
        queued = r.json()["job"]
        assert queued["kind"] == "hub_push" and queued["datasetId"] == ds.id
        assert queued["request"] == {"datasetId": ds.id, "repo": "org/api-push", "private": True}
        job = _wait_job(client, queued["id"])
        assert job["status"] == "completed" and job["exitCode"] == 0, job
        assert job["output"]["commit"] == fake_hub.repos["org/api-push"].refs["main"]
        events = client.get(f"/api/training/jobs/{job['id']}/events?follow=false").text
        kinds = [line.split(": ", 1)[1] for line in events.splitlines() if line.startswith("event: ")]
        assert kinds[0] == "job_started" and kinds[-1] == "job_completed" and "job_progress" in kinds
        assert fake_hub.files("org/api-push")["train.jsonl"] == (Path(ds.path) / "train.jsonl").read_bytes()

        r = client.post("/api/training/datasets/dataset-nope/push", json={"repo": "org/x"})
        assert r.status_code == 404 and r.json()["error"]["field"] == "id", r.text
        r = client.post(f"/api/training/datasets/{ds.id}/push", json={"repo": "../etc"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "repo", r.text
        log = Path(job["logPath"]).read_bytes()
    hub.pull(store, "org/api-push", root=tmp_path / "ds")

    stored = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in stored) or store.url.startswith("postgres")
    for p in stored:
        assert TOKEN.encode() not in p.read_bytes(), p
    assert TOKEN.encode() not in log
    for job in store.list_jobs():
        assert TOKEN not in json.dumps([job.request, job.output, job.error])
    for d in store.list_datasets():
        assert TOKEN not in json.dumps(d.manifest)
    for e in store.list_events(limit=1000):
        assert TOKEN not in json.dumps([e.message, e.data])
    for lines in fake_hub.commit_payloads:
        assert TOKEN not in json.dumps(lines)


def test_rewarded_rows_with_min_reward_and_since(store: Store, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    day = 86_400_000
    recent_good = make_trajectory(start_time=now - 2 * day, reward=0.9, scenario_id="a")
    recent_bad = make_trajectory(start_time=now - day, reward=0.2, scenario_id="b")
    old_good = make_trajectory(start_time=now - 10 * day, reward=0.9, scenario_id="c")
    unscored = make_trajectory(start_time=now - day, reward=None, scenario_id="d")
    for t in (recent_good, recent_bad, old_good, unscored):
        store.write(WriteBatch.from_trajectory(t))

    req = BuildRequest(format="rewarded", min_reward=0.7, since="7d", eval_fraction=0)
    ds = datasets.build(store, req, root=tmp_path)
    rows = [json.loads(line) for line in (Path(ds.path) / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["metadata"]["trajectoryId"] for r in rows} == {recent_good.id}
    first = rows[0]
    assert check_row("rewarded", first) is None
    assert first["reward"] == 0.9
    assert (
        first["prompt"].startswith("You are a support agent.")
        and "Customer asks for a refund" in first["prompt"]
    )
    assert first["response"] == '{"action": "REFUND", "params": {"orderId": "A-1042"}}'
    assert first["context"] == [
        {
            "provider": "orders",
            "purpose": "lookup",
            "data": '{"orderId":"A-1042","total":42.5}',
            "timestamp": recent_good.steps[0].provider_accesses[0].timestamp,
        }
    ]
    assert first["metadata"]["agentId"] == "agent-1" and first["metadata"]["timestampMs"] == now - 2 * day
    assert ds.manifest["request"]["since"] == "7d"
    assert now - 7 * day <= ds.manifest["request"]["filter"]["startDate"] <= int(time.time() * 1000) - 7 * day
    assert pq.read_table(Path(ds.path) / "train.parquet").num_rows == 4

    everything = datasets.build(store, BuildRequest(format="rewarded", eval_fraction=0), root=tmp_path)
    ids = {
        json.loads(x)["metadata"]["trajectoryId"]
        for x in (Path(everything.path) / "train.jsonl").read_text().splitlines()
    }
    assert ids == {recent_good.id, recent_bad.id, old_good.id}  # no reward, no rewarded row
    assert everything.manifest["privacy"]["droppedByReason"] == {"no reward": 1}

    with pytest.raises(InvalidInput) as bad:
        BuildRequest(format="rewarded", since="7 days")
    assert bad.value.field == "since"
    r = CliRunner().invoke(
        cli_app,
        [
            "datasets",
            "build",
            "--format",
            "rewarded",
            "--since",
            "3d",
            "--min-reward",
            "0.7",
            "--db",
            store.url,
        ],
    )
    assert r.exit_code == 0, r.output
    built = store.latest_dataset("rewarded")
    assert built is not None and built.row_count == 4


def test_a_collection_run_pulls_from_the_hub(store: Store, tmp_path: Path, fake_hub: FakeHub) -> None:
    """``collect run --hf-dataset``: the real pull (trajforge.hub through the collect hook) against
    the fake Hub; a missing repo fails its entry by name and stops nothing else."""
    from trajforge import collect
    from trajforge.collect import CollectRequest

    ds = _built(store, tmp_path)
    hub.push(store, ds.id, PushRequest(repo="alice/support"))
    req = CollectRequest(hf_dataset=["alice/support", "alice/missing"], output_dir=str(tmp_path / "run"))
    m = collect.run(store, req, hf_pull=collect.default_hf_pull()).manifest
    step = next(s for s in m["steps"] if s["id"] == "hf_datasets")
    assert step["status"] == "failed" and "alice/missing" in step["error"]
    got = step["result"]["datasets"][0]
    assert got["repo"] == "alice/support" and got["status"] == "pulled" and got["rows"] == ds.row_count
    pulled = store.get_dataset(got["datasetId"])
    assert pulled is not None and pulled.manifest["lineage"]["hub"]["commit"] == got["commit"]
    assert next(s for s in m["steps"] if s["id"] == "trajectories")["status"] == "succeeded"
