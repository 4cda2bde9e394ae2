"""Path components from untrusted names (task names come from recorded data)."""

from __future__ import annotations

import hashlib
import re


def hashed_name(name: str, fallback: str = "task") -> str:
    """``name`` made safe for a folder (letters, digits, ``_``, ``-``; 40 at most) plus a hash of
    the original, so two names never share a folder and no name is ever used as given."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:40].strip("_") or fallback
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
