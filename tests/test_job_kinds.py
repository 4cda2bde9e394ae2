"""The table of job kinds and the runner hooks: what submit and the job process read, checked
without running a job."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from trajforge import jobs
from trajforge.errors import InvalidInput
from trajforge.jobs import hooks, kinds
from trajforge.store import Store
from trajforge.train import backends as train_backends


def test_every_name_a_kind_gives_resolves() -> None:
    """A kind names its modules as strings (imported when needed): a typo would only show when a
    job of that kind ran, so every one is resolved here."""
    for kind in kinds.KINDS.values():
        for backend in kind.backends:
            assert callable(kind.body(backend)), (kind.name, backend)
        if kind.options is not None:
            assert callable(kinds.load(kind.options).from_stored), kind.name
        if kind.check is not None:
            assert callable(kinds.load(kind.check)), kind.name
        reads = kind.reads()
        assert reads is None or (reads and all(isinstance(f, str) for f in reads)), kind.name


def test_each_backend_belongs_to_one_requested_kind_and_can_be_checked() -> None:
    assert jobs.BACKENDS == ("native", "cpu", "cuda", "mlx", "ssh", "vast")
    assert len(set(jobs.BACKENDS)) == len(jobs.BACKENDS)
    assert [jobs.kind_of(b) for b in jobs.BACKENDS] == ["native", "lora", "lora", "lora", "remote", "vast"]
    # Every backend a request may name is one whose availability train.backends can tell.
    assert set(jobs.backends()) == set(jobs.BACKENDS)
    assert set(train_backends.status()) == {
        *kinds.LORA.backends,
        *kinds.REMOTE.backends,
        *kinds.VAST.backends,
    }
    with pytest.raises(InvalidInput) as err:
        kinds.for_backend("tpu")
    assert err.value.field == "backend"
    with pytest.raises(InvalidInput):
        kinds.get("nope")
    with pytest.raises(InvalidInput):
        kinds.LORA.body("native")


def test_the_native_kind_queues_its_optimizer_by_name() -> None:
    assert kinds.NATIVE.checked({"backend": "native"})["optimizer"] == "bootstrap-fewshot"
    assert kinds.LORA.checked({"backend": "cpu"}) == {"backend": "cpu"}


def test_jobs_never_import_autotrain() -> None:
    """Auto-training depends on jobs (it starts them); it reaches the runner as a hook."""
    package = Path(jobs.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [f"{node.module}.{a.name}" for a in node.names]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any("autotrain" in n for n in names), (path.name, names)
    hooks.load_builtin()  # what the runner does at start (alone, no other test has imported it)
    assert "auto-training" in hooks.HOOKS


@pytest.fixture
def calls() -> Iterator[list[tuple[str, bool]]]:
    """Two hooks registered for the test (one fails), removed after it."""
    seen: list[tuple[str, bool]] = []

    def ok(store: Store, home: Path | None, starting: bool) -> None:
        seen.append(("ok", starting))

    def broken(store: Store, home: Path | None, starting: bool) -> None:
        seen.append(("broken", starting))
        raise RuntimeError("a hook that fails")

    hooks.register(hooks.RunnerHook("test-broken", broken, every_s=3600))
    hooks.register(hooks.RunnerHook("test-ok", ok, every_s=3600))
    yield seen
    hooks.HOOKS.pop("test-broken")
    hooks.HOOKS.pop("test-ok")


def test_a_runner_calls_its_hooks_when_due_and_survives_a_failing_one(
    store: Store, calls: list[tuple[str, bool]]
) -> None:
    runner = jobs.JobRunner(store.url, max_parallel=0)
    try:
        runner.run_once()  # never called yet: due at once
        runner.run_once()  # called a moment ago: not due for an hour
    finally:
        runner.stop()
    assert calls == [("broken", False), ("ok", False)]
    calls.clear()
    started = jobs.JobRunner(store.url, max_parallel=0).start()  # its loop's first pass: not due
    started.stop()
    assert calls == [("broken", True), ("ok", True)]
    calls.clear()
    quiet = jobs.JobRunner(store.url, max_parallel=0, autotrain=False)
    try:
        quiet.run_once()
    finally:
        quiet.stop()
    assert calls == []
