"""Importing tsae_core before torch asks PyTorch for transparent huge pages for large CPU tensors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")

HUGE_KB = """
import tsae_core, torch
x = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MB, touched
with open("/proc/self/smaps_rollup") as f:
    print(next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages")))
"""


def _python(code: str, **env: str) -> str:
    """stdout of `python -c code` with THP_MEM_ALLOC_ENABLE unset, then `env` added."""
    environment = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"} | env
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=environment,
                          check=True).stdout.strip()


@pytest.mark.skipif(not THP_MODE.is_file() or "[madvise]" not in THP_MODE.read_text(),
                    reason="the kernel gives huge pages on request only in its 'madvise' mode")
def test_large_tensors_get_huge_pages_unless_turned_off():
    assert int(_python(HUGE_KB)) >= 32 << 10  # most of the 64 MB tensor
    assert int(_python(HUGE_KB, THP_MEM_ALLOC_ENABLE="0")) == 0


def test_a_users_setting_is_kept():
    probe = "import os, tsae_core; print(os.environ['THP_MEM_ALLOC_ENABLE'])"
    assert _python(probe) == "1"
    assert _python(probe, THP_MEM_ALLOC_ENABLE="0") == "0"
