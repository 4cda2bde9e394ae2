"""A build's files: the JSONL writers of each kind of format (one row per example, pairs, ART
groups), the seeded train/eval split, and :class:`Files`, which writes the split and per-task files
and their parquet twins."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from trajforge.datasets.curation import Outcome, Selection
from trajforge.datasets.request import BuildRequest
from trajforge.datasets.rows import CHECK_EVERY, DUMP, PAIR_CONVERTERS, checked, dedup_key, line
from trajforge.formats import art
from trajforge.formats.examples import Example
from trajforge.paths import hashed_name

_PARQUET_CHUNK_ROWS = 5000


class Files:
    """Open JSONL files of one build: the combined split files and, per task, its own.

    The combined files also get parquet twins, converted chunk by chunk on a background thread
    while the build goes on (Arrow parses JSON without the GIL, so this uses the second core);
    chunks are concatenated with permissive schema promotion, in order, so the result does not
    depend on timing.
    """

    def __init__(self, root: Path, per_task: bool) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.root = root
        self.per_task = per_task
        self.handles: dict[str, BinaryIO] = {}
        self._buffers: dict[str, list[bytes]] = {}
        self.hashes: dict[str, Any] = {}
        self.rows: dict[str, int] = defaultdict(int)
        self.task_dirs: dict[str, str] = {}
        self._pending: dict[str, list[bytes]] = defaultdict(list)
        self._tables: dict[str, list[Any]] = defaultdict(list)
        self._writers: dict[str, Any] = {}
        self._mixed: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trajforge-parquet")

    def write(self, split: str, task: str, line: bytes) -> None:
        rel = f"{split}.jsonl"
        self._put(rel, line)
        pending = self._pending[rel]
        pending.append(line)
        if len(pending) >= _PARQUET_CHUNK_ROWS:
            self._flush(rel)
        if self.per_task:
            self._put(f"tasks/{self.task_dir(task)}/{split}.jsonl", line)

    def task_dir(self, task: str) -> str:
        """A folder name for a task: its characters made safe, plus a hash so two tasks never
        share a folder (task names come from user data; they are never a path as given)."""
        name = self.task_dirs.get(task)
        if name is None:
            name = self.task_dirs[task] = hashed_name(task)
        return name

    def _put(self, rel: str, line: bytes) -> None:
        # Lines are gathered and written 512 at a time: one write call per line costs more than
        # the copy itself.
        buf = self._buffers.get(rel)
        if buf is None:
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handles[rel] = open(path, "wb")  # noqa: SIM115 - closed in close()
            self.hashes[rel] = hashlib.sha256()
            buf = self._buffers[rel] = []
        buf.append(line)
        self.rows[rel] += 1
        if len(buf) >= 512:
            self._drain(rel)

    def _drain(self, rel: str) -> None:
        block = b"".join(self._buffers[rel])
        self._buffers[rel].clear()
        # Hashed on the way out (the manifest needs every file's sha256): no second read.
        self.hashes[rel].update(block)
        self.handles[rel].write(block)

    def _flush(self, rel: str) -> None:
        chunk = b"".join(self._pending.pop(rel, []))
        if chunk:
            self._tables[rel].append(self._pool.submit(self._convert, rel, chunk))

    def _convert(self, rel: str, chunk: bytes) -> Any:
        """Parse a chunk and, while every chunk has the first one's schema, append it to the
        parquet file as a row group (runs on the single background thread, in chunk order)."""
        import pyarrow.parquet as pq

        table = _arrow_table(chunk)
        writer = self._writers.get(rel)
        if writer is None and rel not in self._mixed:
            writer = self._writers[rel] = pq.ParquetWriter(
                self.root / (rel.removesuffix(".jsonl") + ".parquet"), table.schema, compression="zstd"
            )
        if writer is not None:
            if table.schema.equals(writer.schema):
                writer.write_table(table)
            else:  # rows grew a field (tool calls, say): rewrite at the end from all chunks, promoted
                writer.close()
                del self._writers[rel]
                self._mixed.add(rel)
        return table

    def close(self) -> None:
        for rel, fh in self.handles.items():
            if not fh.closed:
                self._drain(rel)
                fh.close()

    def write_parquet(self) -> list[str]:
        """Finish the parquet twins of the combined files; returns their relative paths."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        for rel in list(self._pending):
            self._flush(rel)
        written = []
        try:
            for rel, futures in sorted(self._tables.items()):
                tables = [f.result() for f in futures]
                out = rel.removesuffix(".jsonl") + ".parquet"
                if rel in self._mixed:
                    table = pa.concat_tables(tables, promote_options="permissive")
                    pq.write_table(table, self.root / out, compression="zstd")
                else:
                    self._writers.pop(rel).close()
                written.append(out)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            for w in self._writers.values():
                w.close()
        return written

    def abort(self) -> None:
        for fh in self.handles.values():
            fh.close()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _arrow_table(chunk: bytes) -> Any:
    import pyarrow as pa
    import pyarrow.json as pj

    # One block, one thread: measured twice as fast as Arrow's threaded reader on chunks this size.
    options = pj.ReadOptions(block_size=max(1 << 20, len(chunk) + 1), use_threads=False)
    return pj.read_json(pa.BufferReader(chunk), read_options=options)


def _is_eval(seed: int, key: str, fraction: float) -> bool:
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class _Splitter:
    """``train`` or ``eval`` for a group key, decided by a seeded hash and remembered (groups repeat)."""

    def __init__(self, seed: int, fraction: float) -> None:
        self.seed, self.fraction = seed, fraction
        self.known: dict[str, str] = {}

    def __call__(self, key: str) -> str:
        split = self.known.get(key)
        if split is None:
            split = self.known[key] = "eval" if _is_eval(self.seed, key, self.fraction) else "train"
        return split


def write_examples(req: BuildRequest, outcomes: Iterator[Outcome], files: Files, sel: Selection) -> None:
    seen: set[bytes] = set()
    split_of = _Splitter(req.seed, req.eval_fraction)
    n = 0
    for out in outcomes:
        lines = out.lines
        if lines is None:
            lines = [
                line(req.format, ex, check=(n + i) % CHECK_EVERY == 0) for i, ex in enumerate(out.examples)
            ]
            n += len(lines)
        for task, group, text, key in lines:
            if req.dedup:
                if key in seen:
                    sel.duplicates += 1
                    continue
                seen.add(key)
            split = split_of(group)
            files.write(split, task, text)
            sel.tasks[task][split] += 1


def write_pairs(req: BuildRequest, outcomes: Iterator[Outcome], files: Files, sel: Selection) -> None:
    """Preference pairs: within a group, the best completion against the worst, the second best
    against the second worst, … while their rewards differ by at least the margin."""
    groups: dict[tuple[str, str], list[Example]] = defaultdict(list)
    seen: set[bytes] = set()
    split_of = _Splitter(req.seed, req.eval_fraction)
    for out in outcomes:
        for ex in out.examples:
            if ex.reward is None:
                continue
            if req.dedup:
                key = dedup_key(ex)
                if key in seen:
                    sel.duplicates += 1
                    continue
                seen.add(key)
            prompt_key = hashlib.blake2b(orjson.dumps(ex.prompt), digest_size=16).hexdigest()
            by = prompt_key if req.pair_by == "prompt" or ex.scenario_id is None else ex.scenario_id
            groups[(ex.task, by)].append(ex)
    convert = PAIR_CONVERTERS[req.format]
    for task, by in sorted(groups):
        members = sorted(groups[(task, by)], key=lambda e: (-(e.reward or 0.0), e.trajectory_id, e.call_id))
        for i in range(len(members) // 2):
            chosen, rejected = members[i], members[-1 - i]
            if (chosen.reward or 0.0) - (rejected.reward or 0.0) < req.preference_margin:
                break
            if chosen.completion == rejected.completion:
                continue
            row = checked(req.format, convert(chosen, rejected))
            split = split_of(chosen.scenario_id or by)
            files.write(split, task, orjson.dumps(row, option=DUMP))
            sel.tasks[task][split] += 1


def write_art(req: BuildRequest, outcomes: Iterator[Outcome], files: Files, sel: Selection) -> None:
    scenarios: dict[tuple[str, str], list[list[Example]]] = defaultdict(list)
    split_of = _Splitter(req.seed, req.eval_fraction)
    for out in outcomes:
        by_task: dict[str, list[Example]] = defaultdict(list)
        for ex in out.examples:
            by_task[ex.task].append(ex)
        for task, exs in by_task.items():
            scenarios[(task, exs[0].group)].append(exs)
    for task, scenario in sorted(scenarios):
        members = sorted(scenarios[(task, scenario)], key=lambda exs: exs[0].trajectory_id)
        row = checked("art", art.to_group(task, scenario, members))
        split = split_of(scenario)
        files.write(split, task, orjson.dumps(row, option=DUMP))
        sel.tasks[task][split] += 1
