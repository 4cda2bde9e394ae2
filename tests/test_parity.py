"""Each request is declared once; the API and the CLI derive from it. This walks the API's OpenAPI
schema and the CLI's parameters and fails when a request field is in one but not the other, or
when the CLI's flag for a field is not the one its errors name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command

from trajforge.cli import app as cli_app
from trajforge.server import create_app

# (HTTP method, path) ↔ CLI command path
PAIRS = [
    (("get", "/api/trajectories"), ("trajectories", "list")),
    (("post", "/api/trajectories/export"), ("trajectories", "export")),
    (("post", "/api/training/datasets/build"), ("datasets", "build")),
    (("post", "/api/training/jobs"), ("jobs", "start")),
    (("get", "/api/training/vast/offers"), ("vast", "offers")),
    (("post", "/api/training/models/{model_id}/benchmark"), ("models", "benchmark")),
    (("post", "/api/training/models/{model_id}/import-ollama"), ("models", "import-ollama")),
    (("post", "/api/training/datasets/{dataset_id}/push"), ("datasets", "push")),
    (("post", "/api/training/collect"), ("collect", "run")),
]


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = schema["components"]["schemas"][name]
    return node


def _properties(schema: dict[str, Any], node: dict[str, Any], prefix: str = "") -> set[str]:
    node = _resolve(schema, node)
    names: set[str] = set()
    for arm in node.get("oneOf", []) + node.get("anyOf", []):
        names |= _properties(schema, arm, prefix)
    for name, prop in node.get("properties", {}).items():
        inner = _resolve(schema, prop)
        if inner.get("type") == "object" and "properties" in inner:
            names |= _properties(schema, inner, f"{prefix}{name}.")
        else:
            names.add(prefix + name)
    return names


def api_fields(schema: dict[str, Any], method: str, path: str) -> set[str]:
    op = schema["paths"][path][method]
    if method == "get":
        return {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
    body = op["requestBody"]["content"]["application/json"]["schema"]
    return _properties(schema, body)


def cli_command(path: tuple[str, ...]) -> Any:
    # Typer vendors its own click (typer._click): its groups are not click.Group instances.
    cmd: Any = get_command(cli_app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def cli_fields(cmd: Any) -> dict[str, str]:
    """Wire field → the flag the command offers for it."""
    specs = {s.param: s for s in getattr(cmd.callback, "__request_specs__", [])}
    return {specs[p.name].wire: specs[p.name].flag for p in cmd.params if p.name in specs}


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    db = Path(tmp_path_factory.mktemp("parity")) / "p.db"
    application = create_app(str(db), run_jobs=False)
    try:
        return application.openapi()
    finally:
        application.state.store.close()


@pytest.mark.parametrize(("route", "command"), PAIRS, ids=[" ".join(c) for _, c in PAIRS])
def test_api_and_cli_offer_the_same_fields(
    openapi: dict[str, Any], route: tuple[str, str], command: tuple[str, ...]
) -> None:
    api = api_fields(openapi, *route)
    cli = set(cli_fields(cli_command(command)))
    assert api - cli == set(), f"in the API but not in `trajforge {' '.join(command)}`"
    assert cli - api == set(), f"in `trajforge {' '.join(command)}` but not in the API"


@pytest.mark.parametrize(("route", "command"), PAIRS, ids=[" ".join(c) for _, c in PAIRS])
def test_cli_errors_name_the_flag_the_command_offers(
    route: tuple[str, str], command: tuple[str, ...]
) -> None:
    cmd = cli_command(command)
    offered = {name for p in cmd.params for name in (*p.opts, *p.secondary_opts)}
    for wire, flag in cli_fields(cmd).items():
        assert flag in offered, (wire, flag)


def test_job_request_is_the_kinds_options() -> None:
    # The kinds table names each kind's options type by string (cheap to import); the job request
    # is the union of those types. They must be the same.
    from trajforge.jobs import kinds
    from trajforge.jobs import request as job_request

    assert {k.name: kinds.load(k.options) for k in kinds.REQUESTED if k.options} == job_request.OPTIONS
    required = {"ssh": {"host": "me@gpu.example"}}  # the options a backend cannot do without
    for kind in kinds.REQUESTED:
        for backend in kind.backends:
            request = {"backend": backend, **required.get(backend, {})}
            assert isinstance(job_request.parse(request), job_request.OPTIONS[kind.name])


def test_the_manifest_records_every_field_of_a_build() -> None:
    from trajforge.datasets.request import BuildRequest
    from trajforge.store.filter import TrajectoryFilter

    narrowing = dict(
        source="chat", status="completed", agent_id="a", start_date=1, end_date=2, search="x",
        scenario_id="s", batch_id="b", is_training_data=True, trajectory_ids=["t"],
    )  # fmt: skip
    manifest = BuildRequest(**narrowing, min_reward=0.0, max_reward=1.0).manifest_request()
    fields = BuildRequest.aliases()
    reward_bounds = {"minReward", "maxReward"}
    filter_only = set(TrajectoryFilter.aliases().values()) - reward_bounds
    assert set(manifest) == (set(fields.values()) - filter_only - {"privacy"}) | {"filter", "privacy"}
    assert set(manifest["filter"]) == filter_only
    assert set(manifest["privacy"]) == {"extraPatterns", "allow", "dropOn"}


def test_the_api_takes_wire_names_only_and_no_module_metric(tmp_path: Path) -> None:
    """The declarations validate by camelCase wire names (Python callers' snake_case names are
    mapped by the constructor, never accepted from HTTP), and an HTTP request cannot name a
    module:function metric, which would run code on the server; the CLI can."""
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from trajforge.store import open_store

    db = str(tmp_path / "w.db")
    store = open_store(db)
    try:
        with TestClient(create_app(store, run_jobs=False), base_url="http://127.0.0.1") as c:
            r = c.get("/api/trajectories", params={"scenario_id": "s"})
            assert r.status_code == 422 and r.json()["error"]["field"] == "scenario_id"
            r = c.post("/api/trajectories/export", json={"format": "json", "scenario_id": "s"})
            assert r.status_code == 422 and r.json()["error"]["field"] == "scenario_id"
            r = c.post("/api/training/jobs", json={"metric": "tests.reward_fns:starts_right"})
            assert r.status_code == 422 and r.json()["error"]["field"] == "metric", r.text
            assert store.list_jobs() == []
    finally:
        store.close()
    args = ["jobs", "start", "--metric", "tests.reward_fns:starts_right", "--no-wait", "--db", db]
    r = CliRunner().invoke(cli_app, args)
    assert r.exit_code == 0, r.output
    store = open_store(db)
    try:
        (job,) = store.list_jobs()
        assert job.request["metric"] == "tests.reward_fns:starts_right"
    finally:
        store.close()
