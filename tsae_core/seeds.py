"""Seeds derived from the master seed and names, stable across processes (unlike `hash`)."""

from __future__ import annotations

import hashlib
from typing import Any


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of parts, e.g. `derive_seed(seed, "data", "topk")`."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
