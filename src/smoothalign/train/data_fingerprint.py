"""Which rows a run trained and evaluated on: a fingerprint that ``--resume`` compares.

A resumed run's options are checked against the checkpointed run's ``config.json`` before
anything loads (``checkpoints.check_resume_config``), its data *paths* included, but not
what those paths now hold. Edited, appended or reordered rows, or a train/eval split drawn
otherwise (another smoothalign version's holdout), would leave the checkpoint's data
position (which batches were seen) pointing into other data, and the held-out metrics
before and after training on other pairs. So every run records, beside its
``config.json``, a digest of its validated training examples in order and one of its
held-out examples (before ``--max-eval-pairs`` / ``--max-eval-rows`` cut them: those may
change on a resume), with their counts; a resume compares it once the data is validated,
before the weights load where the tokenizer loads on its own.

An example's content is what training and evaluation read of it: its token ids (so the
tokenizer and ``max_length`` count), its label mask or spans, its confidence and labels,
not its file, row number or other columns. Every rank computes the same fingerprint; the
main process writes it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DATA_FINGERPRINT = "data_fingerprint.json"
SCHEME = 1
"""The version of what is hashed and how: a fingerprint of another scheme is not compared
(a resume from it is noted as unchecked, as one from a checkpoint without any)."""
_SIDES = (("train", "training rows"), ("held_out", "held-out rows"))
_MODULUS = 2**256


def pair_content(pair: Any) -> tuple:
    """What DPO and the reward models read of a ``data.TokenizedPair``: its token ids, the
    spans of the replies that are scored, its confidence, and the reference log-probs the
    data gave (not its row, file or other columns)."""
    return (
        pair.prompt_ids,
        pair.chosen_ids,
        pair.rejected_ids,
        pair.chosen_spans,
        pair.rejected_spans,
        pair.confidence,
        pair.ref_chosen_logp,
        pair.ref_rejected_logp,
    )


def _encoded(value: Any) -> bytes:
    """``value`` as bytes that tell it apart from any other: a list of ints packed (fast for
    token ids), anything else as JSON; each prefixed by its kind and length."""
    if isinstance(value, list):
        try:
            packed = array("q", value)
        except (TypeError, OverflowError):
            pass
        else:
            if sys.byteorder == "big":  # the same bytes on every machine
                packed.byteswap()
            return b"i%d:" % len(value) + packed.tobytes()
    text = json.dumps(value, separators=(",", ":"), default=repr).encode("utf-8")
    return b"j%d:" % len(text) + text


def _row_digest(content: Sequence[Any]) -> bytes:
    digest = hashlib.sha256()
    for part in content:
        digest.update(_encoded(part))
    return digest.digest()


def _side(examples: Sequence[Any], content_of: Callable[[Any], Sequence[Any]]) -> dict:
    """Count, digest in order and an order-free digest (the sum of the rows' digests, which
    tells rows reordered or moved between the sides from rows changed)."""
    ordered, total = hashlib.sha256(), 0
    for example in examples:
        row = _row_digest(content_of(example))
        ordered.update(row)
        total = (total + int.from_bytes(row, "big")) % _MODULUS
    return {"rows": len(examples), "sha256": ordered.hexdigest(), "unordered": f"{total:064x}"}


def data_fingerprint(
    train: Sequence[Any],
    held_out: Sequence[Any],
    content_of: Callable[[Any], Sequence[Any]] = pair_content,
) -> dict[str, Any]:
    """The fingerprint of a run's data (what :data:`DATA_FINGERPRINT` holds): the training
    examples and the held-out ones, each example read by ``content_of`` (default: a
    ``TokenizedPair``'s :func:`pair_content`)."""
    return {
        "scheme": SCHEME,
        "train": _side(train, content_of),
        "held_out": _side(held_out, content_of),
    }


def write_data_fingerprint(output_dir: str | Path, fingerprint: dict[str, Any]) -> Path:
    """Write ``fingerprint`` beside the run's ``config.json`` (the main process's job)."""
    from smoothalign.io import atomic_write_json

    return atomic_write_json(Path(output_dir) / DATA_FINGERPRINT, fingerprint)


def check_resume_data(
    resume: str | None, output_dir: str | Path, fingerprint: dict[str, Any]
) -> str | None:
    """Refuse a resume whose data differs from the checkpointed run's (the
    :data:`DATA_FINGERPRINT` beside its checkpoint), saying for the training and the
    held-out rows what differs. ``None`` when there is nothing to say (no resume, or the
    same rows); a one-line note when the checkpointed run recorded no fingerprint this
    version compares (an earlier version's run): that resume goes on unchecked."""
    from smoothalign.train.checkpoints import resolve_resume

    folder = resolve_resume(resume, output_dir)
    if folder is None:
        return None
    path = folder.parent / DATA_FINGERPRINT
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        why = None if saved.get("scheme") == SCHEME else f"{path.name} is another version's"
    except FileNotFoundError:
        why = f"the checkpointed run wrote no {path.name} (an earlier version's run)"
    except (OSError, ValueError, AttributeError) as err:
        why = f"{path.name} could not be read ({err})"
    if why is not None:
        return f"data: {why}: this run's rows were not checked to be the ones it trained on"
    changes = _differences(saved, fingerprint)
    if not changes:
        return None
    raise ValueError(
        f"resume: this run's data differs from the checkpointed run's ({path}): "
        f"{'; '.join(changes)}. A resumed run must read the same rows: the checkpoint's data "
        "position (which batches were trained on) and the held-out metrics before and after "
        "training refer to them. Resume with the original data (and the smoothalign version "
        "that split and tokenised it), or drop --resume to start a new run (in another "
        "--output-dir)"
    )


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, side by side, and whether the rows are the
    same in all but split otherwise between training and held-out."""
    sides = {key: side if isinstance(side := saved.get(key), dict) else {} for key, _ in _SIDES}
    differ = [
        (name, sides[key], now[key])
        for key, name in _SIDES
        if (sides[key].get("rows"), sides[key].get("sha256"))
        != (now[key]["rows"], now[key]["sha256"])
    ]
    moved = len(differ) == 2 and _all_rows(saved) == _all_rows(now)
    changes = []
    for name, a, b in differ:
        if a.get("rows") != b["rows"]:
            changes.append(f"{name}: {a.get('rows')} before, {b['rows']} now")
        elif a.get("unordered") == b["unordered"]:
            changes.append(f"{name}: the same {b['rows']}, in another order")
        else:
            why = "" if moved else " (a row's tokens, label or confidence differ)"
            changes.append(f"{name}: {b['rows']} before and now, but not the same ones{why}")
    if moved:
        changes.append("the same rows in all, split otherwise between training and held-out")
    return changes


def _all_rows(fingerprint: dict[str, Any]) -> tuple[int, int] | None:
    """The count and order-free digest of the training and held-out rows together."""
    try:
        sides = [fingerprint[key] for key, _ in _SIDES]
        total = sum(int(side["unordered"], 16) for side in sides) % _MODULUS
        return sum(side["rows"] for side in sides), total
    except (KeyError, TypeError, ValueError):
        return None
