"""Linear cross-entropy, forward + backward: this project's kernel against its peers.

    python benchmarks/linear_cross_entropy.py                      # CUDA, the issue's shapes
    python benchmarks/linear_cross_entropy.py --device cpu --small # smoke check (tiny shapes)

Peers: eager PyTorch (``F.cross_entropy((e @ c.T).float(), t, label_smoothing=β)``, as
transformers computes its loss), ``torch.compile`` of the same, Liger Kernel's
``LigerFusedLinearCrossEntropyLoss`` and Apple's Cut Cross-Entropy (β = 0 only). A peer
whose package is missing (or that cannot run on the device) is listed as skipped, with why.

Time: CUDA events around forward + backward (gradients of ``e`` and ``c``), median of
``--repeats`` (≥ 10) after ``--warmup`` runs. Memory: peak allocated during those runs minus
what was allocated before (the inputs), i.e. the gradients plus every temporary; "× grads"
divides it by the bytes of the gradients themselves. Error: |Δ| of the loss against an
eager reference in float32 (inputs upcast, float32 logits) on the same inputs, and max |Δ|
of ``dE`` and of ``dC`` relative to their max; this is the GPU correctness check of the
kernels at the benchmark's shapes (``CORRECTNESS_TOL``, with eager bf16's errors printed
beside it for scale).
Prints a Markdown table and writes JSON (``--json``), rewritten after every row so that a
run stopped part-way keeps what it measured.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from smoothalign.kernels import linear_cross_entropy  # noqa: E402

SHAPES = [(8192, 2304, 256000), (8192, 4096, 128256)]  # (N, D, V): Gemma-2-2B, Llama-3-8B
SMALL_SHAPES = [(64, 32, 300)]
# GPU correctness against the float32 reference: |Δloss| relative to the loss, and the max
# |Δ| of dE and dC relative to their max (bf16 gradients resolve ~2⁻⁸ of their magnitude)
CORRECTNESS_TOL = {"loss_rel_err": 1e-3, "de_rel_err": 2e-2, "dc_rel_err": 2e-2}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------- implementations
def _eager(e, c, t, beta):
    return F.cross_entropy((e @ c.T).float(), t, label_smoothing=beta)


def _reference(e, c, t, beta):
    """Float32 inputs and logits: the yardstick for the errors."""
    return F.cross_entropy(e.float() @ c.float().T, t, label_smoothing=beta)


def _ours(e, c, t, beta):
    return linear_cross_entropy(e, c, t, label_smoothing=beta)


def _ours_with(**options):
    """``_ours`` through the Triton kernel with one of its options changed (same mean):
    ``block_max=False`` (no skipping of filterable blocks before their recompute, only
    after), ``filter_eps=None`` (every backward block computed), ``tma_reduce=True`` (the
    backward's tiles added by TMA bulk reductions) or
    ``dense_backward=BYTES`` (the backward as three cuBLAS products per chunk of tokens),
    ``strips=…``/``compensate=…`` (the strip threshold and the mean-row compensation)."""

    def loss(e, c, t, beta):
        from smoothalign.kernels.triton_lce import triton_token_losses

        losses = triton_token_losses(e, c, t, beta=beta, **options)
        return losses.sum() / (t != -100).sum().clamp(min=1)

    return loss


OURS = "smoothalign"  # every implementation whose name starts so is ours, not a peer


def implementations(device: str, small: bool) -> dict:
    """name → (function or None, note)."""
    impls = {"smoothalign": (_ours, "triton" if device == "cuda" else "chunked (CPU)")}
    if device == "cuda":
        impls["smoothalign (no block max)"] = (_ours_with(block_max=False), "triton, block_max off")
        # the block rule alone (run F's kernel): every row and column of a computed block
        # added, no compensation; and strips at twice the default threshold
        impls["smoothalign (no strips)"] = (
            _ours_with(strips=0.0, compensate=False),
            "triton, strips 0, compensate off",
        )
        impls["smoothalign (strips 0.5)"] = (_ours_with(strips=0.5), "triton, strips 0.5")
        # every block computed: the cost where few are skippable, as with a trained model's
        # hidden states (SmolLM2: 96% of the blocks computed), beside the dense rows below
        impls["smoothalign (no filtering)"] = (
            _ours_with(filter_eps=None),
            "triton, filter_eps=None",
        )
        # unfiltered gradients through cuBLAS, for a trained model's peaked softmax (where the
        # filter skips few blocks): chunks of 64 MiB (about the memory target) and 512 MiB
        for mib in (64, 512):
            impls[f"smoothalign (dense backward, {mib} MiB)"] = (
                _ours_with(dense_backward=mib << 20),
                "triton forward, cuBLAS backward, no filtering",
            )
        if os.environ.get("SMOOTHALIGN_BENCH_TMA") == "1":  # opt-in: not yet run on a GPU
            impls["smoothalign (TMA reduce)"] = (
                _ours_with(tma_reduce=True),
                "triton, TMA bulk reductions",
            )
    impls["eager"] = (_eager, "")
    if device == "cuda" or not small:
        impls["torch.compile"] = (torch.compile(_eager, dynamic=False), "")
    else:
        impls["torch.compile"] = (None, "skipped in the CPU smoke mode (compile time)")
    if device != "cuda":
        impls["liger"] = (None, "skipped: needs CUDA")
        impls["cce"] = (None, "skipped: needs CUDA")
        return impls
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        cache: dict[float, object] = {}

        def _liger(e, c, t, beta):
            if beta not in cache:
                cache[beta] = LigerFusedLinearCrossEntropyLoss(label_smoothing=beta)
            return cache[beta](c, e, t)

        impls["liger"] = (_liger, f"liger-kernel {_version('liger-kernel')}")
    except Exception as ex:  # ImportError, or a broken install
        impls["liger"] = (None, f"skipped: liger-kernel not importable ({type(ex).__name__})")
    try:
        from cut_cross_entropy import linear_cross_entropy as cce

        def _cce(e, c, t, beta):
            if beta != 0:
                raise NotImplementedError("Cut Cross-Entropy: β = 0 only")
            return cce(e, c, t)

        impls["cce"] = (_cce, f"cut-cross-entropy {_version('cut-cross-entropy')}")
    except Exception as ex:
        impls["cce"] = (None, f"skipped: cut-cross-entropy not importable ({type(ex).__name__})")
    return impls


# ---------------------------------------------------------------------------- measurement
def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(fn, e0, c0, t, beta, device, warmup, repeats):
    e = e0.detach().clone().requires_grad_()
    c = c0.detach().clone().requires_grad_()

    def step():
        e.grad = c.grad = None
        loss = fn(e, c, t, beta)
        loss.backward()
        return loss

    for _ in range(warmup):
        step()
    e.grad = c.grad = None
    _sync(device)
    times = []
    if device == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            loss = step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            loss = step()
            times.append(1e3 * (time.perf_counter() - t0))
    peak = torch.cuda.max_memory_allocated() - base if device == "cuda" else None
    return {
        "ms": statistics.median(times),
        "ms_min": min(times),
        "peak_extra_bytes": peak,
        "loss": float(loss.detach()),
        "de": e.grad.detach().float(),
        "dc": c.grad.detach().float(),
    }


def _rel(x, ref) -> float:
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def make_inputs(n: int, d: int, v: int, device, dtype, seed: int = 0):
    """Hidden states ``[n, d]``, a head ``[v, d]`` with unit-variance logits, and targets
    with the first tenth ignored (a prompt's worth of tokens)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    e0 = torch.randn(n, d, generator=g).to(device, dtype)
    c0 = (torch.randn(v, d, generator=g) / d**0.5).to(device, dtype)
    t = torch.randint(0, v, (n,), generator=g).to(device)
    t[: n // 10] = -100
    return e0, c0, t


def _cases(args, device, dtype):
    """The inputs, one shape at a time: random (the issue's shapes, or tiny ones with
    ``--small``), or a real model's from ``--inputs`` (``real_inputs.py``)."""
    if args.inputs:
        from real_inputs import load

        e0, c0, t = load(args.inputs, device)
        yield e0.to(dtype), c0.to(dtype), t
        return
    for n, d, v in SMALL_SHAPES if args.small else SHAPES:
        yield make_inputs(n, d, v, device, dtype)


def run(args, on_row=None) -> list[dict]:
    """Measure every (shape, β, implementation); ``on_row(rows)`` after each row."""
    device = args.device
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    impls = implementations(device, args.small)
    rows = []
    for e0, c0, t in _cases(args, device, dtype):
        (n, d), v = e0.shape, c0.shape[0]
        grad_bytes = (n * d + v * d) * e0.element_size()
        for beta in args.betas:
            # float32 leaves, so that the reference gradients are not rounded to bf16
            ref = measure(_reference, e0.float(), c0.float(), t, beta, device, 0, 1)
            ref_loss, ref_de, ref_dc = ref["loss"], ref.pop("de"), ref.pop("dc")
            for name, (fn, note) in impls.items():
                row = {"N": n, "D": d, "V": v, "beta": beta, "impl": name, "note": note}
                if fn is None:
                    row["status"] = "skipped"
                elif name == "cce" and beta != 0:
                    row.update(status="skipped", note="β = 0 only")
                else:
                    try:
                        r = measure(fn, e0, c0, t, beta, device, args.warmup, args.repeats)
                        de, dc = r.pop("de"), r.pop("dc")
                        row.update(r, status="ok", ref_loss=ref_loss)
                        row["loss_err"] = abs(r["loss"] - ref_loss)
                        row["loss_rel_err"] = row["loss_err"] / max(abs(ref_loss), 1e-30)
                        row["de_rel_err"] = _rel(de, ref_de)
                        row["dc_rel_err"] = _rel(dc, ref_dc)
                        del de, dc
                        if r["peak_extra_bytes"] is not None:
                            row["x_grads"] = r["peak_extra_bytes"] / grad_bytes
                    except torch.cuda.OutOfMemoryError:
                        row.update(status="OOM")
                    except Exception as ex:  # a peer failing must not stop the table
                        row.update(status="failed", note=f"{type(ex).__name__}: {ex}"[:120])
                    if device == "cuda":
                        torch.cuda.empty_cache()
                row["grad_bytes"] = grad_bytes
                rows.append(row)
                print(_line(row), flush=True)
                if on_row is not None:
                    on_row(rows)
            del ref_de, ref_dc
    return rows


def _line(r: dict) -> str:
    shape = f"{r['N']}×{r['D']}×{r['V']}"
    if r["status"] != "ok":
        return f"| {shape} | {r['beta']} | {r['impl']} | {r['status']} | | | | | | {r['note']} |"
    mem = (
        f"{r['peak_extra_bytes'] / 2**20:,.0f} | {r['x_grads']:.3f}"
        if r["peak_extra_bytes"] is not None
        else "n/a | n/a"
    )
    return (
        f"| {shape} | {r['beta']} | {r['impl']} | {r['ms']:.2f} | {mem} | "
        f"{r['loss_err']:.2e} | {r['de_rel_err']:.2e} | {r['dc_rel_err']:.2e} | {r['note']} |"
    )


HEADER = (
    "| N×D×V | β | impl | fwd+bwd ms (median) | peak extra MiB | × grads | abs Δloss "
    "| dE rel err | dC rel err | note |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def verdict(rows: list[dict]) -> list[str]:
    """The issue's target at β = 0.1, per shape: time ≤ the fastest peer, memory ≤ 1.05 × grads.

    The peers are every other implementation at β = 0.1 and Cut Cross-Entropy at β = 0 (it
    has no label smoothing); the line gives our time's ratio to each. Then one correctness
    line per shape and β: our errors against ``CORRECTNESS_TOL`` (eager bf16's beside them).
    """
    out = []
    for key in sorted({(r["N"], r["D"], r["V"]) for r in rows}):
        sub = [r for r in rows if (r["N"], r["D"], r["V"]) == key and r["status"] == "ok"]
        peers = [
            r
            for r in sub
            if not r["impl"].startswith(OURS) and (r["beta"] == 0.1 or r["impl"] == "cce")
        ]
        variants = sorted({r["impl"] for r in sub if r["impl"].startswith(OURS)}, key=len)
        for name in variants:
            tag = "" if name == OURS else f"[{name}] "
            ours = next((r for r in sub if r["impl"] == name and r["beta"] == 0.1), None)
            if ours is not None and peers and ours.get("x_grads") is not None:
                best = min(peers, key=lambda r: r["ms"])
                ok_t = ours["ms"] <= best["ms"]
                ok_m = ours["x_grads"] <= 1.05
                ratios = ", ".join(
                    f"{r['impl']}(β={r['beta']}) {ours['ms'] / r['ms']:.2f}×"
                    for r in sorted(peers, key=lambda r: r["ms"])
                )
                out.append(
                    f"{key}: {tag}β=0.1 time {ours['ms']:.2f} ms vs fastest peer {best['impl']} "
                    f"(β={best['beta']}) {best['ms']:.2f} ms → {'PASS' if ok_t else 'FAIL'}; "
                    f"memory {ours['x_grads']:.3f}× grads → {'PASS' if ok_m else 'FAIL'}; "
                    f"time ratio ours/peer: {ratios}"
                )
            for beta in sorted({r["beta"] for r in sub}):
                mine = next((r for r in sub if r["impl"] == name and r["beta"] == beta), None)
                if mine is None:
                    continue
                eager = next((r for r in sub if r["impl"] == "eager" and r["beta"] == beta), None)
                errs = ", ".join(
                    f"{k} {mine[k]:.1e} (≤ {tol:.0e}"
                    + (f"; eager bf16 {eager[k]:.1e})" if eager else ")")
                    for k, tol in CORRECTNESS_TOL.items()
                )
                ok = all(mine[k] <= tol for k, tol in CORRECTNESS_TOL.items())
                out.append(
                    f"{key}: {tag}β={beta} correctness vs fp32 → {'PASS' if ok else 'FAIL'}: {errs}"
                )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", action="store_true", help="tiny shapes (smoke check)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.1])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", default="benchmarks/results/linear_cross_entropy.json")
    p.add_argument(
        "--inputs",
        help="a real model's hidden states and head (real_inputs.py) instead of random ones",
    )
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device (use --device cpu --small)")
    if args.small and args.repeats > 3 and args.device == "cpu":
        args.repeats, args.warmup = 3, 1
    env = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        **{k: _version(k) for k in ("triton", "liger-kernel", "cut-cross-entropy")},
        "dtype": args.dtype,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "inputs": args.inputs or "random",
        # block sizes exported by lce_tune, block_max switched off: what ran
        "kernel_overrides": {
            k: v for k, v in os.environ.items() if k.startswith("SMOOTHALIGN_LCE")
        },
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(rows):  # write-then-rename: a run killed mid-write keeps the previous file
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"env": env, "rows": rows, "verdict": verdict(rows)}, indent=1))
        tmp.replace(out)

    print(HEADER, flush=True)
    rows = run(args, on_row=save)
    save(rows)
    for line in verdict(rows):
        print(line)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
