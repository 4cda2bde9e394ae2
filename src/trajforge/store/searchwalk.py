"""A search page found by walking the newest trajectories, for words that most of them contain.

The index path (each backend's ``_search_ids``) finds every text that matches, maps each to its
trajectories and counts them: its cost grows with the hits, so a word in most trajectories cost
more the bigger the store (PostgreSQL, 54k trajectories under load: 1.1 s, most of it a heap
visit per matching text). A page of such a word sits among the newest trajectories: walking them
newest first and asking of each one's own texts whether they match finds the page after about
``(offset + limit) / density`` trajectories, whatever the size of the store. The question is the
same per-text match as the index path's (:meth:`SqlHelpers._match_texts`), so both give the same
trajectories in the same order.

What the walk does not give is the number of matches: it stops after the page. Its total is the
matches it walked past, reported as a lower bound (``Page.total_is_lower_bound``, "N+"), unless
it reached the last trajectory. Rare words, deep pages and walks that would run long take the
index path, which counts exactly; which one runs is decided from the density the first batches
found (32 trajectories, up to 128 when they held few matches).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, NamedTuple

from trajforge.store import search
from trajforge.store.sqlbase import SqlHelpers, newest_after

if TYPE_CHECKING:
    from trajforge.store.filter import TrajectoryFilter

WALK_FIRST = 32
"""Trajectories in the first batch: enough to measure a common word's density, cheap to waste
when the word turns out rare (~32 x 30 texts checked)."""
WALK_SAMPLE, WALK_SAMPLE_MAX = 8, 128
"""The walk judges a word's density once it has found this many matches, or walked this many
trajectories (a word with a few matches among the first batch: look further before judging)."""
WALK_MAX = 2_000
"""Most trajectories one page may walk; a page that needs more takes the index path."""
WALK_DEPTH = 1_000
"""Pages deeper than this (``offset + limit``) take the index path: the walk grows with the depth."""


class Walked(NamedTuple):
    rows: list[Any]
    """The page's trajectory rows (``TRAJ_COLS``), newest first."""
    total: int
    lower_bound: bool
    """``total`` counts the matches walked past, not all of them."""


class SearchWalk(SqlHelpers):
    """The walk, over the store's own helpers (a part of the SQL store, like the write path)."""

    walk_hit_cost = 40
    """About how many index hits cost as much as walking one trajectory (~30 searchable texts,
    each checked, against one hit's heap or link lookup): the walk runs when it is expected to be
    cheaper than the index path over all the hits. Each backend sets its own, measured on the
    query benchmark's store."""

    def _walk_search(self, cur: Any, flt: TrajectoryFilter, limit: int, offset: int) -> Walked | None:
        """The page of ``flt`` (which has a search) found by walking, or None when the index path
        should answer it (a rare word, a deep page, a walk that would be long)."""
        need = int(offset) + int(limit) + 1  # one more than the page: whether there are more
        if not flt.search or need > WALK_DEPTH + 1:
            return None
        query = search.parse(flt.search)
        # Positive groups first: each set only checks the texts of the trajectories still in.
        sets = [(g, True) for g in query.groups] + [((n,), False) for n in query.negated]
        where, params = self._where(flt.model_copy(update={"search": None}))
        found: list[Any] = []
        walked = 0
        size = WALK_FIRST
        judged = False
        key: tuple[int, str] | None = None
        while True:
            rows = self._ex(cur, *newest_after(where, params, key, size)).fetchall()
            walked += len(rows)
            found.extend(self._matching(cur, rows, sets))
            if len(rows) < size:  # walked them all: the count is exact
                return Walked(found[offset : offset + limit], len(found), False)
            if len(found) >= need:
                return Walked(found[offset : offset + limit], len(found), True)
            key = (rows[-1][4], rows[-1][0])
            if not found:
                return None  # none among the newest: a rare word, the index path's
            density = len(found) / walked
            ahead = (need - len(found)) / density
            if len(found) < WALK_SAMPLE and walked < WALK_SAMPLE_MAX:
                # Too few matches to judge the density by (1 of 32 for a word in 10%: 3x off).
                size = WALK_SAMPLE_MAX - walked
                continue
            if walked + ahead > WALK_MAX:
                return None
            if not judged:
                judged = True
                if (walked + ahead) * self.walk_hit_cost > density * self._about(cur, flt):
                    return None  # the index path's cost is its hits: about density x trajectories
            size = min(1_000, int(ahead * 1.1) + 8)  # a little over the estimate: one more batch is rare

    def _about(self, cur: Any, flt: TrajectoryFilter) -> int:
        """Roughly how many trajectories ``flt`` holds, without its search (all a choice of path
        needs): the rollup's count under its source and status; other filters make it an
        overestimate."""
        from trajforge.store.filter import TrajectoryFilter

        return self._count(cur, TrajectoryFilter(source=flt.source, status=flt.status))

    def _matching(
        self, cur: Any, rows: list[Any], sets: list[tuple[tuple[search.Term, ...], bool]]
    ) -> list[Any]:
        """The rows (in order) whose searchable texts satisfy every set: some text matches each
        positive group, none matches a negated term."""
        alive = list(rows)
        for terms, positive in sets:
            if not alive:
                break
            hits = self._matching_trajectories(cur, terms, [r[0] for r in alive])
            alive = [r for r in alive if (r[0] in hits) is positive]
        return alive

    def _matching_trajectories(
        self, cur: Any, terms: tuple[search.Term, ...], trajectory_ids: list[str]
    ) -> set[str]:
        """Which of these trajectories have a searchable text matching any of ``terms``: their
        links, then each distinct text asked once (a system prompt shared by the whole batch too)."""
        texts: dict[str, list[int]] = defaultdict(list)
        for tid, text_id in self._select_in(
            cur,
            "SELECT trajectory_id, text_id FROM trajectory_texts WHERE fts AND trajectory_id IN ({marks})",
            trajectory_ids,
        ):
            texts[tid].append(text_id)
        wanted = sorted({i for ids in texts.values() for i in ids})
        hits = self._match_texts(cur, terms, wanted) if wanted else set()
        return {tid for tid, ids in texts.items() if any(i in hits for i in ids)}
