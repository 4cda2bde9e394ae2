"""One SSH connection to a remote training host (paramiko): run commands, stream one, move files.

Host keys: a host seen for the first time is accepted and remembered in trajforge's own
``known_hosts`` (``<state dir>/ssh/known_hosts``, "accept-new"), so a later change of its key is
refused (a man in the middle, or a re-imaged box: remove its line to accept the new key). The
user's ``~/.ssh/known_hosts`` is read too, never written. Authentication: the ``identity`` key when
one is given (only it, so a wrong key is an error rather than a silent fallback), otherwise the
user's ssh agent and default keys (``~/.ssh/id_*``), as ``ssh`` would.

Errors name the option the user can fix: ``host`` (unreachable, unknown name, changed host key),
``identity`` (refused or unreadable key).
"""

from __future__ import annotations

import re
import shlex
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trajforge import settings
from trajforge.errors import InvalidInput

_HOST = re.compile(
    r"^(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]{0,63})@"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}))"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)


@dataclass(frozen=True)
class Host:
    """Where a remote job trains: ``user@hostname:port``, with the key to log in with (None: the
    user's agent and default keys)."""

    user: str
    hostname: str
    port: int = 22
    identity: str | None = None

    @classmethod
    def parse(cls, spec: str, identity: str | None = None) -> Host:
        """``user@host[:port]`` (an IPv6 address in brackets); a bad spec raises naming ``host``."""
        m = _HOST.match(spec.strip()) if isinstance(spec, str) else None
        if m is None:
            raise InvalidInput(f"host must be user@host[:port], got {spec!r}", "host")
        port = int(m["port"] or 22)
        if not 1 <= port <= 65535:
            raise InvalidInput(f"host: port must be 1-65535, got {port}", "host")
        return cls(m["user"], m["host"].strip("[]"), port, identity)

    def __str__(self) -> str:
        name = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{self.user}@{name}" + (f":{self.port}" if self.port != 22 else "")


def known_hosts_file() -> Path:
    path = settings.home() / "ssh" / "known_hosts"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    return path


def check_identity(identity: str | None) -> None:
    """Refuse (offline, at submit) an identity file that is not there or not readable."""
    if identity is None:
        return
    path = Path(identity).expanduser()
    if not path.is_file():
        raise InvalidInput(f"identity: no private key file at {identity}", "identity")
    try:
        path.open("rb").close()
    except OSError as exc:
        raise InvalidInput(f"identity: cannot read {identity}: {exc.strerror}", "identity") from None


def quote_path(path: str) -> str:
    """A remote path for a shell command: quoted, except a leading ``~/`` (the shell expands it)."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


class RemoteCommandError(RuntimeError):
    def __init__(self, command: str, status: int, output: str) -> None:
        super().__init__(f"`{command}` exited {status}: {output.strip()[-2000:]}")
        self.status = status
        self.output = output


class Connection:
    """An open SSH connection (a context manager) with an SFTP session beside it."""

    def __init__(self, host: Host, timeout: float = 20.0) -> None:
        import paramiko

        self.host = host
        client = paramiko.SSHClient()
        try:
            client.load_system_host_keys()
        except OSError:
            pass  # an unreadable ~/.ssh/known_hosts: ours is enough
        # load_host_keys also makes it the file AutoAddPolicy saves new hosts to (accept-new).
        client.load_host_keys(str(known_hosts_file()))
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        keys: dict[str, Any] = (
            {
                "key_filename": str(Path(host.identity).expanduser()),
                "allow_agent": False,
                "look_for_keys": False,
            }
            if host.identity
            else {"allow_agent": True, "look_for_keys": True}
        )
        try:
            client.connect(
                host.hostname,
                port=host.port,
                username=host.user,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                **keys,
            )
        except paramiko.BadHostKeyException:
            client.close()
            raise InvalidInput(
                f"host: the host key of {host} changed since it was first seen; if that is expected "
                f"(a re-installed host), remove its line from {known_hosts_file()}",
                "host",
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            which = f"the key {host.identity}" if host.identity else "the ssh agent's and default keys"
            raise InvalidInput(
                f"identity: {host} refused {which} ({exc}); give a key it accepts with identity",
                "identity",
            ) from None
        except paramiko.SSHException as exc:
            client.close()
            if host.identity and "key" in str(exc).lower():
                raise InvalidInput(f"identity: cannot use {host.identity}: {exc}", "identity") from None
            raise InvalidInput(f"host: SSH to {host} failed: {exc}", "host") from None
        except socket.gaierror as exc:
            client.close()
            raise InvalidInput(f"host: unknown host {host.hostname!r} ({exc.strerror})", "host") from None
        except (OSError, EOFError) as exc:
            client.close()
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise InvalidInput(f"host: cannot connect to {host}: {why}", "host") from None
        self.client = client
        self.sftp = client.open_sftp()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sftp.close()
        finally:
            self.client.close()

    # --- commands ---------------------------------------------------------------------------------

    def run(self, command: str, *, check: bool = True, timeout: float | None = 600.0) -> tuple[int, str]:
        """Run ``command`` (a ``sh`` line) to its end; returns its status and output (stdout and
        stderr merged). ``check``: a non-zero status raises :class:`RemoteCommandError`."""
        channel = self.client.get_transport().open_session()
        channel.set_combine_stderr(True)
        channel.exec_command(command)
        chunks: list[bytes] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if channel.recv_ready():
                chunks.append(channel.recv(65536))
                continue
            if channel.exit_status_ready() and not channel.recv_ready():
                break
            if deadline is not None and time.monotonic() > deadline:
                channel.close()
                raise RemoteCommandError(command, -1, f"timed out after {timeout} s")
            time.sleep(0.01)
        while channel.recv_ready():
            chunks.append(channel.recv(65536))
        status = channel.recv_exit_status()
        channel.close()
        output = b"".join(chunks).decode(errors="replace")
        if check and status != 0:
            raise RemoteCommandError(command, status, output)
        return status, output

    def stream(
        self,
        command: str,
        on_line: Callable[[str], None],
        should_stop: Callable[[], bool],
        poll_s: float = 0.1,
    ) -> tuple[int | None, bool]:
        """Run ``command``, calling ``on_line`` with each line of its stdout as it comes. Returns
        ``(status, stopped)``: ``stopped`` when ``should_stop()`` turned true first (the command
        is then left running: stopping it is the caller's business); stdin stays open, so the
        command sees EOF only when this connection goes away."""
        channel = self.client.get_transport().open_session()
        channel.exec_command(command)
        buffer = b""
        while True:
            if should_stop():
                self._keep = channel  # closed with the connection: its stdin EOF stops the entry
                return None, True
            got = False
            while channel.recv_ready():
                buffer += channel.recv(65536)
                got = True
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                on_line(line.decode(errors="replace"))
            if channel.exit_status_ready() and not channel.recv_ready():
                break
            if not got:
                time.sleep(poll_s)
        if buffer:
            on_line(buffer.decode(errors="replace"))
        status = channel.recv_exit_status()
        channel.close()
        return status, False

    # --- files ------------------------------------------------------------------------------------

    def put(self, local: Path, remote: str) -> None:
        self.sftp.put(str(local), remote)

    def get(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        self.sftp.get(remote, str(local))

    def exists(self, remote: str) -> bool:
        try:
            self.sftp.stat(remote)
            return True
        except OSError:
            return False

    def walk(self, remote: str) -> Iterator[str]:
        """Relative paths of the files under ``remote`` (none when it is not there)."""
        import stat

        try:
            entries = self.sftp.listdir_attr(remote)
        except OSError:
            return
        for entry in entries:
            path = f"{remote}/{entry.filename}"
            if stat.S_ISDIR(entry.st_mode or 0):
                for rel in self.walk(path):
                    yield f"{entry.filename}/{rel}"
            else:
                yield entry.filename
