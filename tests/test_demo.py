"""``trajforge demo --quick``: every phase of the flywheel runs (tiny model, few cases), and the
support-desk environment's reward and generator behave."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.tiny_model import bundled_gguf_dir
from trajforge import settings
from trajforge.cli import app
from trajforge.demo import support
from trajforge.store import TrajectoryFilter, open_store


def test_reward_is_one_half_or_zero() -> None:
    c = support.case(support.TRAIN_SEED, 3)
    right = json.dumps({"action": c.action, "params": {"orderId": c.order_id}})
    assert support.reward(right, c) == 1.0
    assert support.reward(f"Sure! ```json\n{right}\n```", c) == 1.0
    assert support.reward(json.dumps({"action": c.action, "params": {"orderId": "A-0000"}}), c) == 0.5
    wrong = next(a for a in support.ACTIONS if a != c.action)
    assert support.reward(json.dumps({"action": wrong, "params": {"orderId": c.order_id}}), c) == 0.0
    assert support.reward("I will refund you.", c) == 0.0


def test_cases_are_deterministic_varied_and_heldout_is_disjoint() -> None:
    train, heldout = support.split(300, 100)
    assert support.case(1, 5) == train[5] and len(heldout) == 100
    assert not {c.message for c in train} & {c.message for c in heldout}
    assert not {c.scenario_id for c in train} & {c.scenario_id for c in heldout}
    assert {c.action for c in train} == set(support.ACTIONS)
    assert len({c.message for c in train}) > 250
    for c in train[:50]:  # the right order is always in the record, and it is the one meant
        assert c.order_id in {o["orderId"] for o in c.record["orders"]}
        assert support.case_for(c.scenario_id) == c
    assert any(c.order_id not in c.message for c in train)  # some cases need the record


@pytest.mark.slow
def test_quick_demo_runs_every_phase() -> None:
    bundled_gguf_dir()  # skips without the bundled model's package
    r = CliRunner().invoke(app, ["demo", "--quick", "--no-serve"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    home = settings.home()
    report = (home / "demo" / "report.md").read_text()
    for name in ("base prompt", "optimized prompt", "fine-tuned model", "fine-tuned + RL"):
        assert name in report and name in r.output
    page = (home / "demo" / "report.html").read_text()
    # The scores, the SFT loss and the GRPO reward per step.
    assert page.count("<svg") == 3 and 'aria-label="reward per step"' in page and "<script" not in page
    store = open_store(settings.database_url())
    try:
        assert store.count(TrajectoryFilter(source="teacher")) == 24
        assert store.count(TrajectoryFilter(source="autonomy")) == 12
        sft_model, rl_model = sorted(store.list_models(), key=lambda m: m.metrics.get("method") == "grpo")
        assert (
            rl_model.metrics["parentModel"] == sft_model.id and rl_model.metrics["reward"] == "support_desk"
        )
        ev = rl_model.evaluation
        assert ev and ev["status"] == "completed" and ev["n"] == 12 and ev["parentModel"] == sft_model.id
        rollouts = store.count(TrajectoryFilter(source="rollout", batch_id=rl_model.job_id))
        assert rollouts == rl_model.metrics["rollouts"] > 0
        assert {d.name for d in store.list_datasets()} == {
            "support-desk-sft",
            "support-desk-preference",
            "support-desk-prompts",
            "support-desk-grpo",
        }
        kinds = [j.kind for j in store.list_jobs()]
        assert sorted(kinds) == ["lora", "lora", "native", "native"]
        sft = next(d for d in store.list_datasets() if d.name == "support-desk-sft")
        assert sft.manifest["privacy"]["redactions"].get("email")  # customer e-mails never reach training
        assert "@example.com" not in (Path(sft.path) / "train.jsonl").read_text()
    finally:
        store.close()
