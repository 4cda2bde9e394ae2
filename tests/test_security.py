"""No way in: DNS rebinding (the Host check of a server without a token), the login page's redirect,
and user-given URLs parsed once by the client that uses them. Through the real ASGI app and a real
``trajforge serve`` on a loopback port."""

from __future__ import annotations

import html
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.helpers import TRAJFORGE, free_port, make_trajectory, start_server
from tests.test_api_training import register_model
from trajforge import ollama
from trajforge.capture.transport import LOGGING_ENABLED
from trajforge.errors import InvalidInput
from trajforge.records import WriteBatch
from trajforge.server import create_app
from trajforge.store import Store, TrajectoryFilter

REBIND = "rebind.evil.example:2138"
"""The installed ``trajforge`` command (PYTHONPATH decides which code it runs)."""


def _fill(store: Store, n: int = 3) -> None:
    for i in range(n):
        store.write(WriteBatch.from_trajectory(make_trajectory(start_time=1_700_000_000_000 + i)))


@pytest.fixture
def open_client(store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """A server without a token, reached on its loopback name."""
    monkeypatch.delenv("TRAJFORGE_ALLOWED_HOSTS", raising=False)
    _fill(store)
    with TestClient(create_app(store), base_url="http://127.0.0.1:2138") as c:
        yield c


def _rebound(**headers: str) -> dict[str, str]:
    # What a page on rebind.evil.example sends once its name resolves to 127.0.0.1: its own Host,
    # its own Origin (so the old same-origin check saw Origin == Host), no cross-site fetch mark.
    return {"Host": REBIND, "Origin": f"http://{REBIND}", "Sec-Fetch-Site": "same-origin", **headers}


def test_a_rebound_name_cannot_delete_or_reconfigure(open_client: TestClient, store: Store) -> None:
    r = open_client.request("DELETE", "/api/trajectories", json={"all": True}, headers=_rebound())
    assert r.status_code == 421, r.text
    err = r.json()["error"]
    assert err["field"] == "Host" and REBIND in err["message"] and "--allow-host" in err["message"]
    assert store.count(TrajectoryFilter()) == 3
    r = open_client.put("/api/trajectories/config", json={"enabled": False}, headers=_rebound())
    assert r.status_code == 421
    assert store.get_setting(LOGGING_ENABLED, True) is True


@pytest.mark.parametrize(
    "path", ["/api/trajectories", "/api/training/trajectories", "/api/trajectories/export", "/trajectories"]
)
def test_a_rebound_name_cannot_read_either(open_client: TestClient, path: str) -> None:
    method = "POST" if path.endswith("export") else "GET"
    r = open_client.request(method, path, json={} if method == "POST" else None, headers=_rebound())
    assert r.status_code == 421 and r.json()["error"]["code"] == "misdirected"
    assert b"Customer asks" not in r.content


@pytest.mark.parametrize(
    "host", ["127.0.0.1:2138", "localhost:2138", "[::1]:2138", "127.0.0.1", "LOCALHOST:1"]
)
def test_loopback_names_are_answered(open_client: TestClient, host: str) -> None:
    r = open_client.get("/api/trajectories", headers={"Host": host})
    assert r.status_code == 200 and r.json()["total"] == 3
    origin = {"Host": host, "Origin": f"http://{host}"}
    assert (
        open_client.put("/api/trajectories/config", json={"enabled": True}, headers=origin).status_code == 200
    )


@pytest.mark.parametrize(
    "host",
    [
        "testserver",
        "127.0.0.1.nip.io:2138",
        "localhost.evil.example",
        "localhost@evil.example",
        "127.0.0.1:2138@evil.example",
        "::1",
        "[::1]evil.example",
        "127.0.0.1:notaport",
        "127.0.0.1:2138/x",
        "",
    ],
)
def test_other_names_are_refused(open_client: TestClient, host: str) -> None:
    r = open_client.get("/api/trajectories", headers={"Host": host})
    assert r.status_code == 421, (host, r.text)


def test_allowed_names_and_the_token(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    _fill(store)
    with TestClient(create_app(store, allowed_hosts=["proxy.example"]), base_url="http://proxy.example") as c:
        assert c.get("/api/trajectories").status_code == 200
        for name in ("proxy.example:8443", "Proxy.Example"):  # a bare name allows any port
            assert c.get("/api/trajectories", headers={"Host": name}).status_code == 200
        assert c.get("/api/trajectories", headers={"Host": REBIND}).status_code == 421
    monkeypatch.setenv("TRAJFORGE_ALLOWED_HOSTS", " other.example , proxy.example:81")
    with TestClient(create_app(store), base_url="http://other.example") as c:
        assert c.get("/api/trajectories").status_code == 200
        assert c.get("/api/trajectories", headers={"Host": "proxy.example:81"}).status_code == 200
        assert c.get("/api/trajectories", headers={"Host": "proxy.example:82"}).status_code == 421
    # With a token the token guards, whatever the name: no token, no answer; the token, an answer.
    with TestClient(create_app(store, token="s3cret"), base_url=f"http://{REBIND}") as c:
        assert c.get("/api/trajectories").status_code == 401
        r = c.get("/api/trajectories", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.json()["total"] == 3


def _serve(db: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k != "TRAJFORGE_API_TOKEN"}
    proc = start_server(port, db, db.with_suffix(".log"), "--no-jobs", *args, env=env)
    return proc, f"http://127.0.0.1:{port}"


def test_serve_refuses_other_hosts_unless_allowed(tmp_path: Path) -> None:
    proc, url = _serve(
        tmp_path / "s.db", "--allow-host", "flag.example", env={"TRAJFORGE_ALLOWED_HOSTS": "env.example"}
    )
    try:
        # A real uvicorn, real HTTP: the Host header is the one the client sent.
        r = httpx.request("DELETE", f"{url}/api/trajectories", json={"all": True}, headers=_rebound())
        assert r.status_code == 421 and r.json()["error"]["field"] == "Host"
        assert httpx.get(f"{url}/api/trajectories").status_code == 200
        port = url.rsplit(":", 1)[1]
        for name in ("flag.example", "env.example", f"localhost:{port}"):
            assert httpx.get(f"{url}/api/trajectories", headers={"Host": name}).status_code == 200, name
    finally:
        proc.terminate()
        proc.wait(30)


def test_serve_names_a_bad_allow_host(tmp_path: Path) -> None:
    r = subprocess.run(
        [TRAJFORGE, "serve", "--db", str(tmp_path / "s.db"), "--allow-host", "http://x/"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "--allow-host" in r.stderr


# --- the login page's redirect ----------------------------------------------------------------------


@pytest.fixture
def login(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store, token="s3cret"), base_url="http://127.0.0.1") as c:
        yield c


@pytest.mark.parametrize(
    "target",
    [
        "/\\evil.example/after-login",
        "/\\/evil.example",
        "//evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        "/\r\n/evil.example",
        "/\x00/evil.example",
        "https://evil.example/",
        "javascript:alert(1)",
        "evil.example",
        "",
        " /trajectories",
    ],
)
def test_only_local_paths_are_a_next_page(login: TestClient, target: str) -> None:
    page = login.get("/login", params={"next": target}).text
    assert 'data-next="/trajectories"' in page and "evil.example" not in page


@pytest.mark.parametrize("target", ["/fine-tuning", "/trajectories/t-1?x=1#top", "/a/%2F%2Fb", "/a//b"])
def test_local_paths_are_kept(login: TestClient, target: str) -> None:
    page = login.get("/login", params={"next": target}).text
    assert f'data-next="{html.escape(target)}"' in page


def test_the_reported_redirect_is_refused(login: TestClient) -> None:
    # The URL, byte for byte: %5C is the backslash.
    page = login.get("/login?next=/%5Cevil.example/after-login").text
    assert 'data-next="/trajectories"' in page and "evil.example" not in page


# --- user-given URLs: one parser, the client's --------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1]evil.com",
        "http://[::1]:11434evil.com",
        "http://127.0.0.1:11434\\@evil.com",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:0",
        "http://127.0.0.1:11434/?x=1",
        "http://[::1",
    ],
)
def test_urls_the_client_reads_differently_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput) as err:
        ollama.check_url(url)
    assert err.value.field == "ollamaUrl"


def test_the_checked_url_is_the_one_the_client_uses() -> None:
    # Rebuilt from httpx's parse: what the guard saw is what is sent.
    assert ollama.check_url("http://127.0.0.1:11434/../x/") == "http://127.0.0.1:11434/x"
    assert httpx.URL(ollama.check_url("http://[::1]:11434")).host == "::1"


def test_import_with_an_unparsable_ollama_url_is_a_422(store: Store, tmp_path: Path) -> None:
    model = register_model(store, tmp_path / "m", "bundled:smollm2-135m")
    with TestClient(create_app(store), base_url="http://127.0.0.1") as c:
        r = c.post(
            f"/api/training/models/{model.id}/import-ollama",
            json={"modelName": "agent", "baseModel": "smollm2:135m", "ollamaUrl": "http://[::1]evil.com"},
        )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "ollamaUrl"
