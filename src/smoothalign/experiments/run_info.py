"""Where and how a study ran: what ``docs/results.md`` must name next to every figure.

:class:`RunClock` is started before the work and :meth:`RunClock.info` called after it:
the command, start time, wall and CPU seconds (this process and its reaped workers), CPU
model and usable cores, platform, Python, and the git commit of the source tree (with
``+dirty`` when it has uncommitted changes).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    return max(1, min(usable_cpus(), 8))


def git_commit() -> str | None:
    """Short commit of the source tree, with ``+dirty`` if it has uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=normal", "."],
            cwd=here.parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its reaped children (the workers)."""
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def invoked_command(module: str | None = None) -> str:
    """The command line that started this process, as a user would retype it: ``python -m
    <module> …`` when ``module`` ran as a script (``sys.argv[0]`` is its own file), else
    the ``smoothalign`` console script's ``smoothalign <command> …`` (also for ``python -m
    smoothalign.cli <command> …``, whose arguments are the console script's)."""
    args = sys.argv[1:]
    script = Path(sys.argv[0])
    if module is not None and script.suffix == ".py" and script.stem == module.rsplit(".")[-1]:
        return shlex.join(["python", "-m", module, *args])
    return shlex.join(["smoothalign", *args])


class RunClock:
    def __init__(self, command: str | None = None) -> None:
        self.command = command or invoked_command()
        self.started = _dt.datetime.now(_dt.UTC)
        self.t0 = time.perf_counter()
        self.cpu0 = cpu_seconds()

    def info(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "started_utc": self.started.isoformat(timespec="seconds"),
            "wall_seconds": time.perf_counter() - self.t0,
            "cpu_seconds": cpu_seconds() - self.cpu0,
            "cpu_model": cpu_model(),
            "cpus_usable": usable_cpus(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "git_commit": git_commit(),
        }
