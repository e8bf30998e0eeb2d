"""The written results of ``smoothalign eval calibration``: Markdown table and reliability
diagram, from the ``results.json`` dictionary that the command builds."""

from __future__ import annotations

from typing import Any

from smoothalign.calibration import ReliabilityCurve
from smoothalign.calibration.plots import reliability_diagram
from smoothalign.io import md_cell

SCORER_LABELS = {
    "letter": "letter (softmax over answer letters)",
    "option": "option likelihood (length-normalised)",
}


def markdown_report(results: dict[str, Any]) -> str:
    """Per-scorer tables (one row per task, then all tasks pooled) and the data notes."""
    cfg = results["config"]
    lines = [
        f"# Multiple-choice calibration: {results['model']}",
        "",
        f"Shots: {cfg['shots']}; limit per task: {cfg['limit']} (seed {cfg['seed']}); "
        f"{cfg['bins']} equal-width confidence bins; confidence = max softmax over options."
        + (  # the precision as resolved (auto differs by device); older results lack it
            f" Model in {results['precision']} on {results['device']}."
            if "precision" in results and "device" in results
            else ""
        ),
        "",
    ]
    for scorer, block in results["results"].items():
        # the skipped column only where a question was skipped (an option too long)
        skipped = bool(block["overall"].get("n_skipped"))
        lines += [
            f"## Scorer: {SCORER_LABELS.get(scorer, scorer)}",
            "",
            "| task | n | accuracy | chance | ECE | RMS | mean conf. | NLL | truncated |"
            + (" skipped |" if skipped else ""),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if skipped else ""),
        ]
        rows = list(block["tasks"].items()) + [("**all (pooled)**", block["overall"])]
        for name, m in rows:
            cells = [
                _value(m, "accuracy", "{:.3f}"),
                _value(m, "chance", "{:.3f}"),
                _value(m, "ece", "{:.4f}"),
                _value(m, "rms", "{:.4f}"),
                _value(m, "mean_confidence", "{:.3f}"),
                _value(m, "nll", "{:.3f}"),
                str(m["n_truncated"]),
            ]
            cells += [str(m.get("n_skipped", 0))] if skipped else []
            lines.append(f"| {md_cell(name)} | {m['n']} | " + " | ".join(cells) + " |")
        n_identical = block["overall"].get("n_identical_options", 0)
        if n_identical:
            how = "their letters' probabilities summed" if scorer == "letter" else "counted once"
            lines += [
                "",
                f"{n_identical} question(s) list an option text twice: identical options are "
                f"scored as one answer ({how}), so either copy is right; none was dropped.",
            ]
        if "letter_mass" in block["overall"]:
            lines += [
                "",
                f"Mean next-token probability on the valid letters: "
                f"{block['overall']['letter_mass']:.3f}.",
            ]
        lines.append("")
    notes = [(t["name"], n) for t in results["tasks"] for n in t["notes"]]
    if notes:
        lines += ["## Data notes", ""] + [f"* {name}: {n}" for name, n in notes] + [""]
    t = results["timing"]
    lines.append(f"Wall time: {t['total_s']:.1f} s (model load {t['model_load_s']:.1f} s).")
    return "\n".join(lines) + "\n"


def _value(metrics: dict[str, Any], key: str, fmt: str) -> str:
    """``metrics[key]`` formatted, or ``–`` where a task had no question scored."""
    return fmt.format(metrics[key]) if key in metrics else "–"


def reliability_figure(curves: dict[str, ReliabilityCurve], model: str):
    """One curve per scorer over all evaluated questions."""
    labelled = {SCORER_LABELS.get(k, k): v for k, v in curves.items()}
    return reliability_diagram(
        labelled,
        title=f"Multiple-choice reliability: {model}",
        xlabel="confidence (max softmax over options)",
    )
