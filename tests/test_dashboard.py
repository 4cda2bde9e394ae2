"""The dashboard in a real browser: Playwright driving Debian's Chromium against a real uvicorn
server on a loopback port (with its job runner), a fake task model and a fake Ollama on loopback.

Screenshots of every view go to ``build/screenshots/`` (a test artifact; the README shows them).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import task_lm
from tests.fakes.ollama_server import FakeOllama, llama_info
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import free_port
from trajforge.records import LlmCall, ProviderAccess, Step, Trajectory, WriteBatch
from trajforge.store import Store, TrajectoryFilter, open_store

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=1">'

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("browser")]


def _need_browser() -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing (make test installs it: apt-get install -y chromium)")
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")


class LiveServer:
    """``create_app`` under a real uvicorn on a loopback port, in a thread of this process."""

    def __init__(self, store: Store, token: str | None = None, run_jobs: bool = True) -> None:
        import uvicorn

        from trajforge.server import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(store, token=token, run_jobs=run_jobs)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, errors


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _hostile(store: Store) -> str:
    """A trajectory whose every user-controlled field carries script payloads."""
    t = Trajectory(
        agent_id=f"agent{XSS}",
        source=f"web{XSS}",
        status="completed",
        scenario_id=f"sc{XSS}",
        metadata={"note": XSS},
        total_reward=0.5,
    )
    step = Step(step_number=0)
    step.provider_accesses.append(ProviderAccess(provider_name=f"crm{XSS}", data={"x": XSS}, purpose=XSS))
    step.llm_calls.append(
        LlmCall(
            model=f"m{XSS}", system_prompt=XSS, user_prompt="hello " + XSS, response=XSS * 40, reasoning=XSS
        )
    )
    t.steps.append(step)
    store.write(WriteBatch.from_trajectory(t))
    return t.id


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(str(tmp_path / "dash.db"))
    task_lm.fill_store(s, 60)
    yield s
    s.close()


def test_trajectories_view_list_filter_search_paginate_detail_export(page: Any, store: Store) -> None:
    hostile = _hostile(store)
    with LiveServer(store, run_jobs=False) as srv:
        page.goto(srv.url + "/")
        assert page.url.endswith("/trajectories")
        rows = page.locator("#trajectories tbody tr")
        assert rows.count() == 50
        assert "61 matching" in page.locator("#total").inner_text()
        _shot(page, "trajectories")
        # Pagination keeps the filter in the URL.
        page.select_option("#f-status", "completed")
        page.click("#filter-form button[type=submit]")
        page.click("#next")
        assert "status=completed" in page.url and "page=2" in page.url
        assert rows.count() == 11 and page.locator("#page-info").inner_text() == "page 2 of 2"
        # Full-text search; a malformed query is a message, not a crash.
        page.fill("#f-search", "zzznomatch")
        page.click("#filter-form button[type=submit]")
        assert "0 matching" in page.locator("#total").inner_text()
        page.fill("#f-search", '"unbalanced')
        page.click("#filter-form button[type=submit]")
        assert "double quote" in page.locator(".error").inner_text()
        # The hostile trajectory: shown as text, nothing executes.
        page.goto(srv.url + "/trajectories")
        assert XSS in page.locator(f'tr[data-id="{hostile}"]').inner_text()
        page.click(f'tr[data-id="{hostile}"] a')
        assert page.url.endswith(f"/trajectories/{hostile}")
        assert page.locator(".card.call").count() == 1 and XSS in page.locator(".card.call").inner_text()
        page.locator(".card.call details summary").first.click()  # long text is collapsed
        _shot(page, "trajectory-detail")
        assert page.evaluate("window.__xss") is None
        # Export of the current filter downloads a file.
        page.goto(srv.url + "/trajectories?status=completed")
        with page.expect_download() as dl:
            page.click('button.export[data-format="json"]')
        data = json.loads(Path(dl.value.path()).read_text())
        assert len(data) == 61 and all(t["status"] == "completed" for t in data)
        with page.expect_download() as dl:
            page.click('button.export[data-format="csv"]')
        assert dl.value.suggested_filename.endswith(".csv")
        # Bulk clear asks first; dismissing keeps everything.
        page.once("dialog", lambda d: d.dismiss())
        page.click("#clear-all")
        assert store.count(__import__("trajforge").TrajectoryFilter()) == 61
        assert page.evaluate("window.__xss") is None


def test_fine_tuning_view_build_start_watch_cancel(page: Any, store: Store, task_server: FakeOpenAI) -> None:
    from playwright.sync_api import expect

    with LiveServer(store) as srv:
        page.goto(srv.url + "/fine-tuning")
        assert page.locator("#backend option[value=mlx]").is_disabled()
        assert "macOS" in page.locator(".reasons").inner_text()
        page.select_option("#build-form select[name=format]", "prompt_completion")
        page.fill("#build-form input[name=name]", "support-prompts")
        page.click("#build-form button[type=submit]")
        page.wait_for_selector("#datasets tbody tr[data-id]")
        [ds] = store.list_datasets()
        assert ds.name == "support-prompts" and ds.format == "prompt_completion"
        # Start a native job and watch it complete through live updates.
        page.select_option("#job-form select[name=datasetId]", ds.id)
        page.fill("#job-form input[name=model]", task_lm.MODEL)
        page.fill("#job-form input[name=baseUrl]", task_server.base_url)
        page.fill("#job-form input[name=iterations]", "2")
        page.click("#job-form button[type=submit]")
        # The row turns completed from the event stream (progress bar, phase, message on the way),
        # then the page reloads to show what the job made: the prompt artifact.
        page.wait_for_selector('#jobs tr[data-status="completed"]', timeout=90_000)
        page.wait_for_selector("#prompts tbody tr[data-task]", timeout=10_000)
        _shot(page, "fine-tuning")
        # A slow job, cancelled from the page.
        task_server.answer = task_lm.slow(task_lm.answer, 0.5)
        page.select_option("#job-form select[name=datasetId]", ds.id)
        page.fill("#job-form input[name=iterations]", "50")
        page.click("#job-form button[type=submit]")
        page.wait_for_selector('#jobs tr[data-status="running"] button.cancel', timeout=60_000)
        page.click('#jobs tr[data-status="running"] button.cancel')
        page.wait_for_selector('#jobs tr[data-status="cancelled"]', timeout=60_000)
        page.locator('#jobs tr[data-status="cancelled"] details.log summary').first.click()
        expect(page.locator("#jobs details.log[open] pre")).not_to_be_empty()  # the log tail arrived
        # Auto-training settings save.
        page.fill("#auto-form input[name=threshold]", "7")
        page.click("#auto-form button[type=submit]")
        page.wait_for_selector("#flash:not([hidden])")
        assert json.loads(json.dumps(__import__("trajforge").autotrain.get_config(store)))["threshold"] == 7


def test_models_import_to_ollama_and_activate(
    page: Any, store: Store, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from trajforge import datasets
    from trajforge.records import Job
    from trajforge.train import lora

    ds = datasets.build(store, datasets.BuildRequest(format="sft", eval_fraction=0.0), root=tmp_path / "ds")
    job = Job(
        kind="lora",
        backend="cpu",
        request={"model": f"local:{tiny_model_dir}", "iterations": 1},
        dataset_id=ds.id,
    )
    model_id = lora.run(store, job, lambda *a: None, tmp_path / "home")["modelId"]
    c = json.loads((tiny_model_dir / "config.json").read_text())
    info = llama_info(c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"])
    with FakeOllama({"tiny:latest": info}) as ollama, LiveServer(store, run_jobs=False) as srv:
        page.goto(srv.url + "/fine-tuning")
        form = page.locator(f'form.import-form[data-model="{model_id}"]')
        form.locator("input[name=modelName]").fill("support-agent")
        form.locator("input[name=baseModel]").fill("tiny:latest")
        form.locator("input[name=ollamaUrl]").fill(ollama.url)
        form.locator("button").click()
        page.wait_for_selector("#flash:not([hidden])")
        assert "support-agent" in page.locator("#flash").inner_text()
        assert "support-agent" in ollama.created
        page.wait_for_load_state("load")
        page.wait_for_selector(
            f'form.activate-form[data-model="{model_id}"] input[value="ollama/support-agent"]'
        )
        page.locator(f'form.activate-form[data-model="{model_id}"] button').click()
        page.wait_for_selector(".active-flag")
        _shot(page, "models")
        active = store.active_model()
        assert active is not None and active.provider_model == "ollama/support-agent"
        # A non-loopback URL is refused with the field named.
        form = page.locator(f'form.import-form[data-model="{model_id}"]')
        form.locator("input[name=baseModel]").fill("tiny:latest")
        form.locator("input[name=ollamaUrl]").fill("http://10.0.0.1:11434")
        form.locator("button").click()
        page.wait_for_selector("#flash.error")
        assert "ollamaUrl" in page.locator("#flash").inner_text()


def test_the_job_form_starts_grpo_from_a_registered_sft_model(
    page: Any, store: Store, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from trajforge import datasets
    from trajforge.records import Job
    from trajforge.train import lora

    ds = datasets.build(store, datasets.BuildRequest(format="sft", eval_fraction=0.0), root=tmp_path / "ds")
    sft = Job(
        kind="lora",
        backend="cpu",
        request={"model": f"local:{tiny_model_dir}", "iterations": 1},
        dataset_id=ds.id,
    )
    parent = lora.run(store, sft, lambda *a: None, tmp_path / "home")["modelId"]
    with LiveServer(store, run_jobs=False) as srv:
        page.goto(srv.url + "/fine-tuning")
        assert page.locator("#job-form select[name=method]").is_hidden()  # native: no LoRA method
        page.select_option("#backend", "cpu")
        page.select_option("#job-form select[name=datasetId]", ds.id)
        page.fill("#job-form input[name=model]", f"local:{tiny_model_dir}")
        page.select_option("#job-form select[name=method]", "grpo")
        page.fill("#job-form input[name=reward]", "action_match")
        page.fill("#job-form input[name=numGenerations]", "2")
        page.select_option("#job-form select[name=fromModel]", parent)
        page.fill("#job-form input[name=iterations]", "1")
        page.click("#job-form button[type=submit]")
        page.wait_for_selector("#flash:not([hidden])")
        [job] = [j for j in store.list_jobs() if j.id != sft.id]
        assert job.backend == "cpu" and job.dataset_id == ds.id
        assert {k: job.request[k] for k in ("method", "reward", "numGenerations", "fromModel")} == {
            "method": "grpo",
            "reward": "action_match",
            "numGenerations": 2,
            "fromModel": parent,
        }


def test_import_form_defaults_a_known_base(page: Any, store: Store, tmp_path: Path) -> None:
    from tests.test_api_training import register_model, tiny_ollama_info

    model = register_model(store, tmp_path / "m", "bundled:smollm2-135m")
    with FakeOllama({"smollm2:135m": tiny_ollama_info()}) as ollama, LiveServer(store, run_jobs=False) as srv:
        page.goto(srv.url + "/fine-tuning")
        form = page.locator(f'form.import-form[data-model="{model.id}"]')
        base = form.locator("input[name=baseModel]")
        assert base.get_attribute("placeholder") == "smollm2:135m" and base.get_attribute("required") is None
        form.locator("input[name=modelName]").fill("from-default")
        form.locator("input[name=ollamaUrl]").fill(ollama.url)
        form.locator("button").click()
        page.wait_for_selector("#flash:not([hidden])")
        assert "from-default" in page.locator("#flash").inner_text()
        assert ollama.created["from-default"]["from"] == "smollm2:135m"


def test_token_mode_asks_once_and_refuses_cross_site_writes(page: Any, store: Store) -> None:
    import httpx

    with LiveServer(store, token="s3cret", run_jobs=False) as srv:
        page.goto(srv.url + "/trajectories")
        assert "/login" in page.url
        page.fill("#token", "wrong")
        page.click("#login-form button")
        page.wait_for_selector("#flash.error")
        page.fill("#token", "s3cret")
        page.click("#login-form button")
        page.wait_for_url("**/trajectories")
        assert page.locator("#trajectories tbody tr").count() == 50
        with page.expect_download():
            page.click('button.export[data-format="zip"]')  # an API call with the bearer header
        _shot(page, "login-done")
        # The session cookie only reads: writes need the bearer header, and other origins are refused.
        cookie = {c["name"]: c["value"] for c in page.context.cookies()}
        r = httpx.request("DELETE", srv.url + "/api/trajectories", json={"all": True}, cookies=cookie)
        assert r.status_code == 401
        r = httpx.request(
            "DELETE",
            srv.url + "/api/trajectories",
            json={"all": True},
            headers={"Authorization": "Bearer s3cret", "Origin": "http://evil.example"},
        )
        assert r.status_code == 403
        assert httpx.get(srv.url + "/api/trajectories", cookies=cookie).status_code == 200
        assert httpx.get(srv.url + "/api/trajectories").status_code == 401


def test_login_never_sends_the_browser_to_another_site(page: Any, store: Store) -> None:
    # Nothing leaves the machine: a navigation to evil.example is answered here, so a failure shows
    # as the browser sitting on that page rather than as a DNS error.
    page.context.route(
        "http://evil.example/**", lambda route: route.fulfill(body="evil", content_type="text/plain")
    )
    with LiveServer(store, token="s3cret", run_jobs=False) as srv:
        page.goto(srv.url + "/login?next=/%5Cevil.example/after-login")
        page.fill("#token", "s3cret")
        page.click("#login-form button")
        page.wait_for_url(srv.url + "/trajectories", timeout=15_000)
        assert page.url.startswith(srv.url + "/")
        # The page's own check, whatever the server put in data-next.
        for hostile in (
            "/\\evil.example/after-login",
            "//evil.example/x",
            "/\t/evil.example/x",
            "http://evil.example/",
        ):
            page.evaluate("sessionStorage.clear()")
            page.goto(srv.url + "/login?next=/fine-tuning")
            page.evaluate("(next) => { document.getElementById('login-form').dataset.next = next; }", hostile)
            page.fill("#token", "s3cret")
            page.click("#login-form button")
            page.wait_for_url(srv.url + "/trajectories", timeout=15_000)
            assert page.url.startswith(srv.url + "/"), (hostile, page.url)
        page.evaluate("sessionStorage.clear()")
        page.goto(srv.url + "/login?next=/fine-tuning")
        page.fill("#token", "s3cret")
        page.click("#login-form button")
        page.wait_for_url(srv.url + "/fine-tuning")  # a local next page is still honoured


def test_a_rebound_dns_name_gets_nothing(browser: Any, store: Store) -> None:
    """DNS rebinding in a real browser: Chromium resolves rebind.evil.example to 127.0.0.1, as the
    attacker's DNS would once the victim has loaded their page."""
    total = store.count(TrajectoryFilter())
    with LiveServer(store, run_jobs=False) as srv:
        b = browser.browser_type.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--host-resolver-rules=MAP rebind.evil.example 127.0.0.1"],
        )
        try:
            pg = b.new_page()
            evil = f"http://rebind.evil.example:{srv.port}"
            r = pg.goto(evil + "/trajectories")
            assert r is not None and r.status == 421 and "rebind.evil.example" in pg.content()
            # The attacker's script, same-origin for the browser: it can neither delete nor read.
            status = pg.evaluate(
                """async () => {
                  const del = await fetch("/api/trajectories", {method: "DELETE",
                    headers: {"Content-Type": "application/json"}, body: JSON.stringify({all: true})});
                  const read = await fetch("/api/trajectories");
                  return [del.status, read.status];
                }"""
            )
            assert status == [421, 421]
            assert store.count(TrajectoryFilter()) == total
            # The same browser on the loopback name is served as before.
            assert pg.goto(srv.url + "/trajectories").status == 200
        finally:
            b.close()
