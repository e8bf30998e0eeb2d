"""How close fp16 and bf16 gradients of the linear cross-entropy come to float64, on the CPU.

    python benchmarks/fp16_gradient_error.py [--tokens 8192] [--vocab 32000] [--dim 32]

The upstream gradient of a mean over N tokens is 1/N per token; times a softmax entry over a
large vocabulary, most entries of the logits' gradient are below fp16's smallest normal
number (6e-5) and many below its smallest subnormal (6e-8). Whoever rounds that gradient to
fp16 before the two products (``dE = G·C``, ``dC = Gᵀ·E``) loses them. This script measures
it on random inputs (``e ~ N(0, 1)``, ``C ~ N(0, 9/D)``: a logit spread of 3; uniform random
targets, β = 0.1, mean over all tokens) for:

* ``smoothalign``: ``kernels.dense_backward`` (the PyTorch path of the dense backward: on a
  GPU the same arithmetic runs in cuBLAS and one Triton pass); its chunks scale the
  upstream gradient to [½, 1) before the 16-bit cast and multiply the fp32 products back;
* ``eager``: ``F.cross_entropy(e @ c.T, t, label_smoothing=β)`` in the same dtype, as
  autograd computes it (the logits and their gradient in fp16/bf16).

Errors are ``max |Δ| / max |ref|`` against float64 autograd on the same rounded inputs. The
fraction of ``|G|`` entries under fp16's smallest normal number is printed as well.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from smoothalign.kernels.dense_backward import dense_backward


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref).abs().max() / ref.abs().max())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    n, v, d, beta = args.tokens, args.vocab, args.dim, args.beta
    gen = torch.Generator().manual_seed(args.seed)
    e64 = torch.randn(n, d, generator=gen, dtype=torch.float64)
    c64 = 3.0 / d**0.5 * torch.randn(v, d, generator=gen, dtype=torch.float64)
    t = torch.randint(0, v, (n,), generator=gen)
    print(f"N={n} D={d} V={v} beta={beta}: max relative error against float64")
    print("| dtype | impl | dE rel err | dC rel err |")
    print("|---|---|---|---|")
    for dtype in (torch.float16, torch.bfloat16):
        e, c = e64.to(dtype), c64.to(dtype)
        er, cr = e.double().requires_grad_(), c.double().requires_grad_()
        F.cross_entropy(er @ cr.T, t, label_smoothing=beta).backward()
        with torch.no_grad():
            lse = torch.logsumexp(e.double() @ c.double().T, -1)
        g = torch.full((n,), 1.0 / n)
        de, dc, _ = dense_backward(
            e, c, None, t, lse.float(), g, beta=beta, softcap=None,
            need=(True, True, False), chunk_rows=1024,
        )  # fmt: skip
        print(f"| {str(dtype)[6:]} | smoothalign | {rel_err(de, er.grad):.2e} | "
              f"{rel_err(dc, cr.grad):.2e} |")  # fmt: skip
        ee, ce = e.clone().requires_grad_(), c.clone().requires_grad_()
        F.cross_entropy(ee @ ce.T, t, label_smoothing=beta).backward()
        print(f"| {str(dtype)[6:]} | eager | {rel_err(ee.grad, er.grad):.2e} | "
              f"{rel_err(ce.grad, cr.grad):.2e} |")  # fmt: skip
    with torch.no_grad():
        z = e64 @ c64.T
        grad = (torch.softmax(z, -1) - beta / v) / n
        grad[torch.arange(n), t] -= (1 - beta) / n
        tiny = float((grad.abs() < torch.finfo(torch.float16).tiny).double().mean())
    print(f"\nentries of the logits' gradient below fp16's smallest normal number: {tiny:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
