"""Builders for test data, and a real server for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from trajforge.records import JOB_FINISHED, ActionResult, LlmCall, ProviderAccess, Step, Trajectory
from trajforge.store.base import Store


def make_trajectory(
    *,
    n_steps: int = 2,
    calls_per_step: int = 2,
    agent_id: str = "agent-1",
    source: str = "chat",
    status: str = "completed",
    start_time: int = 1_700_000_000_000,
    scenario_id: str | None = "sc-1",
    batch_id: str | None = None,
    reward: float | None = 1.0,
    prompt: str = "Customer asks for a refund of order A-1042",
    system: str = "You are a support agent. Answer with one JSON action.",
    model: str = "m-1",
    latency_ms: float = 100.0,
    metadata: dict | None = None,
    is_training_data: bool = False,
) -> Trajectory:
    t = Trajectory(
        agent_id=agent_id,
        source=source,
        status=status,
        start_time=start_time,
        end_time=start_time + 1000 if status != "active" else None,
        scenario_id=scenario_id,
        batch_id=batch_id,
        total_reward=reward,
        metadata=metadata if metadata is not None else {"env": "test"},
        is_training_data=is_training_data,
    )
    for i in range(n_steps):
        step = Step(step_number=i, timestamp=start_time + 10 * i)
        for j in range(calls_per_step):
            step.llm_calls.append(
                LlmCall(
                    timestamp=start_time + 10 * i + j,
                    model=model,
                    system_prompt=system,
                    user_prompt=f"{prompt} (step {i} call {j})",
                    response='{"action": "REFUND", "params": {"orderId": "A-1042"}}',
                    reasoning="The customer wants money back.",
                    latency_ms=latency_ms,
                    prompt_tokens=100,
                    completion_tokens=20,
                    purpose="action",
                    action_type="REFUND",
                )
            )
        step.provider_accesses.append(
            ProviderAccess(
                provider_name="orders", data={"orderId": "A-1042", "total": 42.5}, purpose="lookup"
            )
        )
        step.action = ActionResult(
            action_type="REFUND", parameters={"orderId": "A-1042"}, immediate_reward=0.5
        )
        t.steps.append(step)
    return t


SUPPORT_SYSTEM = "You are a support agent. Answer with one JSON action: REFUND, TRACK, ESCALATE or REPLY."
_ATTEMPTS = (
    ('{"action": "REFUND", "params": {"orderId": "A-10%d"}}', 1.0),
    ('{"action": "REFUND", "params": {}}', 0.5),
    ('{"action": "TRACK", "params": {"orderId": "A-10%d"}}', 0.0),
)


def make_support_corpus(scenarios: int = 6) -> list[Trajectory]:
    """A small labelled support-desk corpus: each scenario's customer message answered three ways
    (right, half right, wrong: rewards 1, 0.5, 0), with personal data in the prompts, a second task
    (``reasoning`` calls), and one scenario answered by a tool call."""
    out: list[Trajectory] = []
    base = 1_700_000_000_000
    for sc in range(scenarios):
        user = (
            f"Hi, I'm customer {sc}. My order A-10{sc} never arrived. Mail me at buyer{sc}@example.com "
            f"or call +1 415 555 26{sc:02d}. Handle @shopper{sc}."
        )
        for attempt, (response, reward) in enumerate(_ATTEMPTS):
            t = Trajectory(
                agent_id="support-bot",
                source="chat",
                status="completed",
                start_time=base + (sc * 10 + attempt) * 1000,
                end_time=base + (sc * 10 + attempt) * 1000 + 500,
                scenario_id=f"scenario-{sc}",
                total_reward=reward,
                metadata={"customer": f"buyer{sc}@example.com"},
            )
            step = Step(step_number=0, timestamp=t.start_time)
            step.provider_accesses.append(
                ProviderAccess(
                    provider_name="orders", data={"orderId": f"A-10{sc}", "email": f"buyer{sc}@example.com"}
                )
            )
            step.llm_calls.append(
                LlmCall(
                    timestamp=t.start_time + 1,
                    model="m-1",
                    system_prompt=SUPPORT_SYSTEM,
                    user_prompt=f"Think about: {user}",
                    response=f"The customer {sc} wants order A-10{sc} handled.",
                    purpose="reasoning",
                )
            )
            if sc == 0:
                # A tool-calling turn recorded from an OpenAI-style client.
                call = LlmCall(
                    timestamp=t.start_time + 2,
                    model="m-1",
                    system_prompt=SUPPORT_SYSTEM,
                    user_prompt=user,
                    messages=[
                        {"role": "system", "content": SUPPORT_SYSTEM},
                        {"role": "user", "content": user},
                    ],
                    response=None,
                    tool_calls=[
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {
                                "name": "lookup_order",
                                "arguments": f'{{"orderId": "A-10{attempt}"}}',
                            },
                        }
                    ],
                    tools=[
                        {
                            "type": "function",
                            "function": {
                                "name": "lookup_order",
                                "description": "Find an order",
                                "parameters": {
                                    "type": "object",
                                    "properties": {"orderId": {"type": "string"}},
                                },
                            },
                        }
                    ],
                    purpose="action",
                    action_type="support_reply",
                )
            else:
                call = LlmCall(
                    timestamp=t.start_time + 2,
                    model="m-1",
                    system_prompt=SUPPORT_SYSTEM,
                    user_prompt=user,
                    response=response % sc if "%d" in response else response,
                    purpose="action",
                    action_type="support_reply",
                )
            step.llm_calls.append(call)
            step.action = ActionResult(action_type="REFUND", success=reward > 0, immediate_reward=reward)
            t.steps.append(step)
            out.append(t)
    return out


def until(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    """Wait for ``check()`` to return something true and return it; fail naming ``what`` when it
    has not within ``timeout`` seconds (a condition, not a guessed sleep: a loaded machine is only
    slower, never wrong)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def job_working(store: Store, job_id: str) -> int:
    """Wait until the job runs and has reported progress (its process is past its start, signal
    handlers and all); returns its process id."""

    def check() -> int | None:
        job = store.get_job(job_id)
        assert job is not None and job.status not in JOB_FINISHED, job
        progressed = store.list_events(job_id=job_id, kinds=["job_progress"], limit=1)
        return job.pid if job.status == "running" and job.pid and progressed else None

    pid: int = until(f"{job_id} to run", check)
    return pid


def cancel_while_training(store: Store, job_id: str, timeout: float) -> Any:
    """Cancel a job once it reports a training step, then wait until it has ended and its runner
    has reaped the process; returns the final job (both waits within ``timeout`` seconds)."""
    from trajforge import jobs

    deadline = time.monotonic() + timeout
    until(
        f"{job_id} to start training",
        lambda: any(e.phase == "train" for e in store.list_events(job_id=job_id)),
        timeout,
    )
    jobs.cancel(store, job_id)

    def ended() -> Any:
        final = jobs.get(store, job_id)
        return final if final.status in JOB_FINISHED and final.exit_code is not None else None

    return until(f"{job_id} to end", ended, max(0.1, deadline - time.monotonic()))


def free_port() -> int:
    """A loopback port nothing listens on (at the moment of asking)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TRAJFORGE = str(Path(sys.executable).with_name("trajforge"))
"""The installed console script: end-to-end tests run what a user runs."""


def start_server(
    port: int,
    db: str | Path,
    log: Path,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 60,
) -> subprocess.Popen[bytes]:
    """A real ``trajforge serve`` on ``127.0.0.1:port`` (its output appended to ``log``), returned
    once ``/healthz`` answers; fails with the log's tail if it exits or never answers."""
    proc = subprocess.Popen(
        [TRAJFORGE, "serve", "--port", str(port), "--db", str(db), *args],
        env=os.environ.copy() if env is None else env,
        cwd=cwd,
        stdout=open(log, "ab"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, "trajforge serve exited: " + log.read_text()[-4000:]
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise AssertionError("trajforge serve did not start: " + log.read_text()[-4000:])
