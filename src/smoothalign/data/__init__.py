"""Preference data for DPO: load -> validate and tokenise -> collate.

    rows = load_preference_rows("data/")                          # list[dict], rows labelled
    report = validate_preference_rows(rows, tokenizer, max_length=1024, on_bad_rows="skip")
    loader = DataLoader(PreferenceDataset(report.examples), batch_size=B,
                        collate_fn=PreferenceCollator(tokenizer.pad_token_id))
    # batch: input_ids / attention_mask / labels [2B, L] (chosen rows first), confidence [B],
    # index [B], and ref_chosen_logps / ref_rejected_logps [B] when precomputed.

``report.to_dict()`` and ``report.to_markdown()`` go into the run report. This package knows
nothing of models or trainers.
"""

from smoothalign.data.collate import IGNORE_INDEX, PreferenceCollator, PreferenceDataset
from smoothalign.data.loading import SUPPORTED_EXTENSIONS, load_preference_rows
from smoothalign.data.report import BadRow, RefusedRowsError, ValidationReport
from smoothalign.data.tokenization import (
    RowTokenizationError,
    TokenizedPair,
    fit_response,
    tokenize_preference,
)
from smoothalign.data.validation import BAD_ROW_CODES, validate_preference_rows

__all__ = [
    "BAD_ROW_CODES",
    "IGNORE_INDEX",
    "SUPPORTED_EXTENSIONS",
    "BadRow",
    "PreferenceCollator",
    "PreferenceDataset",
    "RefusedRowsError",
    "RowTokenizationError",
    "TokenizedPair",
    "ValidationReport",
    "fit_response",
    "load_preference_rows",
    "tokenize_preference",
    "validate_preference_rows",
]
