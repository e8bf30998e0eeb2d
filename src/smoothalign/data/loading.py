"""Load preference rows from local files, folders, ``datasets.Dataset`` objects or lists.

Loading only reads and labels rows; it checks nothing about their content (that is
``validate_preference_rows``'s job), so a bad row is reported there with its row number
instead of failing here. Nothing here touches the network.

Every returned row is a fresh ``dict`` with two reserved keys added:

* ``"_row"``: the row's 0-based index in its file (or in the list / dataset it came from);
* ``"_file"``: the file's path as given (a folder's files: the folder as given joined with
  the file's name), for rows loaded from a file or a folder: a bad row's message names it,
  so that ``runs/a/eval.jsonl`` and ``runs/b/eval.jsonl`` are told apart.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoothalign.io import not_found

ROW_KEY = "_row"
FILE_KEY = "_file"
NOT_OBJECT_KEY = "_not_an_object"  # a row that is not an object: its type's name
SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv")
TEXT_FIELDS = ("prompt", "chosen", "rejected")
# numbers wherever they appear: in CSV each of their cells is parsed on its own, so that one
# bad cell stays a string (and validation names its row) instead of turning the column to text
NUMERIC_FIELDS = (
    "confidence",
    "p_chosen",
    "votes_chosen",
    "votes_total",
    "ref_chosen_logps",
    "ref_rejected_logps",
    "vote",
)
# identifiers stay text in CSV ("007" is not 7); an empty cell reads as absent
ID_FIELDS = ("pair_id",)

PreferenceSource = str | os.PathLike | Sequence[Mapping[str, Any]] | Any  # Any: datasets.Dataset


def load_preference_rows(
    source: PreferenceSource,
    *,
    text_fields: Sequence[str] = TEXT_FIELDS,
    what: str = "preference data",
    split: str = "train",
    option: str = "source",
) -> list[dict[str, Any]]:
    """Read preference rows (TRL's ``prompt``/``chosen``/``rejected`` format) into dicts.

    Other row formats load the same way (the SFT data: ``prompt``/``completion`` or
    ``messages``): ``text_fields`` names their text columns (kept as strings in CSV, turned
    back into message lists from a ``datasets`` struct column) and ``what`` names the data in
    error messages; ``option`` is the keyword of the option ``source`` was given as
    (``data``, ``eval_data``): a missing path is ``<option>: not found: PATH``, the option
    named as its reader types it (:func:`smoothalign._options.option`).

    Args:
        source: one of
            * a path to a ``.jsonl`` (one JSON object per line; blank lines ignored), ``.json``
              (a list of objects, or ``{"data": [...]}``), ``.parquet`` or ``.csv`` file;
            * a folder: if it holds ``train.<ext>`` or HF-style shards ``train-*.<ext>``, only
              those are read (two ``train.<ext>`` of different formats is an error); otherwise
              every supported file directly in it (not in subfolders, hidden files skipped).
              Files are read in sorted name order and their rows concatenated. Beside train
              files, ``eval.<ext>`` and shards ``eval-00000-of-00002.<ext>`` (or HF's
              ``validation.<ext>`` / ``validation-…``, not both) are the folder's held-out rows
              (:func:`held_out_files`), read with ``split="eval"``; ``test.*`` and other
              files are never read there;
            * a ``datasets.Dataset`` (or a ``DatasetDict`` with a ``"train"`` split);
            * a list of dicts.

    Returns:
        One dict per row, in order, with ``"_row"`` (0-based index in its file or list) and,
        for files and folders, ``"_file"`` (the file's path as given, see the module
        docstring) added. Rows that already carry ``"_row"``
        (e.g. passed through twice) keep it. A row that is not an object (a list, a number)
        is not an error here: it becomes ``{"_row": i, "_not_an_object": "list"}`` (and
        ``"_file"``), which validation reports as ``not_a_mapping`` (:func:`not_an_object`).

    ``split``: ``"eval"`` reads a folder's held-out files instead of its train files (an
    error for any other source, or a folder without them).

    CSV holds plain text only: the ``text_fields`` are always read as strings
    (so an answer "4" stays the string "4"), as is ``pair_id`` ("007" is not 7); an empty
    cell in any other column reads as absent (``None``); each cell of a label or number
    column (``NUMERIC_FIELDS``: ``confidence``, ``p_chosen``, ``vote``, …) becomes a number
    where it parses as one (a bad cell stays text, for validation to name), and other
    columns become numbers when every non-empty cell in the column is one.

    Raises:
        FileNotFoundError: the path does not exist (``<option>: not found: PATH``).
        ValueError: an unsupported extension, a folder with no supported file, a malformed
            file (the message names the file and line), or an unsupported source.
    """
    spec = _Spec(tuple(text_fields), what, option)
    if split not in ("train", "eval"):
        raise ValueError(f"split: expected 'train' or 'eval', got {split!r}")
    if split == "eval":
        files = held_out_files(source)
        if not files:
            raise ValueError(f"{what}: {source} is not a folder with eval files beside train files")
        return _read_files(files, spec)
    if isinstance(source, str | os.PathLike):
        return _load_path(Path(source), spec)
    if _is_hf_dataset(source):
        return _load_hf_dataset(source, spec)
    if isinstance(source, Sequence) and not isinstance(source, str | bytes):
        return _label_rows(source)
    raise ValueError(
        "load_preference_rows: expected a path, a folder, a datasets.Dataset or a list of "
        f"dicts, got {type(source).__name__}"
    )


def not_an_object(row: Any) -> str | None:
    """The type name of a row that is not an object (a raw non-mapping, or the stand-in
    :func:`load_preference_rows` leaves in its place), else ``None``."""
    if not isinstance(row, Mapping):
        return type(row).__name__
    return row.get(NOT_OBJECT_KEY)


def check_paths_exist(**sources: Any) -> None:
    """Raise ``FileNotFoundError`` (``<option>: not found: PATH``, :func:`not_found`) for the
    first of ``sources`` (``name=value``, by keyword) that is a path and does not exist; other values (``None``, row lists, data sets) pass. Lets a run
    fail on a mistyped path before it spends minutes loading a model."""
    for name, source in sources.items():
        if isinstance(source, str | os.PathLike) and not Path(source).exists():
            raise not_found(name, source)


def file_label(path: str | os.PathLike) -> str:
    """How messages name a data file: its path as the user gave it (relative stays
    relative; a folder's file is the folder joined with its name), never its base name
    alone, which two runs' ``eval.jsonl`` share."""
    return str(Path(path))


def location(file: str | None, row: Any) -> str:
    """How every message names a row: ``runs/b/eval.jsonl row 3`` (``file`` as
    :func:`file_label` gives it), or ``row 3`` for rows that came from no file."""
    return f"{file} row {row}" if file else f"row {row}"


def row_location(row: Any, index: Any = "?", file: str | None = None) -> str:
    """:func:`location` of a loaded row, from its ``_file`` / ``_row`` keys; ``index`` and
    ``file`` stand in for those it lacks (a row that is not a mapping has neither)."""
    if not isinstance(row, Mapping):
        return location(file, index)
    return location(row.get(FILE_KEY) or file, row.get(ROW_KEY, index))


@dataclass(frozen=True)
class _Spec:
    text_fields: tuple[str, ...]
    what: str
    option: str = "source"


def _load_path(path: Path, spec: _Spec) -> list[dict[str, Any]]:
    if not path.exists():
        raise not_found(spec.option, path)
    if path.is_dir():
        return _load_folder(path, spec)
    rows = _label_rows(_read_file(path, spec))
    for row in rows:  # so that a bad row's message says which file (--data or --eval-data)
        row.setdefault(FILE_KEY, file_label(path))
    return rows


EVAL_SPLITS = ("eval", "validation")
"""The names of a data folder's held-out files beside its train files (``eval.jsonl``,
``validation-00000-of-00002.parquet``): smoothalign's split name and Hugging Face's."""


def _data_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and _extension(p) in SUPPORTED_EXTENSIONS
    )


def _shard_of(path: Path, name: str) -> bool:
    """Whether ``path`` is a shard of held-out split ``name``, named as Hugging Face names
    them (``eval-00000-of-00002.jsonl``, with or without the content hash older ``datasets``
    versions append: ``validation-00000-of-00001-7a1b2c3d4e5f6a7b.parquet``; ``eval-0.jsonl``
    too): a file that only starts with the name (``eval-notes.json``) is no part of the
    held-out set (:func:`folder_held_out` notes it as not read)."""
    pattern = rf"{re.escape(name)}-\d+(-of-\d+)?(-[0-9a-f]{{8,}})?"
    return re.fullmatch(pattern, path.stem) is not None


def _unread_eval_like(folder: Path, read: list[Path]) -> list[Path]:
    """Files of a data folder (beside train files) whose names start like a held-out
    split's but are not read as one (``eval-notes.json``): said, not dropped silently."""
    return [
        p
        for p in _data_files(folder)
        if p not in read and any(p.stem.startswith(f"{n}-") for n in EVAL_SPLITS)
    ]


def _split_files(files: list[Path], name: str, folder: Path, what: str) -> list[Path]:
    """The files of split ``name``: ``name.<ext>`` and its shards (:func:`_split_candidates`);
    two ``name.<ext>`` of different formats are an error."""
    found = _split_candidates(files, name)
    if sum(p.stem == name for p in found) > 1:
        names = ", ".join(p.name for p in found if p.stem == name)
        raise ValueError(f"{what} folder {folder} has several {name} files ({names}); keep one")
    return found


def _split_candidates(files: list[Path], name: str) -> list[Path]:
    """``files``' ``name.<ext>`` and shards of split ``name``: for ``train`` any
    ``train-*.<ext>``, for a held-out split only those named as shards (:func:`_shard_of`)."""
    if name == "train":
        return [p for p in files if p.stem == name or p.stem.startswith(f"{name}-")]
    return [p for p in files if p.stem == name or _shard_of(p, name)]


def _held_out_candidates(source: Any) -> list[Path] | None:
    """A data folder's eval and validation files beside its train files, unchecked (both
    names, several formats); ``None`` for any other source."""
    if not isinstance(source, str | os.PathLike) or not Path(source).is_dir():
        return None
    files = _data_files(Path(source))
    if not _split_candidates(files, "train"):
        return None
    return [p for n in EVAL_SPLITS for p in _split_candidates(files, n)]


def has_held_out_files(source: Any) -> bool:
    """Whether ``source`` is a data folder with eval (or validation) files beside its train
    files, whichever they are (:func:`held_out_files` checks them)."""
    return bool(_held_out_candidates(source))


def held_out_files(source: Any, what: str = "data", eval_option: str = "--eval-data") -> list[Path]:
    """A data folder's held-out files: its ``eval.<ext>`` and shards
    ``eval-00000-of-00002.<ext>`` (or ``validation.*`` / ``validation-*``, named alike),
    where it has train files beside them; ``[]`` for any other source (a file, a folder
    without train files, whose every file is data, rows).

    Raises:
        ValueError: the folder holds both eval and validation files, or two eval files of
            different formats (which is the held-out set is not for us to guess); the
            message says how to give it as ``eval_option`` instead, which reads none of the
            folder's eval files (:func:`folder_held_out`).
    """
    candidates = _held_out_candidates(source)
    if not candidates:
        return []
    folder = Path(source)
    _split_files(_data_files(folder), "train", folder, what)  # two train.<ext>: an error
    names = {p.stem if p.stem in EVAL_SPLITS else p.stem.split("-")[0] for p in candidates}
    whole = [p for p in candidates if p.stem in EVAL_SPLITS]
    if len(names) > 1:
        problem = "both eval and validation files"
    elif len(whole) > 1:
        problem = f"several {whole[0].stem} files"
    else:
        return candidates
    listed = ", ".join(p.name for p in candidates)
    raise ValueError(
        f"{what} folder {folder} has {problem} ({listed}): which is the held-out set? Keep "
        f"one, or give it as {eval_option} (a file, or a folder of its own: e.g. "
        f"{eval_option} {folder / candidates[0].name}): the folder's eval files are then not "
        "read"
    )


@dataclass(frozen=True)
class HeldOutSource:
    """Where a run's held-out rows come from, as :func:`folder_held_out` settles it.

    ``rows``: a data folder's held-out rows (loaded, not validated) where they are the
    held-out set, else ``None`` (the eval option's data, or a split of the data); ``notes``:
    what the run's report says of the folder's held-out files; ``option``: how messages
    name the held-out set (the eval option, or the folder's files)."""

    rows: list[dict[str, Any]] | None
    notes: list[str]
    option: str


def folder_held_out(
    data: Any,
    eval_data: Any,
    *,
    eval_option: str = "--eval-data",
    text_fields: Sequence[str] = TEXT_FIELDS,
    what: str = "preference data",
) -> HeldOutSource:
    """The held-out set of a run whose ``data`` may be a folder with train and eval files
    (:func:`held_out_files`): without ``eval_data``, the folder's eval rows (a note says so);
    with it, a note that they were not read. Any other ``data``: nothing to say.

    Raises:
        ValueError: an ambiguous folder (:func:`held_out_files`), or eval files that hold
            no row.
    """
    if eval_data is not None:  # the folder's eval files are not read: not checked either
        unread = _held_out_candidates(data)
        if not unread:
            return HeldOutSource(None, [], eval_option)
        names = ", ".join(p.name for p in unread)
        note = f"data: the folder {data} holds {names}, not read: {eval_option} given"
        return HeldOutSource(None, [note], eval_option)
    files = held_out_files(data, what, eval_option)
    unread = [] if _held_out_candidates(data) is None else _unread_eval_like(Path(data), files)
    unread_notes = [
        f"data: the folder {data} holds {', '.join(p.name for p in unread)}, not read (not "
        "named as a held-out split or its shards: eval.<ext>, eval-00000-of-00002.<ext>)"
    ] if unread else []  # fmt: skip
    if not files:
        return HeldOutSource(None, unread_notes, eval_option)
    names = ", ".join(p.name for p in files)
    rows = load_preference_rows(data, text_fields=text_fields, what=what, split="eval")
    if not rows:
        raise ValueError(f"data: {names} in the folder {data} holds no rows")
    note = (
        f"held-out set: {names} of the data folder {data}, beside its train files "
        f"({eval_option} names another)"
    )
    return HeldOutSource(rows, [note, *unread_notes], f"the data folder's {names}")


def _load_folder(folder: Path, spec: _Spec) -> list[dict[str, Any]]:
    files = _data_files(folder)
    if not files:
        raise ValueError(
            f"{spec.what} folder {folder} holds no {'/'.join(SUPPORTED_EXTENSIONS)} file"
        )
    train = _split_files(files, "train", folder, spec.what)
    return _read_files(train or files, spec)


def _read_files(files: list[Path], spec: _Spec) -> list[dict[str, Any]]:
    """The rows of ``files``, in order, each labelled with its file."""
    rows: list[dict[str, Any]] = []
    for p in files:
        for row in _label_rows(_read_file(p, spec)):
            row[FILE_KEY] = file_label(p)
            rows.append(row)
    return rows


def _extension(path: Path) -> str:
    return path.suffix.lower()


def _read_file(path: Path, spec: _Spec) -> list[Any]:
    ext = _extension(path)
    if ext == ".jsonl":
        return _read_jsonl(path)
    if ext == ".json":
        return _read_json(path)
    if ext == ".parquet":
        import pyarrow.parquet as pq  # lazy: only Parquet users pay for the import

        return pq.read_table(path).to_pylist()
    if ext == ".csv":
        return _read_csv(path, spec.text_fields)
    raise ValueError(
        f"unsupported {spec.what} file {path}: extension {ext or '(none)'!r}; "
        f"supported: {', '.join(SUPPORTED_EXTENSIONS)}"
    )


def _read_text(path: Path) -> str:
    """The file as UTF-8 text (a leading byte-order mark, as Excel writes, dropped); bytes
    that are not UTF-8 are a ``ValueError`` naming the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{path} line {line}: not UTF-8 text ({e.reason} at byte {e.start}); "
            "save the file as UTF-8"
        ) from e


def _read_jsonl(path: Path) -> list[Any]:
    rows = []
    for line_no, line in enumerate(_read_text(path).split("\n"), start=1):  # not splitlines:
        # U+2028 and friends may stand raw inside a JSON string
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {line_no}: invalid JSON ({e.msg})") from e
    return rows


def _read_json(path: Path) -> list[Any]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {e.lineno}: invalid JSON ({e.msg})") from e
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return data["data"]
    if isinstance(data, list):
        return data
    raise ValueError(f"{path}: expected a JSON list of objects, or {{'data': [...]}}")


def _read_csv(path: Path, text_fields: tuple[str, ...]) -> list[Any]:
    old_limit = csv.field_size_limit(2**31 - 1)  # long responses exceed the 128 KiB default
    try:
        with io.StringIO(_read_text(path), newline="") as f:
            reader = csv.DictReader(f, restval="")
            rows = []
            for i, row in enumerate(reader):
                if None in row:
                    raise ValueError(f"{path} row {i}: more cells than the header has columns")
                rows.append(row)
            columns = reader.fieldnames or []
    finally:
        csv.field_size_limit(old_limit)
    for col in columns:
        if col in NUMERIC_FIELDS:
            _coerce_csv_cells(rows, col)
        elif col in ID_FIELDS:
            for r in rows:
                r[col] = r[col] or None
        elif col not in text_fields:
            _coerce_csv_column(rows, col)
    return rows


def _coerce_csv_cells(rows: list[dict[str, Any]], col: str) -> None:
    """Empty cells -> None; each other cell -> int or float where it parses as one."""
    for r in rows:
        v = r[col]
        if v == "":
            r[col] = None
            continue
        for kind in (int, float):
            try:
                r[col] = kind(v)
                break
            except ValueError:
                continue


def _coerce_csv_column(rows: list[dict[str, Any]], col: str) -> None:
    """Empty cells -> None; the column -> int or float if every other cell parses as one."""
    values = [r[col] for r in rows if r[col] != ""]
    for kind in (int, float):
        try:
            parsed = [kind(v) for v in values]
        except ValueError:
            continue
        it = iter(parsed)
        for r in rows:
            r[col] = None if r[col] == "" else next(it)
        return
    for r in rows:
        if r[col] == "":
            r[col] = None


def _is_hf_dataset(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == "datasets"


def _load_hf_dataset(ds: Any, spec: _Spec) -> list[dict[str, Any]]:
    import datasets  # lazy: only callers that pass a Dataset have it loaded already

    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise ValueError(
                f"DatasetDict has no 'train' split (splits: {sorted(ds)}); pass one split"
            )
        ds = ds["train"]
    if not isinstance(ds, datasets.Dataset):
        raise ValueError(f"unsupported datasets object {type(ds).__name__}; pass a Dataset")
    rows = ds.to_list()
    for row in rows:
        for name in spec.text_fields:
            row[name] = _messages_from_columns(row.get(name))
    return _label_rows(rows)


def _messages_from_columns(value: Any) -> Any:
    """``datasets``' ``Sequence({role, content})`` yields ``{"role": [..], "content": [..]}``;
    turn that back into a list of messages. Anything else is returned unchanged."""
    if (
        isinstance(value, dict)
        and {"role", "content"} <= value.keys()
        and all(isinstance(v, list) for v in value.values())
        and len({len(v) for v in value.values()}) == 1
    ):
        keys = list(value)
        return [dict(zip(keys, items, strict=True)) for items in zip(*value.values(), strict=True)]
    return value


def _label_rows(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """The rows as dicts labelled with their ``ROW_KEY``; a row that is not an object becomes
    a stand-in that keeps its place (``{ROW_KEY: i, NOT_OBJECT_KEY: type name}``), so that
    validation reports it by file and row and ``--on-bad-rows skip`` can drop it."""
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            out.append({ROW_KEY: i, NOT_OBJECT_KEY: type(row).__name__})
            continue
        labelled = dict(row)
        labelled.setdefault(ROW_KEY, i)
        out.append(labelled)
    return out


__all__ = [
    "EVAL_SPLITS",
    "FILE_KEY",
    "HeldOutSource",
    "NOT_OBJECT_KEY",
    "ROW_KEY",
    "SUPPORTED_EXTENSIONS",
    "check_paths_exist",
    "file_label",
    "folder_held_out",
    "has_held_out_files",
    "held_out_files",
    "load_preference_rows",
    "location",
    "not_an_object",
    "row_location",
]
