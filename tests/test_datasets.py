from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import make_support_corpus
from trajforge import datasets
from trajforge.datasets import FORMATS, BuildRequest, PrivacyOptions, check_row
from trajforge.errors import InvalidInput
from trajforge.records import Score, WriteBatch
from trajforge.store import Store, TrajectoryFilter, open_store

PII = ["buyer0@example.com", "buyer3@example.com", "415 555 2603", "@shopper2", "shopper2"]


def _fill(store: Store, scenarios: int = 6) -> list[str]:
    ids = []
    for t in make_support_corpus(scenarios):
        store.write(WriteBatch.from_trajectory(t))
        ids.append(t.id)
    return ids


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _build(store: Store, root: Path, **kw: Any) -> Any:
    return datasets.build(store, BuildRequest(**kw), root=root)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_is_valid_private_and_loads_in_hf_datasets(
    store: Store, tmp_path: Path, fmt: str
) -> None:
    from datasets import load_dataset

    _fill(store)
    ds = _build(store, tmp_path, format=fmt, eval_fraction=0.3, task="support_reply")
    folder = Path(ds.path)
    rows = _rows(folder / "train.jsonl") + _rows(folder / "eval.jsonl")
    assert rows, fmt
    for row in rows:
        assert check_row(fmt, row) is None
    text = (folder / "train.jsonl").read_text() + (folder / "eval.jsonl").read_text()
    for secret in PII:
        assert secret not in text, (fmt, secret)
    assert "[REDACTED_EMAIL]" in text and "[REDACTED_PHONE]" in text and "<entity:" in text
    loaded = load_dataset("json", data_files=str(folder / "train.jsonl"), split="train")
    assert len(loaded) == ds.manifest["counts"]["rows"]["train"]
    import pyarrow.parquet as pq

    assert pq.read_table(folder / "train.parquet").num_rows == len(loaded)


def test_trl_format_helpers_accept_the_rows(store: Store, tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    _fill(store)
    for fmt in ("sft", "prompt_completion", "preference", "grpo"):
        ds = _build(store, tmp_path, format=fmt, eval_fraction=0.0)
        for row in _rows(Path(ds.path) / "train.jsonl"):
            assert is_conversational(row), fmt
            applied = maybe_apply_chat_template({k: v for k, v in row.items() if k != "tools"}, tok)
            key = "text" if fmt == "sft" else "prompt"
            assert "<|im_start|>" in applied[key]


def test_tool_calls_in_trl_and_openai_form(store: Store, tmp_path: Path) -> None:
    _fill(store)
    sft = _rows(
        Path(_build(store, tmp_path, format="sft", task="support_reply", eval_fraction=0).path)
        / "train.jsonl"
    )
    tool_rows = [r for r in sft if r["messages"][-1].get("tool_calls")]
    assert len(tool_rows) == 3
    call = tool_rows[0]["messages"][-1]["tool_calls"][0]
    assert call["type"] == "function" and isinstance(call["function"]["arguments"], dict)
    assert tool_rows[0]["tools"][0]["function"]["name"] == "lookup_order"
    oa = _rows(
        Path(_build(store, tmp_path, format="openai", task="support_reply", eval_fraction=0).path)
        / "train.jsonl"
    )
    oa_tool = next(r for r in oa if r["messages"][-1].get("tool_calls"))
    last = oa_tool["messages"][-1]
    assert isinstance(last["tool_calls"][0]["function"]["arguments"], str)
    assert json.loads(last["tool_calls"][0]["function"]["arguments"])["orderId"].startswith("A-10")
    assert last["weight"] == 1 and last["content"] is None
    assert all("weight" not in m for m in oa_tool["messages"][:-1] if m["role"] != "assistant")


def test_preference_pairs_follow_rewards(store: Store, tmp_path: Path) -> None:
    _fill(store)
    ds = _build(
        store, tmp_path, format="preference", task="support_reply", eval_fraction=0, preference_margin=0.4
    )
    rows = _rows(Path(ds.path) / "train.jsonl")
    # 6 scenarios × (right vs wrong) = 6 pairs: the 0.5 one differs from neither by less than 0.4 ... but it
    # is the middle of three, so only best-vs-worst pairs form.
    assert len(rows) == 6
    for row in rows:
        chosen = row["chosen"][0].get("content") or json.dumps(row["chosen"][0].get("tool_calls"))
        assert "TRACK" not in chosen
    dpo = _rows(
        Path(_build(store, tmp_path, format="openai_dpo", task="support_reply", eval_fraction=0).path)
        / "train.jsonl"
    )
    assert dpo and all(r["input"]["messages"][0]["role"] == "system" for r in dpo)


def test_train_and_eval_never_share_a_scenario(store: Store, tmp_path: Path) -> None:
    _fill(store, scenarios=12)
    ds = _build(store, tmp_path, format="grpo", eval_fraction=0.4, seed=7)
    folder = Path(ds.path)
    train = {r["group"] for r in _rows(folder / "train.jsonl")}
    held = {r["group"] for r in _rows(folder / "eval.jsonl")}
    assert train and held and not train & held


def test_reproducible_and_versioned(store: Store, tmp_path: Path) -> None:
    _fill(store)
    a = _build(store, tmp_path, format="sft", name="support", seed=3, eval_fraction=0.3)
    b = _build(store, tmp_path, format="sft", name="support", seed=3, eval_fraction=0.3)
    assert a.id != b.id and (a.version, b.version) == (1, 2) and b.parent == a.id
    assert (
        set(a.manifest["files"]) == set(b.manifest["files"]) >= {"train.jsonl", "eval.jsonl", "train.parquet"}
    )
    for name in a.manifest["files"]:
        assert (Path(a.path) / name).read_bytes() == (Path(b.path) / name).read_bytes(), name
    assert a.manifest["contentSha256"] == b.manifest["contentSha256"]
    c = _build(store, tmp_path, format="sft", name="support", seed=4, eval_fraction=0.3)
    assert c.manifest["files"]["train.jsonl"]["sha256"] != a.manifest["files"]["train.jsonl"]["sha256"]


def test_manifest_describes_the_snapshot(store: Store, tmp_path: Path) -> None:
    import hashlib

    ids = _fill(store)
    ds = _build(store, tmp_path, format="sft", eval_fraction=0.3)
    folder = Path(ds.path)
    m = json.loads((folder / "manifest.json").read_text())
    assert m["id"] == ds.id and m["request"]["format"] == "sft" and m["request"]["evalFraction"] == 0.3
    assert sorted(m["sourceTrajectories"]["ids"]) == sorted(ids)
    assert set(m["counts"]["tasks"]) == {"reasoning", "support_reply"}
    for task, counts in m["counts"]["tasks"].items():
        task_dir = folder / counts["folder"]
        assert task_dir.parent.name == "tasks" and task in m["counts"]["tasks"]
        assert len(_rows(task_dir / "train.jsonl")) == counts["train"]
    for rel, info in m["files"].items():
        data = (folder / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"] and len(data) == info["bytes"]
        assert not os.access(folder / rel, os.W_OK) or os.geteuid() == 0
        assert not (folder / rel).stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    p = m["privacy"]
    assert p["redactions"]["email"] > 0 and p["redactions"]["phone"] > 0 and p["redactions"]["handle"] > 0
    assert p["trajectoriesWithRedactions"] == len(ids)
    assert store.list_events(kinds=["dataset_built"])[-1].dataset_id == ds.id


def test_task_names_never_become_raw_paths(store: Store, tmp_path: Path) -> None:
    for t in make_support_corpus(2):
        for step in t.steps:
            for c in step.llm_calls:
                c.action_type = "../../etc/passwd" if c.purpose == "action" else "..\\x"
        store.write(WriteBatch.from_trajectory(t))
    ds = _build(store, tmp_path / "root", format="sft", eval_fraction=0)
    for task, counts in ds.manifest["counts"]["tasks"].items():
        resolved = (Path(ds.path) / counts["folder"]).resolve()
        assert resolved.parent == (Path(ds.path) / "tasks").resolve(), task
    assert not (tmp_path / "etc").exists()


def test_curation_by_reward_score_calls_and_late_outcomes(store: Store, tmp_path: Path) -> None:
    ids = _fill(store)
    # A late outcome on half of them; the build that requires it waits for the rest.
    store.add_scores(
        [Score(tid, "resolved", 1.0 if i % 2 else 0.0, source="crm") for i, tid in enumerate(ids[:9])]
    )
    ds = _build(
        store, tmp_path, format="sft", require_score="resolved", reward_score="resolved", min_reward=0.5
    )
    m = ds.manifest
    assert m["counts"]["trajectories"] == 4
    reasons = m["privacy"]["droppedByReason"]
    assert reasons["awaiting score 'resolved'"] == 9 and reasons["reward below minReward"] == 5
    ds2 = _build(store, tmp_path, format="sft", min_llm_calls_per_trajectory=3)
    assert ds2.trajectory_count == 0 and ds2.manifest["warnings"]
    ds3 = _build(store, tmp_path, format="sft", min_reward=1.0, limit=2)
    assert ds3.trajectory_count == 2
    ds4 = _build(
        store,
        tmp_path,
        format="grpo",
        task="support_reply",
        reward_score="resolved",
        require_score="resolved",
    )
    rewards = {
        r["reward"] for r in _rows(Path(ds4.path) / "train.jsonl") + _rows(Path(ds4.path) / "eval.jsonl")
    }
    assert rewards <= {0.0, 1.0}


def test_privacy_drop_on_and_extra_patterns(store: Store, tmp_path: Path) -> None:
    _fill(store)
    ds = _build(
        store,
        tmp_path,
        format="sft",
        privacy=PrivacyOptions(extra_patterns={"order": r"\bA-10\d\b"}, drop_on=["handle"], allow=[]),
    )
    m = ds.manifest
    # Only the reasoning calls mention handles? No: every user prompt has one, so all are dropped.
    assert ds.trajectory_count == 0 and m["privacy"]["droppedByReason"] == {"privacy: contains handle": 18}
    ds2 = _build(
        store, tmp_path, format="sft", privacy=PrivacyOptions(extra_patterns={"order": r"\bA-10\d\b"})
    )
    text = (Path(ds2.path) / "train.jsonl").read_text()
    assert (
        "A-103" not in text
        and "<REDACTED:order>" in text
        and ds2.manifest["privacy"]["redactions"]["order"] > 0
    )
    with pytest.raises(InvalidInput) as err:
        PrivacyOptions(drop_on=["nonsense"])
    assert err.value.field == "privacy.dropOn"


def test_dedup_and_build_leaves_trajectories_untouched(store: Store, tmp_path: Path) -> None:
    ids = _fill(store)
    before = b"".join(store.iter_json_docs(TrajectoryFilter()))
    with_dedup = _build(store, tmp_path, format="sft", task="reasoning", eval_fraction=0)
    without = _build(store, tmp_path, format="sft", task="reasoning", eval_fraction=0, dedup=False)
    # Three attempts per scenario share the same reasoning call: dedup keeps one per scenario.
    assert with_dedup.row_count == 6 and without.row_count == 18
    assert with_dedup.manifest["privacy"]["duplicatesSkipped"] == 12
    assert b"".join(store.iter_json_docs(TrajectoryFilter())) == before
    assert store.count(TrajectoryFilter()) == len(ids)


def test_bad_requests_name_the_field() -> None:
    for kw, field in [
        ({"format": "csv"}, "format"),
        ({"limit": 0}, "limit"),
        ({"eval_fraction": 1.0}, "evalFraction"),
        ({"pair_by": "x"}, "pairBy"),
        ({"name": "../x"}, "name"),
        ({"min_reward": 2, "max_reward": 1}, "minReward"),
    ]:
        with pytest.raises(InvalidInput) as err:
            BuildRequest(**kw)
        assert err.value.field == field


@pytest.mark.postgres
def test_postgres_build_equals_sqlite_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import drop_pg_schema, pg_url

    monkeypatch.setenv("TRAJFORGE_PRIVACY_SALT", "shared-salt")
    corpus = make_support_corpus()
    url = pg_url()
    sq, pg = open_store(str(tmp_path / "a.db")), open_store(url)
    try:
        for s in (sq, pg):
            for t in corpus:
                s.write(WriteBatch.from_trajectory(t))
        for fmt in ("sft", "preference", "art"):
            a = _build(sq, tmp_path / "sq", format=fmt, eval_fraction=0.3)
            b = _build(pg, tmp_path / "pg", format=fmt, eval_fraction=0.3)
            assert a.manifest["contentSha256"] == b.manifest["contentSha256"], fmt
            assert (Path(a.path) / "train.jsonl").read_bytes() == (Path(b.path) / "train.jsonl").read_bytes()
    finally:
        sq.close()
        pg.close()
        drop_pg_schema(url)


@pytest.mark.parametrize("fmt", ["sft", "openai", "grpo"])
def test_worker_processes_write_the_same_files(store: Store, tmp_path: Path, fmt: str) -> None:
    """Big builds curate in worker processes; the files must not depend on that."""
    for i in range(4):
        for t in make_support_corpus():
            t.id = f"{t.id}-{i}"
            t.start_time += i
            store.write(WriteBatch.from_trajectory(t))
    store.add_scores([])
    one = datasets.build(
        store, BuildRequest(format=fmt, eval_fraction=0.3, limit=60), root=tmp_path / "a", workers=1
    )
    two = datasets.build(
        store, BuildRequest(format=fmt, eval_fraction=0.3, limit=60), root=tmp_path / "b", workers=2
    )
    assert one.trajectory_count == two.trajectory_count == 60
    assert one.manifest["privacy"] == two.manifest["privacy"]
    assert one.manifest["counts"] == two.manifest["counts"]
    for name, info in one.manifest["files"].items():
        assert two.manifest["files"][name]["sha256"] == info["sha256"], name


def test_art_groups_keep_the_independent_reward_when_a_score_is_the_reward(
    store: Store, tmp_path: Path
) -> None:
    ids = _fill(store, scenarios=2)
    store.add_scores([Score(tid, "ruler", 0.25, source="judge") for tid in ids])
    ds = _build(store, tmp_path, format="art", task="support_reply", reward_score="ruler", eval_fraction=0)
    groups = _rows(Path(ds.path) / "train.jsonl")
    assert len(groups) == 2 and all(len(g["trajectories"]) == 3 for g in groups)
    for g in groups:
        for t in g["trajectories"]:
            # ART's metrics are numbers: the score's name is metadata.
            assert t["reward"] == 0.25 and t["metadata"]["reward_score"] == "ruler"
            assert t["metrics"]["independent_reward"] in (0.0, 0.5, 1.0)
            assert t["messages_and_choices"][0]["role"] == "system"


def test_ids_and_task_names_are_filtered_too(store: Store, tmp_path: Path) -> None:
    for t in make_support_corpus(2):
        t.scenario_id = f"ticket-from-{t.scenario_id}@example.com"
        t.agent_id = "bot for @shopper9"
        store.write(WriteBatch.from_trajectory(t))
    for fmt in ("grpo", "art"):
        ds = _build(store, tmp_path, format=fmt, eval_fraction=0)
        text = (Path(ds.path) / "train.jsonl").read_text() + json.dumps(ds.manifest)
        assert "@example.com" not in text and "shopper9" not in text, fmt


def test_a_version_taken_by_a_concurrent_build_is_a_conflict(store: Store, tmp_path: Path) -> None:
    from trajforge.errors import Conflict
    from trajforge.records import Dataset

    _fill(store, scenarios=1)
    first = _build(store, tmp_path, format="sft", name="same")
    clash = Dataset(id="dataset-x", name="same", version=first.version, format="sft", path="/nowhere",
                    trajectory_count=0, row_count=0, manifest={})  # fmt: skip
    with pytest.raises(Conflict):
        store.add_dataset(clash)
    assert [d.id for d in store.list_datasets()] == [first.id]
