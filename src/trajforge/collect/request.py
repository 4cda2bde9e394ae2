"""What a collection run is asked for: :class:`CollectRequest`, declared once — the library
validates with it, ``POST /api/training/collect`` takes it as its body, ``trajforge collect run``
derives its options from it."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from trajforge.limits import MAX_NAME_CHARS
from trajforge.requests import Flag, Request

STEP_IDS = (
    "jsonl_imports",
    "hf_datasets",
    "trajectories",
    "datasets",
    "outcomes",
    "prompts",
    "models",
    "benchmarks",
    "live_eval",
)
"""Every step of a run, in the order it runs (each has a ``skip_<id>`` field: ``--skip-<id>``)."""

# A path a user typed: the file system refuses a NUL byte (ValueError), so it is refused here,
# naming the field, before any code builds a Path from it.
PathText = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00]+$")]
FOLDER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$"


class CollectRequest(Request):
    """One collection run: where it writes, what it imports first, whether it calls a model."""

    output_dir: Annotated[
        PathText | None,
        Field(
            description="The run folder, new or empty (default: <home>/collections/<UTC time>); over HTTP "
            "it must be inside <home>/collections"
        ),
        Flag("--output-dir", "-o", metavar="DIR"),
    ] = None
    live: Annotated[
        bool, Field(description="Also run the steps that call a model (needs model and baseUrl)")
    ] = False
    preflight_only: Annotated[
        bool, Field(description="Check what a live run needs, write nothing, and stop")
    ] = False
    probe_endpoints: Annotated[
        bool, Field(description="GET <baseUrl>/models with a short timeout and record the answer")
    ] = False
    model: Annotated[
        str | None,
        Field(min_length=1, max_length=MAX_NAME_CHARS, description="Model name at baseUrl (live evaluation)"),
    ] = None
    base_url: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=2048,
            pattern=r"^https?://",
            description="OpenAI-compatible endpoint (live evaluation, probes), e.g. http://127.0.0.1:11434/v1",
        ),
    ] = None
    suite: Annotated[
        str | None,
        Field(min_length=1, max_length=200, description="Live evaluation: a registered item suite"),
    ] = None
    eval_dataset_id: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=200,
            description="Live evaluation: a dataset's eval split (default: the newest snapshot with one)",
        ),
        Flag("--eval-dataset"),
    ] = None
    eval_limit: Annotated[int, Field(ge=1, le=2000, description="Live evaluation: most items")] = 20
    jsonl: Annotated[
        list[PathText],
        Field(
            max_length=50,
            description="Trajectory files to import first (our exports, Eliza bundle rows, per-call rows); "
            "over HTTP they must be inside <home>",
        ),
        Flag("--jsonl", metavar="FILE"),
    ] = []
    run_id: Annotated[
        str | None,
        Field(
            pattern=FOLDER_NAME,
            description="A label for the imported files (1-80 letters, digits, _.-), recorded with them",
        ),
    ] = None
    hf_dataset: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=200)]],
        Field(max_length=20, description="Hugging Face datasets (ORG/NAME) to pull as snapshots first"),
        Flag("--hf-dataset", metavar="ORG/NAME"),
    ] = []
    require_score: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=200,
            description="A late outcome's score name: completed trajectories without it are pending",
        ),
    ] = None
    samples_per_source: Annotated[
        int, Field(ge=0, le=20, description="Privacy-filtered sample previews per source")
    ] = 3
    notes: Annotated[
        dict[str, Annotated[str, Field(max_length=2000)]],
        Field(
            max_length=50,
            description="Free-form labels recorded in the recipe (keys that look like secrets are dropped)",
        ),
        Flag("--note", metavar="KEY=VALUE"),
    ] = {}
    skip_trajectories: Annotated[
        bool, Field(description="Skip the trajectories step (store trajectories by source, status and task)")
    ] = False
    skip_jsonl_imports: Annotated[
        bool, Field(description="Skip the jsonl_imports step (the --jsonl files)")
    ] = False
    skip_hf_datasets: Annotated[bool, Field(description="Skip the hf_datasets step (Hugging Face pulls)")] = (
        False
    )
    skip_datasets: Annotated[
        bool, Field(description="Skip the datasets step (dataset snapshots and their manifests)")
    ] = False
    skip_outcomes: Annotated[
        bool, Field(description="Skip the outcomes step (late outcomes and score coverage)")
    ] = False
    skip_prompts: Annotated[
        bool, Field(description="Skip the prompts step (prompt artifacts and optimizer results)")
    ] = False
    skip_models: Annotated[bool, Field(description="Skip the models step (the model registry)")] = False
    skip_benchmarks: Annotated[
        bool, Field(description="Skip the benchmarks step (base-vs-trained comparisons)")
    ] = False
    skip_live_eval: Annotated[bool, Field(description="Skip the live_eval step (the live evaluation)")] = (
        False
    )

    def skipped(self, step: str) -> bool:
        return bool(getattr(self, f"skip_{step}"))
