"""Which rows a run trained and evaluated on: a fingerprint that ``--resume`` compares.

A resumed run's options are checked against the checkpointed run's ``config.json`` before
anything loads (``checkpoints.check_resume_config``), its data *paths* included, but not
what those paths now hold. Edited, appended or reordered rows, or a train/eval split drawn
otherwise (another smoothalign version's holdout), would leave the checkpoint's data
position (which batches were seen) pointing into other data, and the held-out metrics
before and after training on other pairs. So every checkpoint holds, beside its weights, a
digest of the validated training examples in order that the run trained on and one of its
held-out examples (before ``--max-eval-pairs`` / ``--max-eval-rows`` cut them: those may
change on a resume), with their counts (:data:`DATA_FINGERPRINT`, written before the
checkpoint's completion marker); a fresh run writes the same beside its ``config.json``. A
resume compares its own once the data is validated, before the weights load where the
tokenizer loads on its own, with its checkpoint's, else (a checkpoint of an earlier version,
which held none) with its run folder's.

An example's content is what training and evaluation read of it (each side's ``reads``,
recorded): its token ids (so the tokenizer and ``max_length`` count), its scored spans or
label mask, its label, and its confidence or reference log-probs where the run reads them
(:func:`pair_reads`), not its file, row number or other columns: a column the run does not
read may change. Every rank computes the same fingerprint; the main process writes it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from array import array
from collections.abc import Callable, Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any

DATA_FINGERPRINT = "data_fingerprint.json"
SCHEME = 2
"""The version of what is hashed and how. 2: each side records the fields it hashes
(``reads``: what the run reads of an example). 1 (before checkpoints held their own): every
field of the run's content function (:func:`pair_content` for pairs), read or not, still
compared with this run's rows read alike (``earlier``, :func:`check_resume_data`). A
fingerprint of another scheme is not compared (a resume from it is noted as unchecked, as
one from a checkpoint without any)."""
EARLIER_SCHEME = 1
_SIDES = (("train", "training rows"), ("held_out", "held-out rows"))
_MODULUS = 2**256
PAIR_TOKENS = ("prompt_ids", "chosen_ids", "rejected_ids", "chosen_spans", "rejected_spans")
"""What every run reads of a ``data.TokenizedPair``: its tokens and the spans it scores."""
REFERENCE_LOGPS = ("ref_chosen_logp", "ref_rejected_logp")


def pair_reads(
    *, confidence: bool, reference_logps: bool = False, prefix: str = ""
) -> tuple[str, ...]:
    """The fields of a ``data.TokenizedPair`` that a run reads (attribute paths under
    ``prefix``, ``"pair."`` for an example holding one): its tokens and scored spans, and
    its ``confidence`` (an oracle smoothing policy's, or the held-out ``*_true`` metrics')
    and its reference log-probs (DPO's, where the data's are used) where read."""
    fields = PAIR_TOKENS + (("confidence",) if confidence else ())
    fields += REFERENCE_LOGPS if reference_logps else ()
    return tuple(prefix + name for name in fields)


def pair_content(pair: Any) -> tuple:
    """Scheme 1's content of a ``data.TokenizedPair`` (DPO's and the reward models'): its
    token ids, scored spans, confidence and the data's reference log-probs, read or not."""
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


def _side(
    examples: Sequence[Any],
    content_of: Callable[[Any], Sequence[Any]],
    common_of: Callable[[Any], Sequence[Any]] | None = None,
) -> dict:
    """Count, digest in order and an order-free digest (the sum of the rows' digests, which
    tells rows reordered or moved between the sides from rows changed); with ``common_of``
    (the fields both sides read, where this side reads more), the order-free digest of
    those too, which tells rows moved between the sides."""
    ordered, total, common = hashlib.sha256(), 0, 0
    for example in examples:
        row = _row_digest(content_of(example))
        ordered.update(row)
        total = (total + int.from_bytes(row, "big")) % _MODULUS
        if common_of is not None:
            shared = _row_digest(common_of(example))
            common = (common + int.from_bytes(shared, "big")) % _MODULUS
    side = {"rows": len(examples), "sha256": ordered.hexdigest(), "unordered": f"{total:064x}"}
    if common_of is not None:
        side["common_unordered"] = f"{common:064x}"
    return side


def _getter(fields: Sequence[str]) -> Callable[[Any], list[Any]]:
    getters = [attrgetter(name) for name in fields]
    return lambda example: [get(example) for get in getters]


def data_fingerprint(
    train: Sequence[Any],
    held_out: Sequence[Any],
    train_reads: Sequence[str],
    held_out_reads: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The fingerprint of a run's data (what :data:`DATA_FINGERPRINT` holds): the training
    examples and the held-out ones, of each example the fields the run reads of it (attribute
    paths, ``"pair.prompt_ids"``; ``held_out_reads`` default: ``train_reads``), recorded."""
    train_reads = tuple(train_reads)
    held_out_reads = train_reads if held_out_reads is None else tuple(held_out_reads)
    common = tuple(name for name in train_reads if name in held_out_reads)
    sides = {}
    for key, examples, reads in (
        ("train", train, train_reads),
        ("held_out", held_out, held_out_reads),
    ):
        common_of = None if reads == common else _getter(common)
        sides[key] = {"reads": list(reads), **_side(examples, _getter(reads), common_of)}
    return {"scheme": SCHEME, **sides}


def earlier_data_fingerprint(
    train: Sequence[Any],
    held_out: Sequence[Any],
    content_of: Callable[[Any], Sequence[Any]] = pair_content,
) -> dict[str, Any]:
    """Scheme 1's fingerprint (an earlier version's run folder holds one): each example
    read by ``content_of``, every field whether the run reads it or not."""
    return {
        "scheme": EARLIER_SCHEME,
        "train": _side(train, content_of),
        "held_out": _side(held_out, content_of),
    }


def write_data_fingerprint(folder: str | Path, fingerprint: dict[str, Any]) -> Path:
    """Write ``fingerprint`` into ``folder`` (a checkpoint's, or a fresh run's beside its
    ``config.json``) atomically: the main process's job."""
    from smoothalign.io import atomic_write_json

    return atomic_write_json(Path(folder) / DATA_FINGERPRINT, fingerprint)


def record_data_fingerprint(
    trainer: Any, output_dir: str | Path, resume: str | None, fingerprint: dict[str, Any]
) -> None:
    """Have ``trainer`` write ``fingerprint`` into every checkpoint it saves (before the
    checkpoint's completion marker), and a fresh run write it beside its ``config.json``
    too (the main process). A resumed run leaves its folder's file as it is: its rows are
    its checkpoint's, which holds theirs, or (a checkpoint of an earlier version) were
    checked against that file, or could not be checked, and must then not pass for the
    rows its earlier checkpoints trained on."""
    from smoothalign.train.checkpoints import resolve_resume

    trainer.data_fingerprint = fingerprint
    if trainer.is_world_process_zero() and resolve_resume(resume, output_dir) is None:
        write_data_fingerprint(output_dir, fingerprint)


def _saved_fingerprint(folder: Path) -> tuple[Path, dict[str, Any] | None, str | None]:
    """The fingerprint a resume from ``folder`` compares: the checkpoint's own, else its
    run folder's (a checkpoint of an earlier version, which held none); with why it cannot
    be compared (``None``: it can)."""
    own, beside = folder / DATA_FINGERPRINT, folder.parent / DATA_FINGERPRINT
    path = own if own.is_file() else beside
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        why = f"{folder.name} holds no {DATA_FINGERPRINT}, nor does its run folder"
        return path, None, f"{why} (a run of an earlier smoothalign version, which recorded none)"
    except (OSError, ValueError) as err:
        return path, None, f"{_shown(path, folder)} could not be read ({err})"
    if not isinstance(saved, dict) or saved.get("scheme") not in (SCHEME, EARLIER_SCHEME):
        return path, None, f"{_shown(path, folder)} is another smoothalign version's"
    return path, saved, None


def _shown(path: Path, folder: Path) -> str:
    """``path`` named from the run folder: ``checkpoint-2/data_fingerprint.json``."""
    return f"{folder.name}/{path.name}" if path.parent == folder else path.name


def check_resume_data(
    resume: str | None,
    output_dir: str | Path,
    fingerprint: dict[str, Any],
    earlier: Callable[[], dict[str, Any]] | None = None,
) -> str | None:
    """Refuse a resume whose data differs from the rows its checkpoint was trained on (the
    :data:`DATA_FINGERPRINT` in the checkpoint, else, for a checkpoint of an earlier version,
    the one beside its run's ``config.json``), saying for the training and the held-out rows
    what differs. ``fingerprint``: this run's (:func:`data_fingerprint`); ``earlier``: it
    under scheme 1 (:func:`earlier_data_fingerprint`), computed only to compare with a
    fingerprint of that scheme. ``None`` when there is nothing to say (no resume, or the
    same rows); a one-line note, said on stderr too (the main process), when there is no
    fingerprint this version compares: that resume goes on unchecked."""
    from smoothalign._warn import warn_main
    from smoothalign.train.checkpoints import resolve_resume

    folder = resolve_resume(resume, output_dir)
    if folder is None:
        return None
    path, saved, why = _saved_fingerprint(folder)
    if saved is not None and saved["scheme"] == EARLIER_SCHEME:
        if earlier is None:
            why = f"{_shown(path, folder)} is another smoothalign version's"
        else:
            fingerprint = earlier()
    if why is not None:
        note = f"data: {why}: this run's rows were not checked to be the ones it trained on"
        warn_main(f"--resume {resume}: {note}")
        return note
    changes = _differences(saved, fingerprint)
    if not changes:
        return None
    every_field = (
        " (that fingerprint, an earlier version's, covers every column of a row it read, "
        "its confidence and reference log-probs too, whether the run used them or not)"
        if saved["scheme"] == EARLIER_SCHEME
        else ""
    )
    raise ValueError(
        f"resume: this run's data differs from the checkpointed run's ({path}){every_field}: "
        f"{'; '.join(changes)}. A resumed run must read the same rows: the checkpoint's data "
        "position (which batches were trained on) and the held-out metrics before and after "
        "training refer to them. Resume with the original data (and the smoothalign version "
        "that split and tokenised it), or drop --resume to start a new run (in another "
        "--output-dir)"
    )


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, side by side: what the run reads of a row, the
    rows' count, the rows, or only their order; and whether the rows are the same in all
    but split otherwise between training and held-out."""
    sides = {key: side if isinstance(side := saved.get(key), dict) else {} for key, _ in _SIDES}
    differ = [
        (name, sides[key], now[key])
        for key, name in _SIDES
        if (sides[key].get("reads"), sides[key].get("rows"), sides[key].get("sha256"))
        != (now[key].get("reads"), now[key]["rows"], now[key]["sha256"])
    ]
    same_reads = all(sides[key].get("reads") == now[key].get("reads") for key, _ in _SIDES)
    moved = len(differ) == 2 and same_reads and _all_rows(saved) == _all_rows(now)
    changes = []
    for name, a, b in differ:
        if a.get("reads") != b.get("reads"):
            changes.append(f"{name}: {_reads_change(a.get('reads'), b.get('reads'))}")
        elif a.get("rows") != b["rows"]:
            changes.append(f"{name}: {a.get('rows')} before, {b['rows']} now")
        elif a.get("unordered") == b["unordered"]:
            changes.append(f"{name}: the same {b['rows']}, in another order")
        else:
            why = "" if moved else " (a row's tokens, label or confidence differ)"
            changes.append(f"{name}: {b['rows']} before and now, but not the same ones{why}")
    if moved:
        changes.append("the same rows in all, split otherwise between training and held-out")
    return changes


def _reads_change(before: Any, now: Any) -> str:
    """What the checkpointed run read of a row and this one does not, and the reverse."""
    before, now = list(before or []), list(now or [])
    lost = [name for name in before if name not in now]
    new = [name for name in now if name not in before]
    said = []
    if lost:
        said.append(f"the checkpointed run read their {', '.join(lost)}, this one does not")
    if new:
        said.append(f"this run reads their {', '.join(new)}, the checkpointed run did not")
    if not said:  # the same fields in another order: not this version's fingerprint
        said.append(f"read as {before} before, {now} now")
    why = (
        " (its data gives them for every row, or not: the data's reference log-probs are "
        "used only where every row has them)"
        if any(name.endswith(REFERENCE_LOGPS) for name in lost + new)
        else ""
    )
    return "; ".join(said) + why


def _all_rows(fingerprint: dict[str, Any]) -> tuple[int, int] | None:
    """The count and order-free digest of the training and held-out rows together (of the
    fields both sides read, where one reads more)."""
    try:
        sides = [fingerprint[key] for key, _ in _SIDES]
        total = sum(int(side.get("common_unordered", side["unordered"]), 16) for side in sides)
        total %= _MODULUS
        return sum(side["rows"] for side in sides), total
    except (KeyError, TypeError, ValueError):
        return None
