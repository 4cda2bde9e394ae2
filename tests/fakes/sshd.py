"""A real OpenSSH server on loopback, as the "remote GPU host" of the remote-training tests.

Not a fake: Debian's ``/usr/sbin/sshd`` (package ``openssh-server``; the Makefile installs it),
started in the foreground on a free 127.0.0.1 port with a config, a host key and an
``authorized_keys`` of its own in a temp dir, running as the current user (root in the dev
container: hence ``PermitRootLogin yes``; ``StrictModes no`` because temp dirs are not 0700 paths
sshd would trust; ``UsePAM no`` so no system login stack is involved). Public-key auth only, and
the ``sftp`` subsystem (in-process, ``internal-sftp``) for uploads and downloads.

    with Sshd(tmp_path) as server:
        host, port, user, identity = server
        ...

or the ``sshd`` pytest fixture (import it into the test module: ``from tests.fakes.sshd import sshd``).
``server.spec`` is ``user@127.0.0.1:port``; ``server.known_hosts_line`` the host key as a
known_hosts entry; ``keygen(path)`` makes another (unauthorized) client key.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")
"""sshd refuses to start without its (compiled-in) privilege-separation dir."""


def available() -> tuple[bool, str]:
    """Whether this machine can run the server (and why not)."""
    if not Path(SSHD).exists():
        return False, f"{SSHD} is missing (apt-get install openssh-server; `make test` does it)"
    if shutil.which("ssh-keygen") is None:
        return False, "ssh-keygen is missing (package openssh-client)"
    return True, ""


def keygen(path: Path, comment: str = "trajforge-test") -> Path:
    """A fresh ed25519 key pair at ``path`` (private) and ``path.pub``; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sshd:
    """One sshd process; a context manager. Iterating gives ``(host, port, user, identity)``."""

    host = "127.0.0.1"

    def __init__(self, root: Path | None = None) -> None:
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="trajforge-sshd-"))
        self.user = getpass.getuser()
        self.port = 0
        self.identity = self.root / "client_key"
        self.host_key = self.root / "ssh_host_ed25519_key"
        self.log = self.root / "sshd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- tuple-like, as the fixture's users unpack it
    def __iter__(self) -> Iterator[object]:
        return iter((self.host, self.port, self.user, str(self.identity)))

    @property
    def spec(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_line(self) -> str:
        key = (self.host_key.with_suffix(".pub")).read_text().split()
        return f"[{self.host}]:{self.port} {key[0]} {key[1]}\n"

    def _config(self) -> str:
        return "\n".join(
            [
                f"Port {self.port}",
                f"ListenAddress {self.host}",
                f"HostKey {self.host_key}",
                f"PidFile {self.root / 'sshd.pid'}",
                f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin yes",
                "StrictModes no",
                "UsePAM no",
                "PrintMotd no",
                "Subsystem sftp internal-sftp",
                # Many channels at once (exec + sftp + the log tail) on one connection.
                "MaxSessions 32",
                "MaxStartups 64",
                "LogLevel VERBOSE",
                "",
            ]
        )

    def start(self, port: int | None = None) -> Sshd:
        """Start it (on ``port``, e.g. to restart it where it was; default: a free one)."""
        ok, why = available()
        if not ok:
            pytest.skip(why)
        if not PRIVSEP_DIR.exists() and os.geteuid() == 0:
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            keygen(self.host_key, "trajforge-test-host")
        if not self.identity.exists():
            keygen(self.identity, "trajforge-test-client")
        shutil.copy(self.identity.with_suffix(".pub"), self.root / "authorized_keys")
        # Bind-then-start can race another process for the port: retry on a new one.
        for _ in range(1 if port else 5):
            self.port = port or _free_port()
            config = self.root / "sshd_config"
            config.write_text(self._config())
            log = self.log.open("ab")
            self._proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            log.close()
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError(f"sshd did not start; its log:\n{self.log.read_text()[-2000:]}")

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Sshd:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    """A running sshd on loopback; unpack as ``host, port, user, identity = sshd``."""
    with Sshd(tmp_path / "sshd") as server:
        yield server


@pytest.fixture(scope="session")
def sshd_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """One sshd for a whole test session (tests that only need *a* host)."""
    with Sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server
