"""Collection runs: the store aggregates they read (both backends), the run folder and its manifest,
readiness checks flipping as evidence arrives, failures that stop nothing, secrets kept out,
escaping, paths, ``collect list``, and the API and dashboard on a real server."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from tests.helpers import free_port, make_support_corpus, make_trajectory, start_server
from trajforge import autotrain, collect, datasets, evaluate
from trajforge.cli import app as cli_app
from trajforge.collect import CollectRequest
from trajforge.datasets.request import BuildRequest
from trajforge.errors import InvalidInput
from trajforge.optimize import artifacts
from trajforge.records import LlmCall, Model, Score, Step, Trajectory, WriteBatch
from trajforge.store import Store, open_store

runner = CliRunner()


def _seed(store: Store, tmp_path: Path) -> dict[str, Any]:
    """Four trajectories of the REFUND task (three completed in three scenarios, one error without a
    reward or scenario; t2 repeats t1's calls exactly), two scores, one snapshot, one benchmarked
    and active model."""
    ts = [
        make_trajectory(
            source="chat", scenario_id="sc-0", prompt="p-0 mail bob@example.com", start_time=1_700_000_000_000
        ),
        make_trajectory(source="chat", scenario_id="sc-1", prompt="p-1", start_time=1_700_000_001_000),
        make_trajectory(source="chat", scenario_id="sc-2", prompt="p-1", start_time=1_700_000_002_000),
        make_trajectory(
            source="api",
            status="error",
            scenario_id=None,
            reward=None,
            prompt="p-err",
            start_time=1_700_000_003_000,
        ),
    ]
    for t in ts:
        store.write(WriteBatch.from_trajectory(t))
    store.add_scores(
        [Score(ts[0].id, "csat", 0.9, source="outcome"), Score(ts[3].id, "csat", 0.1, source="outcome")]
    )
    ds = datasets.build(store, BuildRequest(format="sft", eval_fraction=0.5, name="refunds"))
    weights = tmp_path / "adapter"
    weights.mkdir()
    model = Model(
        job_id=None,
        dataset_id=ds.id,
        base_model="tiny-base",
        backend="cpu",
        adapter_path=str(weights),
        evaluation={
            "status": "completed",
            "baseScore": 0.4,
            "trainedScore": 0.75,
            "delta": 0.35,
            "deltaPct": 87.5,
            "n": 20,
            "metric": "action_match",
            "datasetId": ds.id,
        },
    )
    store.add_model(model)
    store.activate_model(model.id, "tiny-trained", 1_700_000_100_000)
    return {"trajectories": ts, "dataset": ds, "model": model}


def _step(manifest: dict[str, Any], step: str) -> dict[str, Any]:
    return next(s for s in manifest["steps"] if s["id"] == step)


def _check(manifest: dict[str, Any], check: str) -> dict[str, Any]:
    return next(c for c in manifest["readiness"]["checks"] if c["id"] == check)


# --- the store's aggregates ---------------------------------------------------------------------


def test_store_aggregates(store: Store, tmp_path: Path) -> None:
    seeded = _seed(store, tmp_path)
    ts = seeded["trajectories"]
    assert store.task_coverage("csat") == [
        {
            "task": "REFUND",
            "trajectories": 4,
            "completed": 3,
            "rewarded": 3,
            "scored": 2,
            "rewardedOrScored": 4,
            "completedWithRequiredScore": 1,
            "withScenario": 3,
        }
    ]
    assert store.task_coverage()[0]["completedWithRequiredScore"] is None
    # In passes (as SQLite groups a big store, to keep its memory flat), the same answers.
    whole = store.task_coverage("csat"), store.duplicate_calls()
    store.group_pass_rows = 3  # type: ignore[misc]  # 16 calls: 6 passes
    assert store._passes(16) == 6  # type: ignore[attr-defined]
    assert (store.task_coverage("csat"), store.duplicate_calls()) == whole
    assert store.score_coverage() == [
        {"name": "csat", "count": 2, "trajectories": 2, "mean": pytest.approx(0.5)}
    ]
    # 16 calls; t2's four repeat t1's.
    assert store.duplicate_calls() == (16, 12)
    store.delete([ts[2].id])
    assert store.duplicate_calls() == (12, 12)


# --- a run ----------------------------------------------------------------------------------------


def test_dry_run_writes_the_folder_with_exact_counts(store: Store, tmp_path: Path) -> None:
    seeded = _seed(store, tmp_path)
    out = tmp_path / "runs" / "first"
    run = collect.run(store, CollectRequest(output_dir=str(out), require_score="csat"))
    assert run.output_dir == out.resolve()
    for name in (
        "collection-manifest.json",
        "README.md",
        "analysis/index.html",
        "analysis/training-readiness-report.json",
    ):
        assert (out / name).is_file(), name
    index = orjson.loads((out.parent / "collection-index.json").read_bytes())
    assert [r["id"] for r in index["runs"]] == ["first"]
    assert (out.parent / "collection-index.html").is_file()

    m = orjson.loads((out / "collection-manifest.json").read_bytes())
    assert m == run.manifest
    assert (m["schema"], m["schemaVersion"], m["mode"], m["id"]) == (
        "trajforge_collection_run",
        1,
        "dry",
        "first",
    )
    assert {s["id"]: s["status"] for s in m["steps"]} == {
        "jsonl_imports": "skipped",
        "hf_datasets": "skipped",
        "trajectories": "succeeded",
        "datasets": "succeeded",
        "outcomes": "succeeded",
        "prompts": "succeeded",
        "models": "succeeded",
        "benchmarks": "succeeded",
        "live_eval": "skipped",
    }
    assert _step(m, "live_eval")["result"]["note"].startswith("dry run")
    traj = _step(m, "trajectories")["result"]
    assert (traj["total"], traj["llmCalls"]) == (4, 16)
    assert traj["bySource"] == {"chat": 3, "api": 1}
    assert traj["byStatus"] == {"completed": 3, "error": 1}
    assert traj["duplicates"] == {"llmCalls": 16, "distinct": 12, "rate": 0.25}
    assert (out / "steps" / "trajectories" / "summary.json").is_file()
    assert _step(m, "trajectories")["outputDir"] == str(out.resolve() / "steps" / "trajectories")
    outcomes = _step(m, "outcomes")["result"]
    assert outcomes["tasks"] == [
        {"task": "REFUND", "completed": 3, "rewardedOrScored": 4, "coverage": 1.0, "pending": 2}
    ]
    ds = seeded["dataset"]
    listed = _step(m, "datasets")["result"]["datasets"]
    assert [(d["id"], d["rows"], d["manifestOnDisk"]) for d in listed] == [
        (ds.id, ds.manifest["counts"]["rows"], True)
    ]
    model = seeded["model"]
    assert [x["id"] for x in m["modelInventory"]] == [model.id]
    assert m["modelInventory"][0]["active"] is True
    (comparison,) = m["benchmarkComparisons"]
    assert comparison["deltaPoints"] == 35.0 and comparison["deltaPct"] == 87.5 and comparison["improved"]
    assert m["evidence"]["benchmarks"]["firstImprovement"]["modelId"] == model.id
    assert m["evidence"]["models"] == {"count": 1, "active": model.id}
    assert {src: len(rows) for src, rows in m["samplePreviews"].items()} == {"chat": 3, "api": 1}
    assert m["samplePreviews"]["api"][0]["trajectoryId"] == seeded["trajectories"][3].id
    # Previews went through the privacy filter: the address is nowhere in the run folder.
    oldest = m["samplePreviews"]["chat"][-1]
    assert oldest["trajectoryId"] == seeded["trajectories"][0].id
    assert "bob@example.com" not in oldest["prompt"] and "REDACTED" in oldest["prompt"]
    assert all(b"bob@example.com" not in p.read_bytes() for p in out.rglob("*") if p.is_file())

    statuses = {c["id"]: c["status"] for c in m["readiness"]["checks"]}
    assert statuses["base_vs_trained"] == "ready"
    assert statuses["active_model"] == "ready"
    assert statuses["pending_outcomes"] == "partial"
    assert statuses["reward_coverage"] == "ready"
    assert statuses["preference_pairs"] == "missing"
    assert statuses["trajectories_per_task"] == "missing"  # 3 of the default threshold 100
    assert statuses["scenario_separation"] == "partial"  # the error trajectory has no scenario
    assert m["readiness"]["status"] == "partial"
    counts = m["readiness"]["counts"]
    assert sum(counts.values()) == len(m["readiness"]["checks"]) >= 12
    pref = _check(m, "preference_pairs")["recommendedAction"]
    assert pref == {
        "label": "Build preference pairs",
        "capability": "trajforge datasets build",
        "params": {"format": "preference"},
    }
    report = orjson.loads((out / "analysis/training-readiness-report.json").read_bytes())
    assert report["checks"] == m["readiness"]["checks"] and report["status"] == "partial"
    readme = (out / "README.md").read_text()
    assert "Training readiness: partial" in readme
    assert "trajforge datasets build --format preference" in readme
    assert f"| {model.id} | 0.4 | 0.75 | 35.0 | 87.5 | 20 |" in readme


def test_readiness_flips_as_evidence_arrives(store: Store, tmp_path: Path) -> None:
    home = Path(os.environ["TRAJFORGE_HOME"])

    def statuses(**kw: Any) -> dict[str, str]:
        m = collect.run(store, CollectRequest(**kw)).manifest
        return {c["id"]: c["status"] for c in m["readiness"]["checks"]}

    first = statuses()
    assert first["trajectories_per_task"] == "missing"
    assert first["preference_pairs"] == "missing"
    assert first["active_model"] == "missing"
    assert first["base_vs_trained"] == "missing"
    assert first["prompt_artifacts"] == "missing"

    autotrain.set_config(store, {"threshold": 12})
    for t in make_support_corpus(scenarios=4):  # 12 completed trajectories
        store.write(WriteBatch.from_trajectory(t))
    datasets.build(store, BuildRequest(format="preference", pair_by="scenario"))
    after = statuses()
    assert after["trajectories_per_task"] == "ready"
    assert after["preference_pairs"] == "ready"

    model = Model(job_id=None, dataset_id=None, base_model="b", backend="cpu", adapter_path=None)
    store.add_model(model)
    store.update_model(
        model.id, evaluation={"status": "completed", "baseScore": 0.5, "trainedScore": 0.4, "n": 4}
    )
    s = statuses()
    assert (s["active_model"], s["base_vs_trained"]) == ("partial", "partial")
    store.activate_model(model.id, "trained", 1)
    store.update_model(
        model.id, evaluation={"status": "completed", "baseScore": 0.5, "trainedScore": 0.8, "n": 4}
    )
    s = statuses()
    assert (s["active_model"], s["base_vs_trained"]) == ("ready", "ready")

    tasks = sorted({t["task"] for t in store.task_coverage()})
    # Tried but not promoted (as the demo's instruction search on a task LM that ignores
    # instructions): an honest partial naming why, and demonstrations as the next thing to try.
    tried = artifacts.PromptArtifact(task=tasks[0], optimizer="instruction-search", prompt="p", baseline="b",
                                     score=0.2, baseline_score=0.3)  # fmt: skip
    artifacts.save(tried, home=home)
    m = collect.run(store, CollectRequest()).manifest
    prompts = _check(m, "prompt_artifacts")
    assert prompts["status"] == "partial"
    assert (
        f"{tasks[0]}: v1 by instruction-search scored 0.200 against the baseline's 0.300, not promoted"
        in prompts["note"]
    )
    assert "ignore instructions" in prompts["note"]
    assert prompts["recommendedAction"]["params"] == {
        "backend": "native",
        "optimizer": "bootstrap-fewshot",
        "task": tasks[0],
    }
    for task in tasks:
        art = artifacts.PromptArtifact(task=task, optimizer="instruction-search", prompt="p", baseline="b",
                                       score=0.3, baseline_score=0.3)  # fmt: skip
        artifacts.save(art, home=home, force=True)
    m = collect.run(store, CollectRequest()).manifest
    prompts = _check(m, "prompt_artifacts")
    assert prompts["status"] == "partial"
    assert "ignore instructions" in prompts["note"]
    assert prompts["recommendedAction"]["params"]["optimizer"] == "bootstrap-fewshot"
    for task in tasks:
        art = artifacts.PromptArtifact(task=task, optimizer="bootstrap-fewshot", prompt="p2", baseline="b",
                                       score=0.9, baseline_score=0.3)  # fmt: skip
        artifacts.save(art, home=home, force=True)
    assert statuses()["prompt_artifacts"] == "ready"


def test_a_failing_step_stops_nothing(store: Store, tmp_path: Path) -> None:
    other = open_store(str(tmp_path / "other.db"))
    t = make_trajectory(prompt="imported one")
    other.write(WriteBatch.from_trajectory(t))
    good = tmp_path / "good.jsonl"
    from trajforge.store.filter import TrajectoryFilter

    good.write_bytes(b"".join(other.iter_json_docs(TrajectoryFilter(), newline=True)))
    other.close()
    unreadable = tmp_path / "a-folder.jsonl"
    unreadable.mkdir()
    run = collect.run(
        store,
        CollectRequest(
            jsonl=[str(tmp_path / "missing.jsonl"), str(good), str(unreadable)], run_id="app-run-1"
        ),
    )
    m = run.manifest
    step = _step(m, "jsonl_imports")
    assert step["status"] == "failed"
    assert "missing.jsonl" in step["error"] and "a-folder.jsonl" in step["error"]
    files = {Path(f["file"]).name: f for f in step["result"]["files"]}
    assert files["good.jsonl"]["status"] == "imported" and files["good.jsonl"]["newTrajectories"] == 1
    assert files["good.jsonl"]["runId"] == "app-run-1"
    assert files["missing.jsonl"]["status"] == "failed"
    assert all(s["status"] != "failed" for s in m["steps"] if s["id"] != "jsonl_imports")
    assert _step(m, "trajectories")["result"]["total"] == 1
    assert m["evidence"]["sources"]["jsonl"] == 1
    # The failed step's partial result is shown, not only its error.
    readme = (run.output_dir / "README.md").read_text()
    assert re.search(r"\| \S*good\.jsonl \| imported \| 1 \| 1 \|", readme)
    assert "missing.jsonl | failed" in readme
    assert "a-folder.jsonl" in (run.output_dir / "analysis/index.html").read_text()
    assert store.get_trajectory(t.id) is not None


def test_live_run_evaluates_the_model_at_the_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fakes.openai_server import FakeOpenAI

    monkeypatch.delenv("TRAJFORGE_LM_BASE_URL", raising=False)
    monkeypatch.delenv("TRAJFORGE_LM_MODEL", raising=False)
    store = open_store(str(tmp_path / "s.db"))
    try:
        _seed(store, tmp_path)
        held_out = datasets.build(
            store, BuildRequest(format="prompt_completion", eval_fraction=0.99, name="heldout")
        )
        eval_rows = held_out.manifest["counts"]["rows"]["eval"]
        assert eval_rows > 0
        right = '{"action": "REFUND", "params": {"orderId": "A-1042"}}'
        with FakeOpenAI(lambda messages, request: right) as fake:
            req = CollectRequest(live=True, base_url=fake.base_url, model="fake-model", probe_endpoints=True,
                                 eval_dataset_id=held_out.id, eval_limit=5)  # fmt: skip
            checked = collect.preflight(store, req)
            assert checked["ready"] is True
            assert checked["probe"]["models"] == ["fake-model"]
            m = collect.run(store, req).manifest
            chats = [r for r in fake.requests if "messages" in r]
        live = _step(m, "live_eval")
        assert live["status"] == "succeeded", live
        n = min(5, eval_rows)
        assert (live["result"]["n"], live["result"]["score"], live["result"]["metric"]) == (
            n,
            1.0,
            "action_match",
        )
        assert live["result"]["datasetId"] == held_out.id
        assert len(chats) == n and all(r["model"] == "fake-model" for r in chats)
        assert m["mode"] == "live" and m["preflight"]["ready"] is True
        assert m["evidence"]["liveEval"]["score"] == 1.0

        # Without an endpoint the live step fails with its reason; every other step still runs.
        m = collect.run(store, CollectRequest(live=True, model="x")).manifest
        live = _step(m, "live_eval")
        assert live["status"] == "failed" and "baseUrl" in live["error"]
        assert all(s["status"] in ("succeeded", "skipped") for s in m["steps"] if s["id"] != "live_eval")
    finally:
        store.close()


def test_a_url_an_http_request_chose_gets_no_server_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over HTTP (untrusted) the live evaluation sends the server's model key only to the
    configured endpoint; from the CLI (trusted) the user's key goes where the user says (found by
    review: an API caller could collect the key at a URL of its choosing)."""
    from tests.fakes.openai_server import FakeOpenAI

    monkeypatch.setenv("TRAJFORGE_LM_API_KEY", "sk-server-secret")
    monkeypatch.delenv("TRAJFORGE_LM_BASE_URL", raising=False)
    store = open_store(str(tmp_path / "s.db"))
    try:
        _seed(store, tmp_path)
        with FakeOpenAI() as fake:
            req = CollectRequest(live=True, base_url=fake.base_url, model="m", suite=next(iter(evaluate.SUITES)),
                                 eval_limit=1, output_dir=str(tmp_path / "home" / "collections" / "a"))  # fmt: skip
            collect.run(store, req, trusted=False, home=tmp_path / "home")
            untrusted = [h.get("authorization") for h in fake.headers]
            monkeypatch.setenv("TRAJFORGE_LM_BASE_URL", fake.base_url)
            req = req.model_copy(update={"output_dir": str(tmp_path / "home" / "collections" / "b")})
            collect.run(store, req, trusted=False, home=tmp_path / "home")
            configured = [h.get("authorization") for h in fake.headers[len(untrusted) :]]
        assert untrusted and set(untrusted) == {None}
        assert configured and set(configured) == {"Bearer sk-server-secret"}
    finally:
        store.close()


def test_hf_datasets_step_plugs_in_a_pull(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s.db"))
    pulled: list[tuple[str, Path]] = []

    def pull(store: Store, repo: str, *, out_dir: Path) -> dict[str, Any]:
        # What trajforge.hub's pull_for_collect returns; a 404 from the Hub is its error naming the repo.
        if repo == "org/missing":
            raise InvalidInput(f"Hugging Face dataset {repo} not found (404)", "hfDataset")
        pulled.append((repo, out_dir))
        return {"revision": "abc123", "datasetId": "dataset-x", "rows": 7}

    try:
        req = CollectRequest(hf_dataset=["org/data", "org/missing"])
        without = collect.run(store, req).manifest
        assert _step(without, "hf_datasets")["status"] == "skipped"
        assert "no hf_datasets hook" in _step(without, "hf_datasets")["result"]["note"]
        m = collect.run(store, req, hf_pull=pull).manifest
    finally:
        store.close()
    step = _step(m, "hf_datasets")
    assert step["status"] == "failed" and "org/missing" in step["error"]
    assert step["result"]["datasets"][0] == {
        "repo": "org/data",
        "status": "pulled",
        "revision": "abc123",
        "datasetId": "dataset-x",
        "rows": 7,
    }
    assert pulled == [("org/data", Path(step["outputDir"]))]
    assert m["evidence"]["sources"]["hf"] == 1  # what was pulled counts, though another repo failed
    assert _step(m, "trajectories")["status"] == "succeeded"


def test_secrets_are_kept_out_of_the_recipe(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s.db"))
    try:
        run = collect.run(
            store,
            CollectRequest(
                notes={
                    "apiToken": "tok-123456",
                    "HF_TOKEN": "hf-abcdef",
                    "db_password": "pw-999",
                    "region": "eu",
                },
                base_url="http://alice:s3cret-pw@127.0.0.1:9/v1",
                model="m",
            ),
        )
    finally:
        store.close()
    recipe = run.manifest["recipe"]
    assert recipe["notes"] == {"region": "eu"}
    assert recipe["baseUrl"] == "http://127.0.0.1:9/v1"
    written = b"".join(p.read_bytes() for p in run.output_dir.rglob("*") if p.is_file())
    for secret in (b"tok-123456", b"hf-abcdef", b"pw-999", b"s3cret-pw"):
        assert secret not in written


def test_the_viewer_escapes_hostile_text(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s.db"))
    hostile = "<script>alert('x')</script>"
    t = Trajectory(agent_id=hostile, source="chat", status="completed", start_time=1_700_000_000_000,
                   end_time=1_700_000_001_000, scenario_id='"><img src=x onerror=alert(1)>', total_reward=1.0)  # fmt: skip
    step = Step(step_number=0, timestamp=1_700_000_000_000)
    step.llm_calls.append(
        LlmCall(
            timestamp=1_700_000_000_000,
            model="m",
            user_prompt=hostile,
            response="</pre><script>1</script>",
            action_type="<b>task</b>",
        )
    )
    t.steps.append(step)
    try:
        store.write(WriteBatch.from_trajectory(t))
        run = collect.run(store, CollectRequest())
    finally:
        store.close()
    page = (run.output_dir / "analysis/index.html").read_text()
    index = (run.output_dir.parent / "collection-index.html").read_text()
    for html in (page, index):
        assert "<script" not in html.lower()
        assert "<img" not in html.lower()
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing loaded from elsewhere
        assert "<link" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert "&lt;b&gt;task&lt;/b&gt;" in page
    assert "<svg" in page  # charts are inline
    readme = (run.output_dir / "README.md").read_text()
    assert "<script>" not in readme


def test_run_folders_stay_where_they_are_put(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s.db"))
    try:
        busy = tmp_path / "busy"
        busy.mkdir()
        (busy / "keep.txt").write_text("mine")
        with pytest.raises(InvalidInput) as exc:
            collect.run(store, CollectRequest(output_dir=str(busy)))
        assert exc.value.field == "outputDir"
        assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
        # Over HTTP, only inside <home>/collections.
        for outside in (str(tmp_path / "elsewhere"), "../../escape", str(collect.default_root())):
            with pytest.raises(InvalidInput) as exc:
                collect.run(store, CollectRequest(output_dir=outside), trusted=False)
            assert exc.value.field == "outputDir"
        assert not (tmp_path / "elsewhere").exists()
        run = collect.run(store, CollectRequest(output_dir="mine"), trusted=False)
        assert run.output_dir == collect.default_root().resolve() / "mine"
        # ...and the files it imports, inside <home>.
        outside_file = tmp_path / "x.jsonl"
        outside_file.write_text("")
        m = collect.run(store, CollectRequest(jsonl=[str(outside_file)]), trusted=False).manifest
        assert "inside" in _step(m, "jsonl_imports")["error"]
    finally:
        store.close()


def test_collect_list_prints_seed_style_lines(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    store = open_store(db)
    _seed(store, tmp_path)
    store.close()
    root = tmp_path / "runs"
    for name in ("one", "two"):
        result = runner.invoke(
            cli_app, ["collect", "run", "-o", str(root / name), "--db", db, "--skip-prompts"]
        )
        assert result.exit_code == 0, result.output
        assert "[collect] step=prompts status=skipped" in result.output
    (root / "broken").mkdir()
    (root / "broken" / "collection-manifest.json").write_text("{not json")  # left out, not fatal
    result = runner.invoke(cli_app, ["collect", "list", "--root", str(root), "--limit", "5"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"[collect] root={root.resolve()} runs=2"
    assert lines[1].startswith("[collect] showing 2 newest")
    assert len(lines) == 4
    pattern = re.compile(
        r"^\[collect\] run=\S+Z readiness=partial ready=\d+ partial=\d+ missing=\d+ "
        r"sources=store:api:1,store:chat:3,jsonl:0,hf:0 evals=1\(model-\S+:\+35\.0pts,\+87\.5%\) "
        r"models=1\(active=model-\S+\) gaps=(\S+:(partial|missing)(->\S+( params=\{[^}]*\})?)?;?)+ "
        r"viewer=\S+/analysis/index\.html$"
    )
    for line in lines[2:]:
        assert pattern.match(line), line
    assert "/two/analysis" in lines[2] and "/one/analysis" in lines[3]  # newest first
    assert 'preference_pairs:missing->trajforge-datasets-build params={"format":"preference"}' in lines[2]
    assert "prompt_artifacts:missing->trajforge-collect-run" in lines[2]  # the skipped step is the gap
    one = runner.invoke(cli_app, ["collect", "list", "--root", str(root), "--limit", "1"])
    assert len(one.output.splitlines()) == 3


def test_cli_errors_name_the_flag(tmp_path: Path) -> None:
    result = runner.invoke(cli_app, ["collect", "run", "--db", str(tmp_path / "s.db"), "--eval-limit", "0"])
    assert result.exit_code == 2
    assert "--eval-limit" in result.output
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "f").write_text("x")
    result = runner.invoke(cli_app, ["collect", "run", "--db", str(tmp_path / "s.db"), "-o", str(busy)])
    assert result.exit_code == 2 and "--output-dir" in result.output


# --- the API and the dashboard, on a real server ------------------------------------------------------


def test_api_and_dashboard(tmp_path: Path) -> None:
    db = tmp_path / "api.db"
    store = open_store(str(db))
    _seed(store, tmp_path)
    store.close()
    port = free_port()
    proc = start_server(port, db, tmp_path / "server.log", "--no-jobs")
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=60) as http:
            r = http.post("/api/training/collect", json={"preflightOnly": True, "live": True, "baseUrl": "http://127.0.0.1:9/v1", "model": "m", "probeEndpoints": True})  # fmt: skip
            assert r.status_code == 200, r.text
            checks = {c["id"]: c["status"] for c in r.json()["preflight"]["checks"]}
            assert checks["store"] == "ok" and checks["endpoint"] == "ok" and checks["probe"] == "failed"
            assert r.json()["preflight"]["ready"] is False

            r = http.post("/api/training/collect", json={"requireScore": "csat"})
            assert r.status_code == 201, r.text
            body = r.json()
            assert set(body) == {
                "id",
                "outputDir",
                "manifestPath",
                "readmePath",
                "collectionIndex",
                "manifest",
            }
            run_id = body["id"]
            assert body["manifest"]["readiness"]["status"] == "partial"
            assert Path(body["manifestPath"]).is_file()

            for bad, field in (({"evalLimit": 0}, "evalLimit"), ({"outputDir": str(tmp_path / "x")}, "outputDir"),
                               ({"eval_limit": 3}, "eval_limit"), ({"samplesPerSource": "3"}, "samplesPerSource"),
                               ({"outputDir": "runs/a\x00b"}, "outputDir"), ({"jsonl": ["a\x00.jsonl"]}, "jsonl.0")):  # fmt: skip
                r = http.post("/api/training/collect", json=bad)
                assert r.status_code == 422, (bad, r.text)
                assert r.json()["error"]["field"] == field
            assert not (tmp_path / "x").exists()

            listed = http.get("/api/training/collections").json()
            assert [c["id"] for c in listed["collections"]] == [run_id]
            got = http.get(f"/api/training/collections/{run_id}")
            assert got.status_code == 200 and got.json()["manifest"]["id"] == run_id
            assert http.get("/api/training/collections/nope").status_code == 404

            viewer = http.get(f"/training/collections/{run_id}/analysis/index.html")
            assert viewer.status_code == 200
            assert viewer.headers["content-type"].startswith("text/html")
            assert "script-src" not in viewer.headers["content-security-policy"]
            assert "default-src 'none'" in viewer.headers["content-security-policy"]
            assert "Training readiness" in viewer.text
            readme = http.get(f"/training/collections/{run_id}/README.md")
            assert readme.status_code == 200 and readme.headers["content-type"].startswith("text/plain")
            assert http.get("/training/collections/collection-index.html").status_code == 200
            for evil in (f"/training/collections/{run_id}/steps/trajectories/summary.json",
                         f"/training/collections/{run_id}/..%2f..%2ftrajforge.db", "/training/collections/..%2f/README.md"):  # fmt: skip
                assert http.get(evil).status_code == 404, evil

            page = http.get("/fine-tuning")
            assert page.status_code == 200
            assert 'id="collections-section"' in page.text
            assert f'data-id="{run_id}"' in page.text
            assert f'href="/training/collections/{run_id}/analysis/index.html"' in page.text
            assert "trajforge datasets build --format preference" in page.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
