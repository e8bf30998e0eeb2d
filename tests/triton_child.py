"""Run a Triton test file's kernels under the interpreter, in a child pytest.

``TRITON_INTERPRET=1`` must be set before ``triton`` itself is imported, which a pytest
process cannot promise; so without CUDA a Triton test file runs itself again in a child
process with that variable (and ``SMOOTHALIGN_TRITON_CHILD=1``), where its tests marked
``here`` run and this launcher is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

CHILD = "SMOOTHALIGN_TRITON_CHILD"
IN_PROCESS = torch.cuda.is_available() or (
    os.environ.get(CHILD) == "1" and os.environ.get("TRITON_INTERPRET") == "1"
)


def run_in_interpreter_child(test_file: str) -> None:
    """Run ``test_file`` in a child pytest under the interpreter; every test must pass but
    the launcher itself (skipped there) and those marked ``gpu_only`` (deselected)."""
    env = dict(os.environ, TRITON_INTERPRET="1", **{CHILD: "1"})
    select = "not slow and not gpu_only"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", select, test_file],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert " passed" in last and "failed" not in last and "1 skipped" in last, last
