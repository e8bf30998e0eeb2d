"""The one check every study makes of its ``--output-dir`` before any work: a study writes
``results.json``, ``table.md`` and figures there, which would replace another command's
own files or mix into them. Refused (``ValueError`` naming ``--output-dir``): a file in
the way (:func:`smoothalign.io.check_output_dir`), a training command's run folder or a
model folder (:func:`smoothalign.io.check_not_a_run_or_model`), and a folder holding
another study's (or command's) ``results.json``. A study's ``results.json`` says which
study wrote it (``command``, :func:`study_command`); a rerun into its own folder passes,
so that it reuses what its earlier run left there.

The commands that are not studies but write into a folder of their own (``eval
calibration``, ``eval preferences``, ``analyze head``) refuse a study's folder with
:func:`check_not_a_study_folder`: their files would replace its ``results.json`` or mix
with its tables and figures. This module imports only the standard library at import
time, for those commands' lazy imports."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"

_LEGACY_CONFIG_KEYS = {
    # results.json written before it said its command: its config tells the study apart
    "smoothalign study logreg": "n_multipliers",
    "smoothalign study reward": "annotators",
    "smoothalign study preference": "flip_rates",
    "smoothalign study sft-calibration": "mmlu_limit",
}


def study_command(name: str) -> str:
    """What a study's ``results.json`` records as its ``command``: ``smoothalign study
    <name>`` (``logreg``, ``reward``, ``preference``, ``sft-calibration``)."""
    command = f"smoothalign study {name}"
    if command not in _LEGACY_CONFIG_KEYS:
        raise ValueError(f"no study {name!r}")
    return command


def written_by(results: Any) -> str | None:
    """The command that wrote ``results`` (a ``results.json``'s contents): its
    ``command``, or for a study's results written before they named it, the study its
    config belongs to; None where it says nothing of the kind."""
    if not isinstance(results, dict):
        return None
    command = results.get("command")
    if isinstance(command, str):
        return command
    config = results.get("config")
    if isinstance(config, dict):
        for study, key in _LEGACY_CONFIG_KEYS.items():
            if key in config:
                return study
    return None


def study_of(path: str | os.PathLike) -> str | None:
    """The study (its :func:`study_command`) whose ``results.json`` the folder ``path``
    holds; None where it holds none, one that cannot be read, or another command's (``eval
    calibration`` writes a ``results.json`` too, naming itself)."""
    file = Path(path) / RESULTS_FILE
    if not file.is_file():
        return None
    try:
        who = written_by(json.loads(file.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None
    return who if who in _LEGACY_CONFIG_KEYS else None


def check_not_a_study_folder(
    path: str | os.PathLike, files: str, option: str = "--output-dir"
) -> Path:
    """``path`` as a :class:`Path`, or a ``ValueError`` naming ``option`` where it is a
    study's output folder (:func:`study_of`): a command's ``files`` (as the message lists
    them) written there would replace the study's ``results.json`` or mix with its tables
    and figures. For the commands that are not studies, beside
    :func:`smoothalign.io.check_not_a_run_or_model`."""
    path = Path(path)
    study = study_of(path)
    if study is not None:
        raise ValueError(
            f"{option}: {path} holds the results of {study}; this command's files ({files}) "
            f"would replace or mix with them: choose another {option}"
        )
    return path


def check_study_output_dir(path: str | os.PathLike, name: str, files: str) -> Path:
    """``path`` as a :class:`Path`, or a ``ValueError`` naming ``--output-dir`` where study
    ``name`` (as :func:`study_command` takes it) must not write its ``files`` (as the
    message lists them) there: a file, a run or model folder, or a folder whose
    ``results.json`` another command wrote (or one that cannot be read as a study's).
    Call it before any work; the folder is not created here."""
    from smoothalign.io import check_not_a_run_or_model, check_output_dir

    command = study_command(name)
    out = check_not_a_run_or_model(check_output_dir(path, "--output-dir"), files)
    file = out / RESULTS_FILE
    if not out.is_dir() or not (file.exists() or file.is_symlink()):
        return out
    try:
        who = written_by(json.loads(file.read_text(encoding="utf-8")))
        why = "" if who is not None else "it does not say which command wrote it"
    except (OSError, ValueError) as e:
        who, why = None, f"it cannot be read: {e}"
    if who == command:
        return out
    holds = f"the results of {who}" if who is not None else f"a {RESULTS_FILE} ({why})"
    raise ValueError(
        f"--output-dir: {out} holds {holds}; this study's files ({files}) would replace or "
        "mix with them: choose another --output-dir (a study reruns into its own folder)"
    )
