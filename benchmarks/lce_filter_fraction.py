"""How much of the Triton backward gradient filtering skips, on the kernel benchmark's inputs.

    python benchmarks/lce_filter_fraction.py [--tokens 8192] [--block-n 64 --block-v 128]

For each benchmark shape, in float32 on the CPU (no GPU needed; ~2 min per shape on 2
cores), it forms ``softmax − onehot`` for the first ``--tokens`` tokens and counts the
``[block_n, block_v]`` blocks the backward kernel would compute: those with a live token and
some ``|softmax − onehot| ≥ finfo(bf16).eps / 32`` (the ``filter_eps="auto"`` rule; β = 0).
It also reports the softmax mass per token that the skipped entries carry, that is, what
filtering drops from ``dE`` and ``dC``.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from linear_cross_entropy import SHAPES, make_inputs


def filter_fraction(e, c, t, block_n: int, block_v: int, eps: float, chunk: int = 512):
    """(blocks computed, blocks in all, mean softmax mass below ``eps`` per live token)."""
    v = c.shape[0]
    v_blocks = math.ceil(v / block_v)
    kept = total = 0
    dropped = []
    for s in range(0, e.shape[0], chunk):
        z = e[s : s + chunk] @ c.T
        p = torch.softmax(z, 1)
        tt = t[s : s + chunk]
        live = tt != -100
        d = p.clone()
        d[live, tt[live]] -= 1.0
        d[~live] = 0.0
        dropped.append(p[live].masked_fill(p[live] >= eps, 0.0).sum(1))
        rows = d.shape[0] // block_n * block_n  # whole token blocks only
        a = F.pad(d[:rows].abs(), (0, v_blocks * block_v - v))
        big = a.view(rows // block_n, block_n, v_blocks, block_v).amax(dim=(1, 3)) >= eps
        live_block = live[:rows].view(-1, block_n).any(1)
        kept += int((big & live_block[:, None]).sum())
        total += big.numel()
    dropped = torch.cat(dropped)
    return kept, total, float(dropped.mean()) if len(dropped) else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=8192, help="first N tokens of each shape")
    p.add_argument("--block-n", type=int, default=64, help="the backward's BLOCK_N")
    p.add_argument("--block-v", type=int, default=128, help="the backward's BLOCK_V")
    args = p.parse_args(argv)
    eps = torch.finfo(torch.bfloat16).eps / 32
    for n, d, v in SHAPES:
        e, c, t = make_inputs(n, d, v, "cpu", torch.bfloat16)
        k = min(args.tokens, n)
        kept, total, mass = filter_fraction(
            e[:k].float(), c.float(), t[:k], args.block_n, args.block_v, eps
        )
        print(
            f"{n}×{d}×{v}: backward blocks computed {kept}/{total} = {kept / total:.3f}; "
            f"softmax mass per token in skipped entries: {mass:.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
