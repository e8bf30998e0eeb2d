"""Launching a test worker under torchrun (gloo, 2 CPU processes), for the data-parallel
tests of each command (tests/dist_*_worker.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(worker: str, folder: Path, *args: str, timeout: float = 240) -> Path:
    """Run ``tests/<worker>`` with ``args`` under torchrun, 2 processes on the CPU (gloo);
    each rank's output logged apart, into ``folder/rank<R>.out`` and ``rank<R>.err``. Fails
    (with the ranks' last output) unless every rank exits 0 within ``timeout`` seconds: a
    deadlock, a rank waiting in a collective that another never reaches, fails the test
    rather than hang the suite. Returns ``folder``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "--log-dir",
        str(folder / "logs"),
        "--redirects",
        "3",  # each rank's stdout and stderr into a file of its own
        str(REPO / "tests" / worker),
        *args,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # torchrun stops its workers (each in a session of its own, which a kill of torchrun
        # would leave running) on SIGTERM
        proc.terminate()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        err = "timed out: deadlocked?"
    for log in (folder / "logs").rglob("std*.log"):  # <run id>/attempt_0/<rank>/stderr.log
        shutil.copy(log, folder / f"rank{log.parent.name}.{log.stem[3:]}")
    logs = [f.read_text()[-3000:] for f in sorted(folder.glob("rank*.err"))]
    assert proc.returncode == 0, "\n".join([err[-2000:], *logs])
    return folder


def records(out: Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl``."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
