"""Mutation audit of the lower layers: can the tests fail?

Each spec in ``benchmarks/mutants/`` names one source file (``TARGET``), the test files that
cover it (``TESTS``) and small semantic mutants (``MUTANTS``: a flipped sign, an off-by-one
bin, a dropped prior term, ``<`` for ``<=``, a missing ``.detach()``, ...), each an exact
piece of text (it must occur once in the file) and its replacement. Every mutant is applied
alone to a scratch copy of ``src/`` and ``tests/`` (the checkout is never touched) and the
tests run; a mutant is *caught* when they fail. ``EQUIVALENT`` lists the mutants that cannot
change any result, with the reason: they are expected to survive. Any other survivor is a
test that cannot fail where it should, and the script exits 1.

    python benchmarks/mutation_audit.py                      # every spec (about 15 min on 2 cores)
    python benchmarks/mutation_audit.py smoothing_calibrator # some specs, by name
    python benchmarks/mutation_audit.py --json out.json

Not part of the test suite (it runs the suite's files ~190 times); run it after changing a
lower-layer module or its tests, and add mutants for new code.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPECS = Path(__file__).resolve().parent / "mutants"


def run_tests(root: Path, tests: list[str], timeout: int) -> bool:
    """Whether ``tests`` pass in ``root`` (its own ``src`` first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False  # a mutant that hangs the tests is caught too
    return done.returncode == 0


def audit(spec_path: Path, root: Path, timeout: int) -> dict:
    spec = runpy.run_path(str(spec_path))
    target = root / spec["TARGET"]
    original = target.read_text(encoding="utf-8")
    equivalent = spec.get("EQUIVALENT", {})
    if not run_tests(root, spec["TESTS"], timeout):
        raise SystemExit(f"{spec_path.name}: the tests fail without any mutant")
    rows = []
    try:
        for name, old, new in spec["MUTANTS"]:
            found = original.count(old)
            if found != 1:
                rows.append({"name": name, "status": f"pattern found {found} times"})
                continue
            target.write_text(original.replace(old, new), encoding="utf-8")
            t0 = time.perf_counter()
            caught = not run_tests(root, spec["TESTS"], timeout)
            target.write_text(original, encoding="utf-8")
            status = "caught" if caught else "equivalent" if name in equivalent else "SURVIVED"
            if caught and name in equivalent:
                status = "caught (listed as equivalent)"
            rows.append({"name": name, "status": status, "seconds": time.perf_counter() - t0})
            print(f"  {name}: {status}", flush=True)
    finally:
        target.write_text(original, encoding="utf-8")
    return {"target": spec["TARGET"], "tests": spec["TESTS"], "mutants": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="*", help="spec names in benchmarks/mutants (default: all)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per test run")
    args = parser.parse_args(argv)
    names = args.specs or sorted(p.stem for p in SPECS.glob("*.py"))
    results, bad = {}, []
    with tempfile.TemporaryDirectory(prefix="smoothalign-mutants-") as tmp:
        root = Path(tmp)
        for part in ("src", "tests"):
            shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
        for name in names:
            print(f"== {name}", flush=True)
            results[name] = audit(SPECS / f"{name}.py", root, args.timeout)
            bad += [
                f"{name}.{m['name']}: {m['status']}"
                for m in results[name]["mutants"]
                if m["status"] not in ("caught", "equivalent")
            ]
    print("\n| spec | mutants | caught | equivalent | other |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        statuses = [m["status"] for m in r["mutants"]]
        caught, eq = statuses.count("caught"), statuses.count("equivalent")
        print(f"| {name} | {len(statuses)} | {caught} | {eq} | {len(statuses) - caught - eq} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    if bad:
        print("\nnot caught and not equivalent (a test that cannot fail, or a stale pattern):")
        print("\n".join(f"  {b}" for b in bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
