from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.openai_server import FakeOpenAI
from trajforge import lm
from trajforge.errors import InvalidInput, LMError


def test_local_lm_batches_and_caches_greedy_answers(tiny_model_dir: Path) -> None:
    model = lm.from_spec(f"local:{tiny_model_dir}")
    assert isinstance(model, lm.LocalLM) and model.name == f"local:{tiny_model_dir}"
    convs = [[{"role": "user", "content": f"question {i}"}] for i in range(5)]
    first = model.chat_batch(convs, max_tokens=6)
    assert len(first) == 5 and all(isinstance(t, str) for t in first)
    assert model.calls == 5
    again = model.chat_batch(convs, max_tokens=6)
    assert again == first and model.calls == 5  # greedy answers come from the cache
    # One prompt alone gets the same greedy answer as inside a left-padded batch.
    assert model.chat(convs[2], max_tokens=6) == first[2]
    model.chat_batch(convs[:2], temperature=0.8, max_tokens=4)
    assert model.calls == 7  # sampled answers are never cached


def test_bad_specs_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        lm.from_spec(f"local:{tmp_path}")
    assert err.value.field == "model"
    with pytest.raises(InvalidInput):
        lm.from_spec("bundled:gpt-5")
    with pytest.raises(InvalidInput) as err:
        lm.OpenAICompatibleLM(base_url="ftp://x", model="m")
    assert err.value.field == "baseUrl"


def test_openai_compatible_lm_retries_then_reports() -> None:
    answers = iter(["first"])
    with FakeOpenAI(lambda m, r: next(answers)) as server:
        client = lm.from_spec("m1", base_url=server.base_url)
        assert client.chat([{"role": "user", "content": "hi"}]) == "first"
        assert server.requests[-1]["model"] == "m1" and server.requests[-1]["temperature"] == 0.0
    dead = lm.OpenAICompatibleLM(base_url="http://127.0.0.1:9/v1", model="m", max_retries=1)
    with pytest.raises(LMError):
        dead.chat([{"role": "user", "content": "hi"}])


@pytest.mark.slow
def test_bundled_model_converts_once_and_answers(tmp_path: Path) -> None:
    from tests.tiny_model import bundled_gguf_dir

    bundled_gguf_dir()  # skips with the reason when the package is missing
    first = lm.bundled_model_dir(cache=tmp_path)
    assert (first / "config.json").exists() and list(first.glob("*.safetensors"))
    stamp = (first / "config.json").stat().st_mtime_ns
    assert (
        lm.bundled_model_dir(cache=tmp_path) == first and (first / "config.json").stat().st_mtime_ns == stamp
    )
    model = lm.LocalLM(first, label="bundled:smollm2-135m")
    reply = model.chat(
        [{"role": "user", "content": "What is the capital of France? One word."}], max_tokens=8
    )
    assert "paris" in reply.lower()


def test_json_closed_knows_where_an_object_ends() -> None:
    from trajforge.lm import json_closed

    assert json_closed('{"action": "REFUND", "params": {"orderId": "A-1"}} and more')
    assert json_closed('Sure: {"a": {"b": "}"}}')
    assert not json_closed('{"a": "\\"}"')  # the brace is inside a string
    assert not json_closed('{"a": {"b": 1}')
    assert not json_closed("no object here }")


def test_a_shared_prompt_prefix_is_computed_once_with_the_same_answers(tiny_model_dir: Path) -> None:
    from trajforge.lm import LocalLM

    model = LocalLM(tiny_model_dir, max_batch=8)
    system = {"role": "system", "content": "You are a support desk. " * 20}  # a long shared prefix
    convs = [
        [system, {"role": "user", "content": f"order A-{1000 + i * 37} " * (1 + i % 3)}] for i in range(5)
    ]
    batch, cache = model._encode(
        [
            str(model.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True))
            for c in convs
        ]
    )
    assert cache is not None and int(batch["attention_mask"].sum()) < batch["attention_mask"].numel()
    shared = model.chat_batch(convs, max_tokens=12)
    model._cache.clear()
    model.PREFIX_MIN = 10**9  # the plain left-padded path
    assert model.chat_batch(convs, max_tokens=12) == shared


def test_repeated_rows_run_once_with_the_same_greedy_tokens(tiny_model_dir: Path) -> None:
    """GRPO samples each prompt several times: the repeats share the distinct row's keys and
    values (over a shared system prefix, and without one), and greedy decoding gives exactly what
    the plain left-padded batch gives."""
    import torch
    from transformers import AutoModelForCausalLM

    from trajforge.lm import shared_prefix_batch

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    system = list(range(5, 85))  # an 80-token shared prefix
    prompts = [system + [100 + i] * (3 + 2 * i) for i in range(3)]
    rows = [prompts[i] for i in (0, 1, 0, 2, 1, 0)]

    def greedy(min_prefix: int, dedupe: bool) -> list[list[int]]:
        if dedupe:
            batch, extra = shared_prefix_batch(model, rows, 0, min_prefix)
        else:  # the reference: every row on its own, left-padded, no cache
            width = max(len(r) for r in rows)
            batch = {
                "input_ids": torch.tensor([[0] * (width - len(r)) + r for r in rows]),
                "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]),
            }
            extra = {}
        if dedupe:
            assert lm._cache_key() in extra  # the repeats came from a cache
            assert extra[lm._cache_key()].get_seq_length() == batch["input_ids"].shape[1] - 1
        with torch.inference_mode():
            out = model.generate(**batch, **extra, max_new_tokens=8, do_sample=False, pad_token_id=0)
        return out[:, batch["input_ids"].shape[1] :].tolist()

    reference = greedy(0, dedupe=False)
    assert greedy(64, dedupe=True) == reference
    assert greedy(10**9, dedupe=True) == reference
