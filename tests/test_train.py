"""LoRA fine-tuning (real TRL/PEFT steps on a tiny random Llama), the model registry, base-vs-trained
evaluation, Ollama import against a protocol-faithful server on loopback, and activation."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import trajforge
from tests.fakes.ollama_server import FakeOllama, llama_info
from tests.helpers import cancel_while_training, free_port, make_support_corpus
from trajforge import datasets, evaluate, jobs, models, ollama
from trajforge.errors import InvalidInput, NotFound, Unavailable
from trajforge.records import Job, Model, WriteBatch
from trajforge.server import create_app
from trajforge.store import Store, open_store
from trajforge.train import backends, lora

pytestmark = pytest.mark.slow


def _lora_tensors(adapter: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def _fill(store: Store) -> None:
    for t in make_support_corpus(scenarios=8):
        store.write(WriteBatch.from_trajectory(t))


@dataclass
class Trained:
    db: str
    home: Path
    model_id: str
    sft_id: str
    progress: list[tuple[float, str, str]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Trained:
    """One 4-step LoRA SFT job on the tiny model, shared by the registry/evaluation/import tests."""
    root = tmp_path_factory.mktemp("trained")
    db = str(root / "store.db")
    store = open_store(db)
    try:
        _fill(store)
        ds = datasets.build(
            store, datasets.BuildRequest(format="sft", eval_fraction=0.4, seed=3), root=root / "datasets"
        )
        assert ds.manifest["counts"]["rows"]["eval"] > 0
        job = Job(
            kind="lora",
            backend="cpu",
            request={"model": f"local:{tiny_model_dir}", "iterations": 4, "batchSize": 2},
            dataset_id=ds.id,
        )
        store.add_job(job)
        seen: list[tuple[float, str, str]] = []
        out = lora.run(store, job, lambda p, ph, m: seen.append((p, ph, m)), root / "home")
    finally:
        store.close()
    return Trained(db, root / "home", out["modelId"], ds.id, seen)


def test_lora_sft_trains_reports_and_registers(trained: Trained, tiny_model_dir: Path) -> None:
    store = open_store(trained.db)
    try:
        model = models.get(store, trained.model_id)
    finally:
        store.close()
    m = model.metrics
    assert m["kind"] == "sft" and m["steps"] == 4
    assert math.isfinite(m["trainLoss"]) and math.isfinite(m["evalLoss"])
    assert m["tokens"] > 0 and m["tokensPerS"] > 0 and m["peakRssMb"] > 0
    # PEFT initialises lora_B to zero: non-zero B matrices mean the optimizer moved the adapter.
    tensors = _lora_tensors(Path(model.adapter_path or ""))
    lora_b = [t for k, t in tensors.items() if "lora_B" in k]
    assert lora_b and any(float(t.abs().sum()) > 0 for t in lora_b)
    assert {"q_proj", "k_proj", "v_proj", "o_proj"} <= {k.split(".")[-3] for k in tensors}
    # Progress came from the trainer callback: one report per step, with loss and throughput.
    train_msgs = [msg for _, phase, msg in trained.progress if phase == "train"]
    assert len(train_msgs) == 4 and all("loss" in x and "tok/s" in x for x in train_msgs)
    log = [json.loads(line) for line in (Path(model.adapter_path or "").parent / "train_log.jsonl").open()]
    assert [e["step"] for e in log] == [1, 2, 3, 4]
    assert model.base_model == f"local:{tiny_model_dir}" and model.backend == "cpu"
    assert model.dataset_id == trained.sft_id and model.job_id


def test_training_args_do_not_inherit_trl_defaults(tmp_path: Path) -> None:
    args = lora.training_args(lora.LoraOptions(max_length=200, learning_rate=5e-4), "sft", tmp_path, "cpu")
    assert args.activation_checkpointing is True  # every layer adapted: save memory
    assert args.bf16 is lora.native_bf16("cpu")  # auto: bf16 only where the CPU computes it natively
    assert lora.training_args(lora.LoraOptions(precision="fp32"), "sft", tmp_path, "cpu").bf16 is False
    assert lora.training_args(lora.LoraOptions(precision="bf16"), "sft", tmp_path, "cpu").bf16 is True
    top = lora.training_args(lora.LoraOptions(lora_layers=8), "sft", tmp_path, "cpu")
    assert top.activation_checkpointing is False  # backprop stops at the top layers: little to save
    assert args.max_length == 200 and args.learning_rate == 5e-4 and args.completion_only_loss is True
    assert args.packing is True  # padding-free best-fit packing
    dpo = lora.training_args(lora.LoraOptions(precision="fp32"), "dpo", tmp_path, "cpu")
    assert dpo.bf16 is False and dpo.max_length == 256


def _train(tmp_path: Path, fmt: str, request: dict[str, Any]) -> Model:
    """Build a ``fmt`` dataset from the support corpus and run one LoRA job on it, in-process."""
    store = open_store(str(tmp_path / "s.db"))
    try:
        _fill(store)
        ds = datasets.build(store, datasets.BuildRequest(format=fmt, eval_fraction=0.0), root=tmp_path / "ds")
        job = Job(kind="lora", backend="cpu", request=request, dataset_id=ds.id)
        store.add_job(job)
        out = lora.run(store, job, lambda *a: None, tmp_path / "home")
        return models.get(store, out["modelId"])
    finally:
        store.close()


def test_lora_dpo_on_a_preference_dataset(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = _train(
        tmp_path,
        "preference",
        {"model": f"local:{tiny_model_dir}", "iterations": 3, "batchSize": 2, "merge": True},
    )
    assert model.metrics["kind"] == "dpo" and model.metrics["steps"] == 3
    assert math.isfinite(model.metrics["trainLoss"])
    lora_b = [t for k, t in _lora_tensors(Path(model.adapter_path or "")).items() if "lora_B" in k]
    assert any(float(t.abs().sum()) > 0 for t in lora_b)
    assert model.merged_path and (Path(model.merged_path) / "config.json").exists()


def test_lora_refuses_datasets_it_cannot_train_on(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s.db"))
    try:
        _fill(store)
        ds = datasets.build(store, datasets.BuildRequest(format="grpo"), root=tmp_path / "ds")
        with pytest.raises(InvalidInput) as err:
            lora.load_data(Path(ds.path))
        assert err.value.field == "datasetId" and "grpo" in err.value.message
        for request, field in (  # refused when queued, not when the job runs
            ({"backend": "native", "datasetId": ds.id}, "datasetId"),
            ({"backend": "cpu", "datasetId": ds.id, "method": "sft"}, "method"),
        ):
            with pytest.raises(InvalidInput) as err:
                jobs.submit(store, request)
            assert err.value.field == field
        assert store.list_jobs() == []
        # A cpu job on it trains with GRPO (its method by default).
        assert jobs.submit(store, {"backend": "cpu", "datasetId": ds.id}).request == {
            "backend": "cpu",
            "datasetId": ds.id,
        }
    finally:
        store.close()


def test_option_validation_names_the_field() -> None:
    for body, field in (
        ({"iterations": 0}, "iterations"),
        ({"batchSize": -1}, "batchSize"),
        ({"learningRate": 3}, "learningRate"),
        ({"maxLength": 8}, "maxLength"),
        ({"merge": "yes"}, "merge"),
        ({"iterations": 2.5}, "iterations"),
        ({"precision": "fp16"}, "precision"),
        ({"precision": 16}, "precision"),
    ):
        with pytest.raises(InvalidInput) as err:
            lora.LoraOptions.from_stored(body)
        assert err.value.field == field, body
    with pytest.raises(InvalidInput):
        lora.resolve_base("local:/nonexistent/folder")


def test_backends_say_why_not() -> None:
    status = backends.status()
    assert status["cpu"]["available"]
    assert not status["mlx"]["available"] and "Apple Silicon" in status["mlx"]["reason"]


@pytest.mark.skipif(not backends.mlx()[0], reason="mlx needs macOS on Apple Silicon with mlx-lm")
def test_mlx_backend_trains(tmp_path: Path, tiny_model_dir: Path) -> None:  # pragma: no cover - macOS only
    from trajforge.train import mlx

    store = open_store(str(tmp_path / "s.db"))
    _fill(store)
    ds = datasets.build(store, datasets.BuildRequest(format="sft"), root=tmp_path / "ds")
    job = Job(
        kind="lora",
        backend="mlx",
        request={"model": f"local:{tiny_model_dir}", "iterations": 2},
        dataset_id=ds.id,
    )
    store.add_job(job)
    out = mlx.run(store, job, lambda *a: None, tmp_path / "home")
    assert models.get(store, out["modelId"]).metrics["steps"] == 2


# --- cancel through the runner ----------------------------------------------------------------------


def test_cancel_stops_training_between_steps(tmp_path: Path, tiny_model_dir: Path) -> None:
    db = str(tmp_path / "s.db")
    store = open_store(db)
    _fill(store)
    runner = jobs.JobRunner(db, home=tmp_path / "home", autotrain=False, grace_s=60).start()
    try:
        job = jobs.submit(
            store, {"backend": "cpu", "model": f"local:{tiny_model_dir}", "iterations": 5000, "batchSize": 2}
        )
        final = cancel_while_training(store, job.id, 120)
    finally:
        runner.stop()
    # It stopped by itself between steps (exit 130), well before the SIGKILL grace period.
    assert final.status == "cancelled" and final.exit_code == 130, final
    assert store.list_models() == []
    assert [e.kind for e in store.list_events(job_id=job.id)][-1] == "job_cancelled"
    store.close()


# --- evaluation --------------------------------------------------------------------------------------


def test_benchmark_runs_base_and_trained_on_the_same_items(trained: Trained) -> None:
    store = open_store(trained.db)
    try:
        result = evaluate.benchmark(store, trained.model_id, {"limit": 4, "maxTokens": 8})
        stored = models.get(store, trained.model_id).evaluation
    finally:
        store.close()
    assert result["status"] == "completed" and result["n"] == len(result["perItem"]) <= 4
    assert result["metric"] in ("action_match", "token_f1") and result["datasetId"] == trained.sft_id
    assert result["delta"] == pytest.approx(result["trainedScore"] - result["baseScore"])
    assert result["baseScore"] == pytest.approx(sum(i["base"] for i in result["perItem"]) / result["n"])
    assert stored == result


def test_a_failed_benchmark_is_recorded(trained: Trained, tmp_path: Path) -> None:
    store = open_store(trained.db)
    try:
        source = models.get(store, trained.model_id)
        broken = Model(
            job_id=None,
            dataset_id=trained.sft_id,
            base_model=source.base_model,
            backend="cpu",
            adapter_path=str(tmp_path / "gone"),  # the adapter was deleted
        )
        store.add_model(broken)
        with pytest.raises(Exception):  # noqa: B017 - whatever PEFT raises for a missing adapter
            evaluate.benchmark(store, broken.id, {"limit": 2, "maxTokens": 4})
        ev = models.get(store, broken.id).evaluation
        assert (
            ev is not None and ev["status"] == "failed" and ev["error"] and ev["datasetId"] == trained.sft_id
        )
        with pytest.raises(InvalidInput) as err:
            evaluate.benchmark(store, trained.model_id, {"suite": "nope"})
        assert err.value.field == "suite"
        with pytest.raises(NotFound):
            evaluate.benchmark(store, "model-missing", {})
    finally:
        store.close()


# --- Ollama import ----------------------------------------------------------------------------------


def _tiny_info(tiny_model_dir: Path) -> dict[str, Any]:
    c = json.loads((tiny_model_dir / "config.json").read_text())
    return llama_info(c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"])


def test_import_uploads_blobs_and_creates_the_model(trained: Trained, tiny_model_dir: Path) -> None:
    store = open_store(trained.db)
    try:
        with FakeOllama({"tiny:latest": _tiny_info(tiny_model_dir)}) as server:
            seen: list[str] = []
            out = ollama.import_model(
                store,
                trained.model_id,
                "support-agent",
                "tiny:latest",
                server.url,
                report=lambda p, m: seen.append(m),
            )
            created = server.created["support-agent"]
            adapter = Path(models.get(store, trained.model_id).adapter_path or "")
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                assert created["adapters"][name] == ollama.sha256_file(adapter / name)
                assert created["adapters"][name] in server.blobs
            assert created["from"] == "tiny:latest" and out["mode"] == "adapters"
            posts = [p for m, p in server.requests if m == "POST" and p.startswith("/api/blobs/")]
            assert len(posts) == 2
            # A second import finds the blobs already there (HEAD 200) and uploads nothing.
            ollama.import_model(store, trained.model_id, "support-agent-2", "tiny:latest", server.url)
            assert len([p for m, p in server.requests if m == "POST" and p.startswith("/api/blobs/")]) == 2
        assert any("success" in m for m in seen)
        assert models.get(store, trained.model_id).ollama_name == "support-agent-2"
        assert any(e.kind == "model_imported" for e in store.list_events(kinds=["model_imported"]))
    finally:
        store.close()


def test_import_checks_the_base_model(trained: Trained, tiny_model_dir: Path) -> None:
    store = open_store(trained.db)
    try:
        other = llama_info(2048, 24, 32)  # a bigger llama: not what the adapter was trained on
        qwen = {"general.architecture": "qwen2", "qwen2.embedding_length": 64}
        with FakeOllama({"big:latest": other, "qwen:latest": qwen}) as server:
            for base in ("big:latest", "qwen:latest", "absent:latest"):
                with pytest.raises(InvalidInput) as err:
                    ollama.import_model(store, trained.model_id, "x", base, server.url)
                assert err.value.field == "baseModel", base
            assert server.created == {} and server.blobs == {}
    finally:
        store.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1:11434",
        "http://example.com",
        "http://127.0.0.1.nip.io:11434",
        "http://user:pw@127.0.0.1:11434",
        "ftp://127.0.0.1",
        "http://[::ffff:10.0.0.1]",
        "not a url",
    ],
)
def test_ollama_url_must_be_loopback(url: str) -> None:
    with pytest.raises(InvalidInput) as err:
        ollama.check_url(url)
    assert err.value.field == "ollamaUrl"


@pytest.mark.parametrize("url", ["http://localhost:11434", "http://127.0.0.2:8080/", "http://[::1]:11434"])
def test_loopback_urls_are_accepted(url: str) -> None:
    assert ollama.check_url(url) == url.rstrip("/")


def test_redirects_are_not_followed_and_a_down_ollama_is_a_clear_error(trained: Trained) -> None:
    store = open_store(trained.db)
    try:
        with FakeOllama({}) as target, FakeOllama({}, redirect_to=target.url) as redirecting:
            with pytest.raises(Unavailable) as err:
                ollama.import_model(store, trained.model_id, "x", "tiny:latest", redirecting.url)
            assert "redirect" in err.value.message and err.value.field == "ollamaUrl"
            assert target.requests == []  # nothing reached the redirect's target
        port = free_port()  # closed: nothing listens there
        with pytest.raises(Unavailable) as err:
            ollama.import_model(store, trained.model_id, "x", "tiny:latest", f"http://127.0.0.1:{port}")
        assert "not running" in err.value.message
    finally:
        store.close()


# --- activation and the HTTP API --------------------------------------------------------------------


def test_models_in_the_store(store: Store) -> None:
    a = Model(
        job_id="j1", dataset_id="d1", base_model="bundled:smollm2-135m", backend="cpu", adapter_path="/a"
    )
    b = Model(
        job_id="j2", dataset_id="d1", base_model="bundled:smollm2-135m", backend="cpu", adapter_path="/b"
    )
    b.created_at = a.created_at + 1
    store.add_model(a)
    store.add_model(b)
    assert [m.id for m in store.list_models()] == [b.id, a.id]
    store.update_model(a.id, evaluation={"status": "completed", "baseScore": 0.1}, ollama_name="x")
    got = store.get_model(a.id)
    assert (
        got is not None
        and got.evaluation == {"status": "completed", "baseScore": 0.1}
        and got.ollama_name == "x"
    )
    assert store.active_model() is None
    assert store.activate_model(a.id, "ollama/x", 5)
    assert store.activate_model(b.id, "ollama/y", 6)
    active = store.active_model()
    assert active is not None and active.id == b.id and active.provider_model == "ollama/y"
    assert [m.id for m in store.list_models() if m.active] == [b.id]
    assert not store.activate_model("model-missing", "ollama/z", 7)
    with pytest.raises(ValueError):
        store.update_model(a.id, active=True)


def test_activate_and_the_sdk_sees_it(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    store = open_store(db)
    try:
        m = Model(job_id=None, dataset_id=None, base_model="b", backend="cpu", adapter_path="/a")
        store.add_model(m)
        with pytest.raises(InvalidInput) as err:
            models.activate(store, m.id)  # not imported into Ollama: a provider model is needed
        assert err.value.field == "providerModel"
        with pytest.raises(InvalidInput):
            models.activate(store, m.id, "ollama/has space")
        assert trajforge.active_model(db, default="gpt-base") == "gpt-base"
        models.activate(store, m.id, "ollama/my-agent")
        models._active.seen.clear()  # the SDK caches for a few seconds; a new process would not
        assert trajforge.active_model(db) == "ollama/my-agent"
        assert [e.kind for e in store.list_events(kinds=["model_activated"])] == ["model_activated"]
    finally:
        store.close()


@pytest.fixture
def api(trained: Trained) -> Iterator[TestClient]:
    store = open_store(trained.db)
    with TestClient(create_app(store), base_url="http://127.0.0.1") as c:
        yield c
    store.close()


def test_models_api(api: TestClient, trained: Trained, tiny_model_dir: Path) -> None:
    listed = api.get("/api/training/models").json()["models"]
    assert trained.model_id in [m["id"] for m in listed]
    one = api.get(f"/api/training/models/{trained.model_id}").json()["model"]
    assert one["baseModel"] == f"local:{tiny_model_dir}" and one["metrics"]["steps"] == 4
    assert api.get("/api/training/models/model-nope").status_code == 404
    r = api.post(
        f"/api/training/models/{trained.model_id}/import-ollama",
        json={"modelName": "m", "baseModel": "tiny", "ollamaUrl": "http://10.0.0.1:11434"},
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "ollamaUrl"
    r = api.post(f"/api/training/models/{trained.model_id}/import-ollama", json={"modelName": "m"})
    assert r.status_code == 422
    r = api.post("/api/training/jobs", json={"backend": "cpu", "precision": "fp16"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "precision", r.text
    with FakeOllama({"tiny:latest": _tiny_info(tiny_model_dir)}) as server:
        r = api.post(
            f"/api/training/models/{trained.model_id}/import-ollama",
            json={"modelName": "via-api", "baseModel": "tiny:latest", "ollamaUrl": server.url},
        )
        assert r.status_code == 200, r.text
        assert r.json()["model"]["ollamaName"] == "via-api" and "via-api" in server.created
    r = api.post(f"/api/training/models/{trained.model_id}/activate", json={})
    assert r.status_code == 200 and r.json()["model"]["providerModel"] == "ollama/via-api"
    active = api.get("/api/training/models/active").json()
    assert active["providerModel"] == "ollama/via-api" and active["model"]["id"] == trained.model_id
    r = api.post(f"/api/training/models/{trained.model_id}/benchmark", json={"suite": "unknown"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "suite"
    r = api.post(f"/api/training/models/{trained.model_id}/benchmark", json={"limit": 2, "maxTokens": 4})
    assert r.status_code == 202 and r.json()["job"]["kind"] == "benchmark"
    r = api.post("/api/training/jobs", json={"backend": "cpu", "batchSize": 0})
    assert r.status_code == 422


# --- the CLI, end to end: a LoRA job in a job process, then the registry commands ----------------------


def test_cli_lora_job_then_models_commands(tmp_path: Path, tiny_model_dir: Path) -> None:
    from typer.testing import CliRunner

    from trajforge.cli import app

    db = str(tmp_path / "s.db")
    store = open_store(db)
    _fill(store)
    ds = datasets.build(store, datasets.BuildRequest(format="sft", eval_fraction=0.4, seed=3))
    store.close()

    def run(*args: str) -> Any:
        return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})

    r = run(
        "jobs", "start", "--db", db, "--backend", "cpu", "--dataset", ds.id, "--model", f"local:{tiny_model_dir}",
        "--iterations", "2", "--batch-size", "2", "--learning-rate", "0.01",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "step 2/2" in r.output and "model model-" in r.output, r.output
    model_id = r.output.split("model ", 1)[1].split(":")[0].strip().split()[0]
    assert model_id in run("models", "list", "--db", db).output
    r = run("models", "benchmark", model_id, "--db", db, "--limit", "2")
    assert r.exit_code == 0 and "base" in r.output and "trained" in r.output, r.output
    shown = json.loads(run("models", "show", model_id, "--db", db).output)
    assert shown["evaluation"]["status"] == "completed" and shown["evaluation"]["n"] == 2
    r = run("models", "activate", model_id, "--db", db)
    assert r.exit_code == 2 and "--provider-model" in r.output
    r = run(
        "models",
        "import-ollama",
        model_id,
        "--db",
        db,
        "--name",
        "x",
        "--base",
        "b",
        "--ollama-url",
        "http://example.com",
    )
    assert r.exit_code == 2 and "--ollama-url" in r.output
    # --base may be left out; a base the registry cannot map to an Ollama name says what to pass.
    r = run(
        "models", "import-ollama", model_id, "--db", db, "--name", "x", "--ollama-url", "http://127.0.0.1:9"
    )
    assert r.exit_code == 2 and "--base" in r.output and "smollm2:135m" in r.output, r.output
    assert run("models", "activate", model_id, "--db", db, "--provider-model", "ollama/agent").exit_code == 0
    assert "ollama/agent" in run("models", "active", "--db", db).output
    r = run("jobs", "start", "--db", db, "--backend", "cpu", "--batch-size", "0", "--no-wait")
    assert r.exit_code == 2 and "--batch-size" in r.output


def test_a_benchmark_job_runs_in_the_runner(trained: Trained) -> None:
    store = open_store(trained.db)
    runner = jobs.JobRunner(trained.db, home=trained.home, autotrain=False).start()
    try:
        job = jobs.submit_benchmark(store, trained.model_id, {"limit": 2, "maxTokens": 4})
        deadline = time.monotonic() + 120
        while jobs.get(store, job.id).status not in ("completed", "failed", "cancelled"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        final = jobs.get(store, job.id)
        assert final.status == "completed", final.error
        assert final.output and final.output["n"] == 2 and "perItem" not in final.output
        ev = models.get(store, trained.model_id).evaluation
        assert ev and ev["status"] == "completed" and len(ev["perItem"]) == 2
    finally:
        runner.stop()
        store.close()


def test_rows_longer_than_max_length_are_left_out_not_truncated(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    short = {
        "prompt": [{"role": "user", "content": "hi"}],
        "completion": [{"role": "assistant", "content": "ok"}],
    }
    long = {**short, "prompt": [{"role": "user", "content": "word " * 400}]}
    fitted = lora.fit_length(lora.Data("sft", [short, long], [long]), tok, 64)
    assert fitted.train == [short] and fitted.eval == [] and fitted.dropped == 2
    with pytest.raises(InvalidInput) as err:
        lora.fit_length(lora.Data("sft", [long], []), tok, 64)
    assert err.value.field == "maxLength" and "raise maxLength" in err.value.message


def test_lora_layers_adapts_only_the_top_layers(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = _train(
        tmp_path,
        "sft",
        {"model": f"local:{tiny_model_dir}", "iterations": 1, "batchSize": 2, "loraLayers": 1},
    )
    keys = _lora_tensors(Path(model.adapter_path or "")).keys()
    assert keys and all(".layers.1." in k for k in keys)  # the tiny model has layers 0 and 1


def test_compact_loss_equals_trls_and_builds_logits_only_for_labelled_tokens(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The backend's SFT loss (the LM head applied to the completion positions only) is TRL's loss
    with the same gradients, while the head sees far fewer positions than the packed batch has."""
    import torch
    from datasets import Dataset as HFDataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    rows = [
        {
            "prompt": [{"role": "user", "content": f"order A-{i} never arrived, please help " * 3}],
            "completion": [{"role": "assistant", "content": f'{{"action": "REFUND", "n": {i}}}'}],
        }
        for i in range(4)
    ]
    opts = lora.LoraOptions(iterations=1, batch_size=4, max_length=128, precision="fp32")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    results = []
    for cls in (SFTTrainer, lora.compact_sft_trainer()):
        torch.manual_seed(0)
        trainer = cls(
            model=AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
            args=lora.training_args(opts, "sft", tmp_path / cls.__name__, "cpu"),
            train_dataset=HFDataset.from_list(rows),
            processing_class=tok,
            peft_config=LoraConfig(
                r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
            ),
        )
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        head_rows: list[int] = []
        head = trainer.model.get_base_model().get_output_embeddings()
        hook = head.register_forward_hook(
            lambda m, i, o, rows=head_rows: rows.append(i[0].reshape(-1, i[0].shape[-1]).shape[0])
        )
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        hook.remove()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        labelled = int((batch["labels"][:, 1:] != -100).sum())
        results.append((float(loss.detach()), grads, head_rows, labelled, int(batch["input_ids"].numel())))
    (trl_loss, trl_grads, _, labelled, tokens), (our_loss, our_grads, our_rows, _, _) = results
    assert math.isfinite(our_loss) and our_loss == pytest.approx(trl_loss, rel=1e-4)
    assert trl_grads.keys() == our_grads.keys() and trl_grads
    for name, g in trl_grads.items():
        assert torch.allclose(g, our_grads[name], rtol=1e-3, atol=1e-6), name
    assert our_rows == [labelled] and labelled < tokens / 3


def test_compact_loss_runs_under_bf16_autocast(tmp_path: Path, tiny_model_dir: Path) -> None:
    """With bf16 the backbone and head compute in bf16 (the backend calls the backbone itself, so
    it must enter the autocast accelerate would have wrapped around the model's forward)."""
    import torch
    from datasets import Dataset as HFDataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [
        {
            "prompt": [{"role": "user", "content": "where is my order"}],
            "completion": [{"role": "assistant", "content": '{"action": "TRACK"}'}],
        }
    ] * 2
    trainer = lora.compact_sft_trainer()(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
        args=lora.training_args(
            lora.LoraOptions(iterations=1, batch_size=2, precision="bf16"), "sft", tmp_path, "cpu"
        ),
        train_dataset=HFDataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    dtypes: list[torch.dtype] = []
    head = trainer.model.get_base_model().get_output_embeddings()
    head.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    with trainer.compute_loss_context_manager():
        loss = trainer.compute_loss(trainer.model, batch)
    assert dtypes == [torch.bfloat16] and loss.dtype == torch.float32 and math.isfinite(float(loss.detach()))
