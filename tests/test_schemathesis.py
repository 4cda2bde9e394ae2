"""Property-based API conformance: schemathesis drives every operation of /openapi.json through
the real ASGI app and checks no 5xx, documented status codes, and response schema conformance."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from tests.helpers import make_trajectory
from trajforge.records import WriteBatch
from trajforge.server import create_app
from trajforge.store import open_store

_dir = Path(tempfile.mkdtemp(prefix="tf-schemathesis-"))
atexit.register(shutil.rmtree, _dir, True)
_store = open_store(str(_dir / "st.db"))
for i in range(5):
    _store.write(
        WriteBatch.from_trajectory(make_trajectory(start_time=1_700_000_000_000 + i, prompt=f"seeded {i}"))
    )
TOKEN = "schemathesis-token"
# Every other check runs (no 5xx, documented status codes, response schemas and headers, content
# types, Allow headers, schema-violating input rejected, auth enforced). Excluded: "schema-valid
# input must be accepted" — the search language (e.g. "-word" alone, unbalanced quotes) and
# cross-field rules (startDate <= endDate, minReward <= maxReward) are checked semantically and
# answered 400/422 with the field; JSON Schema cannot express them.
SEMANTIC = [positive_data_acceptance]
# The same examples on every run unless TRAJFORGE_FUZZ=random: CI then answers for the code, not for
# the draw (a random draw found real 500s here, each fixed and kept as an explicit test elsewhere,
# and once a schemathesis false positive: ``?trajectoryIds=false`` is a one-id list in a query
# string, not the boolean it generated). Run with TRAJFORGE_FUZZ=random to explore new examples.
DERANDOMIZE = os.environ.get("TRAJFORGE_FUZZ") != "random"
app = create_app(_store, token=TOKEN)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.auth()
class BearerToken:
    """Schemathesis sends the real token on every case (and still probes missing/wrong ones)."""

    def get(self, case: schemathesis.Case, ctx: schemathesis.AuthContext) -> str:
        return TOKEN

    def set(self, case: schemathesis.Case, data: str, ctx: schemathesis.AuthContext) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


# Schemathesis's ASGI client sends Host: testserver, which a server without a token refuses
# (DNS rebinding) unless the name is allowed.
open_app = create_app(_store, allowed_hosts=["testserver"])
open_schema = schemathesis.openapi.from_asgi("/openapi.json", open_app)


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=DERANDOMIZE, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    # With a token set, schemathesis also checks that wrong or missing tokens are refused.
    case.call_and_validate(excluded_checks=SEMANTIC)


@open_schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=DERANDOMIZE, suppress_health_check=list(HealthCheck))
def test_open_api_without_token_conforms(case: schemathesis.Case) -> None:
    case.call_and_validate(excluded_checks=SEMANTIC)
