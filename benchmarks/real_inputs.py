"""A real model's hidden states and LM head, small enough to carry to the GPU machine.

    python benchmarks/real_inputs.py --model smollm2-135m --out .gpu-inputs/smollm2.safetensors

The kernel benchmark's random logits are filtering's easy case (``lce_filter_fraction.py``),
so its timings need a check on real hidden states. A device call carries at most 64 MiB, and
SmolLM2-135M's head alone is 57 MB in bf16, so this file stores:

* ``e``: the final hidden states (the LM head's input) of ``--tokens`` tokens of the embedded
  preference set's texts (prompt + chosen response, in windows of 1024), bf16 ``[N, D]``;
* ``c_int8`` and ``c_scale``: the LM head, int8 per row with a float32 scale per row
  (symmetric, ``max |row| / 127``), 28 MB for SmolLM2;
* ``t``: each token's target, the next token.

:func:`load` returns ``(e, c, t)`` with ``c`` dequantised to bf16. The export prints the
largest change of a logit that the int8 head and bf16 states cause, and the share of
backward blocks gradient filtering must compute before and after, so that the rounding is
known not to change what the benchmark measures.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def quantize_rows(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: ``c ≈ c_int8 · scale[:, None]``."""
    scale = c.abs().amax(1).clamp(min=1e-12) / 127.0
    return torch.round(c / scale[:, None]).clamp(-127, 127).to(torch.int8), scale.float()


def load(path: str | os.PathLike, device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(e, c, t)``: bf16 hidden states, the bf16 head (dequantised) and the targets."""
    data = load_file(str(path))
    c = data["c_int8"].float() * data["c_scale"][:, None]
    e = data["e"].to(device, torch.bfloat16)
    return e, c.to(device, torch.bfloat16), data["t"].to(device)


def export(model: str, tokens: int, out: Path) -> dict:
    """Write the file; return what was checked about the rounding."""
    from lce_filter_fraction import filter_fraction, model_inputs

    e, c, t = model_inputs(model, tokens)
    c_int8, scale = quantize_rows(c)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "e": e.to(torch.bfloat16).contiguous(),
        "c_int8": c_int8.contiguous(),
        "c_scale": scale.contiguous(),
        "t": t.to(torch.int64).contiguous(),
    }
    # atomic: a partial file never replaces a good one
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"model": model, "tokens": str(tokens)})
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    e2, c2, t2 = (x.float() if x.is_floating_point() else x for x in load(out))
    eps = torch.finfo(torch.bfloat16).eps / 32
    before = filter_fraction(e, c, t, 64, 128, eps)
    after = filter_fraction(e2, c2, t2, 64, 128, eps)
    # how much the rounding (int8 head, bf16 states) moves the logits, over every token
    z_max, z_abs_sum, z_sum, z_sq_sum, count = 0.0, 0.0, 0.0, 0.0, 0
    for s in range(0, e.shape[0], 512):
        z = e[s : s + 512] @ c.T
        dz = (e2[s : s + 512] @ c2.T - z).abs()
        z_max = max(z_max, float(dz.max()))
        z_abs_sum += float(dz.double().sum())
        z_sum += float(z.double().sum())
        z_sq_sum += float(z.double().square().sum())
        count += z.numel()
    z_mean = z_sum / count
    return {
        "bytes": out.stat().st_size,
        "shape": (e.shape[0], e.shape[1], c.shape[0]),
        "max_logit_change": z_max,
        "mean_logit_change": z_abs_sum / count,
        "logit_std": (z_sq_sum / count - z_mean**2) ** 0.5,
        "blocks_computed_before": before[0] / before[1],
        "blocks_computed_after": after[0] / after[1],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--out", default=".gpu-inputs/smollm2.safetensors")
    args = p.parse_args(argv)
    info = export(args.model, args.tokens, Path(args.out))
    n, d, v = info["shape"]
    print(
        f"wrote {args.out}: {info['bytes'] / 2**20:.1f} MiB, N×D×V = {n}×{d}×{v}; logit "
        f"change from the int8 head and bf16 states: mean {info['mean_logit_change']:.3g}, "
        f"largest {info['max_logit_change']:.3g} (logit std {info['logit_std']:.3g}); "
        f"backward blocks computed (64×128, eps 2⁻¹²) {info['blocks_computed_before']:.3f} "
        f"before, {info['blocks_computed_after']:.3f} after"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
