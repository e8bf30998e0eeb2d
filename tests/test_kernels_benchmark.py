"""The kernel benchmark's CPU smoke mode runs and writes its table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

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


def _load(name):
    path = BENCH.parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_verdict_takes_cut_cross_entropy_at_beta_0_as_a_peer():
    bench = _load("linear_cross_entropy")
    errs = dict(loss_rel_err=1e-5, de_rel_err=1e-3, dc_rel_err=1e-3)
    shape = dict(N=8, D=4, V=16, status="ok")

    def row(impl, beta, ms, x_grads=None):
        return dict(shape, impl=impl, beta=beta, ms=ms, x_grads=x_grads, **errs)

    rows = [
        row("smoothalign", 0.1, 50.0, 1.02),
        row("eager", 0.1, 84.0, 20.0),
        row("torch.compile", 0.1, 53.0, 10.0),
        row("cce", 0.0, 45.0, 1.0),  # fastest, at β = 0 only
        row("smoothalign", 0.0, 44.0, 1.01),
        row("eager", 0.0, 80.0, 20.0),
    ]
    lines = bench.verdict(rows)
    target = next(line for line in lines if "fastest peer" in line)
    assert "fastest peer cce (β=0.0) 45.00 ms → FAIL" in target and "memory 1.020×" in target
    assert "cce(β=0.0) 1.11×" in target and "eager(β=0.0)" not in target
    rows[0]["ms"] = 40.0
    assert "→ PASS; memory" in next(x for x in bench.verdict(rows) if "fastest peer" in x)
    correct = [line for line in lines if "correctness" in line]
    assert len(correct) == 2 and all("→ PASS" in line for line in correct)
    rows[0]["dc_rel_err"] = 0.5
    assert any("β=0.1 correctness vs fp32 → FAIL" in x for x in bench.verdict(rows))
    # a variant of ours gets its own lines and is never a peer
    rows.append(row("smoothalign (no block max)", 0.1, 30.0, 1.03))
    lines = bench.verdict(rows)
    mine = next(x for x in lines if "fastest peer" in x and "[smoothalign (no block max)]" in x)
    assert "fastest peer cce (β=0.0) 45.00 ms → PASS" in mine
    assert not any("fastest peer smoothalign" in x for x in lines)


def test_dpo_benchmark_gives_trl_the_same_token_ids_as_ours():
    import torch

    bench = _load("dpo_step")
    prompt, chosen, rejected = bench.make_pairs(2, 5, 7, 50)
    texts = bench.trl_texts(prompt, chosen, rejected)
    tok = bench.id_tokenizer(50)
    for i in range(2):
        ids = tok(texts["prompt"][i] + texts["chosen"][i])["input_ids"]
        assert ids == [*prompt[i].tolist(), *chosen[i, :-1].tolist(), tok.eos_token_id]
        assert tok(texts["prompt"][i])["input_ids"] == prompt[i].tolist()
        assert texts["rejected"][i].endswith(tok.eos_token)
    assert tok.pad_token_id == 0 and isinstance(prompt, torch.Tensor)


def test_dpo_benchmark_times_the_cals_bookkeeping_of_every_step():
    """A training step reads α, then folds the batch in (dpo_terms calls alpha and update):
    one bookkeeping time per step, both parts counted."""
    import torch

    from smoothalign.smoothing import make_policy
    from smoothalign.train.objective import dpo_terms

    bench = _load("dpo_step")
    policy = make_policy("cals-l2")
    spent = bench._time_policy(policy, "cpu")
    h, zero = torch.tensor([0.3, -0.1]), torch.zeros(2)
    for _ in range(3):
        dpo_terms(h, zero, zero, zero, beta=1.0, loss="sigmoid", policy=policy)
    assert len(spent) == 3 and all(ms > 0 for ms in spent)
    assert policy.calibrator.step == 3  # the wrapped update still folds the batches in


def test_tune_picks_the_least_total_time_and_never_a_failed_configuration():
    import sys

    sys.path.insert(0, str(BENCH.parent))  # lce_tune imports the benchmark as a module
    tune = _load("lce_tune")
    rows = [
        dict(kind="fwd", config="a", status="ok", ms=10.0),
        dict(kind="fwd", config="b", status="ok", ms=8.0),
        dict(kind="fwd", config="a", status="ok", ms=10.0),
        dict(kind="fwd", config="b", status="ok", ms=13.0),  # b wins one shape, loses the sum
        dict(kind="bwd", config="c", status="failed"),
        dict(kind="bwd", config="d", status="ok", ms=99.0),
    ]
    assert tune.fastest(rows, "fwd") == ("a", 20.0)
    assert tune.fastest(rows, "bwd") == ("d", 99.0)


def test_tune_exports_no_backward_less_accurate_than_the_default():
    """A faster backward configuration whose dE error at some shape exceeds both the
    correctness tolerance and 1.1× the default's there is not exported; one within either
    bound is."""
    import sys

    sys.path.insert(0, str(BENCH.parent))
    tune = _load("lce_tune")

    def row(config, shape, ms, de, dc=1e-3):
        n, d, v = shape
        return dict(kind="bwd", config=config, status="ok", ms=ms, N=n, D=d, V=v,
                    de_rel_err=de, dc_rel_err=dc)  # fmt: skip

    gemma, llama = (8192, 2304, 256000), (8192, 4096, 128256)
    rows = [
        row("default", gemma, 30.0, 2.3e-2),  # itself beyond the tolerance
        row("default", llama, 50.0, 1.4e-2),
        row("small", gemma, 20.0, 2.6e-2),  # > 2e-2 and > 1.1 × 2.3e-2: refused
        row("small", llama, 40.0, 1.5e-2),
        row("near", gemma, 25.0, 2.5e-2),  # within 1.1 × the default's
        row("near", llama, 45.0, 1.9e-2),  # within the tolerance
    ]
    assert tune.fastest(rows, "bwd") == ("small", 60.0)  # time alone
    assert tune.fastest(rows, "bwd", "default") == ("near", 70.0)
    rows[4]["de_rel_err"] = float("nan")  # an error that is not a number is not within
    assert tune.fastest(rows, "bwd", "default") == ("default", 80.0)


def test_filter_fraction_counts_blocks_and_dropped_mass_like_a_brute_force():
    import math
    import sys

    import torch

    sys.path.insert(0, str(BENCH.parent))
    frac = _load("lce_filter_fraction")
    g = torch.Generator().manual_seed(0)
    n, v, bn, bv, eps = 24, 50, 4, 8, 2e-2
    e = torch.randn(n, 8, generator=g, dtype=torch.float64)
    c = 1.2 * torch.randn(v, 8, generator=g, dtype=torch.float64)
    t = torch.randint(0, v, (n,), generator=g)
    t[:5] = -100
    kept, total, live, mass = frac.filter_fraction(e, c, t, bn, bv, eps, chunk=8)

    p = torch.softmax(e @ c.T, 1).tolist()
    t = t.tolist()
    cols = [range(j * bv, min(v, (j + 1) * bv)) for j in range(math.ceil(v / bv))]

    def computed(i, j):  # some live token of the block has |softmax − onehot| ≥ eps there
        rows = [r for r in range(i, i + bn) if t[r] != -100]
        return any(abs(p[r][k] - (k == t[r])) >= eps for r in rows for k in cols[j])

    blocks = [(i, j) for i in range(0, n, bn) for j in range(len(cols))]
    assert total == len(blocks)
    assert live == sum(any(t[r] != -100 for r in range(i, i + bn)) for i, _ in blocks)
    assert live < total  # the first token block is all ignored
    assert kept == sum(computed(i, j) for i, j in blocks)
    assert 0 < kept < total  # the case exercises both
    dropped = [
        sum(
            sum(p[r][k] for k in cols[j]) for j in range(len(cols)) if not computed(r // bn * bn, j)
        )
        for r in range(n)
        if t[r] != -100
    ]
    assert mass == pytest.approx(sum(dropped) / len(dropped), rel=1e-9)


def test_filter_error_is_the_skipped_blocks_share_of_de_like_a_brute_force():
    """--eps-sweep's numbers: per threshold, the share of live blocks computed and
    max |Σ_left out d_v C_v| / max |dE| (β terms exact), also after the mean-row
    compensation, for the block rule and the strip rule (--strips); a first chunk of
    ignored tokens only (a prompt) is skipped, not a crash."""
    import sys

    import torch

    sys.path.insert(0, str(BENCH.parent))
    frac = _load("lce_filter_fraction")
    g = torch.Generator().manual_seed(1)
    n, v, d, bn, bv, beta = 24, 50, 8, 4, 8, 0.1
    e = torch.randn(n, d, generator=g, dtype=torch.float64)
    c = 1.2 * torch.randn(v, d, generator=g, dtype=torch.float64) + 0.3  # a mean row
    t = torch.randint(0, v, (n,), generator=g)
    t[:8] = -100  # the whole first chunk of 8
    eps_list, shares = [2e-2, 5e-2], [0.5]
    got = frac.filter_error(e, c, t, bn, bv, eps_list, beta, chunk=8, shares=shares)

    live = t != -100
    p = torch.softmax(e @ c.T, 1)
    grad = p.clone()
    grad[live, t[live]] -= 1 - beta
    de = (grad - beta / v) @ c
    de_max = de[live].abs().max()
    c_mean = c.mean(0)

    def brute(eps, share):
        """(blocks computed ÷ live blocks, rows added ÷ all rows, error, compensated)"""
        left = torch.zeros(n, d, dtype=torch.float64)  # Σ d_v C_v left out, per token
        mass = torch.zeros(n, dtype=torch.float64)  # off-target softmax mass left out
        kept = live_blocks = rows_added = 0
        for i in range(0, n, bn):
            rows = [r for r in range(i, i + bn) if live[r]]
            for j in range(0, v, bv):
                targets = [r for r in rows if j <= t[r] < j + bv]
                computed = bool(rows) and (
                    bool((grad[rows, j : j + bv].abs() >= eps).any()) or bool(targets)
                )
                live_blocks += bool(rows)
                kept += computed
                for r in range(i, i + bn):
                    strip = grad[r, j : j + bv]
                    wide = share is None or bool((strip.abs() >= share * eps).any())
                    if computed and (wide or r in targets):
                        rows_added += 1
                        continue
                    if live[r]:  # left out of dE
                        left[r] += (strip[:, None] * c[j : j + bv]).sum(0)
                        off = p[r, j : j + bv].clone()
                        if j <= t[r] < j + bv:
                            off[t[r] - j] = 0.0
                        mass[r] += off.sum()
        err = left[live].abs().max() / de_max
        comp = (left - mass[:, None] * c_mean)[live].abs().max() / de_max
        return kept / live_blocks, rows_added / (int(live.sum()) * -(-v // bv)), err, comp

    for r, eps in zip(got, eps_list, strict=True):
        blocks, _, err, comp = brute(eps, None)
        assert r["blocks"] == pytest.approx(blocks, rel=1e-12)
        assert r["err"] == pytest.approx(float(err), rel=1e-9)
        assert r["compensated"] == pytest.approx(float(comp), rel=1e-9)
        assert r["compensated"] < r["err"]  # C's mean row carries much of what is left out
        for share in shares:
            _, rows, err, comp = brute(eps, share)
            st = r["strips"][share]
            assert st["rows"] == pytest.approx(rows, rel=1e-12)
            assert st["err"] == pytest.approx(float(err), rel=1e-9)
            assert st["compensated"] == pytest.approx(float(comp), rel=1e-9)
            assert st["err"] > r["err"]  # the strips leave out more


def test_real_inputs_export_and_benchmark_on_them(tmp_path):
    """real_inputs.py on the tiny model: the int8 head round-trips within its rounding, the
    targets are the next tokens, and the kernel benchmark runs on the file (--inputs)."""
    import sys

    import torch

    sys.path.insert(0, str(BENCH.parent))
    real = _load("real_inputs")
    out = tmp_path / "tiny.safetensors"
    info = real.export("tiny", 96, out)
    assert info["shape"][0] == 96 and out.exists()
    e, c, t = real.load(out)
    assert e.dtype == c.dtype == torch.bfloat16 and e.shape == (96, info["shape"][1])
    frac = _load("lce_filter_fraction")
    e0, c0, t0 = frac.model_inputs("tiny", 96)
    assert torch.equal(t, t0)
    scale = c0.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127
    assert float(((c.float() - c0).abs() / scale).max()) <= 0.5 + 2**-7 * 127  # int8, then bf16
    bench = _load("linear_cross_entropy")
    js = tmp_path / "lce.json"
    args = ["--device", "cpu", "--small", "--inputs", str(out), "--betas", "0.1", "--json", str(js)]
    assert bench.main([*args, "--repeats", "1", "--warmup", "0"]) == 0
    import json

    data = json.loads(js.read_text())
    assert data["env"]["inputs"] == str(out)
    ours = next(r for r in data["rows"] if r["impl"] == "smoothalign")
    assert ours["status"] == "ok" and ours["N"] == 96 and ours["loss_rel_err"] < 1e-3


def test_kernels_compile_for_sm90_without_a_gpu():
    """The GPU-only code paths compile for an H100/H200 on this CPU (Triton's own ptxas):
    the TMA reductions lower to bulk reduce instructions, the default backward's atomic adds
    are vectorised (``red`` or ``atom``, as Triton versions spell them), and the RoPE kernel
    keeps eager's roundings without FP fusion (and fuses with it)."""
    import os
    import re

    pytest.importorskip("triton.backends.nvidia")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter replaces the kernels it would compile")
    import triton.language as tl

    if not hasattr(tl, "tensor_descriptor"):
        pytest.skip("this Triton has no tensor descriptors (TMA)")
    sm90 = _load("sm90_compile")
    red = " ".join(sm90.backward("64,128,64,4,3", tma=False)["atomics"])
    assert re.search(r"(red|atom)\.global\S*add\S*v4\.f32", red), red
    assert re.search(r"(red|atom)\.global\S*add\S*v8\.bf16", red), red
    tma = sm90.backward("64,128,32,4,3", tma=True, strips=False)["atomics"]
    assert tma and all(op.startswith("cp.reduce.async.bulk.tensor") for op in tma), tma
    # with strips and the kept-mass count (the default): the tiles still go in bulk; the one
    # other add is the per-token count, a scalar f32
    tma = sm90.backward("64,128,32,4,3", tma=True)["atomics"]
    other = [op for op in tma if not op.startswith("cp.reduce.async.bulk.tensor")]
    assert other and len(other) < len(tma), tma
    assert all(op.endswith("add.f32") for op in other), tma
    fused = sm90.rope("bf16", backward_pass=False, fp_fusion=True)["arithmetic"]
    exact = sm90.rope("bf16", backward_pass=False, fp_fusion=False)["arithmetic"]
    assert any(op.startswith("fma") for op in fused), fused
    assert not any(op.startswith("fma") for op in exact), exact
    assert exact.get("mul.rn.bf16") and exact.get("sub.rn.bf16") and exact.get("add.rn.bf16")
    for softcap in (False, True):  # the dense backward's gradient pass: no spills, 16-byte loads
        row = sm90.dense_grad(softcap)
        assert row["stack_bytes"] == 0 and any("v4" in op for op in row["loads"]), row


def test_dpo_summary_compares_each_row_with_trl_liger_on_the_same_model():
    """Rows run with ``--logit-scale`` (named ``…, logits ×7``) are judged against TRL +
    Liger's row on the same scaled model, the others against the unscaled one."""
    summary = _load("gpu_summary")
    liger, ours = summary.LIGER_ROW, summary.DEFAULT_ROW
    env = {"device": "gpu", "torch": "x", "pairs": 8, "prompt_len": 256, "response_len": 768,
           "shape": {}}  # fmt: skip

    def row(name, ms, gib):
        return {"trainer": name, "status": "ok", "ms": ms, "peak_bytes": gib * 2**30}

    rows = [row(ours, 300, 20), row(liger, 320, 30), row(ours + ", logits ×7", 360, 20),
            row(liger + ", logits ×7", 330, 30)]  # fmt: skip
    text = "\n".join(summary.dpo_section({"env": env, "rows": rows}))
    assert f"| {ours} | 300 | 20.00 |  | 0.94 | 0.67 |" in text
    assert f"| {ours}, logits ×7 | 360 | 20.00 |  | 1.09 | 0.67 |" in text
    assert "time 300 ms vs TRL+Liger 320 ms → PASS" in text
    assert "time 360 ms vs TRL+Liger 330 ms → FAIL" in text


def test_diagnose_times_the_default_backward(monkeypatch):
    """``lce_tune.py --diagnose`` (GPU only) calls the kernel's private ``_forward`` and
    ``_backward``: every backward it times gets the defaults' strips and compensation (with
    the target's probability the compensation needs), and it unpacks the forward's five
    results; CPU stand-ins for the two record the calls, so no row may end "failed"."""
    import inspect
    import sys
    import types

    import torch

    pytest.importorskip("triton")
    sys.path.insert(0, str(BENCH.parent))
    tune = _load("lce_tune")
    from smoothalign.kernels import triton_lce as K

    n, d, v = 8, 4, 10
    e0, c0 = torch.randn(n, d), torch.randn(v, d)
    t = torch.randint(0, v, (n,))
    calls = []

    def forward(e, c, bias, targets, beta, ignore_index, softcap, store_bmax):
        lse = torch.logsumexp(e @ c.T, 1)
        zt = (e @ c.T).gather(1, targets[:, None])[:, 0]
        return torch.zeros(n), lse, c.mean(0), ("maxima", 1, 1), zt

    real_backward = K._backward

    def backward(*args, **kwargs):
        # the call must fit the real signature (a stale argument convention failed every
        # diagnose row on the GPU while a looser stand-in passed)
        bound = inspect.signature(real_backward).bind(*args, **kwargs)
        calls.append(bound.arguments)
        return torch.zeros(n, d), torch.zeros(v, d), None

    monkeypatch.setattr(K, "_forward", forward)
    monkeypatch.setattr(K, "_backward", backward)
    monkeypatch.setattr(K, "_tma_reduce", lambda *a: False)
    monkeypatch.setattr(tune, "_time", lambda fn, repeats: (fn(), 1.0)[1])
    monkeypatch.delenv("SMOOTHALIGN_LCE_STRIPS", raising=False)
    monkeypatch.delenv("SMOOTHALIGN_LCE_COMPENSATE", raising=False)
    rows = []
    tune.diagnose_shape((e0, c0, t), types.SimpleNamespace(beta=0.1, repeats=1), rows.append)
    assert rows and not [r for r in rows if r["status"] != "ok"], rows
    assert len(calls) > 10
    lse = torch.logsumexp(e0 @ c0.T, 1)
    for call in calls:
        assert call["strips"] == K.STRIPS_DEFAULT and call["compensate"] is True
        assert call["stats"] is None  # no filter statistics asked for
        torch.testing.assert_close(call["lse"], lse)


def test_tune_exports_a_lowered_threshold_with_its_block_sizes():
    """A backward row run at another auto divisor (``BWD_DIV``) exports the divisor with its
    block sizes, so the steps after the sweep run what was timed; a plain one exports none."""
    import sys

    sys.path.insert(0, str(BENCH.parent))
    tune = _load("lce_tune")
    cfg, div = tune.BWD_DIV[0]
    name = f"{cfg}{tune.DIV_SEP}{div:.6g}"
    lines = tune.export_lines("bwd", name, 12.0)
    assert lines[0].startswith(f"export SMOOTHALIGN_LCE_BWD={cfg}  #")
    assert lines[1] == f"export SMOOTHALIGN_LCE_FILTER_DIV={div:.6g}"
    assert float(lines[1].split("=")[1]) == pytest.approx(32 * 2**0.5, rel=1e-5)
    assert tune.export_lines("bwd", "64,128,64,4,3", 9.0) == [
        "export SMOOTHALIGN_LCE_BWD=64,128,64,4,3  # 9.0 ms"
    ]


def test_tune_runs_each_backward_row_under_its_own_settings(monkeypatch):
    """``lce_tune.py``'s sweep (GPU only): every backward configuration, ``BWD_DIV``'s
    lowered thresholds included, runs with its blocks (and divisor) set and leaves none set
    after it, and a setting of the user's own is put back, not deleted; a CPU stand-in for
    the kernel records what each call saw."""
    import os
    import sys
    import types

    import torch

    pytest.importorskip("triton")
    sys.path.insert(0, str(BENCH.parent))
    tune = _load("lce_tune")
    from smoothalign.kernels import triton_lce as K

    seen = []

    def losses(e, c, t, beta=0.0, **kwargs):
        seen.append(
            {k: os.environ.get(f"SMOOTHALIGN_LCE_{k}") for k in ("FWD", "BWD", "FILTER_DIV")}
        )
        return torch.nn.functional.cross_entropy(e @ c.T, t, reduction="none")

    monkeypatch.setattr(K, "triton_token_losses", losses)
    monkeypatch.setattr(tune, "_time", lambda fn, repeats: (fn(), 1.0)[1])
    for key in ("BWD", "FILTER_DIV"):
        monkeypatch.delenv(f"SMOOTHALIGN_LCE_{key}", raising=False)
    monkeypatch.setenv("SMOOTHALIGN_LCE_FWD", "user's")  # a setting of the user's own
    e0, c0 = torch.randn(8, 4), torch.randn(10, 4)
    t = torch.randint(0, 10, (8,))
    rows = []
    tune.tune_shape((e0, c0, t), types.SimpleNamespace(beta=0.1, repeats=1), rows.append)
    assert rows and all(r["status"] == "ok" for r in rows), rows
    bwd = [r["config"] for r in rows if r["kind"] == "bwd"]
    expected_div = [f"{cfg}{tune.DIV_SEP}{div:.6g}" for cfg, div in tune.BWD_DIV]
    assert bwd == tune.BWD + expected_div
    for cfg, div in tune.BWD_DIV:
        assert {"FWD": "user's", "BWD": cfg, "FILTER_DIV": f"{div:.6g}"} in seen
    assert {"FWD": tune.FWD[0], "BWD": None, "FILTER_DIV": None} in seen
    # the filter rows after them run the user's settings: no blocks or divisor left over
    assert seen[-1] == {"FWD": "user's", "BWD": None, "FILTER_DIV": None}
    assert os.environ["SMOOTHALIGN_LCE_FWD"] == "user's"  # put back, not deleted
    assert all(os.environ.get(f"SMOOTHALIGN_LCE_{k}") is None for k in ("BWD", "FILTER_DIV"))
