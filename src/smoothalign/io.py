"""Atomic file output: a crash never leaves a half-written file that a reader would trust;
and a Markdown table cell that keeps its row's columns (:func:`md_cell`)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def not_found(keyword: str, path: str | os.PathLike) -> FileNotFoundError:
    """The error for a path given to option ``keyword`` (its Python keyword: ``data``,
    ``mmlu_file``) that does not exist, in the one shape every command says it:
    ``<option>: not found: PATH``, the option as its reader types it
    (:func:`smoothalign._options.option`: the running command's flag, else the keyword)."""
    from smoothalign._options import option

    return FileNotFoundError(f"{option(keyword)}: not found: {path}")


def check_input_file(path: str | os.PathLike, keyword: str) -> Path:
    """``path`` as a :class:`Path`, or the error naming option ``keyword`` (as
    :func:`not_found` names it) where it is not a file to read: ``<option>: not found:
    PATH`` (a ``FileNotFoundError``) or ``<option>: PATH is a folder, not a file`` (an
    ``IsADirectoryError``), rather than a bare ``[Errno 2]`` / ``[Errno 21]``."""
    from smoothalign._options import option

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{option(keyword)}: {path} is a folder, not a file")
    if not path.exists():
        raise not_found(keyword, path)
    return path


def check_output_file(
    path: str | os.PathLike, option: str = "--output", suffixes: tuple[str, ...] = (".jsonl",)
) -> Path:
    """``path`` as a :class:`Path`, or a ``ValueError`` naming ``option``: a folder (the
    atomic rename would fail naming its temporary file), a path under a file, or a file name
    whose extension is not one of ``suffixes`` (the writer writes that format whatever the
    name says, and the loaders read a file by its extension). Call it before the work."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{option} {path} is a folder, not a file; pass a file path (e.g. "
            f"{path / ('out' + (suffixes[0] if suffixes else ''))})"
        )
    above = _nearest_existing(tuple(path.parents))
    if above is not None and not above.is_dir():
        raise ValueError(
            f"{option} {path} lies under {above}, which is a file, not a folder; pass a path "
            "in a folder"
        )
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(
            f"{option} {path}: the file is written as {' / '.join(s[1:].upper() for s in suffixes)}"
            f"; name it with {' or '.join(suffixes)} (got "
            f"{repr(path.suffix) if path.suffix else 'no extension'})"
        )
    return path


def check_output_dir(path: str | os.PathLike, option: str = "--output-dir") -> Path:
    """``path`` as a :class:`Path`, or a ``ValueError`` naming ``option`` if it is a file or
    lies under one (``mkdir`` would fail with a bare ``[Errno 17] File exists`` or ``Not a
    directory``). Call it before the work; the folder is not created here."""
    path = Path(path)
    above = _nearest_existing((path, *path.parents))
    if above is not None and not above.is_dir():
        where = "" if above == path else f" lies under {above}, which"
        raise ValueError(
            f"{option} {path}{where} is a file, not a folder; pass a folder (it is created if "
            "it does not exist)"
        )
    return path


RUN_RECORD_KEYS = ("output_dir", "working_dir")
"""Keys of the config.json a smoothalign run writes (its options, ``run_config_record``)."""


def is_model_folder(path: str | os.PathLike) -> bool:
    """``path/config.json`` is a ``transformers`` config (a run folder has a ``config.json``
    too: its options, with neither ``model_type`` nor ``architectures``)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        return False
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # unreadable: the loader says what is wrong with it
    return not isinstance(data, dict) or "model_type" in data or "architectures" in data


def is_run_folder(path: str | os.PathLike) -> bool:
    """``path`` is a smoothalign run's folder: its ``config.json`` holds a run's options
    (:data:`RUN_RECORD_KEYS`), not a model's config."""
    path = Path(path)
    file = path / "config.json"
    if not path.is_dir() or not file.is_file() or is_model_folder(path):
        return False
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # pragma: no cover - is_model_folder said True for those
        return False
    return isinstance(data, dict) and any(key in data for key in RUN_RECORD_KEYS)


def check_not_a_run_or_model(
    path: str | os.PathLike, files: str, option: str = "--output-dir"
) -> Path:
    """``path`` as a :class:`Path`, or a ``ValueError`` naming ``option`` where it is a
    smoothalign run's folder or a model folder: a command's outputs (``files``, as the
    message lists them) written there would replace the run's own (its ``report.md``,
    ``reliability.png``) or mix into it. Call it before the work, with
    :func:`check_output_dir`."""
    path = Path(path)
    if path.is_dir() and is_run_folder(path):
        raise ValueError(_would_mix(path, "a smoothalign run's folder", files, option))
    return check_not_a_model_folder(path, files, option)


def check_not_a_model_folder(
    path: str | os.PathLike, files: str, option: str = "--output-dir"
) -> Path:
    """``path`` as a :class:`Path`, or a ``ValueError`` naming ``option`` where it is a
    model folder (:func:`is_model_folder`: a ``transformers`` ``config.json``): ``files``
    written there (a ``config.json`` among them) would replace or mix with the model's
    own. The model half of :func:`check_not_a_run_or_model`; the training commands, which
    write into run folders, check only this."""
    path = Path(path)
    if path.is_dir() and is_model_folder(path):
        raise ValueError(_would_mix(path, "a model folder", files, option))
    return path


def _would_mix(path: Path, what: str, files: str, option: str) -> str:
    return (
        f"{option}: {path} is {what}; this command's files ({files}) would replace or "
        f"mix with its own: choose another {option}"
    )


def _nearest_existing(candidates: tuple[Path, ...]) -> Path | None:
    """The first of ``candidates`` (a path and its parents) that exists, if any."""
    for p in candidates:
        if p.exists() or p.is_symlink():
            return p
    return None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as JSON, NaN and ±inf (which JSON lacks) written as null at any depth."""
    text = json.dumps(
        json_safe(obj),
        indent=2,
        sort_keys=False,
        default=lambda o: json_safe(_jsonable(o)),  # numpy values and arrays too
        allow_nan=False,
    )
    return atomic_write_text(path, text + "\n")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A run config's fields for ``config.json``: values as they are, except data handed over
    as objects (a list of rows, a ``datasets.Dataset``), which are described, not copied."""
    import dataclasses

    return {f.name: _describe(getattr(config, f.name)) for f in dataclasses.fields(config)}


CALIBRATOR_FLAGS = {
    "bins": "--cals-bins",
    "momentum": "--cals-momentum",
    "init_confidence": "--cals-init-confidence",
    "prior_strength": "--cals-prior-strength",
    "warmup_steps": "--cals-warmup-steps",
}
"""The CALS calibrator's options (dpo's and reward's ``bins``, ...) on the command line:
prefixed, so that ``--cals-warmup-steps`` (micro-batches of α = a*(c₀)) is not read as the
learning rate's warm-up (``--lr-warmup-steps``), nor ``--cals-bins`` as the ECE's bins;
their unprefixed names, the flags before, still work (``config_args.FLAG_ALIASES``)."""


def config_flags(config: Any) -> dict[str, str]:
    """The command-line flag of each option of a run config (its dataclass or an instance)
    that has one, as ``config_args.add_config_arguments`` makes them: ``--field-name``, for
    every field but ``extra`` (a dict the Python API passes; no flag sets it), and the CALS
    calibrator's prefixed (:data:`CALIBRATOR_FLAGS`)."""
    import dataclasses

    return {
        f.name: CALIBRATOR_FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
        for f in dataclasses.fields(config)
        if f.name != "extra"
    }


def _describe(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {k: _describe(v) for k, v in value.items()}
    if isinstance(value, list | tuple) and all(
        v is None or isinstance(v, str | int | float | bool) for v in value
    ):
        return list(value)
    kind = f"{type(value).__module__.split('.')[0]}.{type(value).__name__}"
    size = f" of {len(value)} rows" if hasattr(value, "__len__") else ""
    return f"<{kind}{size}>"


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples, at any depth) with every non-finite float as
    ``None``: JSON has no NaN or inf, and other readers than Python's refuse them."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def follow_umask(folder: Path) -> None:
    """Give ``folder`` and everything in it the permissions a plain ``open``/``mkdir``
    would (``0o666``/``0o777`` less the umask): ``mkdtemp`` makes folders 0700, and
    safetensors writes its files 0600, which other users of a shared output could not
    read."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.rglob("*"):
        f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)


def swap_in_folder(new: Path, dest: Path) -> None:
    """Rename the finished folder ``new`` to ``dest`` (same parent), replacing what is there.

    A folder cannot be renamed over a non-empty one, so the old ``dest`` is first moved
    aside, and moved back if the second rename fails: a reader finds the old folder or the
    complete new one (or, between the two renames, briefly none), never a mixture."""
    if not dest.exists():
        os.replace(new, dest)
        return
    import shutil

    old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
    os.replace(dest, old / "x")
    try:
        os.replace(new, dest)
    except BaseException:
        os.replace(old / "x", dest)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Render a matplotlib figure to PNG atomically and close it."""
    import io as _io

    import matplotlib.pyplot as plt

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def md_cell(text: Any) -> str:
    """``text`` as one cell of a Markdown table row: a ``|`` in it (``mean |r₁ − r₂|``, a
    file name) escaped as ``\\|``, which would otherwise end the cell and shift the row's
    values out of their columns, and line breaks as spaces (they would end the row)."""
    return " ".join(str(text).splitlines()).replace("|", "\\|")


def _jsonable(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")
