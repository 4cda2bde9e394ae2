"""The tiny random Llama of :mod:`trajforge.demo.tiny`, skipping when the bundled model's package is
missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from trajforge.demo import tiny
from trajforge.errors import Unavailable


def bundled_gguf_dir() -> Path:
    try:
        return tiny.bundled_gguf_dir()
    except Unavailable as exc:
        pytest.skip(exc.message)


def build_tiny_model(out: Path, initializer_range: float = 0.02) -> Path:
    bundled_gguf_dir()
    return tiny.build_tiny_model(out, initializer_range)
