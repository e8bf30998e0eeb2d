"""How many bytes of activations autograd keeps per token and layer, eager vs lean layers.

    python benchmarks/lean_layers_memory.py --json outputs/lean_layers_memory.json

Builds a Llama from a config (default: the DPO step benchmark's Llama-3.2-1B shape, hidden
2048, intermediate 8192, 32 heads, 8 KV heads, but ``--layers`` layers and a small
vocabulary), runs one bf16 forward of ``--batch`` × ``--seq`` tokens under
``torch.autograd.graph.saved_tensors_hooks`` and adds up the distinct storages that the
backward will read, parameters excluded: the activation memory a training step holds at
its peak, counted exactly rather than read off an allocator. It does this for the model as
built (eager PyTorch layers), with ``smoothalign.models.lean.use_lean_layers`` (``lean``)
and with ``use_lean_layers(..., recompute=True)`` (``lean+recompute``: the norms' outputs
and the SwiGLU product recomputed in the backward), checks that the outputs are identical,
the gradients close (and lean+recompute's equal to lean's), and extrapolates per layer-token
to ``--target-layers`` × ``--target-tokens`` (the DPO step benchmark: 16 layers, 8 pairs ×
1024 tokens × chosen and rejected = 16384 tokens). Device-independent for the norms and the
MLP; attention's share depends on the SDPA backend (CPU here, flash attention on a GPU).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from smoothalign.models.lean import use_lean_layers


def saved_bytes(model, ids) -> tuple[int, torch.Tensor]:
    """Bytes of the distinct non-parameter storages saved for the backward, and the output."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model.model(input_ids=ids).last_hidden_state
    return sum(seen.values()), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=8192)
    ap.add_argument("--target-layers", type=int, default=16)
    ap.add_argument("--target-tokens", type=int, default=16384)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=512,
        max_position_embeddings=max(2048, args.seq),
        attn_implementation="sdpa",
    )
    eager = LlamaForCausalLM(cfg).to(torch.bfloat16)
    lean = copy.deepcopy(eager)
    patched = use_lean_layers(lean)
    recompute = copy.deepcopy(eager)
    use_lean_layers(recompute, recompute=True)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))
    tokens = args.batch * args.seq

    rows = {}
    outs = {}
    models = (("eager", eager), ("lean", lean), ("lean+recompute", recompute))
    for name, model in models:
        total, out = saved_bytes(model, ids)
        # per layer: the difference to a copy with one layer fewer (the embedding's and the
        # final norm's share cancel)
        fewer = copy.deepcopy(model)
        fewer.model.layers = fewer.model.layers[:-1]
        fewer.config.num_hidden_layers = args.layers - 1
        total_less, _ = saved_bytes(fewer, ids)
        per_layer_token = (total - total_less) / tokens
        rows[name] = {
            "saved_bytes": total,
            "bytes_per_layer_token": per_layer_token,
            "extrapolated_GiB": per_layer_token * args.target_layers * args.target_tokens / 2**30,
        }
        outs[name] = out
    same = bool(torch.equal(outs["eager"], outs["lean"])) and bool(
        torch.equal(outs["eager"], outs["lean+recompute"])
    )
    g = torch.randn_like(outs["eager"])
    grads = {}
    for name, model in models:
        model.zero_grad()
        model.model(input_ids=ids).last_hidden_state.backward(g)
        grads[name] = torch.cat(
            [p.grad.float().reshape(-1) for p in model.parameters() if p.grad is not None]
        )
    rel = float((grads["lean"] - grads["eager"]).norm() / grads["eager"].norm())
    recompute_same_grads = bool(torch.equal(grads["lean"], grads["lean+recompute"]))
    eager_bytes = rows["eager"]["bytes_per_layer_token"]
    saving = 1 - rows["lean"]["bytes_per_layer_token"] / eager_bytes
    saving_recompute = 1 - rows["lean+recompute"]["bytes_per_layer_token"] / eager_bytes
    result = {
        "config": vars(args) | {"json": str(args.json) if args.json else None},
        "patched": patched,
        "outputs_identical": same,
        "grad_rel_diff_bf16": rel,
        "rows": rows,
        "saving": saving,
        "saving_recompute": saving_recompute,
        "recompute_grads_equal_lean": recompute_same_grads,
    }
    print(f"patched {patched}; outputs identical: {same}; bf16 gradient rel. diff {rel:.2e}")
    for name, r in rows.items():
        print(
            f"{name:6s} {r['bytes_per_layer_token'] / 1024:7.1f} KiB per layer-token -> "
            f"{r['extrapolated_GiB']:6.2f} GiB at {args.target_layers} layers × "
            f"{args.target_tokens} tokens"
        )
    print(
        f"lean keeps {100 * saving:.1f}% less, lean+recompute {100 * saving_recompute:.1f}% "
        f"less (its gradients equal lean's bit for bit: {recompute_same_grads})"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
