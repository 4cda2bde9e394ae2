"""Search pages with and without the newest-first walk, on a store the query benchmark built.

    python benchmarks/search.py --db PATH_OR_URL [--rounds 30]

In one process, alternating request by request: the index path alone (what every search ran
before the walk) and the store as it is (the walk for words in most trajectories). Each query's
page is checked to be the same both ways; medians and p95 in ms, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from generator import MARKER
from query import GrowingGenerator, common_word
from trajforge.store import TrajectoryFilter, open_store, searchwalk


def pct(ms: list[float], p: float) -> float:
    return sorted(ms)[min(len(ms) - 1, int(p * len(ms)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True, help="SQLite path or postgresql:// URL")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument(
        "--forced",
        action="store_true",
        help="also time the walk where the store would not walk (walk_hit_cost 0)",
    )
    args = parser.parse_args()
    word = common_word(GrowingGenerator(seed=7))
    store = open_store(args.db)
    n = store.count(TrajectoryFilter())
    print(f"store: {args.db} ({n:,} trajectories)")
    queries = [
        ("common word, page 1", TrajectoryFilter(search=word), 0),
        ("common word, page 5", TrajectoryFilter(search=word), 200),
        ("rare word (MARKER)", TrajectoryFilter(search=MARKER), 0),
        ("common word + source", TrajectoryFilter(search=word, source="chat"), 0),
        ("common word -MARKER", TrajectoryFilter(search=f"{word} -{MARKER}"), 0),
        ("common OR MARKER", TrajectoryFilter(search=f"{word} OR {MARKER}"), 0),
    ]
    depth, hit_cost = searchwalk.WALK_DEPTH, store.walk_hit_cost  # type: ignore[attr-defined]
    modes = ("index", "now", "walk") if args.forced else ("index", "now")
    forced = " | walk forced p50 / p95" if args.forced else ""
    print(f"| query | index path p50 / p95 | now p50 / p95 | ratio (p50) | total before → now{forced} |")
    print("|---|---:|---:|---:|---|" + ("---:|" if args.forced else ""))
    for label, flt, offset in queries:
        times: dict[str, list[float]] = {m: [] for m in modes}
        pages = {}
        for r in range(args.rounds + 2):
            for mode in modes if r % 2 else modes[::-1]:
                searchwalk.WALK_DEPTH = -1 if mode == "index" else depth
                store.walk_hit_cost = 0 if mode == "walk" else hit_cost  # type: ignore[attr-defined]
                t0 = time.perf_counter()
                page = store.list_trajectories(flt, limit=50, offset=offset)
                ms = (time.perf_counter() - t0) * 1000
                if r >= 2:  # two warm-up rounds
                    times[mode].append(ms)
                pages[mode] = page
        searchwalk.WALK_DEPTH, store.walk_hit_cost = depth, hit_cost  # type: ignore[attr-defined]
        before, now = pages["index"], pages["now"]
        assert [t.id for t in before.items] == [t.id for t in now.items], label
        a, b = times["index"], times["now"]
        plus = "+" if now.total_is_lower_bound else ""
        print(
            f"| {label} | {statistics.median(a):.1f} / {pct(a, 0.95):.1f} | "
            f"{statistics.median(b):.1f} / {pct(b, 0.95):.1f} | "
            f"{statistics.median(a) / statistics.median(b):.1f}x | {before.total:,} → {now.total:,}{plus} |"
            + (
                f" {statistics.median(times['walk']):.1f} / {pct(times['walk'], 0.95):.1f} |"
                if args.forced
                else ""
            ),
            flush=True,
        )
    store.close()


if __name__ == "__main__":
    main()
