"""The kernel benchmark's CPU smoke mode runs and writes its table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "linear_cross_entropy.py"


def test_benchmark_smoke_mode(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_lce", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "lce.json"
    assert bench.main(["--device", "cpu", "--small", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {(r["impl"], r["beta"]): r for r in data["rows"]}
    for beta in (0.0, 0.1):
        ours = rows[("smoothalign", beta)]
        assert ours["status"] == "ok" and ours["loss_err"] < 1e-3 and ours["dc_rel_err"] < 2e-2
        assert rows[("eager", beta)]["status"] == "ok"
        assert rows[("liger", beta)]["status"] == "skipped"  # named, with the reason
    assert "| smoothalign |" in capsys.readouterr().out
