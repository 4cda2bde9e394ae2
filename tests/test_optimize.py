"""Optimizers against a deterministic task model on loopback (``tests/fakes/task_lm.py``): an
optimizer that works raises the holdout score; the baseline prompt scores 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes import task_lm
from tests.fakes.openai_server import FakeOpenAI
from trajforge import datasets
from trajforge.lm import OpenAICompatibleLM
from trajforge.optimize import bootstrap_fewshot, instruction_search
from trajforge.optimize.common import (
    action_match,
    load_examples,
    metric_for,
    parse_action,
    split,
    token_f1,
)
from trajforge.store import Store


@pytest.fixture
def fake_lm():
    with FakeOpenAI(task_lm.answer) as server:
        yield OpenAICompatibleLM(base_url=server.base_url, model="task")


def test_metrics() -> None:
    want = '{"action": "REFUND", "params": {"orderId": "A-1"}}'
    assert action_match('Sure! {"action": "refund", "params": {"orderId": "A-1"}} done', want) == 1.0
    assert action_match('{"action": "REFUND", "params": {}}', want) == 0.5
    assert action_match('{"action": "TRACK"}', want) == 0.0
    assert action_match("no json here", want) == 0.0
    assert parse_action('{"action": "X"} and {"other": 1}') == {"action": "X"}
    assert token_f1("the cat sat", "the cat sat") == 1.0 and 0 < token_f1("the cat", "the dog") < 1
    assert metric_for(task_lm.examples(5))[0] == "action_match"


def test_split_is_deterministic_and_disjoint() -> None:
    exs = task_lm.examples(40)
    a_train, a_hold = split(exs, 0.3, seed=1)
    b_train, b_hold = split(exs, 0.3, seed=1)
    assert a_train == b_train and a_hold == b_hold and a_hold
    assert not {e.key() for e in a_train} & {e.key() for e in a_hold}


def test_bootstrap_fewshot_raises_the_holdout_score(fake_lm: OpenAICompatibleLM) -> None:
    train, holdout = split(task_lm.examples(40), 0.3)
    progress: list[str] = []
    result = bootstrap_fewshot.optimize(
        fake_lm,
        train,
        holdout,
        task_lm.BASELINE,
        action_match,
        k=5,
        trials=4,
        on_progress=lambda p, m: progress.append(m),
    )
    assert result.baseline_score == 0.0
    assert result.best_score >= 0.8, result
    assert len(result.best.demos) == 5 and result.lm_calls > len(holdout)
    assert len(result.holdout_scores) == len(holdout) and progress[-1].startswith("holdout")


def test_instruction_search_keeps_the_rewrite_that_scores(fake_lm: OpenAICompatibleLM) -> None:
    train, holdout = split(task_lm.examples(30), 0.3)
    result = instruction_search.optimize(fake_lm, train, holdout, task_lm.BASELINE, action_match, rounds=2)
    assert result.baseline_score == 0.0 and result.best_score == 1.0
    assert result.best.instruction == task_lm.GOOD_RULES
    assert result.lineage["tried"] == 3  # the grounded rewrite, then the two proposals


def test_instruction_search_survives_a_useless_proposer() -> None:
    with FakeOpenAI(
        lambda m, r: (
            "I cannot help with that."
            if m[0]["content"] == instruction_search.PROPOSER_SYSTEM
            else task_lm.answer(m, r)
        )
    ) as server:
        lm = OpenAICompatibleLM(base_url=server.base_url, model="task")
        train, holdout = split(task_lm.examples(20), 0.3)
        result = instruction_search.optimize(lm, train, holdout, task_lm.BASELINE, action_match, rounds=2)
    assert result.best.instruction == task_lm.BASELINE and result.best_score == result.baseline_score


def test_examples_come_from_a_dataset_snapshot(store: Store, tmp_path: Path) -> None:
    task_lm.fill_store(store, 12)
    ds = datasets.build(
        store, datasets.BuildRequest(format="prompt_completion", eval_fraction=0.2), root=tmp_path
    )
    got = load_examples(Path(ds.path))
    assert list(got) == ["support_reply"] and len(got["support_reply"]) == 12
    ex = got["support_reply"][0]
    assert ex.system == task_lm.BASELINE and parse_action(ex.expected)["action"] in task_lm.INTENTS.values()
    assert json.loads(ex.expected)["params"]["orderId"] in ex.input[0]["content"]


def test_mipro_finds_a_better_instruction_and_demo_pair(fake_lm: OpenAICompatibleLM) -> None:
    from trajforge.optimize import mipro

    train, holdout = split(task_lm.examples(40), 0.3)
    result = mipro.optimize(fake_lm, train, holdout, task_lm.BASELINE, action_match, trials=10, minibatch=6)
    assert result.baseline_score == 0.0 and result.best_score >= 0.9, result
    assert result.lineage["instructions"] == 3 and result.lineage["demoSets"] == 5


def test_prompt_evolution_runs_gepa_with_our_adapter() -> None:
    from trajforge.optimize import prompt_evolution

    with FakeOpenAI(task_lm.answer_with_reflection) as server:
        lm = OpenAICompatibleLM(base_url=server.base_url, model="task")
        train, holdout = split(task_lm.examples(30), 0.3)
        result = prompt_evolution.optimize(
            lm, train, holdout, task_lm.BASELINE, action_match, max_metric_calls=60
        )
    assert result.baseline_score == 0.0 and result.best_score >= 0.8, result
    assert "→" in result.best.instruction and result.lineage["candidates"] >= 2


def test_metrics_by_name_and_user_functions() -> None:
    from trajforge.errors import InvalidInput
    from trajforge.optimize.common import resolve_metric

    assert resolve_metric("token_f1")[1]("a b", "a b") == 1.0
    name, fn = resolve_metric("tests.reward_fns:starts_right")
    assert (
        name == "starts_right" and fn('{"action": "X"}', '{"action": "Y"}') == 1.0 and fn("no", "yes") == 0.0
    )
    for bad in ("nope", "no_module_here:f", "tests.reward_fns:missing"):
        with pytest.raises(InvalidInput) as err:
            resolve_metric(bad)
        assert err.value.field == "metric"
