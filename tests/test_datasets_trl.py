"""The builds feed TRL as they are: a 2-step SFT run on an ``sft`` build and a 2-step DPO run on a
``preference`` build, on a tiny real model, asserting the weights moved."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_support_corpus
from trajforge import datasets
from trajforge.records import WriteBatch
from trajforge.store import open_store

pytestmark = pytest.mark.slow


def _build(tmp_path: Path, fmt: str) -> Path:
    store = open_store(str(tmp_path / "s.db"))
    try:
        for t in make_support_corpus():
            store.write(WriteBatch.from_trajectory(t))
        ds = datasets.build(store, datasets.BuildRequest(format=fmt, eval_fraction=0.0), root=tmp_path / "ds")
    finally:
        store.close()
    return Path(ds.path) / "train.jsonl"


def _common(tmp_path: Path) -> dict[str, object]:
    # Every option that TRL would otherwise default surprisingly (bf16, checkpointing, lr) is set.
    return {
        "output_dir": str(tmp_path / "out"),
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-2,
        "bf16": False,
        "fp16": False,
        "activation_checkpointing": False,
        "max_length": 256,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "dataloader_num_workers": 0,
    }


def _snapshot(model: object) -> dict[str, object]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}  # type: ignore[attr-defined]


def _moved(before: dict[str, object], model: object) -> bool:
    import torch

    return any(not torch.equal(before[n], p) for n, p in model.named_parameters())  # type: ignore[attr-defined]


def test_sft_trainer_consumes_an_sft_build(tmp_path: Path, tiny_model_dir: Path) -> None:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    data = load_dataset("json", data_files=str(_build(tmp_path, "sft")), split="train")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = _snapshot(model)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**_common(tmp_path)),  # type: ignore[arg-type]
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    result = trainer.train()
    assert result.global_step == 2
    assert _moved(before, trainer.model)


def test_dpo_trainer_consumes_a_preference_build(tmp_path: Path, tiny_model_dir: Path) -> None:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    data = load_dataset("json", data_files=str(_build(tmp_path, "preference")), split="train")
    assert len(data) >= 2
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = _snapshot(model)
    trainer = DPOTrainer(
        model=model,
        args=DPOConfig(**_common(tmp_path)),  # type: ignore[arg-type]
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    result = trainer.train()
    assert result.global_step == 2
    assert _moved(before, trainer.model)
