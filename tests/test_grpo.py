"""GRPO (``method: grpo``): real TRL/PEFT GRPO steps on a tiny random Llama with a reward whose
optimum is known, reward errors counted, cancel between steps, rollouts in the store, the request
validated at submit, and the API and CLI submitting it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests import grpo_rewards
from tests.helpers import cancel_while_training, make_support_corpus
from trajforge import datasets, evaluate, jobs, models
from trajforge.errors import InvalidInput
from trajforge.records import Job, LlmCall, Step, Trajectory, WriteBatch
from trajforge.server import create_app
from trajforge.store import Store, TrajectoryFilter, open_store
from trajforge.train import grpo, lora

pytestmark = pytest.mark.slow

PROMPT = "Say one word."


@pytest.fixture(scope="module")
def peaky_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with weights large enough (init std 0.3) that its next-token distribution
    has a head a few LoRA steps can move."""
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("peaky") / "m", initializer_range=0.3)


def _one_prompt_dataset(store: Store, root: Path) -> str:
    """A grpo dataset of one prompt (two recorded attempts at it)."""
    for n in range(2):
        t = Trajectory(
            agent_id="a", source="chat", status="completed", scenario_id="s-1", total_reward=0.5 * n
        )
        t.steps.append(
            Step(
                llm_calls=[
                    LlmCall(
                        model="m",
                        system_prompt="Be brief.",
                        user_prompt=PROMPT,
                        response="ok",
                        action_type="say",
                    )
                ]
            )
        )
        store.write(WriteBatch.from_trajectory(t))
    return datasets.build(store, datasets.BuildRequest(format="grpo", eval_fraction=0.0), root=root).id


def _first_token_target(model_dir: Path) -> str:
    """The model's most likely first word at temperature 0.5 (rewarded, or not, by the tests)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        top = int(model(ids).logits[0, -1].argmax())
    text = tok.decode([top]).strip()
    assert text, "the top token decodes to whitespace: pick another seed"
    return text


def _run(
    store: Store, ds_id: str, home: Path, request: dict[str, Any], seen: list[str] | None = None
) -> dict[str, Any]:
    job = Job(kind="lora", backend="cpu", request=request, dataset_id=ds_id)
    store.add_job(job)
    out = lora.run(store, job, lambda p, ph, m: seen.append(m) if seen is not None else None, home)
    return {"jobId": job.id, **out}


def _share_of_target(store: Store, job_id: str, last_steps: int, total: int) -> float:
    """Share of the job's recorded rollouts in its last steps that start with the target."""
    hits = []
    for t in store.iter_trajectories(TrajectoryFilter(batch_id=job_id, source="rollout")):
        if t.metadata["step"] >= total - last_steps:
            hits.append(grpo_rewards.starts_with_target({}, t.steps[0].llm_calls[0].response or ""))
    assert hits
    return sum(hits) / len(hits)


@pytest.mark.parametrize("checkpointing", [True, False], ids=["whole-rows", "grouped-prompts"])
def test_grpo_raises_its_reward_against_the_inverted_reward(
    tmp_path: Path, peaky_model: Path, checkpointing: bool
) -> None:
    """With activation checkpointing the loss scores whole rows; without, each distinct prompt
    runs once (``grouped_completion_logits``): both must learn."""
    grpo_rewards.TARGET["text"] = _first_token_target(peaky_model)
    store = open_store(str(tmp_path / "s.db"))
    try:
        ds_id = _one_prompt_dataset(store, tmp_path / "ds")
        steps, gens = 6, 8
        common = {
            "model": f"local:{peaky_model}", "iterations": steps, "batchSize": 1, "numGenerations": gens,
            "maxCompletionLength": 2, "temperature": 0.5, "learningRate": 0.005, "seed": 7, "threads": 1,
            "activationCheckpointing": checkpointing,
        }  # fmt: skip
        seen: list[str] = []
        up = _run(
            store, ds_id, tmp_path / "h", {**common, "reward": "tests.grpo_rewards:starts_with_target"}, seen
        )
        down = _run(
            store, ds_id, tmp_path / "h", {**common, "reward": "tests.grpo_rewards:not_starts_with_target"}
        )
        raised = _share_of_target(store, up["jobId"], 2, steps)
        lowered = _share_of_target(store, down["jobId"], 2, steps)
        # Seed-matched runs from the same start: only the reward's sign differs.
        assert raised - lowered >= 0.4, (raised, lowered, up["metrics"], down["metrics"])
        m = up["metrics"]
        assert m["method"] == "grpo" and m["steps"] == steps and m["parentModel"] is None
        assert m["reward"] == "tests.grpo_rewards:starts_with_target" and m["rewardErrors"] == 0
        # Progress per step: reward mean/std, completion length, tokens/s.
        assert any(s.startswith(f"step {steps}/{steps} reward ") and "tok/s" in s for s in seen), seen
        log = (
            Path(models.get(store, up["modelId"]).adapter_path or "").parent / "train_log.jsonl"
        ).read_text()
        assert log.count("rewardMean") == steps
        # Every completion is a rollout trajectory with its reward as a score.
        rollouts = list(store.iter_trajectories(TrajectoryFilter(batch_id=up["jobId"])))
        assert len(rollouts) == steps * gens == m["rollouts"]
        for t in rollouts[:5]:
            full = store.get_trajectory(t.id)
            assert full is not None and full.source == "rollout"
            (score,) = [s for s in full.scores if s.name == grpo.ROLLOUT_SCORE]
            expected = grpo_rewards.starts_with_target({}, full.steps[0].llm_calls[0].response or "")
            assert score.value == expected == full.total_reward
    finally:
        store.close()


def test_reward_errors_and_nan_are_counted_not_fatal(tmp_path: Path, tiny_model_dir: Path) -> None:
    store = open_store(str(tmp_path / "s.db"))
    try:
        ds_id = _one_prompt_dataset(store, tmp_path / "ds")
        seen: list[str] = []
        out = _run(
            store,
            ds_id,
            tmp_path / "h",
            {
                "model": f"local:{tiny_model_dir}",
                "iterations": 2,
                "batchSize": 1,
                "numGenerations": 8,
                "maxCompletionLength": 5,
                "reward": "tests.grpo_rewards:flaky",
            },
            seen,
        )
        m = out["metrics"]
        assert m["steps"] == 2 and m["completions"] == 16
        assert m["rewardErrors"] > 0 and m["rewardNan"] > 0, m
        assert any("RuntimeError: cannot score this one" in s for s in m["rewardErrorSamples"])
        assert any("reward errors" in s for s in seen)
        # A completion whose reward failed scores 0 (it stays in its group).
        for t in store.iter_trajectories(TrajectoryFilter(batch_id=out["jobId"])):
            response = t.steps[0].llm_calls[0].response if t.steps else None
            full = store.get_trajectory(t.id)
            assert full is not None
            text = full.steps[0].llm_calls[0].response or ""
            assert full.total_reward == (1.0 if len(text) % 4 == 3 else 0.0), (response, full.total_reward)
    finally:
        store.close()


def test_the_trajectory_signature_and_a_registered_name(tmp_path: Path, peaky_model: Path) -> None:
    grpo_rewards.TARGET["text"] = _first_token_target(peaky_model)
    store = open_store(str(tmp_path / "s.db"))
    try:
        ds_id = _one_prompt_dataset(store, tmp_path / "ds")
        out = _run(
            store,
            ds_id,
            tmp_path / "h",
            {
                "model": f"local:{peaky_model}",
                "iterations": 1,
                "batchSize": 1,
                "numGenerations": 4,
                "maxCompletionLength": 2,
                "temperature": 0.5,
                "reward": [
                    {"name": "test_target_of_trajectory", "weight": 2.0},
                    {"name": "tests.grpo_rewards:starts_with_target", "weight": -1.0},
                ],
            },
        )
        for t in store.iter_trajectories(TrajectoryFilter(batch_id=out["jobId"])):
            full = store.get_trajectory(t.id)
            assert full is not None
            hit = grpo_rewards.starts_with_target({}, full.steps[0].llm_calls[0].response or "")
            assert full.total_reward == hit  # 2·hit − 1·hit
            names = {s.name for s in full.scores}
            assert names == {
                grpo.ROLLOUT_SCORE,
                "test_target_of_trajectory",
                "tests.grpo_rewards:starts_with_target",
            }
    finally:
        store.close()


# --- validation ---------------------------------------------------------------------------------------


def test_options_name_the_field() -> None:
    for body, field in (
        ({"reward": "no_such_reward"}, "reward"),
        ({"reward": "no_such_module_xyz:fn"}, "reward"),
        ({"reward": "tests.grpo_rewards:no_such_fn"}, "reward"),
        ({"reward": [{"name": "nope", "weight": 1}]}, "reward"),
        ({"reward": [{"name": "action_match", "weight": float("nan")}]}, "reward.weight"),
        ({"reward": []}, "reward"),
        ({"numGenerations": 1}, "numGenerations"),
        ({"klBeta": -1}, "klBeta"),
        ({"temperature": 0}, "temperature"),
        ({"maxCompletionLength": 0}, "maxCompletionLength"),
        ({"lossType": "ppo"}, "lossType"),
        ({"method": "rl"}, "method"),
    ):
        with pytest.raises(InvalidInput) as err:
            lora.LoraOptions.parse(body)
        assert err.value.field == field, (body, err.value)
    # module:function runs the caller's code: from the command line or Python only, not over HTTP.
    assert lora.LoraOptions.parse({"reward": "tests.grpo_rewards:flaky"}).reward == "tests.grpo_rewards:flaky"
    with pytest.raises(InvalidInput) as err:
        lora.LoraOptions.parse({"reward": "tests.grpo_rewards:flaky"}, trusted=False)
    assert err.value.field == "reward" and "HTTP" in err.value.message
    for name in ("support_desk", "action_match", "token_f1", "action_success_rate"):
        assert lora.LoraOptions.parse({"reward": name}, trusted=False).reward == name


def test_submit_checks_method_and_from_model(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s.db"))
    try:
        for t in make_support_corpus(scenarios=4):
            store.write(WriteBatch.from_trajectory(t))
        pref = datasets.build(store, datasets.BuildRequest(format="preference"), root=tmp_path / "ds")
        sft = datasets.build(store, datasets.BuildRequest(format="sft"), root=tmp_path / "ds")
        for request, field in (
            ({"backend": "cpu", "datasetId": pref.id, "method": "grpo"}, "method"),
            ({"backend": "cpu", "datasetId": sft.id, "method": "dpo"}, "method"),
            (
                {"backend": "cpu", "datasetId": sft.id, "method": "grpo", "fromModel": "model-nope"},
                "fromModel",
            ),
            # The remote entry point trains SFT/DPO only: GRPO there is refused, not run as SFT.
            ({"backend": "ssh", "host": "me@127.0.0.1", "datasetId": sft.id, "method": "grpo"}, "method"),
        ):
            with pytest.raises(InvalidInput) as err:
                jobs.submit(store, request)
            assert err.value.field == field, request
        assert store.list_jobs() == []
        job = jobs.submit(
            store, {"backend": "cpu", "datasetId": sft.id, "method": "grpo", "reward": "action_match"}
        )
        assert job.request["method"] == "grpo" and job.request["reward"] == "action_match"
    finally:
        store.close()


# --- from an SFT adapter, benchmarked against its parent; API and CLI -----------------------------------


def test_grpo_from_an_sft_model_benchmarks_against_its_parent(tmp_path: Path, tiny_model_dir: Path) -> None:
    store = open_store(str(tmp_path / "s.db"))
    try:
        for t in make_support_corpus(scenarios=6):
            store.write(WriteBatch.from_trajectory(t))
        sft = datasets.build(
            store, datasets.BuildRequest(format="sft", eval_fraction=0.4, seed=3), root=tmp_path / "ds"
        )
        parent = _run(
            store,
            sft.id,
            tmp_path / "h",
            {"model": f"local:{tiny_model_dir}", "iterations": 1, "batchSize": 2},
        )
        child = _run(
            store,
            sft.id,
            tmp_path / "h",
            {
                "method": "grpo",
                "fromModel": parent["modelId"],
                "iterations": 1,
                "batchSize": 1,
                "numGenerations": 2,
                "maxCompletionLength": 4,
                "klBeta": 0.04,
            },
        )
        m = child["metrics"]
        # The default reward: the references (prose answers here) call for token_f1; no JSON stop.
        assert m["parentModel"] == parent["modelId"] and m["reward"] == "token_f1"
        assert m["stopAtJson"] is False
        assert models.get(store, child["modelId"]).base_model == f"local:{tiny_model_dir}"
        result = evaluate.benchmark(store, child["modelId"], {"limit": 2, "maxTokens": 4})
        assert result["parentModel"] == parent["modelId"] and "parentScore" in result
        assert all("parent" in item and "parentOutput" in item for item in result["perItem"])
    finally:
        store.close()


def test_api_and_cli_submit_a_grpo_job(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from trajforge.cli import app

    db = str(tmp_path / "s.db")
    store = open_store(db)
    try:
        for t in make_support_corpus(scenarios=4):
            store.write(WriteBatch.from_trajectory(t))
        sft = datasets.build(store, datasets.BuildRequest(format="sft"), root=tmp_path / "ds")
        parent = models.Model if False else None  # noqa: F841 - (readability: no parent needed here)
        from trajforge.records import Model

        m = Model(
            job_id=None,
            dataset_id=sft.id,
            base_model="bundled:smollm2-135m",
            backend="cpu",
            adapter_path=str(tmp_path),
        )
        store.add_model(m)
        with TestClient(create_app(store), base_url="http://127.0.0.1") as api:
            body = {"backend": "cpu", "datasetId": sft.id, "method": "grpo", "reward": "support_desk",
                    "numGenerations": 4, "fromModel": m.id}  # fmt: skip
            r = api.post("/api/training/jobs", json=body)
            assert r.status_code == 201, r.text
            assert r.json()["job"]["request"]["fromModel"] == m.id
            for bad, field in (
                ({"reward": "tests.grpo_rewards:flaky"}, "reward"),
                ({"reward": "nope"}, "reward"),
                ({"numGenerations": 1}, "numGenerations"),
                ({"fromModel": "model-nope"}, "fromModel"),
            ):
                r = api.post("/api/training/jobs", json={**body, **bad})
                assert r.status_code == 422 and field in r.text, (bad, r.text)
    finally:
        store.close()

    def run(*args: str) -> Any:
        return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})

    r = run(
        "jobs", "start", "--db", db, "--backend", "cpu", "--method", "grpo", "--dataset", sft.id,
        "--reward", "tests.grpo_rewards:flaky", "--from-model", m.id, "--num-generations", "4", "--no-wait",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    r = run(
        "jobs",
        "start",
        "--db",
        db,
        "--backend",
        "cpu",
        "--method",
        "grpo",
        "--num-generations",
        "1",
        "--no-wait",
    )
    assert r.exit_code == 2 and "--num-generations" in r.output, r.output
    r = run("jobs", "start", "--db", db, "--backend", "cpu", "--reward", "nope_xyz:fn", "--no-wait")
    assert r.exit_code == 2 and "--reward" in r.output, r.output
    store = open_store(db)
    try:
        queued = [j for j in store.list_jobs() if j.request.get("reward") == "tests.grpo_rewards:flaky"]
        assert queued and queued[0].request["fromModel"] == m.id
    finally:
        store.close()


def test_cancel_stops_grpo_between_steps(tmp_path: Path, tiny_model_dir: Path) -> None:
    db = str(tmp_path / "s.db")
    store = open_store(db)
    for t in make_support_corpus(scenarios=4):
        store.write(WriteBatch.from_trajectory(t))
    sft = datasets.build(store, datasets.BuildRequest(format="sft"))
    runner = jobs.JobRunner(db, home=tmp_path / "home", autotrain=False, grace_s=60).start()
    try:
        job = jobs.submit(
            store,
            {
                "backend": "cpu",
                "model": f"local:{tiny_model_dir}",
                "datasetId": sft.id,
                "method": "grpo",
                "iterations": 5000,
                "batchSize": 1,
                "numGenerations": 2,
                "maxCompletionLength": 2,
            },
        )
        final = cancel_while_training(store, job.id, 180)
    finally:
        runner.stop()
    assert final.status == "cancelled" and final.exit_code == 130, final
    assert store.list_models() == []
    assert store.count(TrajectoryFilter(batch_id=job.id, source="rollout")) > 0  # what it did is kept
    store.close()


def test_grouped_completion_logits_equal_whole_rows_in_values_and_gradients(tiny_model_dir: Path) -> None:
    """Each distinct prompt is run once in the loss pass; the completions' logits and the LoRA
    gradients must be those of scoring every whole row (TRL's way), rows in any order."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    keep, prompts = 5, [[1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 10, 11], [5, 6, 7, 8]]
    ids, mask = [], []
    for p in prompts:
        for g in range(3):
            c = torch.randint(20, 200, (keep - g % 2,)).tolist()  # some completions end early
            pad_left, pad_right = 9 - len(p), keep - len(c)
            ids.append([0] * pad_left + p + c + [0] * pad_right)
            mask.append([0] * pad_left + [1] * (len(p) + len(c)) + [0] * pad_right)
    order = torch.randperm(len(ids))
    input_ids, attention = torch.tensor(ids)[order], torch.tensor(mask)[order]
    grouped = grpo.grouped_completion_logits(model, input_ids, attention, keep)
    whole = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=keep + 1).logits[:, :-1]
    scored = attention[:, -keep:].bool()
    assert grouped.shape == whole.shape
    assert torch.allclose(grouped[scored], whole[scored], atol=1e-4)
    params = [p for p in model.parameters() if p.requires_grad]
    ga = torch.autograd.grad(grouped[scored].logsumexp(-1).sum(), params)
    gb = torch.autograd.grad(whole[scored].logsumexp(-1).sum(), params)
    for a, b in zip(ga, gb, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)
    assert any(float(b.abs().max()) > 0 for b in gb)
