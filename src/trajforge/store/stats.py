"""The rollups that stats and unfiltered totals read, and the stats report built from them.

Calls are rolled up per day, model and latency bucket (kept by every write and delete, see
:mod:`~trajforge.store.writes`); trajectories per day, source and status (kept by triggers). A
latency bucket is a power of ``LATENCY_BASE``, so percentiles from the buckets are exact to within
about 2.5% without keeping a single latency.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

DAY_MS = 86_400_000
LATENCY_BASE = 1.05  # histogram bucket ratio: percentiles are exact to within ~2.5%


def latency_bucket(latency_ms: float | None) -> int:
    if latency_ms is None or latency_ms < 0 or math.isnan(latency_ms):
        return -1
    return int(math.log(latency_ms + 1.0, LATENCY_BASE))


def bucket_value(bucket: int) -> float:
    """A bucket's representative latency: the geometric middle of its bounds."""
    return LATENCY_BASE ** (bucket + 0.5) - 1.0


def add_to_rollup(
    rollup: dict[tuple[int, str, int], list[float]],
    timestamp: int,
    model: str,
    latency_ms: float | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
) -> None:
    key = (int(timestamp) // DAY_MS, model or "", latency_bucket(latency_ms))
    acc = rollup.get(key)
    if acc is None:
        acc = rollup[key] = [0, 0, 0, 0.0]
    acc[0] += 1
    acc[1] += prompt_tokens or 0
    acc[2] += completion_tokens or 0
    if key[2] >= 0:
        acc[3] += float(latency_ms or 0.0)


def _day(day: int) -> str:
    try:
        return datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError):
        return f"day {day}"  # a stored time outside the calendar must not break stats


def _percentiles(hist: dict[int, int]) -> dict[str, float | None]:
    total = sum(hist.values())
    out: dict[str, float | None] = {}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)):
        if not total:
            out[name] = None
            continue
        need, cum = q * total, 0
        for bucket in sorted(hist):
            cum += hist[bucket]
            if cum >= need:
                out[name] = round(bucket_value(bucket), 1)
                break
    return out


def rolled_totals(
    rows: Sequence[Any], extremes: Sequence[Any]
) -> tuple[tuple[Any, ...], list[tuple[str, int]], list[tuple[str, int]], list[tuple[int, int]]]:
    """Rollup rows (day, source, status, counts and sums...) as the totals, by-source, by-status and
    per-day rows the scan in ``stats`` returns."""
    sums = [0] * 6
    reward_sum = 0.0
    by_source: dict[str, int] = defaultdict(int)
    by_status: dict[str, int] = defaultdict(int)
    per_day: dict[int, int] = defaultdict(int)
    for day, source, status, n, *counts, reward in rows:
        for i, v in enumerate(counts):
            sums[i] += int(v)
        reward_sum += float(reward)
        by_source[source] += int(n)
        by_status[status] += int(n)
        per_day[int(day)] += int(n)
    total = sum(by_source.values())
    rewarded = sums[5]
    # The sum is kept by adding and subtracting floats: round away the last bits of drift.
    mean = round(reward_sum / rewarded, 12) if rewarded else None
    totals = (total, *sums[:5], rewarded, mean, extremes[0], extremes[1])
    return totals, list(by_source.items()), list(by_status.items()), list(per_day.items())


def stats_report(
    totals: Sequence[Any],
    by_source: Sequence[Any],
    by_status: Sequence[Any],
    per_day_traj: Sequence[Any],
    rollup_rows: Sequence[Any],
) -> dict[str, Any]:
    by_model: dict[str, dict[str, Any]] = {}
    per_day: dict[int, dict[str, Any]] = {}
    hist: dict[int, int] = defaultdict(int)
    model_hist: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    latency_sum, latency_n = 0.0, 0
    for day, model, bucket, calls, pt, ct, lsum in rollup_rows:
        m = by_model.setdefault(
            model, {"model": model, "llmCalls": 0, "promptTokens": 0, "completionTokens": 0}
        )
        m["llmCalls"] += int(calls)
        m["promptTokens"] += int(pt)
        m["completionTokens"] += int(ct)
        d = per_day.setdefault(
            int(day), {"trajectories": 0, "llmCalls": 0, "promptTokens": 0, "completionTokens": 0}
        )
        d["llmCalls"] += int(calls)
        d["promptTokens"] += int(pt)
        d["completionTokens"] += int(ct)
        if bucket >= 0:
            hist[int(bucket)] += int(calls)
            model_hist[model][int(bucket)] += int(calls)
            latency_sum += float(lsum)
            latency_n += int(calls)
    for day, n in per_day_traj:
        per_day.setdefault(
            int(day), {"trajectories": 0, "llmCalls": 0, "promptTokens": 0, "completionTokens": 0}
        )["trajectories"] = int(n)
    for model, m in by_model.items():
        m["latencyMs"] = _percentiles(model_hist.get(model, {}))
    latency = _percentiles(hist)
    latency["mean"] = round(latency_sum / latency_n, 1) if latency_n else None
    return {
        "totalTrajectories": int(totals[0] or 0),
        "totalSteps": int(totals[1] or 0),
        "totalLlmCalls": int(totals[2] or 0),
        "totalProviderAccesses": int(totals[3] or 0),
        "totalPromptTokens": int(totals[4] or 0),
        "totalCompletionTokens": int(totals[5] or 0),
        "bySource": {r[0]: int(r[1]) for r in by_source},
        "byStatus": {r[0]: int(r[1]) for r in by_status},
        "byModel": sorted(by_model.values(), key=lambda m: -m["llmCalls"]),
        "latencyMs": latency,
        "reward": {
            "count": int(totals[6] or 0),
            "mean": None if totals[7] is None else float(totals[7]),
            "min": None if totals[8] is None else float(totals[8]),
            "max": None if totals[9] is None else float(totals[9]),
        },
        "perDay": [{"date": _day(day), **per_day[day]} for day in sorted(per_day)],
    }
