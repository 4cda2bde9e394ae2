"""Shared fixtures: real SQLite files and the real PostgreSQL at 127.0.0.1:5432 (database ``test``).

Every PostgreSQL test gets a schema of its own, dropped afterwards, so runs never see each other.
Without a reachable PostgreSQL the postgres variants are skipped locally, but fail under CI.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from trajforge.store import Store, open_store

PG_BASE = os.environ.get("TRAJFORGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_available() -> bool:
    try:
        with psycopg.connect(PG_BASE, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


PG_OK = _pg_available()


def pg_url() -> str:
    if not PG_OK:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_BASE} (CI must start it)")
        pytest.skip(f"PostgreSQL is not reachable at {PG_BASE}")
    return f"{PG_BASE}?schema=tft_{uuid.uuid4().hex[:12]}"


def drop_pg_schema(url: str) -> None:
    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own state dir, so nothing touches ~/.trajforge."""
    monkeypatch.setenv("TRAJFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TRAJFORGE_DATABASE_URL", raising=False)
    monkeypatch.delenv("TRAJFORGE_DISABLE_LOGGING", raising=False)
    monkeypatch.delenv("TRAJFORGE_API_TOKEN", raising=False)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty store, on each backend."""
    if request.param == "sqlite":
        yield str(tmp_path / "store.db")
        return
    url = pg_url()
    yield url
    drop_pg_schema(url)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with the SmolLM2 tokenizer, built once per test worker."""
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def task_server() -> Iterator[object]:
    """The deterministic task model (``tests.fakes.task_lm``) behind an OpenAI-compatible server
    on loopback."""
    from tests.fakes import task_lm
    from tests.fakes.openai_server import FakeOpenAI

    with FakeOpenAI(task_lm.answer) as server:
        yield server
