"""Block sizes for the Triton linear cross-entropy on a new GPU: a small sweep, timed.

    python benchmarks/lce_tune.py --json out.json --export best.env

For each of the benchmark's shapes (bf16, β = 0.1 by default) it times the forward alone
for each candidate forward configuration, then forward + backward for each candidate
backward configuration (with the default forward and the default ``block_max`` backward),
CUDA events, median of ``--repeats``
after 2 warm-up runs. A configuration that fails to compile or run is recorded as failed.
Each backward configuration's gradients are also compared with float32's (block sizes
change what filtering and the strips leave out). ``--export`` writes
``SMOOTHALIGN_LCE_FWD``/``SMOOTHALIGN_LCE_BWD`` lines for the configuration with the least
total time over the shapes among those as accurate as the default backward (every error
within ``CORRECTNESS_TOL`` or at most ``ERROR_SLACK`` times the default's, shape by shape;
``source`` it before the benchmark). Last, the default configuration with gradient filtering (without and with the
``block_max`` skipping before the recompute) and without filtering, each with its errors
against float32, shows what filtering trades.
Configurations are ``BLOCK_N,BLOCK_V,BLOCK_D,num_warps,num_stages``; a backward one may add
`` div X``: run with ``SMOOTHALIGN_LCE_FILTER_DIV=X`` (auto's threshold ``eps / X``), which
the export then sets too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from contextlib import contextmanager
from pathlib import Path

import torch
from linear_cross_entropy import CORRECTNESS_TOL, SHAPES, _reference, _rel, make_inputs

FWD = ["128,128,64,8,3", "128,128,64,8,4", "128,256,64,8,3", "256,128,64,8,3",
       "128,128,128,8,3", "64,128,64,4,4", "128,64,64,4,4"]  # fmt: skip
# token blocks of 32 / 16 skip more blocks: at the Llama-3 shape the tile products computed
# fall to 0.55× / 0.29× of the 64-row default's (the computed share of the blocks is the
# share of the dense backward's products, whatever BLOCK_N: CPU count, docs/results.md
# "smaller token blocks"), and run H put the backward's cost in those products, not in the
# atomic adds; 32,256: the default's tile area with half its token rows
# 64,128,32,4,3 / 64,128,64,8,3 / 64,128,32,8,3: the default's shape without its register
# spill (168 bytes a thread with triton 3.6 at bd81627, compiled for sm_90: sm90_compile.py)
BWD = ["128,128,64,8,3", "128,128,32,8,3", "128,128,64,8,4", "64,128,64,4,3",
       "64,128,32,4,3", "64,128,64,8,3", "64,128,32,8,3",
       "128,64,64,4,3", "128,128,128,8,2", "32,128,64,4,3", "16,128,64,4,3",
       "32,256,64,4,3", "64,64,64,4,3", "32,64,64,4,3"]  # fmt: skip
# 16-row blocks with auto's threshold lowered to 2⁻¹²·⁵ for bf16 (SMOOTHALIGN_LCE_FILTER_DIV
# 32·√2): by the CPU count (lce_filter_fraction.py --block-n, docs/results.md "lower
# thresholds") they compute 0.91× the default's tile products at the Llama-3 shape with a lower
# dE error (1.30e-2 against 1.40e-2), and 0.57× at Gemma-2's with about the same error. The
# other lowered thresholds counted there compute more products than the default: they cannot
# be faster, so the sweep does not time them.
BWD_DIV = [("16,128,64,4,3", 32 * 2**0.5)]
DIV_SEP = " div "  # a BWD_DIV row's config: "BN,BV,BD,warps,stages div DIVISOR"


def _time(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


ERROR_SLACK = 1.1  # a tuned backward may be this much less accurate than the default


@contextmanager
def _lce_env(**values: str | None):
    """Set ``SMOOTHALIGN_LCE_<KEY>`` to each value given (``None`` or ``""``: left as it
    is) for the ``with`` block, and put back what was there before (the user's own
    settings included) after it."""
    keys = {f"SMOOTHALIGN_LCE_{k.upper()}": v for k, v in values.items() if v}
    before = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tune_shape(inputs, args, record) -> None:
    """Time every candidate at one shape; ``record(row)`` after each."""
    from smoothalign.kernels.triton_lce import triton_token_losses

    e0, c0, t = inputs
    (n, d), v = e0.shape, c0.shape[0]
    e, c = e0.clone().requires_grad_(), c0.clone().requires_grad_()
    n_valid = int((t != -100).sum())

    def fwd():
        with torch.no_grad():
            triton_token_losses(e0, c0, t, beta=args.beta).sum()

    def fwd_bwd(eps="auto", block_max=None):  # the mean over non-ignored tokens
        e.grad = c.grad = None
        losses = triton_token_losses(e, c, t, beta=args.beta, filter_eps=eps, block_max=block_max)
        (losses.sum() / n_valid).backward()

    # float32's gradients, for each backward configuration's errors
    ref_e = e0.float().requires_grad_()
    ref_c = c0.float().requires_grad_()
    _reference(ref_e, ref_c, t, args.beta).backward()
    bwd_runs = BWD + [f"{cfg}{DIV_SEP}{div:.6g}" for cfg, div in BWD_DIV]
    for kind, configs, fn in (("fwd", FWD, fwd), ("bwd", bwd_runs, fwd_bwd)):
        for name in configs:
            cfg, _, div = name.partition(DIV_SEP)
            row = {"N": n, "D": d, "V": v, "kind": kind, "config": name}
            with _lce_env(**{kind: cfg, "filter_div": div}):
                try:
                    row.update(ms=_time(fn, args.repeats), status="ok")
                    if kind == "bwd":
                        fn()
                        row["de_rel_err"] = _rel(e.grad.float(), ref_e.grad)
                        row["dc_rel_err"] = _rel(c.grad.float(), ref_c.grad)
                except Exception as ex:  # a configuration that does not compile or fit
                    row.update(status="failed", note=f"{type(ex).__name__}: {ex}"[:160])
            record(row)
    # what filtering trades: the default configuration without it, errors vs float32
    for eps, bm in (("auto", False), (None, False), ("auto", True)):
        config = str(eps) + (" + block max" if bm else ", no block max" if eps else "")
        row = {"N": n, "D": d, "V": v, "kind": "filter", "config": config}
        row["ms"] = _time(lambda eps=eps, bm=bm: fwd_bwd(eps, bm), args.repeats)
        fwd_bwd(eps, bm)
        row["de_rel_err"] = _rel(e.grad.float(), ref_e.grad)
        row["dc_rel_err"] = _rel(c.grad.float(), ref_c.grad)
        row["status"] = "ok"
        record(row)


# backward configurations for --diagnose (besides the default): wider vocabulary blocks
# and taller token blocks add fewer atomic bytes per product (module doc of triton_lce)
# (128,256,64,8,3 needs more shared memory than an H200 has: run E); 64,128,32,4,3 is the
# TMA rows' default configuration without TMA, to tell the two changes apart
DIAG_BWD = ["64,128,32,4,3", "64,256,64,8,3", "128,128,64,8,3", "32,256,64,4,3"]
# with TMA reductions (compiled for sm_90 on a CPU: 64x128x64 with 4 warps spills with
# TMA, with triton 3.9 and 3.6; these do not)
DIAG_TMA_BWD = ["64,128,64,8,3", "64,128,32,8,3", "128,128,32,8,3"]
# (no "neither" part: with no gradient to write, the compiler drops the recompute and the
# row would time an empty kernel; run E recorded such rows at 0.2-0.5 ms)
PARTS = {"dE+dC": (True, True, False), "dE": (True, False, False), "dC": (False, True, False)}


def diagnose_shape(inputs, args, record) -> None:
    """Where the backward's time goes, at one shape: the backward alone (after one
    untimed forward), computing ``dE`` and ``dC`` or each alone, with and without the
    forward's block maxima and without filtering; for
    the default and ``DIAG_BWD`` configurations and ``GROUP_N`` 8 and 128 besides the
    default 32; and with the TMA bulk reductions (``SMOOTHALIGN_LCE_TMA=1``) for their
    default and ``DIAG_TMA_BWD`` configurations, with their gradients' distance to the
    default path's (``de_vs_red``, ``dc_vs_red``: max difference over max entry). Against a
    cuBLAS ``[N, D] × [D, V]`` product, the floor of each of the three matrix products."""
    from smoothalign.kernels import triton_lce as K

    e0, c0, t = inputs
    (n, d), v = e0.shape, c0.shape[0]
    n_valid = int((t != -100).sum())
    g = torch.full((n,), 1.0 / n_valid, device=e0.device).masked_fill(t == -100, 0.0)
    eps = K.resolve_filter_eps("auto", e0.dtype)
    base = {"N": n, "D": d, "V": v, "kind": "diag"}
    ms = _time(lambda: torch.mm(e0, c0.T), args.repeats)
    record(
        {**base, "config": "cuBLAS e @ c.T (one of the three products)", "ms": ms, "status": "ok"}
    )
    # the default backward's strips and mean-row compensation, as triton_token_losses passes
    # them (no filter statistics asked for)
    options = {"strips": K.resolve_strips(None), "compensate": K.resolve_compensate(None)}

    def backward(forward, filt, part, maxima, tma=None):
        _, lse, c_mean, _, _ = forward
        return K._backward(
            e0, c0, None, t, lse, g, args.beta, None, filt, PARTS[part], False, None, maxima,
            c_mean, tma, None, stats=None, **options,
        )  # fmt: skip

    try:  # the default path's dE, dC (red adds, whatever SMOOTHALIGN_LCE_TMA says)
        forward0 = K._forward(e0, c0, None, t, args.beta, -100, None, True)
        red = backward(forward0, eps, "dE+dC", forward0[3], tma=False)
    except Exception as ex:
        record({**base, "config": "default backward", "status": "failed",
                "note": f"{type(ex).__name__}: {ex}"[:160]})  # fmt: skip
        return
    runs = [(None, None, False)] + [(cfg, None, False) for cfg in DIAG_BWD]
    runs += [(None, "8", False), (None, "128", False)]
    # the TMA bulk reductions (SMOOTHALIGN_LCE_TMA=1): their default BLOCK_D 32, then others
    runs += [(cfg, None, True) for cfg in [None, *DIAG_TMA_BWD]]
    for cfg, group_n, tma in runs:
        name = f"bwd {cfg or 'default'}" + (f", GROUP_N {group_n}" if group_n else "")
        name += ", TMA reduce" if tma else ""
        # (a non-TMA row sets TMA off, so that a user's SMOOTHALIGN_LCE_TMA=1 cannot run it)
        with _lce_env(bwd=cfg, group_n=group_n, tma="1" if tma else "0"):
            try:
                fwd = lambda: K._forward(e0, c0, None, t, args.beta, -100, None, True)  # noqa: E731
                if cfg is None and group_n is None and not tma:
                    record({**base, "config": "forward (storing block maxima)", "status": "ok",
                            "ms": _time(fwd, args.repeats)})  # fmt: skip
                forward = fwd()
                maxima = forward[3]
                variants = [(part, maxima, eps) for part in PARTS]
                if cfg is None and group_n is None:
                    variants += [("dE+dC", None, eps), ("dE+dC", None, None)]
                if tma:  # dE and dC together only, and how far from the red path's gradients
                    variants = variants[:1]
                    de, dc, _ = backward(forward, eps, "dE+dC", maxima)
                    base_tma = {**base, "de_vs_red": _rel(de.float(), red[0].float()),
                                "dc_vs_red": _rel(dc.float(), red[1].float()),
                                "tma_used": K._tma_reduce(True, e0.device, d)}  # fmt: skip
                else:
                    base_tma = base
                for part, bm, filt in variants:
                    label = f"{name}: {part}" + ("" if bm is not None else ", no block max")
                    label += "" if filt is not None else ", no filter"

                    def bwd(part=part, bm=bm, filt=filt, forward=forward):
                        backward(forward, filt, part, bm)

                    ms = _time(bwd, args.repeats)
                    record({**base_tma, "config": label, "ms": ms, "status": "ok"})
            except Exception as ex:  # a configuration that does not compile or fit
                record({**base, "config": name, "status": "failed",
                        "note": f"{type(ex).__name__}: {ex}"[:160]})  # fmt: skip


def fastest(rows: list[dict], kind: str, default: str | None = None) -> tuple[str, float]:
    """The configuration of ``kind`` with the least time summed over the shapes (a failed
    row counts as never finishing). With ``default`` (a configuration among the rows), a
    configuration whose error at some shape exceeds both ``CORRECTNESS_TOL`` and
    ``ERROR_SLACK`` times the default's there counts as never finishing too."""
    bar: dict[tuple, float] = {}
    if default is not None:
        for r in rows:
            if r["kind"] == kind and r["config"] == default and r["status"] == "ok":
                for key in ("de_rel_err", "dc_rel_err"):
                    if key in r:
                        bar[(r["N"], r["D"], r["V"], key)] = max(
                            CORRECTNESS_TOL[key], ERROR_SLACK * r[key]
                        )
    totals: dict[str, float] = {}
    for r in rows:
        if r["kind"] == kind:
            ms = r["ms"] if r["status"] == "ok" else float("inf")
            for key in ("de_rel_err", "dc_rel_err"):
                limit = bar.get((r.get("N"), r.get("D"), r.get("V"), key))
                if limit is not None and not r.get(key, float("inf")) <= limit:
                    ms = float("inf")  # less accurate than the default allows
            totals[r["config"]] = totals.get(r["config"], 0.0) + ms
    best = min(totals, key=totals.get)
    return best, totals[best]


def export_lines(kind: str, config: str, total: float) -> list[str]:
    """The shell exports for a configuration picked by :func:`fastest` (a ``BWD_DIV`` one
    also sets auto's divisor for the steps after the sweep)."""
    cfg, _, div = config.partition(DIV_SEP)
    lines = [f"export SMOOTHALIGN_LCE_{kind.upper()}={cfg}  # {total:.1f} ms"]
    if div:
        lines.append(f"export SMOOTHALIGN_LCE_FILTER_DIV={div}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--inputs", help="a real model's hidden states and head (real_inputs.py)")
    p.add_argument("--json", required=True)
    p.add_argument("--export", help="write the fastest configuration as shell exports")
    p.add_argument(
        "--diagnose",
        action="store_true",
        help="instead of the sweep: the backward's time by part (dE, dC) per shape",
    )
    args = p.parse_args(argv)
    rows: list[dict] = []

    def record(row):
        print(json.dumps(row), flush=True)
        rows.append(row)
        doc = {"gpu": torch.cuda.get_device_name(), "rows": rows}
        Path(args.json).write_text(json.dumps(doc, indent=1))

    if args.inputs:  # a real model's (real_inputs.py): filtering behaves differently there
        from real_inputs import load

        cases = [load(args.inputs, "cuda")]
    else:
        cases = (make_inputs(n, d, v, "cuda", torch.bfloat16) for n, d, v in SHAPES)
    for inputs in cases:
        (diagnose_shape if args.diagnose else tune_shape)(inputs, args, record)
        torch.cuda.empty_cache()
    if args.export and not args.diagnose:
        lines = []
        from smoothalign.kernels.triton_lce import _config

        for kind in ("fwd", "bwd"):
            default = ",".join(str(x) for x in _config(kind, torch.bfloat16))
            best, total = fastest(rows, kind, default if kind == "bwd" else None)
            lines += export_lines(kind, best, total)
        Path(args.export).write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
