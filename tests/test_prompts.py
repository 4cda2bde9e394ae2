from __future__ import annotations

import time
from pathlib import Path

import pytest

import trajforge
from trajforge.errors import InvalidInput, NotFound
from trajforge.optimize import artifacts
from trajforge.optimize.artifacts import PromptArtifact


def _art(prompt: str, score: float) -> PromptArtifact:
    return PromptArtifact(
        task="support_reply",
        optimizer="bootstrap-fewshot",
        prompt=prompt,
        baseline="You are a support agent.",
        few_shot_examples=[
            {"input": [{"role": "user", "content": "refund A-1"}], "output": '{"action": "REFUND"}'}
        ],
        score=score,
        baseline_score=0.2,
    )


def test_promotion_needs_a_gain_beyond_noise(tmp_path: Path) -> None:
    first = artifacts.save(
        _art("v1 prompt", 0.6), new_scores=[1, 1, 0, 1], incumbent_scores=[0, 0, 0, 1], home=tmp_path
    )
    assert (
        first.version == 1
        and first.promotion["promoted"]
        and artifacts.current_version("support_reply", tmp_path) == 1
    )
    # A tiny, noisy gain is recorded but not promoted.
    noisy = artifacts.save(
        _art("v2 prompt", 0.61), new_scores=[1, 0, 1, 0], incumbent_scores=[0, 1, 1, 0], home=tmp_path
    )
    assert noisy.version == 2 and not noisy.promotion["promoted"]
    assert artifacts.current("support_reply", tmp_path).prompt == "v1 prompt"  # type: ignore[union-attr]
    better = artifacts.save(
        _art("v3 prompt", 0.9), new_scores=[1.0] * 10, incumbent_scores=[0.5] * 10, home=tmp_path
    )
    assert better.promotion["promoted"] and better.lineage["parentVersion"] == 1
    assert artifacts.current_version("support_reply", tmp_path) == 3
    back = artifacts.rollback("support_reply", tmp_path)
    assert back.version == 1 and artifacts.current_version("support_reply", tmp_path) == 1
    with pytest.raises(NotFound):
        artifacts.rollback("support_reply", tmp_path)


def test_only_the_last_five_are_kept_but_never_the_current(tmp_path: Path) -> None:
    artifacts.save(_art("keep me", 0.5), force=True, home=tmp_path)
    for i in range(7):
        artifacts.save(_art(f"p{i}", 0.1), home=tmp_path)
    assert artifacts.versions("support_reply", tmp_path) == [1, 4, 5, 6, 7, 8]
    assert artifacts.current("support_reply", tmp_path).prompt == "keep me"  # type: ignore[union-attr]


def test_task_names_are_never_raw_paths(tmp_path: Path) -> None:
    d = artifacts.task_dir("../../etc/passwd", tmp_path)
    assert d.parent == tmp_path / "optimized-prompts"
    with pytest.raises(InvalidInput):
        artifacts.task_dir("", tmp_path)


def test_the_sdk_picks_up_a_new_version_without_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trajforge.prompts, "CHECK_EVERY_S", 0.05)
    p = trajforge.prompts.get("support_reply", "default prompt", home=tmp_path)
    assert str(p) == "default prompt" and p.version is None
    artifacts.save(_art("optimized prompt", 0.9), force=True, home=tmp_path)
    # Asked again until the check interval has passed, however long that takes on a loaded machine;
    # a process that never looks again fails at the deadline.
    deadline = time.monotonic() + 10
    p = trajforge.prompts.get("support_reply", "default prompt", home=tmp_path)
    while str(p) != "optimized prompt":
        assert time.monotonic() < deadline, "the new version was never picked up"
        time.sleep(0.02)
        p = trajforge.prompts.get("support_reply", "default prompt", home=tmp_path)
    assert str(p) == "optimized prompt" and p.version == 1 and len(p.demos) == 1
    msgs = p.messages([{"role": "system", "content": "old"}, {"role": "user", "content": "where is A-2?"}])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"] == "optimized prompt" and msgs[-1]["content"] == "where is A-2?"
    monkeypatch.setenv("TRAJFORGE_PROMPTS_DISABLE", "other,support_reply")
    assert str(trajforge.prompts.get("support_reply", "default prompt", home=tmp_path)) == "default prompt"


def test_a_broken_artifact_falls_back_to_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trajforge.prompts, "CHECK_EVERY_S", 0.0)
    artifacts.save(_art("fine", 0.9), force=True, home=tmp_path)
    (artifacts.task_dir("support_reply", tmp_path) / "v1.json").write_text("{not json")
    assert str(trajforge.prompts.get("support_reply", "default", home=tmp_path)) == "default"
