"""Curation: which trajectories and calls a build keeps, as filtered examples, in store order.

Call rows are read trajectory by trajectory; each trajectory is kept or dropped (awaiting a score,
reward out of range, too few calls, nothing to learn from, a privacy category the request drops
on), and a kept one becomes its calls' examples with every user-content string filtered. Builds of
2,000+ trajectories of per-example formats curate (and convert) in forked worker processes, a page
at a time; the result is the same as in-process.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from trajforge import workers as worker_pool
from trajforge.datasets.request import BuildRequest
from trajforge.datasets.rows import CHECK_EVERY, line
from trajforge.formats import rewarded
from trajforge.formats.examples import Example, example_from_row
from trajforge.privacy import PrivacyFilter, PrivacyReport
from trajforge.records import FlatCall, task_of
from trajforge.store.base import Store
from trajforge.store.filter import TrajectoryFilter

Line = tuple[str, str, bytes, bytes]
"""(task, group, JSONL line, dedup key) of one example."""


@dataclass(slots=True)
class Selection:
    """Which trajectories made it in, and why the others did not."""

    included: list[str] = field(default_factory=list)
    tasks: dict[str, dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: {"train": 0, "eval": 0})
    )
    duplicates: int = 0
    calls_without_content: int = 0
    """Calls skipped because nothing of their conversation was stored (see :func:`no_content`)."""


NO_CONTENT = "no message content captured (content capture was off in the OpenTelemetry emitter)"
"""The drop reason of a trajectory whose every call arrived without content."""


def no_content(row: FlatCall) -> bool:
    """A call with neither prompt nor completion stored: what an OpenTelemetry emitter sends when its
    content capture is off (such calls also carry the ``otel:content-absent`` tag)."""
    return not (row.messages or row.system_prompt or row.user_prompt or row.response or row.tool_calls)


@dataclass(slots=True)
class Outcome:
    """What curation decided for one trajectory: dropped (and why), or its filtered examples,
    with the redactions made in it."""

    trajectory_id: str
    drop: str | None = None
    examples: list[Example] = field(default_factory=list)
    redactions: dict[str, int] = field(default_factory=dict)
    strings_changed: int = 0
    lines: list[Line] | None = None
    """Per example, when converted where it was curated (in a worker)."""
    calls_without_content: int = 0


def _groups(rows: Iterator[FlatCall]) -> Iterator[list[FlatCall]]:
    """Call rows grouped per trajectory (the store yields them trajectory by trajectory)."""
    current: list[FlatCall] = []
    for row in rows:
        if current and row.trajectory_id != current[0].trajectory_id:
            yield current
            current = []
        current.append(row)
    if current:
        yield current


def _batches(groups: Iterator[list[FlatCall]], size: int = 500) -> Iterator[list[list[FlatCall]]]:
    batch: list[list[FlatCall]] = []
    for g in groups:
        batch.append(g)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _score_value(scores: Sequence[Any], name: str) -> float | None:
    values = [s for s in scores if s.name == name]
    return max(values, key=lambda s: s.created_at).value if values else None


def effective_filter(req: BuildRequest) -> TrajectoryFilter:
    flt = req.filter
    if req.reward_score is None and (req.min_reward is not None or req.max_reward is not None):
        # The trajectory's own reward is a column: let the database filter it.
        flt = flt.model_copy(update={"min_reward": req.min_reward, "max_reward": req.max_reward})
    return flt


def _filter_messages(pf: PrivacyFilter, messages: list[dict[str, Any]]) -> None:
    """Filter the user content of normalized messages in place: their text, tool call arguments
    and tool names (roles are ours, not user content)."""
    for m in messages:
        m["content"] = pf.text(m["content"])
        if "tool_calls" in m:
            m["tool_calls"] = pf.value(m["tool_calls"])
        if "name" in m:
            m["name"] = pf.text(m["name"])


def _filter_example(pf: PrivacyFilter, ex: Example) -> None:
    """Filter an example in place. Every field of it is made of user content by the privacy
    policy (``privacy.FLAT_CALL_CONTENT``: prompts, messages, response, tool calls and their ids,
    tools, agent id, scenario id, action type) and is filtered here; the rest is ours (ids,
    source, model, rewards)."""
    _filter_messages(pf, ex.prompt)
    _filter_messages(pf, [ex.completion])
    if ex.tools:
        ex.tools = pf.value(ex.tools)
    if ex.context:
        # What providers returned is user content through and through (names, purposes, data).
        ex.context = pf.value(ex.context)
    if ex.ids is not None:
        # Recorded ids are free text too; a call and its answer filter alike.
        ex.ids = pf.value(ex.ids)
    # Ids and task names end up in rows (grpo groups, ART metadata) and file names too.
    ex.agent_id = pf.text(ex.agent_id)
    ex.task = pf.text(ex.task)
    if ex.scenario_id is not None:
        ex.scenario_id = pf.text(ex.scenario_id)


def _add_context(store: Store, trajectory_id: str, examples: list[Example]) -> None:
    """Give each example the provider accesses of its step (the ``rewarded`` format's
    ``context``). Flat call rows do not carry them: one trajectory read per kept trajectory."""
    t = store.get_trajectory(trajectory_id)
    by_step = {} if t is None else {s.step_id: s.provider_accesses for s in t.steps}
    for ex in examples:
        accesses = by_step.get(ex.step_id, []) if ex.step_id is not None else []
        ex.context = [
            rewarded.context_entry(a.provider_name, a.purpose, a.data, a.timestamp) for a in accesses
        ]


def _curate(
    store: Store, req: BuildRequest, pf: PrivacyFilter, batches: Iterator[list[list[FlatCall]]]
) -> Iterator[Outcome]:
    """Decide, trajectory by trajectory in store order, what goes into the dataset."""
    need_scores = req.reward_score is not None or req.require_score is not None
    drop_on = set(req.privacy.drop_on)
    counts = pf.report.counts
    for batch in batches:
        scores = store.get_scores([g[0].trajectory_id for g in batch]) if need_scores else {}
        for rows in batch:
            tid = rows[0].trajectory_id
            mine = scores.get(tid, [])
            if req.require_score is not None and _score_value(mine, req.require_score) is None:
                yield Outcome(tid, f"awaiting score {req.require_score!r}")
                continue
            own = rows[0].trajectory_reward
            reward = own if req.reward_score is None else _score_value(mine, req.reward_score)
            if req.min_reward is not None or req.max_reward is not None:
                if reward is None:
                    yield Outcome(tid, "no reward")
                    continue
                if req.min_reward is not None and reward < req.min_reward:
                    yield Outcome(tid, "reward below minReward")
                    continue
                if req.max_reward is not None and reward > req.max_reward:
                    yield Outcome(tid, "reward above maxReward")
                    continue
            if reward is None and req.format == "rewarded":
                yield Outcome(tid, "no reward")
                continue
            if len(rows) < req.min_llm_calls_per_trajectory:
                yield Outcome(tid, "fewer LLM calls than minLlmCallsPerTrajectory")
                continue
            examples = []
            absent = considered = 0
            for row in rows:
                if req.task is not None and task_of(row.action_type, row.purpose) != req.task:
                    continue
                considered += 1
                ex = example_from_row(row, reward)
                if ex is not None:
                    ex.own_reward, ex.reward_from = own, req.reward_score
                    examples.append(ex)
                elif no_content(row):
                    absent += 1
            if not examples:
                why = "no LLM call with a completion" + (f" for task {req.task!r}" if req.task else "")
                yield Outcome(
                    tid, NO_CONTENT if absent and absent == considered else why, calls_without_content=absent
                )
                continue
            if req.format == "rewarded":
                _add_context(store, tid, examples)
            before, changed = dict(counts), pf.report.strings_changed
            found: set[str] = set()
            for ex in examples:
                if drop_on:
                    found |= pf.categories_in(
                        [ex.prompt, ex.completion, ex.tools, ex.agent_id, ex.ids, ex.context]
                    )
                _filter_example(pf, ex)
            out = Outcome(
                tid,
                examples=examples,
                strings_changed=pf.report.strings_changed - changed,
                calls_without_content=absent,
            )
            if out.strings_changed:
                out.redactions = {k: n - before.get(k, 0) for k, n in counts.items() if n != before.get(k, 0)}
            hit = sorted(found & drop_on)
            if hit:
                out.drop, out.examples = f"privacy: contains {', '.join(hit)}", []
            yield out


def accept(
    outcomes: Iterator[Outcome],
    req: BuildRequest,
    report: PrivacyReport,
    sel: Selection,
    on_progress: Callable[[int], None] | None,
) -> Iterator[Outcome]:
    """Account for each outcome in the build's report and stop at ``limit`` included trajectories."""
    for out in outcomes:
        sel.calls_without_content += out.calls_without_content
        if out.strings_changed:
            report.strings_changed += out.strings_changed
            report.trajectories_with_redactions += 1
            report.counts.update(out.redactions)
        if out.drop is not None:
            report.drop(out.trajectory_id, out.drop)
            continue
        sel.included.append(out.trajectory_id)
        if on_progress is not None:
            on_progress(len(sel.included))
        yield out
        if len(sel.included) >= req.limit:
            return


def local_outcomes(store: Store, req: BuildRequest, pf: PrivacyFilter) -> Iterator[Outcome]:
    # The next batch is read on a thread while this one is processed: SQLite and PostgreSQL drivers
    # release the GIL while the database works.
    rows = store.iter_call_rows(effective_filter(req))
    return _curate(store, req, pf, worker_pool.prefetch(_batches(_groups(rows)), depth=2))


# --- parallel curation: worker processes for big builds of per-example formats ---------------------

_PAGE = 200
_Meta = tuple[str, str | None, dict[str, int], int, list[tuple[str, str, int, bytes]], int]


def _worker_page(ids: list[str]) -> tuple[list[_Meta], bytes]:
    """Curate and convert one page of trajectories (in a worker process). Returns what the parent
    needs per trajectory, and all the page's JSONL lines as one blob: one big bytes object crosses
    the process boundary far cheaper than many small ones."""
    store, req, pf = worker_pool.state()
    rows = store.iter_call_rows(TrajectoryFilter(trajectory_ids=ids))
    metas: list[_Meta] = []
    lines: list[bytes] = []
    for out in _curate(store, req, pf, _batches(_groups(rows))):
        placed = []
        for ex in out.examples:
            task, group, text, key = line(req.format, ex, check=len(lines) % CHECK_EVERY == 0)
            lines.append(text)
            placed.append((task, group, len(text), key))
        metas.append(
            (
                out.trajectory_id,
                out.drop,
                out.redactions,
                out.strings_changed,
                placed,
                out.calls_without_content,
            )
        )
    return metas, b"".join(lines)


def _unpack(metas: list[_Meta], blob: bytes) -> Iterator[Outcome]:
    pos = 0
    for tid, drop, redactions, changed, placed, absent in metas:
        lines = []
        for task, group, n, key in placed:
            lines.append((task, group, blob[pos : pos + n], key))
            pos += n
        yield Outcome(
            tid,
            drop,
            redactions=redactions,
            strings_changed=changed,
            lines=lines,
            calls_without_content=absent,
        )


def parallel_outcomes(store: Store, req: BuildRequest, pf: PrivacyFilter, n: int) -> Iterator[Outcome]:
    """Outcomes in store order, curated by ``n`` worker processes a page at a time (each with its
    own copy of the fresh filter ``pf``). The parent only lists ids and writes; the order of
    results never depends on which worker finished first."""
    pages = store.iter_ids(effective_filter(req), chunk=_PAGE)
    setup = worker_pool.store_setup(store.url, req, pf)
    for result in worker_pool.ordered_map(pages, _worker_page, setup, n):
        yield from _unpack(*result)
