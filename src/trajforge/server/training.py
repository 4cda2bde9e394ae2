"""``/api/training``: datasets (and, as they land, jobs, models and events)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from trajforge import datasets
from trajforge.server.schemas import DatasetBuildRequest, DatasetList, DatasetResult
from trajforge.store import Store

router = APIRouter(prefix="/api/training", tags=["training"])


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _detail(ds: Any) -> dict[str, Any]:
    return {**datasets.summary(ds), "manifest": ds.manifest}


@router.post(
    "/datasets/build",
    status_code=201,
    response_model=DatasetResult,
    summary="Build a private, versioned dataset snapshot from trajectories",
)
def build_dataset(request: Request, body: DatasetBuildRequest) -> dict[str, Any]:
    # A sync route: FastAPI runs it on a worker thread, so a long build never blocks the loop.
    flt = body.trajectory_filter()
    req = datasets.BuildRequest(
        format=body.format,
        limit=body.limit,
        min_llm_calls_per_trajectory=body.minLlmCallsPerTrajectory,
        reward_score=body.rewardScore,
        min_reward=body.minReward,
        max_reward=body.maxReward,
        require_score=body.requireScore,
        task=body.task,
        eval_fraction=body.evalFraction,
        seed=body.seed,
        dedup=body.dedup,
        preference_margin=body.preferenceMargin,
        pair_by=body.pairBy,
        name=body.name,
        filter=flt,
        privacy=datasets.PrivacyOptions(
            extra_patterns=body.privacy.extraPatterns, allow=body.privacy.allow, drop_on=body.privacy.dropOn
        ),
    )
    return {"dataset": _detail(datasets.build(_store(request), req))}


@router.get("/datasets", response_model=DatasetList, summary="Dataset snapshots, newest first")
def list_datasets(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    return {"datasets": [datasets.summary(ds) for ds in _store(request).list_datasets(limit, offset)]}


@router.get("/datasets/{dataset_id}", response_model=DatasetResult, summary="One dataset with its manifest")
def get_dataset(
    request: Request, dataset_id: Annotated[str, Path(min_length=1, max_length=200)]
) -> dict[str, Any]:
    return {"dataset": _detail(datasets.get(_store(request), dataset_id))}
