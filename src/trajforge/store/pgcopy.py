"""Bulk inserts into PostgreSQL: binary ``COPY`` into a staging table, then one ``INSERT … SELECT``.

A write's big inserts (texts, LLM calls, provider accesses, steps, text links: thousands of rows per
batch) cost, as ``executemany``, one executor run on the server and one parameter dump in Python
per row. ``COPY … FROM STDIN (FORMAT BINARY)`` streams them in one go, but cannot say
``ON CONFLICT``, and the write path must stay idempotent by ids (a re-sent batch changes nothing,
a concurrent writer may store the same key first). So the rows go into a per-session temporary
table first (no WAL, local buffers) and one ``INSERT … SELECT … ON CONFLICT`` moves them into the
real table, in the key order the write path takes its locks in (``COLLATE "C"``: byte order of
UTF-8 is code point order, the order of Python's ``sorted``), so concurrent writers still never
deadlock.

The staging tables are created once per connection (``ON COMMIT DELETE ROWS``: nothing survives a
transaction, rolled back or not) and emptied by the statement that reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trajforge.store.sqlbase import BULK_COLS


def _cols(table: str, types: Sequence[str]) -> tuple[tuple[str, str], ...]:
    names = [c.strip() for c in BULK_COLS[table].split(",")]
    return tuple(zip(names, types, strict=True))


_T, _I8, _I4, _F8, _B = "text", "int8", "int4", "float8", "bool"

STAGES: dict[str, tuple[tuple[str, str], ...]] = {
    "texts": _cols("texts", [_I8, _T, _B, _T]),
    "trajectory_texts": _cols("trajectory_texts", [_I8, _T, _B]),
    "steps": _cols("steps", [_T, _T, _I4, _I8, _T, _F8, _B, _T, _T]),
    "llm_calls": _cols(
        "llm_calls",
        [_T, _T, _T, _I8, _T, _T, *[_I8] * 6, _T, _T, _F8, _I4, _F8, _T, _T, _F8, *[_I4] * 4, _T],
    ),
    "provider_accesses": _cols("provider_accesses", [_T, _T, _T, _I8, _T, _T, _T, _T, _I8]),
}
"""Per table, the columns a bulk insert writes and their PostgreSQL types (the binary format
carries no type: each value is encoded as its column's type)."""

MIN_ROWS = 64
"""Below this many rows a pipelined ``executemany`` is cheaper: ``COPY`` cannot be pipelined and
costs two round trips (the copy, then the move) whatever the number of rows."""


def stage(table: str) -> str:
    return f"_tf_stage_{table}"


def create_stages_sql() -> list[str]:
    """The statements that create this session's staging tables (idempotent)."""
    return [
        f"CREATE TEMP TABLE IF NOT EXISTS {stage(table)} "
        f"({', '.join(f'{name} {kind}' for name, kind in cols)}) ON COMMIT DELETE ROWS"
        for table, cols in STAGES.items()
    ]


def _converter(kind: str) -> Any:
    """How a Python value becomes what the binary dumper of ``kind`` takes. The records are typed
    but not enforced (an agent may pass a float timestamp or an int temperature), and text-format
    parameters were cast by the server; binary ones are not, so the cast happens here."""
    if kind in (_I8, _I4):
        return lambda v: v if v is None or type(v) is int else int(v)
    if kind == _F8:
        return lambda v: v if v is None or type(v) is float else float(v)
    if kind == _B:
        return lambda v: v if v is None or type(v) is bool else bool(v)

    # PostgreSQL text cannot hold NUL, in any column: replace it rather than fail the batch.
    def text(v: Any) -> Any:
        if v is None:
            return None
        if type(v) is not str:
            v = str(v)
        return v.replace("\x00", "\ufffd") if "\x00" in v else v

    return text


def copy_in(cur: Any, table: str, rows: Sequence[Sequence[Any]]) -> None:
    """Stream ``rows`` (in ``STAGES[table]`` column order) into ``table``'s staging table."""
    cols = STAGES[table]
    convert = [_converter(kind) for _, kind in cols]
    names = ", ".join(name for name, _ in cols)
    with cur.copy(f"COPY {stage(table)} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types([kind for _, kind in cols])
        write_row = copy.write_row
        for row in rows:
            write_row([f(v) for f, v in zip(convert, row, strict=True)])


def move_sql(table: str, order: str, tail: str = "", returning: str = "") -> str:
    """The statement that empties ``table``'s staging table into it, rows sorted by ``order``
    (columns; text ones compared as code points), then ``tail`` (the ``ON CONFLICT`` clause)."""
    names = ", ".join(name for name, _ in STAGES[table])
    kinds = dict(STAGES[table])
    keys = ", ".join(
        f'{c} COLLATE "C"' if kinds[c] == _T else c for c in (k.strip() for k in order.split(","))
    )
    sql = (
        f"WITH s AS (DELETE FROM {stage(table)} RETURNING {names}) "
        f"INSERT INTO {table} ({names}) SELECT {names} FROM s ORDER BY {keys} {tail}"
    )
    return f"{sql} RETURNING {returning}" if returning else sql
