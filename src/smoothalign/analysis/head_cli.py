"""``smoothalign analyze head``: the LM-head entropy lower bound of SPEC §5 for a model, and
a one-line reading of what it implies for label smoothing at this vocabulary and width.

It samples the hidden states entering the head at every token of a few shipped texts
(:mod:`smoothalign.analysis.head_inputs`), computes ``σ_C`` (head weights), ``σ_h`` (hidden
states) and the bound (:mod:`smoothalign.analysis.head`), and compares it with the entropies
the head actually produces on those tokens. Writes ``head.json`` and ``head_entropy.png``
(histogram of the observed entropies, the bound and ``log|V|``) into ``--output-dir``, and
prints the reading.

This module imports only ``argparse`` at load time, so ``smoothalign --help`` stays fast.
"""

from __future__ import annotations

import argparse
import time

from smoothalign.config_args import add_trust_remote_code

DEFAULT_OUTPUT_DIR = "outputs/head_analysis"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="'smollm2-135m', 'tiny', or a local folder (a smoothalign run's folder: the model "
        "in its final/) / .gguf file; never downloaded",
    )
    parser.add_argument(
        "--texts",
        type=int,
        default=32,
        help="how many shipped conversations to run through the model",
    )
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens per text at most")
    parser.add_argument("--batch-size", type=int, default=8, help="texts per forward pass")
    parser.add_argument(
        "--device",
        default="auto",
        help="'auto' (CUDA if available, else the CPU), 'cpu', 'cuda' or 'cuda:N'; the "
        "model runs in fp32 on any device",
    )
    parser.add_argument(
        "--output-dir", default=DEFAULT_OUTPUT_DIR, help="directory for the results"
    )
    add_trust_remote_code(parser, "as a model trained with --trust-remote-code needs")


def run(args: argparse.Namespace) -> int:

    import torch

    from smoothalign._checks import check_ranges, resolve_device
    from smoothalign.analysis.head import head_entropy_bound, smoothing_for_entropy
    from smoothalign.analysis.head_inputs import default_texts, head_inputs, prediction_entropies
    from smoothalign.experiments.study_dir import check_not_a_study_folder
    from smoothalign.io import (
        atomic_write_json,
        check_not_a_run_or_model,
        check_output_dir,
        save_figure,
    )
    from smoothalign.models import describe_model, load_model_and_tokenizer, logit_transform

    t0 = time.perf_counter()
    out_dir = check_output_dir(args.output_dir)  # a file in the way: said before any work
    check_not_a_run_or_model(out_dir, "head.json, head_entropy.png")  # not into a run's
    check_not_a_study_folder(out_dir, "head.json, head_entropy.png")  # nor a study's
    device = resolve_device(args.device)  # the options before the model loads
    checks = {
        "max_tokens": (args.max_tokens >= 2, ">= 2"),
        "batch_size": (args.batch_size >= 1, ">= 1"),
        "texts": (args.texts >= 1, ">= 1"),
    }
    check_ranges(args, checks, flags=True)
    texts = default_texts(args.texts)
    if len(texts) < args.texts:
        raise ValueError(
            f"texts: {args.texts} asked for, but the shipped data set has {len(texts)} "
            "conversations"
        )
    model, tokenizer = load_model_and_tokenizer(
        args.model, trust_remote_code=args.trust_remote_code
    )
    scale, softcap = logit_transform(model.config)
    if softcap is not None:
        raise ValueError(
            f"model: {type(model).__name__} caps its logits (softcap {softcap:g}); the bound "
            "of SPEC §5 is for a linear head, and the capped entropies would not be compared "
            "with it"
        )
    model.to(device)
    head = model.get_output_embeddings()
    weight = head.weight.detach().cpu()
    bias = getattr(head, "bias", None)
    hidden = head_inputs(
        model,
        tokenizer,
        texts,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
    )
    # a logit scale (Cohere ×, Granite ÷) is linear: folded into the head's inputs, the
    # logits C·(s·e) are the model's, for the bound and the observed entropies alike; it
    # multiplies a head's bias too (the models scale the head's output, s·(C·e + b))
    hidden = hidden * scale
    if bias is not None:
        bias = bias.detach().float().cpu() * scale
    result = head_entropy_bound(weight, hidden)
    observed = prediction_entropies(weight, hidden, bias)
    q = torch.quantile(observed, torch.tensor([0.0, 0.05, 0.5, 0.95], dtype=torch.float64)).tolist()
    reading = result.reading(observed)
    report = {
        "command": "smoothalign analyze head",
        "model": args.model,
        "model_info": describe_model(model),
        "config": {
            k: v
            for k, v in vars(args).items()
            if not k.startswith(("_", "sub_")) and k != "command"
        },
        "bound": result.to_dict(),
        "observed_entropy": {
            "n_tokens": int(observed.numel()),
            "mean": float(observed.mean()),
            "min": q[0],
            "p05": q[1],
            "median": q[2],
            "p95": q[3],
            "below_bound_fraction": float((observed < result.bound).double().mean()),
            # the smoothing whose target is as confident as the head's 5th-percentile token
            "beta_matching_p05": smoothing_for_entropy(q[1], result.vocab_size),
        },
        "head_has_bias": bias is not None,
        "reading": reading,
        "wall_s": time.perf_counter() - t0,
    }
    atomic_write_json(out_dir / "head.json", report)
    save_figure(_figure(observed.numpy(), result, args.model), out_dir / "head_entropy.png")
    print(reading)
    print(
        f"observed next-token entropy on {observed.numel()} tokens: mean {report['observed_entropy']['mean']:.3f}, "
        f"min {q[0]:.3f} nats; wrote {out_dir}/head.json, head_entropy.png"
    )
    return 0


def _figure(observed, result, model: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    ax.hist(observed, bins=50, color="tab:blue", alpha=0.7, label="observed next-token entropy")
    ax.axvline(result.bound, color="tab:red", lw=2, label=f"SPEC §5 bound {result.bound:.3g}")
    ax.axvline(result.log_vocab, color="grey", ls="--", label=f"log|V| = {result.log_vocab:.2f}")
    ax.set(xlabel="entropy (nats)", ylabel="tokens", title=f"LM-head entropy: {model}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
