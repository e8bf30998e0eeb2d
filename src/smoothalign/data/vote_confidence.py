"""Each preference pair's label confidence from its annotators' votes, as a data column.

Rows carry ``votes_chosen`` (votes for ``chosen``) of ``votes_total``, or a 0/1 ``votes``
list, read by ``smoothalign reward``'s parser (:func:`row_votes`; forms that disagree are
refused, and a ``p_chosen`` alone, which has no vote count, cannot be used). The confidence written
is the posterior mean of ``q`` (the probability that an annotator prefers ``chosen``) under a
uniform or an empirical-Bayes prior (:mod:`smoothalign.smoothing.votes`), in the column that
``smoothalign dpo --smoothing oracle-l0|oracle-l2`` smooths with. Optionally pairs whose
confidence is below ½ are relabelled (chosen ↔ rejected, with every ``*chosen*`` /
``*rejected*`` field pair swapped and the vote counts mirrored), so that the labels follow the
votes; the noisy-preference benchmark (``study preference --methods sources``) measures both.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from smoothalign._options import option
from smoothalign.data.loading import (
    FILE_KEY,
    NOT_OBJECT_KEY,
    ROW_KEY,
    TEXT_FIELDS,
    not_an_object,
    row_location,
)
from smoothalign.data.validation import BadRowError
from smoothalign.reward.data import soft_label
from smoothalign.smoothing.votes import PRIORS, fit_vote_prior, posterior_mean, vote_confidence

VOTE_FIELDS = ("votes_chosen", "votes_total")
MAX_LISTED = 20  # bad rows named in one error message
MIN_ROWS_EMPIRICAL = 50  # fewer rows than this: the empirical prior is barely identified


@dataclass
class VoteConfidenceSummary:
    rows: int
    prior: str
    relabelled: int
    mean_confidence: float
    field_name: str = "confidence"
    skipped: int = 0  # bad rows left out under on_bad_rows="skip"
    warnings: list[str] = field(default_factory=list)
    # the fitted empirical-Bayes prior's mass on q < 0.2, 0.2 ≤ q ≤ 0.8 and q > 0.8
    prior_mass: dict[str, float] = field(default_factory=dict)

    def to_text(self, *, with_warnings: bool = True) -> str:
        """The summary's lines, then each warning as ``warning: …`` (``with_warnings``; the
        command line says them as its other warnings instead: ``data/confidence_cli.py``)."""
        lines = [
            f"{self.rows} row{'' if self.rows == 1 else 's'}"
            + (
                f" ({self.skipped} bad row{'' if self.skipped == 1 else 's'} skipped)"
                if self.skipped
                else ""
            )
            + f"; {self.field_name} = posterior mean of q under the {self.prior} prior; "
            f"mean {self.mean_confidence:.3f}; relabelled {self.relabelled}",
        ]
        if self.prior_mass:
            lines.append(
                "fitted prior over q: "
                + ", ".join(f"{k}: {v:.3f}" for k, v in self.prior_mass.items())
            )
        if with_warnings:
            lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _raise_if_bad(bad: list[str], n_rows: int, what: str, hint: str = "") -> None:
    """One ``ValueError`` naming every bad row (the first ``MAX_LISTED``), if there are any,
    and then ``hint``."""
    if bad:
        more = f"\n  … and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise ValueError(
            f"{len(bad)} of {n_rows} rows cannot be {what}:\n  "
            + "\n  ".join(bad[:MAX_LISTED])
            + more
            + (f"\n{hint}" if hint else "")
        )


# fields this tool (or ``smoothalign dpo`` / ``reward``) reads, mirrors or writes besides the
# confidence: the column written must not replace one of them
OWN_FIELDS = (
    *TEXT_FIELDS,
    *VOTE_FIELDS,
    "votes",
    "vote",
    "p_chosen",
    "relabelled",
    "pair_id",
    ROW_KEY,
    FILE_KEY,
    NOT_OBJECT_KEY,
)


def check_field_name(field_name: Any) -> None:
    """Refuse a confidence column that would replace a field the rows need: the text, the
    votes, ``relabelled``, a ``…chosen…`` / ``…rejected…`` field (relabelling swaps those
    in pairs), the bookkeeping keys, or an empty name."""
    why = None
    if not isinstance(field_name, str) or not field_name.strip():
        why = "the column needs a name"
    elif field_name != field_name.strip():
        why = "leading or trailing spaces"
    elif field_name in OWN_FIELDS:
        why = "the rows' own field, which the tool reads or writes"
    elif "chosen" in field_name or "rejected" in field_name:
        why = "a '…chosen…' / '…rejected…' field, which relabelling swaps with its partner"
    if why is not None:
        raise ValueError(
            f"{option('field_name')} {field_name!r}: {why}; write the confidence to another "
            "column (the default is 'confidence', which `smoothalign dpo --smoothing "
            "oracle-*` reads)"
        )


VOTE_FORMS = (
    "each row needs its annotators' votes, as counts (votes_chosen of votes_total, "
    "0 <= votes_chosen <= votes_total, votes_total >= 1) or as a votes list of 0/1 "
    "(1 = a vote for chosen); a row may carry both, and a p_chosen, which must then agree "
    "(as `smoothalign reward` reads them); a p_chosen alone carries no vote count, which the "
    "posterior (empirical-Bayes or uniform prior) needs, so it cannot be used"
)
"""The vote forms :func:`add_vote_confidence` reads, said in its bad-row error."""


def row_votes(row: Any) -> tuple[int, int]:
    """``(votes for chosen, votes in all)`` of one row, read by ``smoothalign reward``'s
    parser (:func:`smoothalign.reward.data.soft_label`): counts, a 0/1 ``votes`` list, or
    both, with any ``p_chosen``; forms that disagree are refused as there.

    Raises:
        BadRowError: with the field and the reason (a ``p_chosen`` without votes included).
    """
    try:
        _, chosen, total = soft_label(row)
    except BadRowError as b:
        if b.code == "missing_label":  # reward's reason offers p_chosen, not enough here
            raise BadRowError(
                "votes_total", b.code, "no votes (votes_chosen + votes_total, or votes)"
            ) from None
        raise
    if total is None:
        raise BadRowError(
            "p_chosen",
            "missing_label",
            "a vote share without its vote count (votes_chosen + votes_total, or votes): the "
            "confidence is a posterior from the votes, which p_chosen alone does not give",
        )
    return chosen, total


def _check_votes(
    rows: Sequence[Any], field_name: str, overwrite: bool, on_bad_rows: str = "error"
) -> tuple[list[int], list[tuple[int, int]], list[str], int]:
    """The positions of the usable rows, their ``(votes for chosen, votes in all)``, the
    bad rows' messages (skipped under ``on_bad_rows="skip"``) and how many rows already
    have ``field_name`` (replaced under ``overwrite``). A column that every row already has
    is one file-level error, not one line per row."""
    counts, kept, bad, present = [], [], [], []
    for i, row in enumerate(rows):
        if not_an_object(row) is not None:
            bad.append(f"{row_location(row, i)}: not a JSON object")
            continue
        if row.get(field_name) is not None:
            present.append(
                f"{row_location(row, i)}, field '{field_name}': already present (pass "
                f"{option('overwrite', True)}, or write the confidence to another field)"
            )
        try:
            votes = row_votes(row)
        except BadRowError as b:
            bad.append(f"{row_location(row, i)}, field '{b.field}': {b.reason}")
            continue
        if row.get(field_name) is not None and not overwrite:
            bad.append(present[-1])
        else:
            counts.append(votes)
            kept.append(i)
    if not overwrite and present and len(present) == len(rows):
        files = sorted({str(r[FILE_KEY]) for r in rows if r.get(FILE_KEY)})
        where = ", ".join(files) if files else "the rows"
        others = [b for b in bad if b not in present]
        raise ValueError(
            f"{where}: every row already has a '{field_name}' field ({len(rows)} rows; in a "
            f"`study preference --export-votes` file it is the true q). Pass "
            f"{option('overwrite', True)} to replace it with the votes' estimate (what "
            "`smoothalign dpo --smoothing oracle-*` reads; the old values are lost, and the dpo "
            "report's *_true metrics then measure against the estimate), or another "
            f"{option('field_name')} (e.g. {option('field_name', 'vote_confidence')}) to write "
            "the estimate beside it and keep it"
            + (
                f"\n{len(others)} of {len(rows)} rows cannot be used either:\n  "
                + "\n  ".join(others[:MAX_LISTED])
                + (f"\n  … and {len(others) - MAX_LISTED} more" if len(others) > MAX_LISTED else "")
                if others
                else ""
            )
        )
    if bad and (on_bad_rows == "error" or not kept):
        label_problems = [b for b in bad if b not in present]
        _raise_if_bad(
            bad,
            len(rows),
            "used" + (" (no row is left)" if on_bad_rows == "skip" else ""),
            (VOTE_FORMS if label_problems else "")
            + (
                f"\n({option('on_bad_rows', 'skip')} leaves the bad rows out)"
                if on_bad_rows == "error" and kept
                else ""
            ),
        )
    return kept, counts, bad, len(present)


# fields that hold the probability that ``chosen`` wins: mirrored (1 − x) when relabelling
CHOSEN_PROBABILITY_FIELDS = ("confidence", "p_chosen")


def _relabelled(row: dict[str, Any], where: str, field_name: str, total: int) -> dict[str, Any]:
    """``row`` with chosen ↔ rejected: every ``…chosen…`` field swapped with its
    ``…rejected…`` partner, ``votes_chosen`` and a 0/1 ``votes`` list mirrored, and the
    probabilities that chosen wins (``confidence``, ``p_chosen``; ``field_name`` is written
    afterwards) mirrored. A field that would go stale — a ``…chosen…`` or ``…rejected…`` field
    without its partner, a probability that is not a number in [0, 1] — is an error naming
    the row and the field."""
    out = dict(row)
    k = total  # the row's votes in all (from its counts or its votes list)
    for key, value in row.items():
        if key == field_name:
            continue
        if key in CHOSEN_PROBABILITY_FIELDS:
            if value is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not 0 <= value <= 1
            ):
                raise ValueError(
                    f"{where}, field '{key}': expected a probability in [0, 1] to mirror, got "
                    f"{value!r}"
                )
            out[key] = 1 - value
        elif key == "votes_chosen":
            out[key] = k - int(value)
        elif key == "votes":
            if not isinstance(value, list) or any(x not in (0, 1) for x in value):
                raise ValueError(f"{where}, field 'votes': expected a list of 0/1 votes to mirror")
            out[key] = [1 - int(x) for x in value]  # True/False count as 1/0, as in reward data
        elif "chosen" in key or "rejected" in key:
            partner = (
                key.replace("chosen", "rejected")
                if "chosen" in key
                else key.replace("rejected", "chosen")
            )
            if partner not in row:
                raise ValueError(
                    f"{where}, field '{key}': cannot relabel a pair with this field (no "
                    f"'{partner}' to swap it with)"
                )
            out[key] = row[partner]
    out["relabelled"] = True
    return out


def add_vote_confidence(
    rows: Sequence[Any],
    *,
    prior: str = "empirical",
    relabel: bool = False,
    field_name: str = "confidence",
    overwrite: bool = False,
    on_bad_rows: str = "error",
) -> tuple[list[dict[str, Any]], VoteConfidenceSummary]:
    """Rows (as :func:`~smoothalign.data.loading.load_preference_rows` gives them) with
    ``field_name`` set to each pair's posterior-mean confidence, relabelled where it is below
    ½ if ``relabel``; the ``_row``/``_file`` bookkeeping keys are dropped. The votes are read
    as ``smoothalign reward`` reads them (:func:`row_votes`: counts, a 0/1 ``votes`` list,
    or both; forms that disagree are refused). Every bad row is named (file, row, field) in
    one ``ValueError`` (``on_bad_rows="error"``), or left out and counted in the summary's
    ``skipped`` and ``warnings`` (``"skip"``; an error where no row is left)."""
    if prior not in PRIORS:
        raise ValueError(f"prior: unknown {prior!r}; choose one of {PRIORS}")
    if on_bad_rows not in ("error", "skip"):
        raise ValueError(f"on_bad_rows: expected 'error' or 'skip', got {on_bad_rows!r}")
    check_field_name(field_name)
    if not rows:
        raise ValueError("rows: no rows to score")
    kept, counts, skipped, replaced = _check_votes(rows, field_name, overwrite, on_bad_rows)
    votes = [v for v, _ in counts]
    totals = [k for _, k in counts]
    mass = {}
    if prior == "empirical":
        support, weights = fit_vote_prior(votes, totals)
        conf = posterior_mean(votes, totals, support, weights).tolist()
        mass = {
            "q < 0.2": float(weights[support < 0.2].sum()),
            "0.2 <= q <= 0.8": float(weights[(support >= 0.2) & (support <= 0.8)].sum()),
            "q > 0.8": float(weights[support > 0.8].sum()),
        }
    else:
        conf = vote_confidence(votes, totals, prior=prior).tolist()
    out, n_relabelled, bad = [], 0, []
    for i, (_, total), c in zip(kept, counts, conf, strict=True):
        row = rows[i]
        new = {k: v for k, v in row.items() if k not in (ROW_KEY, FILE_KEY)}
        if relabel and c < 0.5:  # an exact tie (q̂ = ½) keeps its label
            try:
                new = _relabelled(new, row_location(row, i), field_name, total)
            except ValueError as e:
                bad.append(str(e))
                continue
            c = 1 - c
            n_relabelled += 1
        new[field_name] = c
        out.append(new)
    _raise_if_bad(bad, len(rows), "relabelled")
    warnings = []
    if skipped:
        more = f"; … and {len(skipped) - MAX_LISTED} more" if len(skipped) > MAX_LISTED else ""
        warnings.append(
            f"skipped {len(skipped)} of {len(rows)} rows ({option('on_bad_rows', 'skip')}; "
            "not written): " + "; ".join(skipped[:MAX_LISTED]) + more
        )
    if replaced:
        warnings.append(
            f"replaced the '{field_name}' value that {replaced} of {len(rows)} rows had (in a "
            f"`study preference --export-votes` file, the true q); another "
            f"{option('field_name')} keeps it"
        )
    if prior == "empirical" and (max(totals) <= 2 or len(totals) < MIN_ROWS_EMPIRICAL):
        warnings.append(
            f"{len(totals)} rows with at most {max(totals)} votes each say little about the "
            "prior's shape: the empirical prior stays near its uniform start and its "
            f"posteriors are arbitrary; consider {option('prior', 'uniform')}"
        )
    summary = VoteConfidenceSummary(
        rows=len(out),
        skipped=len(skipped),
        prior=prior,
        relabelled=n_relabelled,
        mean_confidence=sum(r[field_name] for r in out) / len(out),
        field_name=field_name,
        warnings=warnings,
        prior_mass=mass,
    )
    return out, summary


__all__ = [
    "OWN_FIELDS",
    "VOTE_FIELDS",
    "VOTE_FORMS",
    "VoteConfidenceSummary",
    "add_vote_confidence",
    "check_field_name",
    "row_votes",
]
