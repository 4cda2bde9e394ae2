from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import make_support_corpus
from trajforge import rewards
from trajforge.errors import InvalidInput
from trajforge.lm import OpenAICompatibleLM
from trajforge.records import WriteBatch
from trajforge.store import Store, TrajectoryFilter


def _fill(store: Store, scenarios: int = 3) -> list[str]:
    ids = []
    for t in make_support_corpus(scenarios):
        store.write(WriteBatch.from_trajectory(t))
        ids.append(t.id)
    return ids


def _scores(store: Store, ids: list[str], name: str) -> dict[str, float]:
    got = store.get_scores(ids)
    return {tid: s.value for tid, ss in got.items() for s in ss if s.name == name}


def test_builtin_reward_functions(store: Store) -> None:
    ids = _fill(store)
    run = rewards.score_trajectories(store, "action_reward_sum", TrajectoryFilter())
    assert (run.scored, run.errors) == (9, 0)
    values = _scores(store, ids, "action_reward_sum")
    assert sorted(set(values.values())) == [0.0, 0.5, 1.0]
    rewards.score_trajectories(store, "action_success_rate", TrajectoryFilter())
    assert sorted(set(_scores(store, ids, "action_success_rate").values())) == [0.0, 1.0]
    # Re-running replaces, never duplicates.
    rewards.score_trajectories(store, "action_reward_sum", TrajectoryFilter())
    assert (
        sum(len([s for s in ss if s.name == "action_reward_sum"]) for ss in store.get_scores(ids).values())
        == 9
    )


def test_user_functions_by_module_name_and_outcome_passthrough(store: Store) -> None:
    ids = _fill(store)
    run = rewards.score_trajectories(store, "tests.reward_fns:fast_and_done")
    assert run.name == "fast_and_done" and run.scored == 9
    assert set(_scores(store, ids, "fast_and_done").values()) == {1.0}
    bad = rewards.score_trajectories(store, "tests.reward_fns:broken")
    assert (bad.scored, bad.errors) == (3, 6)
    assert any("cannot score" in e["error"] for e in bad.error_samples)
    assert any("nan" in e["error"] for e in bad.error_samples)
    none = rewards.score_trajectories(store, "tests.reward_fns:no_opinion")
    assert (none.scored, none.skipped) == (0, 9)
    passed = rewards.score_trajectories(store, "outcome:fast_and_done", name="copied")
    assert passed.scored == 9 and set(_scores(store, ids, "copied").values()) == {1.0}


@pytest.mark.parametrize("spec", ["nope", "no_such_module_x:f", "tests.reward_fns:missing", "outcome:"])
def test_unknown_reward_function_names_the_flag(spec: str) -> None:
    with pytest.raises(InvalidInput) as err:
        rewards.resolve(spec)
    assert err.value.field == "fn"


def test_parse_judgement_tolerates_what_local_judges_return() -> None:
    text = 'Sure!\n```json\n{"scores": [{"trajectory_id": "2", "score": 7, "explanation": "good"}, {"trajectory_id": 1, "score": "0.25"}, {"trajectory_id": "9", "score": 1}]}\n```'
    got, error = rewards.parse_judgement(text, 2)
    assert error is None
    assert got[2] == (1.0, "good", True) and got[1] == (0.25, "", False)
    assert rewards.parse_judgement("no idea", 2) == ({}, "the judge's reply is not JSON")
    assert rewards.parse_judgement('[{"trajectory_id": "1", "score": null}]', 1)[1]


class ScriptedJudge:
    """Answers in turn from a script; then scores everything by a rule."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.prompts: list[list[dict[str, Any]]] = []

    def __call__(self, messages: list[dict[str, Any]], request: dict[str, Any]) -> str:
        self.prompts.append(messages)
        if self.script:
            return self.script.pop(0)
        user = messages[1]["content"]
        n = user.count("<trajectory id=")
        scores = []
        for i in range(1, n + 1):
            block = user.split(f'<trajectory id="{i}">')[1].split("</trajectory>")[0]
            scores.append(
                {
                    "trajectory_id": str(i),
                    "score": 0.9 if "A-10" in block and "REFUND" in block else 0.1,
                    "explanation": f"t{i}",
                }
            )
        return json.dumps({"scores": scores})


def test_judge_scores_each_scenario_group_and_survives_bad_output(store: Store) -> None:
    ids = _fill(store)
    # First group: garbage, then one id missing, then a complete answer. Later groups: the rule.
    judge = ScriptedJudge(
        [
            "I think they are all fine",
            '{"scores": [{"trajectory_id": "1", "score": 1.7, "explanation": "over the top"}]}',
        ]
    )
    with FakeOpenAI(judge) as server:
        lm = OpenAICompatibleLM(base_url=server.base_url, model="judge")
        run = rewards.judge(store, lm, TrajectoryFilter(), name="ruler")
    assert run.groups == 3 and run.scored == 9 and not run.errors
    got = store.get_scores(ids)
    judged = [s for ss in got.values() for s in ss if s.source == "judge"]
    assert len(judged) == 9 and all(0.0 <= s.value <= 1.0 for s in judged)
    assert any("clamped" in (s.comment or "") for s in judged)
    # The shared prefix (system + customer message) is sent once per group, not once per trajectory.
    first_group = judge.prompts[0][1]["content"]
    assert first_group.count("<context>") == 1 and first_group.count("<trajectory id=") == 3


def test_judge_records_errors_instead_of_inventing_scores(store: Store) -> None:
    ids = _fill(store, scenarios=1)
    with FakeOpenAI(lambda m, r: '{"scores": [{"trajectory_id": "1", "score": 0.5}]}') as server:
        run = rewards.judge(
            store, OpenAICompatibleLM(base_url=server.base_url, model="j"), TrajectoryFilter()
        )
    assert run.scored == 1 and len(run.errors) == 2
    assert all("did not score" in e["error"] for e in run.errors)
    # A judge that is down: every trajectory is an error, nothing is stored, nothing raises.
    dead = OpenAICompatibleLM(base_url="http://127.0.0.1:9/v1", model="j", max_retries=0)
    run2 = rewards.judge(store, dead, TrajectoryFilter(), name="ruler2")
    assert run2.scored == 0 and len(run2.errors) == 3
    assert not _scores(store, ids, "ruler2")
