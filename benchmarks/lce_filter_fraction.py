"""How much of the Triton backward gradient filtering skips, on the kernel benchmark's inputs.

    python benchmarks/lce_filter_fraction.py [--tokens 8192] [--block-n 64 --block-v 128] [--logit-std 6.3]
    python benchmarks/lce_filter_fraction.py --model smollm2-135m [--tokens 4096] [--sort-vocab]
    python benchmarks/lce_filter_fraction.py --dpo-step-model [--tokens 4096] [--logit-scale 7]
    python benchmarks/lce_filter_fraction.py --eps-sweep 2.44e-4 1.22e-4 6.1e-5 [--tokens 1024]
    python benchmarks/lce_filter_fraction.py --eps-sweep 2.44e-4 --strips 1 0.5 0.25 [--inputs F]

For each benchmark shape, in float32 on the CPU (no GPU needed; ~2 min per shape on 2
cores), it forms ``softmax − onehot`` for the first ``--tokens`` tokens and counts the
``[block_n, block_v]`` blocks the backward kernel would compute: those with a live token and
some ``|softmax − onehot| ≥ finfo(bf16).eps / 32`` (the ``filter_eps="auto"`` rule; β = 0).
It also reports the softmax mass per token in the blocks its token block skips, that is,
what filtering drops from ``dE`` and ``dC``.

With ``--model`` (a name or folder ``smoothalign.models.loading`` knows) the inputs are a
real model's instead: its final hidden states and LM head on the embedded preference set's
texts (prompt + chosen response, concatenated to ``--tokens`` tokens), each token's target
the next token. A trained model's softmax is peaked, unlike the benchmark's random logits.
``--sort-vocab`` first orders the vocabulary by its mean logit over the sample (Cut
Cross-Entropy's vocabulary sorting, here with the sample's own means: optimistic), so that
the likely tokens share blocks.

With ``--dpo-step-model`` the inputs are those of ``benchmarks/dpo_step.py``'s timed step:
its config-built Llama-3.2-1B-shape model (random weights, seed 0, drawn here on the CPU:
the GPU run draws its own on CUDA, from the same distribution; float32 here) on its
random token ids, each response token's target the next token (prompt positions ignored),
in the order the step's head sees them. Random weights give near-uniform softmaxes, like the
kernel benchmark's random logits, so this says how much the step's timing owes to filtering.

With ``--eps-sweep`` it measures, on the kernel benchmark's inputs (the last ``--tokens``
tokens: the first tenth of each shape is ignored) or a real model's (``--inputs``, from
``real_inputs.py``), what each threshold costs and buys: the share of live blocks computed
and the filter's own contribution to the ``dE`` error that the GPU benchmark checks against
a 2e-2 tolerance, with and without the kernel's mean-row compensation, and with
``--strips SHARE…`` the same for the strip rule (``filter_error``).
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from linear_cross_entropy import SHAPES, make_inputs


def filter_fraction(e, c, t, block_n: int, block_v: int, eps: float, chunk: int = 512):
    """(blocks computed, blocks in all, blocks with a live token (the others are never
    computed), mean softmax mass per live token in the blocks the filter skips: what
    filtering drops from the gradient)."""
    v = c.shape[0]
    v_blocks = math.ceil(v / block_v)
    kept = total = live_blocks = 0
    dropped = []
    chunk = max(block_n, chunk // block_n * block_n)  # whole token blocks per chunk
    for s in range(0, e.shape[0], chunk):
        tt = t[s : s + chunk]
        rows = tt.shape[0] // block_n * block_n  # whole token blocks only
        if rows == 0:
            break
        tt = tt[:rows]
        p = torch.softmax(e[s : s + rows] @ c.T, 1)
        live = tt != -100
        d = p.clone()
        d[live, tt[live]] -= 1.0
        d[~live] = 0.0
        pad = (0, v_blocks * block_v - v)
        a = F.pad(d.abs(), pad).view(rows // block_n, block_n, v_blocks, block_v)
        # [token blocks, vocabulary blocks]: computed (ignored rows have d = 0, so a block of
        # ignored tokens is never computed, as the kernel returns early on it)
        big = a.amax(dim=(1, 3)) >= eps
        kept += int(big.sum())
        total += big.numel()
        live_blocks += int(live.view(-1, block_n).any(1).sum()) * v_blocks
        # per token: the softmax mass in the vocabulary blocks its token block skips
        mass = F.pad(p, pad).view(rows, v_blocks, block_v).sum(2)  # [rows, vocabulary blocks]
        skipped = (~big).repeat_interleave(block_n, 0)
        dropped.append((mass * skipped).sum(1)[live])
    dropped = torch.cat(dropped) if dropped else torch.zeros(0)
    return kept, total, live_blocks, float(dropped.mean()) if len(dropped) else float("nan")


def filter_error(
    e, c, t, block_n: int, block_v: int, eps_list, beta: float, chunk: int = 512, shares=()
):
    """For each threshold in ``eps_list``, under the kernel's rule (a block is computed when
    some live entry reaches the threshold or it holds a live token's target): a dict with the
    share of the blocks with a live token that are computed (``blocks``: also the share of the
    dense backward's tile products, whatever ``block_n``: a block costs ``block_n·block_v·D``
    of them, and there are ``N/block_n`` token blocks), the filter's own ``dE`` error (``err``) and that
    error after the kernel's mean-row compensation (``compensated``), and under ``strips``,
    for each of ``shares``, the same for the strip rule (a computed block adds to ``dE`` only
    its rows with an entry ``≥ share·eps`` or their target): the share of the live tokens' ``[token,
    vocabulary block]`` rows added (``rows``), the atomic bytes into ``dE`` against the block rule's
    (``bytes_vs_blocks``), ``err`` and ``compensated``.

    The error is ``max |ΔdE| / max |dE|`` over the tokens given, where ``ΔdE = Σ d_v·C_v``
    over the gradient entries left out, ``d = softmax − (1 − β)·onehot`` (per token, before
    the common ``1/N``); the β terms are exact (closed form), so this is all that filtering
    changes. Compensated: minus ``m·c̄``, with ``m`` the off-target softmax mass left out and
    ``c̄`` C's mean row. Float32, with the gradient's other roundings (bf16) not included."""
    v = c.shape[0]
    v_blocks = math.ceil(v / block_v)
    pad = (0, v_blocks * block_v - v)
    out = [
        {"blocks": 0, "err": 0.0, "compensated": 0.0,
         "strips": {f: {"rows": 0, "err": 0.0, "compensated": 0.0} for f in shares}}
        for _ in eps_list
    ]  # fmt: skip
    live_blocks = rows_all = 0
    de_max = 0.0
    chunk = max(block_n, chunk // block_n * block_n)
    c_mean = c.mean(0)

    def errors(skip, p, d, live, tt):
        """(max |ΔdE|, compensated) over the live tokens, ``skip`` the entries left out."""
        dropped = torch.where(skip, d, 0.0) @ c
        off = torch.where(skip, p, 0.0)
        off[live, tt[live]] = 0.0
        comp = dropped - off.sum(1, keepdim=True) * c_mean[None, :]
        return float(dropped[live].abs().max()), float(comp[live].abs().max())

    for s in range(0, e.shape[0], chunk):
        tt = t[s : s + chunk]
        rows = tt.shape[0] // block_n * block_n
        if rows == 0:
            break
        tt, ee = tt[:rows], e[s : s + rows]
        live = tt != -100
        if not bool(live.any()):
            continue  # a chunk of ignored (prompt) tokens: no gradient, no blocks
        p = torch.softmax(ee @ c.T, 1)
        p[~live] = 0.0
        d = p.clone()
        d[live, tt[live]] -= 1.0 - beta
        # the exact gradient (per token, times N): softmax − (1 − β)·onehot − β/V
        de = d @ c - beta * c_mean
        de[~live] = 0.0
        de_max = max(de_max, float(de.abs().max()))
        a = F.pad(d.abs(), pad).view(rows // block_n, block_n, v_blocks, block_v)
        row_max = a.amax(dim=3)  # [token blocks, block_n, vocabulary blocks]
        a = row_max.amax(dim=1)
        # the kernel never leaves out a live target's entry: its block is computed and its
        # row added (the one-hot term stays exact)
        hit = torch.zeros(rows, v_blocks * block_v, dtype=torch.bool)
        hit[live, tt[live]] = True
        row_hit = hit.view(rows // block_n, block_n, v_blocks, block_v).any(3)
        block_hit = row_hit.any(1)
        live_b = live.view(-1, block_n).any(1)
        live_blocks += int(live_b.sum()) * v_blocks
        rows_all += int(live.sum()) * v_blocks  # rows with a gradient
        for i, eps in enumerate(eps_list):
            big = ((a >= eps) | block_hit) & live_b[:, None]
            o = out[i]
            o["blocks"] += int(big.sum())
            skip = (~big).repeat_interleave(block_n, 0).repeat_interleave(block_v, 1)[:, :v]
            err, comp = errors(skip, p, d, live, tt)
            o["err"], o["compensated"] = max(o["err"], err), max(o["compensated"], comp)
            for f in shares:
                keep = big[:, None, :] & ((row_max >= f * eps) | row_hit)  # [blocks, n, vb]
                st = o["strips"][f]
                st["rows"] += int(keep.sum())
                skip = (~keep).reshape(rows, v_blocks).repeat_interleave(block_v, 1)[:, :v]
                err, comp = errors(skip, p, d, live, tt)
                st["err"], st["compensated"] = max(st["err"], err), max(st["compensated"], comp)
    for o in out:
        blocks = o["blocks"]
        o["blocks"] = blocks / max(live_blocks, 1)
        o["err"] /= de_max
        o["compensated"] /= de_max
        for st in o["strips"].values():
            st["bytes_vs_blocks"] = st["rows"] / max(blocks * block_n, 1)
            st["rows"] /= max(rows_all, 1)
            st["err"] /= de_max
            st["compensated"] /= de_max
    return out


def sort_vocabulary(e, c, t, chunk: int = 512):
    """``c``'s rows (and the targets) reordered by decreasing mean logit over ``e``."""
    total = torch.zeros(c.shape[0], dtype=torch.float64)
    for s in range(0, e.shape[0], chunk):
        total += (e[s : s + chunk] @ c.T).sum(0).double()
    order = torch.argsort(total, descending=True)
    new_id = torch.empty_like(order)
    new_id[order] = torch.arange(len(order))
    live = t != -100
    return e, c[order], torch.where(live, new_id[t.clamp(min=0)], t)


def model_inputs(name: str, tokens: int):
    """(hidden states ``[n, D]``, LM head ``[V, D]``, next-token targets ``[n]``), float32,
    from ``name`` on the embedded preference set's texts."""
    from smoothalign.assets import embedded_dataset_path
    from smoothalign.data.loading import load_preference_rows
    from smoothalign.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(name)
    ids: list[int] = []
    for row in load_preference_rows(embedded_dataset_path()):
        ids += tok(str(row["prompt"]) + str(row["chosen"]))["input_ids"]
        if len(ids) > tokens:
            break
    ids_t = torch.tensor(ids[: tokens + 1])[None]
    hidden = []
    hook = model.get_output_embeddings().register_forward_pre_hook(
        lambda _m, args: hidden.append(args[0].detach())
    )
    with torch.no_grad():
        for s in range(0, tokens, 1024):  # windows of 1024 tokens, each from its own start
            model(input_ids=ids_t[:, s : s + 1024])
    hook.remove()
    e = torch.cat([h[0] for h in hidden])[:tokens].float()
    return e, model.get_output_embeddings().weight.detach().float(), ids_t[0, 1 : tokens + 1]


def dpo_step_inputs(tokens: int, logit_scale: float = 1.0):
    """(hidden states ``[n, D]``, LM head ``[V, D]``, targets ``[n]``), float32: the first
    ``tokens`` positions (response tokens live, prompt tokens ignored) of the DPO step
    benchmark's batch through its model."""
    from dpo_step import LLAMA_1B, build_model, make_pairs, our_batch

    model = build_model(LLAMA_1B, torch.float32, "cpu", logit_scale)
    prompt, chosen, rejected = make_pairs(8, 256, 768, LLAMA_1B["vocab_size"])
    batch = our_batch(prompt, chosen, rejected, "cpu")
    ids, labels = batch["input_ids"], batch["labels"]
    per_row = ids.shape[1]
    rows = max(1, math.ceil(tokens / per_row))
    hidden = []
    hook = model.get_output_embeddings().register_forward_pre_hook(
        lambda _m, args: hidden.append(args[0].detach())
    )
    with torch.no_grad():
        for r in range(rows):  # one sequence at a time: the CPU's memory
            model(input_ids=ids[r : r + 1], use_cache=False)
    hook.remove()
    e = torch.cat([h[0] for h in hidden])[:tokens].float()
    # position t predicts token t+1, as the trainer's fused path does
    t = torch.cat([labels[:rows, 1:], labels.new_full((rows, 1), -100)], 1).reshape(-1)
    return e, model.get_output_embeddings().weight.detach().float(), t[:tokens]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=8192, help="first N tokens of each shape")
    p.add_argument("--block-n", type=int, default=64, help="the backward's BLOCK_N")
    p.add_argument("--block-v", type=int, default=128, help="the backward's BLOCK_V")
    p.add_argument("--model", help="a real model's hidden states and head instead")
    p.add_argument("--sort-vocab", action="store_true", help="order the vocabulary by mean logit")
    p.add_argument(
        "--dpo-step-model",
        action="store_true",
        help="the DPO step benchmark's config-built model and batch instead",
    )
    p.add_argument(
        "--logit-scale",
        type=float,
        default=1.0,
        help="with --dpo-step-model: its final norm's weight times this (dpo_step.py's option)",
    )
    p.add_argument(
        "--logit-std",
        type=float,
        default=1.0,
        help="the kernel benchmark's random logits times this (their standard deviation: 1)",
    )
    p.add_argument(
        "--eps-sweep",
        type=float,
        nargs="+",
        metavar="EPS",
        help="the kernel benchmark's shapes only: for each threshold, the blocks computed and "
        "the filter's own dE error (max over the tokens, relative to max |dE|; β = 0.1)",
    )
    p.add_argument(
        "--strips",
        type=float,
        nargs="*",
        default=[],
        metavar="SHARE",
        help="with --eps-sweep: also the strip rule at these shares of each threshold "
        "(triton_lce's strips): rows added, dE bytes and errors",
    )
    p.add_argument(
        "--inputs",
        help="with --eps-sweep: a real model's hidden states and head (real_inputs.py's file) "
        "instead of the benchmark shapes",
    )
    args = p.parse_args(argv)
    eps = torch.finfo(torch.bfloat16).eps / 32
    if args.eps_sweep:
        if args.inputs:
            from real_inputs import load

            e, c, t = load(args.inputs)
            cases = [(e.float(), c.float(), t)]
        else:
            cases = []
            for n, d, v in SHAPES:
                e, c, t = make_inputs(n, d, v, "cpu", torch.bfloat16)
                cases.append((e.float(), c.float() * args.logit_std, t))
        for e, c, t in cases:
            n, d, v = e.shape[0], e.shape[1], c.shape[0]
            k = min(args.tokens, n)
            e, t = e[n - k :], t[n - k :]
            results = filter_error(
                e, c, t, args.block_n, args.block_v, args.eps_sweep, 0.1, shares=args.strips
            )
            for x, r in zip(args.eps_sweep, results, strict=True):
                print(
                    f"{n}×{d}×{v}, last {k} tokens, filter_eps {x:.3g} (2^{math.log2(x):.1f}): "
                    f"blocks computed {r['blocks']:.3f} (the share of the dense products, whatever "
                    f"--block-n); filter's dE error {r['err']:.2e}, "
                    f"compensated {r['compensated']:.2e}",
                    flush=True,
                )
                for f, st in r["strips"].items():
                    print(
                        f"    strips {f:g}: rows added {st['rows']:.4f} (dE bytes "
                        f"{st['bytes_vs_blocks']:.3f}× the block rule's); dE error "
                        f"{st['err']:.2e}, compensated {st['compensated']:.2e}",
                        flush=True,
                    )
        return 0
    if args.model or args.dpo_step_model:
        if args.dpo_step_model:
            args.model = f"dpo_step.py's Llama-3.2-1B shape, logits ×{args.logit_scale:g}"
            e, c, t = dpo_step_inputs(args.tokens, args.logit_scale)
        else:
            e, c, t = model_inputs(args.model, args.tokens)
        if args.sort_vocab:
            e, c, t = sort_vocabulary(e, c, t)
        kept, total, live, mass = filter_fraction(e, c, t, args.block_n, args.block_v, eps)
        n, d, v = e.shape[0], c.shape[1], c.shape[0]
        spread = float((e[t != -100][:512] @ c.T).std())  # the logits' standard deviation
        print(
            f"{args.model} ({n}×{d}×{v}): backward blocks computed {kept}/{total} = "
            f"{kept / total:.3f} ({kept / max(live, 1):.3f} of the {live} with a live token); "
            f"softmax mass per token in skipped blocks: {mass:.4f}; logit std {spread:.2f}",
            flush=True,
        )
        return 0
    for n, d, v in SHAPES:
        e, c, t = make_inputs(n, d, v, "cpu", torch.bfloat16)
        k = min(args.tokens, n)
        e, c, t = e[:k].float(), c.float() * args.logit_std, t[:k]
        if args.sort_vocab:
            e, c, t = sort_vocabulary(e, c, t)
        kept, total, _, mass = filter_fraction(e, c, t, args.block_n, args.block_v, eps)
        print(
            f"{n}×{d}×{v}: backward blocks computed {kept}/{total} = {kept / total:.3f}; "
            f"softmax mass per token in skipped blocks: {mass:.4f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
