"""Search pages found by walking the newest trajectories: the same pages as the index path, on
SQLite and PostgreSQL, and a total that says when it is a lower bound."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tests.helpers import make_trajectory
from trajforge.records import Trajectory, WriteBatch
from trajforge.server import create_app
from trajforge.store import Store, TrajectoryFilter, searchwalk, sqlite

BASE = 1_700_000_000_000
N = 150
COMMON = sum(1 for i in range(N) if i % 5 or i % 17 == 0)  # "common" in a prompt or "COMMON" in a response


def _corpus() -> list[Trajectory]:
    """A word in 80% of the trajectories ("common"), others in a third or fewer, phrases, a word
    only in a system prompt that many trajectories share, mixed case and non-ASCII letters, and
    start times that tie (the order breaks ties by id)."""
    out = []
    for i in range(N):
        words = ["common" if i % 5 else "plain"]
        if i % 3 == 0:
            words.append("alpha")
        if i % 7 == 0:
            words.append("beta gamma delta")
        if i % 11 == 0:
            words.append("delta gamma")
        words.append({0: "ÉCOLE", 1: "\u212aelvin", 2: "İstanbul"}.get(i % 13, "ascii"))
        t = make_trajectory(
            prompt=" ".join(words) + f" number{i}",
            system="You are agent sysword." if i % 4 == 0 else "You are another agent.",
            start_time=BASE + (i // 3) * 1000,
            source="chat" if i % 2 else "api",
            n_steps=1,
            calls_per_step=1,
        )
        t.steps[0].llm_calls[0].response = "COMMON answer" if i % 17 == 0 else "an answer"
        out.append(t)
    return out


@pytest.fixture
def corpus(store: Store) -> Store:
    batch = WriteBatch()
    for t in _corpus():
        batch.extend(WriteBatch.from_trajectory(t))
    store.write(batch)
    return store


QUERIES = [
    "common",
    "COMMON",
    "comm*",
    "common alpha",
    "common -alpha",
    "alpha OR beta",
    "common alpha OR beta -delta",
    '"gamma delta"',
    '"delta gamma" common',
    "sysword",
    "common sysword",
    "common -sysword",
    "kelvin",
    "istanbul",
    "école",
    "ecole",
    # Letters that lowercase to ASCII from outside it (U+212A, U+0130), among common words: a
    # shortcut that missed them would drop or keep the wrong trajectories.
    "plain OR kelvin",
    "plain OR istanbul",
    "plain OR école",
    "common -kelvin",
    "common -istanbul",
    "number1*",
    "common zzznothing",
    "zzznothing",
]


@pytest.mark.parametrize(
    ("source", "gap", "ranges"),
    [
        (None, sqlite.RANGE_GAP, sqlite.MAX_RANGES),
        ("chat", sqlite.RANGE_GAP, sqlite.MAX_RANGES),
        (None, 0, 10**6),
        (None, 0, 3),
    ],
)
def test_walked_pages_are_the_index_paths_pages(
    corpus: Store, monkeypatch: pytest.MonkeyPatch, source: str | None, gap: int, ranges: int
) -> None:
    # gap 0: SQLite asks FTS5 one text id at a time instead of one range, or in 3 ranges.
    for query in QUERIES:
        flt = TrajectoryFilter(search=query, source=source)
        for limit, offset in [(10, 0), (10, 10), (7, 40), (25, 100), (10, 145)]:
            monkeypatch.setattr(corpus, "walk_hit_cost", 0)  # walk whenever the walk can answer
            monkeypatch.setattr(sqlite, "RANGE_GAP", gap)
            monkeypatch.setattr(sqlite, "MAX_RANGES", ranges)
            walked = corpus.list_trajectories(flt, limit=limit, offset=offset)
            monkeypatch.setattr(searchwalk, "WALK_DEPTH", -1)  # the index path only
            exact = corpus.list_trajectories(flt, limit=limit, offset=offset)
            monkeypatch.undo()
            assert [t.id for t in walked.items] == [t.id for t in exact.items], (query, source, offset)
            assert not exact.total_is_lower_bound
            if walked.total_is_lower_bound:
                assert offset + len(walked.items) < walked.total <= exact.total, (query, offset)
                assert len(walked.items) == limit
            else:
                assert walked.total == exact.total, (query, source, offset)


def test_a_common_word_gets_a_lower_bound_and_a_rare_one_its_count(corpus: Store) -> None:
    common = corpus.list_trajectories(TrajectoryFilter(search="common"), limit=10)
    assert common.total_is_lower_bound and 10 < common.total < COMMON
    assert [t.start_time for t in common.items] == sorted((t.start_time for t in common.items), reverse=True)
    rare = corpus.list_trajectories(TrajectoryFilter(search="number17"), limit=10)
    assert not rare.total_is_lower_bound and [t.total for t in [rare]] == [1]
    # A page deeper than the walk goes is counted exactly.
    deep = corpus.list_trajectories(TrajectoryFilter(search="common"), limit=10, offset=searchwalk.WALK_DEPTH)
    assert not deep.total_is_lower_bound and deep.total == COMMON and deep.items == []
    # The last page of a walk that reaches the oldest trajectory knows the count.
    everything = corpus.list_trajectories(TrajectoryFilter(search="common"), limit=500)
    assert not everything.total_is_lower_bound and everything.total == len(everything.items) == COMMON


def test_the_api_says_when_the_total_is_a_lower_bound(corpus: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with TestClient(create_app(corpus), base_url="http://127.0.0.1") as client:
        common = client.get("/api/trajectories", params={"search": "common", "limit": 10}).json()
        assert common["totalIsLowerBound"] is True and common["total"] > 10
        rare = client.get("/api/trajectories", params={"search": "number17"}).json()
        assert rare["totalIsLowerBound"] is False and rare["total"] == 1
        listed = client.get("/api/trajectories", params={"limit": 1}).json()
        assert listed["totalIsLowerBound"] is False and listed["total"] == N
        # The dashboard shows the bound as "N+", and a next page (its 50 a page are a walk only
        # when walking is free, on a store this small).
        monkeypatch.setattr(corpus, "walk_hit_cost", 0)
        page = client.get("/trajectories", params={"search": "common"})
        assert page.status_code == 200
        assert (
            re.search(r'id="total">\d+\+ matching', page.text) and 'id="page-info">page 1 of 2+' in page.text
        )
        assert re.search(
            r'id="total">1 matching', client.get("/trajectories", params={"search": "number17"}).text
        )
