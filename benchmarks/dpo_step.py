"""One DPO training step: this project's trainer (CALS, fused log-probs) vs TRL's DPOTrainer.

    python benchmarks/dpo_step.py                       # CUDA: Llama-3.2-1B shape, bf16
    python benchmarks/dpo_step.py --device cpu --small  # smoke check (a 2-layer toy)

Model: config-built Llama with the Llama-3.2-1B shape (hidden 2048, 16 layers, 32 heads, 8
KV heads, MLP 8192, vocabulary 128256, tied embeddings), random weights in bf16, full
fine-tuning (AdamW), a frozen reference copy; 8 pairs × (256 prompt + 768 response) tokens
of random ids. Rows: ours with ``--fused-logps on`` and ``off``; TRL's ``DPOTrainer`` with
and without ``use_liger_kernel`` (skipped, with the reason, when ``trl`` / ``liger-kernel``
is missing or its API refuses the setup). Median step time (forward, backward, optimizer)
over ``--repeats`` steps after ``--warmup``, and peak allocated memory during them.

TRL 1.16 tokenises text itself, so its rows get the same ids as words of a word-level
tokenizer (``id_tokenizer``): the same 8 × 2 × 1024 tokens as ours. ``use_liger_kernel``
there means Liger's RMSNorm/RoPE/SwiGLU kernels (TRL keeps its own chunked LM-head loss and
turns Liger's fused linear cross-entropy off); they are applied by ``Trainer.train()``,
which this benchmark does not call, so ``run_trl`` applies them itself. Liger patches
``transformers``' Llama module globally, so in one process the Liger rows always run after
every other row (a later row would otherwise time Liger's layers under our name), and
``benchmarks/gpu_session.sh`` runs each row in its own process (``--only`` + ``--append``).
The JSON is rewritten after every row; its ``env`` records the warm-up and repeat counts and
any ``SMOOTHALIGN_LCE_*`` kernel overrides in force.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

LLAMA_1B = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    rope_theta=500000.0,
)
SMALL = dict(
    vocab_size=1000,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)


def _version(p):
    try:
        return importlib.metadata.version(p)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_model(shape, dtype, device, logit_scale: float = 1.0):
    """The config-built model, random weights from seed 0. ``logit_scale`` multiplies the
    final norm's weight, so the logits' spread (0.9 at the Llama-3.2-1B shape) grows by that
    factor: 7 gives about SmolLM2-135M-Instruct's 6.3 on real text, a softmax as peaked as a
    trained model's for the gradient filter (``lce_filter_fraction.py --dpo-step-model``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**shape, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.device(device):  # initialise on the GPU: ~10× faster than on the CPU at 1B
        model = LlamaForCausalLM(cfg).to(dtype=dtype)
    if logit_scale != 1.0:
        with torch.no_grad():
            model.model.norm.weight.mul_(logit_scale)
    return model


def make_pairs(n_pairs, prompt_len, resp_len, vocab):
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, vocab, (n_pairs, prompt_len), generator=g)
    chosen = torch.randint(3, vocab, (n_pairs, resp_len), generator=g)
    rejected = torch.randint(3, vocab, (n_pairs, resp_len), generator=g)
    return prompt, chosen, rejected


def our_batch(prompt, chosen, rejected, device):
    """The collated batch our trainer takes: chosen rows first, then rejected."""
    b, lp = prompt.shape
    ids = torch.cat([torch.cat([prompt, chosen], 1), torch.cat([prompt, rejected], 1)], 0)
    labels = ids.clone()
    labels[:, :lp] = -100
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "labels": labels.to(device),
        "confidence": torch.full((b,), float("nan"), device=device),
        "index": torch.arange(b, device=device),
    }


PROFILE: Path | None = None  # --profile: where the kernel table of each row goes
SCALE_MARK = ", logits ×"  # in a row's name: run with --logit-scale


def scale_suffix(scale: float) -> str:
    return f"{SCALE_MARK}{scale:g}" if scale != 1.0 else ""


def _timed_steps(step, device, warmup, repeats):
    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t0))
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    if PROFILE is not None:  # after the timing, so that it cannot change the numbers
        _profile(step, device, PROFILE)
    return {"ms": statistics.median(times), "peak_bytes": peak}


def _profile(step, device: str, path: Path, steps: int = 3) -> None:
    """Where a step's time goes: ``steps`` steps under torch.profiler, the operators and
    kernels by self time (device time on CUDA, CPU time otherwise), written to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=60, max_name_column_width=90)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{steps} steps; sorted by {key}\n{table}\n")
    print(f"profile of {steps} steps written to {path}", flush=True)


def checkpointing(model, on: bool) -> None:
    """``--gradient-checkpointing``: Trainer.train() would switch it on from the arguments,
    but this benchmark calls training_step directly, so switch it on here (non-reentrant,
    under whichever name this transformers uses)."""
    if not on:
        return
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # later transformers 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def run_ours(
    args,
    shape,
    pairs,
    fused: bool,
    tmp: str,
    gc: bool | None = None,
    lean=False,
    recompute=False,
    grad_filter="auto",
):
    gc = args.gradient_checkpointing if gc is None else gc
    from transformers import TrainingArguments

    from smoothalign.train import DPOConfig
    from smoothalign.train.trainer import SmoothDPOTrainer

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = build_model(shape, dtype, args.device, args.logit_scale)
    ref = build_model(shape, dtype, args.device, args.logit_scale)
    cfg = DPOConfig(
        model="tiny",
        output_dir=tmp,
        lora=False,
        reference="model",
        smoothing="cals-l2",
        fused_logps="on" if fused else "off",
        grad_filter=grad_filter,
        batch_size=args.pairs,
        report=False,
    )
    targs = TrainingArguments(
        output_dir=tmp,
        per_device_train_batch_size=args.pairs,
        learning_rate=1e-6,
        bf16=args.device == "cuda",
        use_cpu=args.device == "cpu",
        report_to=[],
    )
    checkpointing(model, gc)
    if lean:  # the reference too, as the CLI's frozen copy of the patched policy is (its
        # forward is then the kernels' as well; without gradients it keeps nothing either way)
        from smoothalign.models.lean import use_lean_layers

        for m in (model, ref):
            patched = use_lean_layers(m, recompute=recompute)
            if not all(patched.values()):
                raise RuntimeError(f"lean layers: nothing patched in part ({patched})")
    trainer = SmoothDPOTrainer(
        model=model,
        args=targs,
        dpo_config=cfg,
        smoothing_policy=cfg.smoothing_policy(),
        ref_model=ref,
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() otherwise
    batch = our_batch(*pairs, args.device)
    model.train()

    def step():
        trainer.training_step(model, dict(batch))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    policy_ms = _time_policy(trainer.smoothing_policy, args.device)
    tokens = int(batch["input_ids"].numel())
    out = {**_timed_steps(step, args.device, args.warmup, args.repeats), "tokens": tokens}
    # CALS's bookkeeping (calibrator update + α) per step: the "< 1% of the step"
    out["cals_ms"] = statistics.median(policy_ms[-args.repeats :])
    out["cals_fraction"] = out["cals_ms"] / out["ms"]
    return out


def _time_policy(policy, device: str) -> list[float]:
    """Wrap the policy's ``alpha`` and ``update`` (a training step calls each once, see
    ``train.objective.dpo_terms``) so that each step's bookkeeping time (ms), the two
    summed, is appended to the returned list; the GPU is synchronised first, so the
    forward pass is not counted as bookkeeping."""
    spent: list[float] = []
    pending: list[float] = []  # alpha's time, until its step's update

    def timed(inner, done):
        def call(*args, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            result = inner(*args, **kwargs)
            if device == "cuda":
                torch.cuda.synchronize()
            ms = 1e3 * (time.perf_counter() - t0)
            if done:
                spent.append(ms + (pending.pop() if pending else 0.0))
            else:
                pending.append(ms)
            return result

        return call

    policy.alpha = timed(policy.alpha, done=False)
    policy.update = timed(policy.update, done=True)
    return spent


def id_tokenizer(vocab: int):
    """A word-level tokenizer whose word ``t<i>`` is token ``i``: TRL tokenises text itself.

    Ids 0, 1, 2 are ``<pad>``, ``<bos>``, ``<eos>`` (special, so never split); it adds no
    special tokens of its own, so a text of ``k`` words is exactly ``k`` ids.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{f"t{i}": i for i in range(3, vocab)}}
    backend = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )
    return tok


def trl_texts(prompt, chosen, rejected):
    """The pairs as TRL's text columns, token for token the same sequences as ours.

    TRL concatenates ``prompt + chosen`` as strings and appends EOS to a completion that
    lacks it, so completions start with a space and end with ``<eos>`` in place of their
    last id: each sequence stays ``prompt_len + response_len`` tokens long.
    """

    def words(ids):
        return " ".join(f"t{i}" for i in ids)

    return {
        "prompt": [words(p) for p in prompt.tolist()],
        "chosen": [" " + words(c[:-1]) + " <eos>" for c in chosen.tolist()],
        "rejected": [" " + words(r[:-1]) + " <eos>" for r in rejected.tolist()],
    }


def run_trl(
    args, shape, pairs, liger: bool, tmp: str, gc: bool | None = None, liger_ref: bool = False
):
    gc = args.gradient_checkpointing if gc is None else gc
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = build_model(shape, dtype, args.device, args.logit_scale)
    ref = build_model(shape, dtype, args.device, args.logit_scale)
    prompt, chosen, rejected = pairs
    ds = Dataset.from_dict(trl_texts(prompt, chosen, rejected))
    targs = TRLConfig(
        output_dir=tmp,
        per_device_train_batch_size=args.pairs,
        learning_rate=1e-6,
        bf16=args.device == "cuda",
        use_cpu=args.device == "cpu",
        report_to=[],
        max_length=prompt.shape[1] + chosen.shape[1],
        use_liger_kernel=liger,
        gradient_checkpointing=gc,
    )
    tok = id_tokenizer(shape["vocab_size"])
    trainer = DPOTrainer(
        model=model, ref_model=ref, args=targs, train_dataset=ds, processing_class=tok
    )
    if liger:
        # Trainer.train() applies Liger's kernels to the model; this benchmark calls
        # training_step directly, so apply them here, with the config TRL set up (its own
        # fused LM head stays: TRL turns Liger's fused linear cross-entropy off).
        from transformers.integrations.liger import apply_liger_kernel

        apply_liger_kernel(trainer.model, trainer.args.liger_kernel_config)
        if liger_ref:  # the frozen reference too, as our rows patch theirs (not TRL's doing)
            ref_model = getattr(trainer, "ref_model", None)
            if ref_model is None:
                raise RuntimeError("this TRL's DPOTrainer has no ref_model attribute to patch")
            apply_liger_kernel(ref_model, trainer.args.liger_kernel_config)
    checkpointing(trainer.model, gc)
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() otherwise
    batch = next(iter(trainer.get_train_dataloader()))
    batch = trainer._prepare_inputs(batch)
    n_tokens = sum(int(batch[k].numel()) for k in batch if k.endswith("input_ids"))
    model.train()

    def step():
        trainer.training_step(model, batch)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    # tokens per step (padded), to check that TRL's batch is the same size as ours
    return {**_timed_steps(step, args.device, args.warmup, args.repeats), "tokens": n_tokens}


def _with_env(name: str, value: str, fn):
    """Run ``fn`` with the environment variable ``name`` set to ``value`` (a kernel option:
    ``SMOOTHALIGN_LCE_BLOCKMAX=0``, ``SMOOTHALIGN_LCE_DENSE=512``)."""
    os.environ[name] = value
    try:
        return fn()
    finally:
        os.environ.pop(name, None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", action="store_true")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--response-len", type=int, default=768)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="every row with activation checkpointing (the issue's target is without it)",
    )
    p.add_argument(
        "--logit-scale",
        type=float,
        default=1.0,
        help="multiply the final norm's weight (both models, every row) by this: 7 makes the "
        "random model's softmax as peaked as a trained one's (rows are named ', logits ×S')",
    )
    p.add_argument("--only", nargs="*", help="run only these rows (names as in the table)")
    p.add_argument("--json", default="benchmarks/results/dpo_step.json")
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="after each row's timing, profile 3 more steps and write the operators by "
        "self time to FILE (with one row; the last row's table otherwise)",
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="add the rows to those already in --json (one process per row: see the doc)",
    )
    args = p.parse_args(argv)
    global PROFILE
    PROFILE = Path(args.profile) if args.profile else None
    shape = SMALL if args.small else LLAMA_1B
    if args.small:
        args.prompt_len, args.response_len, args.pairs = 8, 24, 2
        args.warmup, args.repeats = 1, 2
    pairs = make_pairs(args.pairs, args.prompt_len, args.response_len, shape["vocab_size"])
    runs = {
        "smoothalign (CALS, fused log-probs)": lambda tmp: run_ours(args, shape, pairs, True, tmp),
        "smoothalign (CALS, fused log-probs, lean layers)": lambda tmp: run_ours(
            args, shape, pairs, True, tmp, lean=True
        ),
        "smoothalign (CALS, fused log-probs, lean layers, recompute)": lambda tmp: run_ours(
            args, shape, pairs, True, tmp, lean=True, recompute=True
        ),
        # the head's backward without gradient filtering: what a trained model's peaked
        # softmax costs (its blocks are ~96% computed; this random model's ~14%)
        "smoothalign (CALS, fused log-probs, lean layers, recompute, no filtering)": (
            lambda tmp: run_ours(
                args, shape, pairs, True, tmp, lean=True, recompute=True, grad_filter="off"
            )
        ),
        # the same, its head's backward as cuBLAS products (kernels.dense_backward, 512 MiB
        # chunks): nothing filtered, an experiment for a trained model's peaked softmax
        "smoothalign (CALS, fused log-probs, lean layers, recompute, dense backward)": (
            lambda tmp: _with_env(
                "SMOOTHALIGN_LCE_DENSE",
                "512",
                lambda: run_ours(args, shape, pairs, True, tmp, lean=True, recompute=True),
            )
        ),
        # the head's backward with run F's block rule (no strips, no compensation)
        "smoothalign (CALS, fused log-probs, lean layers, recompute, no strips)": (
            lambda tmp: _with_env(
                "SMOOTHALIGN_LCE_STRIPS",
                "0",
                lambda: _with_env(
                    "SMOOTHALIGN_LCE_COMPENSATE",
                    "0",
                    lambda: run_ours(args, shape, pairs, True, tmp, lean=True, recompute=True),
                ),
            )
        ),
        "smoothalign (CALS, fused log-probs, no block max)": lambda tmp: _with_env(
            "SMOOTHALIGN_LCE_BLOCKMAX", "0", lambda: run_ours(args, shape, pairs, True, tmp)
        ),
        "smoothalign (CALS, materialised logits)": lambda tmp: run_ours(
            args, shape, pairs, False, tmp
        ),
        "TRL DPOTrainer": lambda tmp: run_trl(args, shape, pairs, False, tmp),
        # outside the target (which is without it): what checkpointing buys each
        "smoothalign (CALS, fused log-probs, checkpointing)": lambda tmp: run_ours(
            args, shape, pairs, True, tmp, gc=True
        ),
        # last: Liger patches transformers' Llama module for the rest of the process
        "TRL DPOTrainer + use_liger_kernel": lambda tmp: run_trl(args, shape, pairs, True, tmp),
        # our rows patch the reference model as our CLI does; TRL + Liger's reference stays
        # eager unless patched by hand: this row does, for the like-for-like comparison
        "TRL DPOTrainer + use_liger_kernel, reference patched too": lambda tmp: run_trl(
            args, shape, pairs, True, tmp, liger_ref=True
        ),
        "TRL DPOTrainer + use_liger_kernel, checkpointing": lambda tmp: run_trl(
            args, shape, pairs, True, tmp, gc=True
        ),
    }
    # whatever order --only names them in: no row may follow a Liger row in this process
    runs = {k: v for k, v in runs.items() if "liger" not in k} | {
        k: v for k, v in runs.items() if "liger" in k
    }
    unknown = set(args.only or ()) - set(runs)
    if unknown:
        raise SystemExit(f"--only: unknown rows {sorted(unknown)}; choose from {list(runs)}")
    env = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        **{k: _version(k) for k in ("transformers", "trl", "liger-kernel", "triton")},
        "pairs": args.pairs,
        "gradient_checkpointing": args.gradient_checkpointing,
        "prompt_len": args.prompt_len,
        "response_len": args.response_len,
        "shape": shape,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "kernel_overrides": {
            k: v for k, v in os.environ.items() if k.startswith("SMOOTHALIGN_LCE")
        },
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.append and out.exists():  # keep the other rows; a row run again replaces its old one
        names = {name + scale_suffix(args.logit_scale) for name in (args.only or runs)}
        rows = [r for r in json.loads(out.read_text())["rows"] if r["trainer"] not in names]

    def save():  # write-then-rename: a run killed mid-write keeps the previous file
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"env": env, "rows": rows}, indent=1))
        tmp.replace(out)

    print("| trainer | step ms (median) | peak memory GiB | note |\n|---|---|---|---|", flush=True)
    for name, fn in runs.items():
        if args.only and name not in args.only:
            continue
        row = {"trainer": name + scale_suffix(args.logit_scale)}
        missing = [
            pkg
            for pkg in (["trl"] if "TRL" in name else [])
            + (["liger-kernel"] if "liger" in name else [])
            if _version(pkg) is None
        ]
        if missing:
            row.update(status="skipped", note=f"not installed: {', '.join(missing)}")
        elif "liger" in name and args.device != "cuda":
            row.update(status="skipped", note="skipped: Liger's kernels need CUDA")
        else:
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    row.update(fn(tmp), status="ok", note="")
            except torch.cuda.OutOfMemoryError:
                row.update(status="OOM", note="")
            except Exception as ex:
                traceback.print_exc()
                row.update(status="failed", note=f"{type(ex).__name__}: {ex}"[:160])
        if args.device == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        save()
        if row["status"] == "ok":
            mem = f"{row['peak_bytes'] / 2**30:.2f}" if row["peak_bytes"] is not None else "n/a"
            note = f"{row['tokens']} tokens"
            if "cals_ms" in row:
                note += f"; CALS bookkeeping {row['cals_ms']:.2f} ms ({100 * row['cals_fraction']:.2f}%)"
            print(f"| {row['trainer']} | {row['ms']:.0f} | {mem} | {note} |", flush=True)
        else:
            print(f"| {row['trainer']} | {row['status']} | | {row['note']} |", flush=True)
    save()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
