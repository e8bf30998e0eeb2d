"""Markdown for docs/results.md from the JSON that the two benchmarks wrote.

    python benchmarks/gpu_summary.py DIR [--commit SHA] [--date UTC] > summary.md

``DIR`` holds ``linear_cross_entropy.json`` (and ``linear_cross_entropy_real.json``, the
same on a real model's hidden states) and/or ``dpo_step.json`` (``$OUT`` of
``benchmarks/gpu_session.sh``, or ``benchmarks/results``). Prints the device and versions,
the kernel table with its verdict lines (target, ratio to each peer, correctness), and the
DPO step table with each row's ratio to TRL + Liger and the issue's target (time ≤ TRL +
Liger's, peak memory ≤ 80 % of it). Missing files are named, not fatal.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIGER_ROW = "TRL DPOTrainer + use_liger_kernel"
SCALE_MARK = ", logits ×"  # dpo_step.py's rows run with --logit-scale
OURS = "smoothalign"  # every DPO row of ours starts so
DEFAULT_ROW = "smoothalign (CALS, fused log-probs, lean layers, recompute)"  # the CUDA defaults


def _lce_module():
    """The kernel benchmark's own table formatting (imports torch, runs nothing)."""
    spec = importlib.util.spec_from_file_location("bench_lce", HERE / "linear_cross_entropy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lce_section(data: dict) -> list[str]:
    lce = _lce_module()
    env = data["env"]
    inputs = env.get("inputs", "random")
    title = "" if inputs == "random" else f" — a real model's hidden states ({inputs})"
    out = [
        f"### Linear cross-entropy, forward + backward{title}",
        "",
        f"device `{env['device']}`, torch {env['torch']}, triton {env.get('triton')}, "
        f"liger-kernel {env.get('liger-kernel')}, cut-cross-entropy "
        f"{env.get('cut-cross-entropy')}; {env['dtype']}, median of {env['repeats']} after "
        f"{env['warmup']} warm-up runs"
        + (f"; kernel overrides {env['kernel_overrides']}" if env.get("kernel_overrides") else ""),
        "",
        lce.HEADER,
        *(lce._line(r) for r in data["rows"]),
        "",
        *(f"- {line}" for line in lce.verdict(data["rows"])),
    ]
    return out


def dpo_section(data: dict) -> list[str]:
    env = data["env"]
    shape = env.get("shape", {})
    rows = data["rows"]

    def liger_for(row: dict) -> dict | None:
        """TRL + Liger's row on the same model (the same ``, logits ×S`` suffix)."""
        name = row["trainer"]
        suffix = name[name.index(SCALE_MARK) :] if SCALE_MARK in name else ""
        ok = (r for r in rows if r["trainer"] == LIGER_ROW + suffix and r["status"] == "ok")
        return next(ok, None)

    out = [
        "### One DPO step (full fine-tuning, frozen reference, AdamW)",
        "",
        f"device `{env['device']}`, torch {env['torch']}, transformers {env.get('transformers')}, "
        f"trl {env.get('trl')}, liger-kernel {env.get('liger-kernel')}; Llama config "
        f"hidden {shape.get('hidden_size')}, {shape.get('num_hidden_layers')} layers, vocabulary "
        f"{shape.get('vocab_size')}; {env['pairs']} pairs × "
        f"({env['prompt_len']} + {env['response_len']}) tokens"
        + (
            f"; median of {env['repeats']} steps after {env['warmup']} warm-up"
            if "repeats" in env
            else ""  # runs before 2026-11-26 evening: 5 after 2
        )
        + (f"; kernel overrides {env['kernel_overrides']}" if env.get("kernel_overrides") else "")
        + ("; **with activation checkpointing**" if env.get("gradient_checkpointing") else ""),
        "",
        "| trainer | step ms (median) | peak GiB | tokens | time ÷ TRL+Liger | memory ÷ TRL+Liger | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            out.append(f"| {r['trainer']} | {r['status']} | | | | | {r.get('note', '')} |")
            continue
        gib = r["peak_bytes"] / 2**30 if r.get("peak_bytes") is not None else None
        t_ratio = m_ratio = ""
        liger = liger_for(r)
        if liger is not None:
            t_ratio = f"{r['ms'] / liger['ms']:.2f}"
            if gib is not None and liger.get("peak_bytes"):
                m_ratio = f"{r['peak_bytes'] / liger['peak_bytes']:.2f}"
        mem = f"{gib:.2f}" if gib is not None else "n/a"
        out.append(
            f"| {r['trainer']} | {r['ms']:.0f} | {mem} | {r.get('tokens', '')} | {t_ratio} "
            f"| {m_ratio} | {r.get('note', '')} |"
        )
    # a target line per row of ours (the CUDA default, lean layers with recompute, first when it ran)
    ours_rows = sorted(
        (r for r in rows if r["trainer"].startswith(OURS) and r["status"] == "ok"),
        key=lambda r: r["trainer"] != DEFAULT_ROW,
    )
    for ours in ours_rows:
        tag = f"[{ours['trainer']}] "
        liger = liger_for(ours)
        if liger is not None and ours.get("peak_bytes") and liger["peak_bytes"]:
            ok_t = ours["ms"] <= liger["ms"]
            ok_m = ours["peak_bytes"] <= 0.8 * liger["peak_bytes"]
            out += [
                "",
                f"- {tag}target: time {ours['ms']:.0f} ms vs TRL+Liger {liger['ms']:.0f} ms → "
                f"{'PASS' if ok_t else 'FAIL'}; peak memory "
                f"{ours['peak_bytes'] / liger['peak_bytes']:.2f}× TRL+Liger's (≤ 0.80) → "
                f"{'PASS' if ok_m else 'FAIL'}",
            ]
        if "cals_fraction" in ours:
            frac = ours["cals_fraction"]
            out.append(
                f"- {tag}target: CALS bookkeeping {ours['cals_ms']:.2f} ms = {100 * frac:.2f}% "
                f"of the step (< 1%) → {'PASS' if frac < 0.01 else 'FAIL'}"
            )
    return out


def summary(folder: Path, commit: str | None, date: str | None) -> str:
    out = ["## GPU run", ""]
    if commit or date:
        out += [f"commit `{commit or '?'}`, date {date or '?'} (UTC)", ""]
    for name, section in (
        ("linear_cross_entropy.json", lce_section),
        ("linear_cross_entropy_real.json", lce_section),
        ("dpo_step.json", dpo_section),
    ):
        path = folder / name
        if not path.exists() and name.endswith("_real.json"):
            continue  # optional: only where real inputs were carried
        if not path.exists():
            out += [f"({name}: not written — that step did not run or did not finish a row)", ""]
            continue
        try:
            out += [*section(json.loads(path.read_text())), ""]
        except Exception as ex:  # a half-written or older file must not hide the other
            out += [f"({name}: could not be read: {type(ex).__name__}: {ex})", ""]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--commit")
    p.add_argument("--date")
    args = p.parse_args(argv)
    sys.stdout.write(summary(args.folder, args.commit, args.date) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
