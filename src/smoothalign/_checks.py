"""Input conversion and validation shared by the lower layers.

Every check raises ``ValueError`` whose message names the offending argument, so that a
bad call fails loudly at the boundary instead of producing NaN losses later; an argument of
the wrong kind (strings, ``None``, complex numbers) raises :class:`ArgumentTypeError`, a
``TypeError`` that is a ``ValueError`` too. Arrays go through :func:`as_tensor`, scalar
options through :func:`as_number` / :func:`as_integer`, so that every public function
takes the same inputs: Python and NumPy numbers, 0-d arrays and tensors, lists, arrays.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from torch import Tensor

from smoothalign._options import option

ArrayLike = float | np.ndarray | Tensor | list


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong kind (a string, ``None``, a complex number, an array of
    objects where numbers are needed). A ``TypeError``, and a ``ValueError`` too, as every
    refusal of this module was, so that code catching that (the CLI) still does."""


# NumPy dtype kinds that are numbers: bool, signed and unsigned integers, floats
_NUMERIC_KINDS = "biuf"
_KIND_NAMES = {"U": "strings", "S": "bytes", "O": "objects", "c": "complex numbers"}


def _kind_of(x: Any) -> str:
    """How a refusal shows a value: its type, and the dtype of an array or a tensor."""
    dtype = getattr(x, "dtype", None)
    return type(x).__name__ + (f" of dtype {dtype}" if dtype is not None else "")


def as_tensor(x: ArrayLike, name: str, *, like: Tensor | None = None) -> Tensor:
    """Convert ``x`` to a floating tensor (float64 for Python/NumPy floats unless ``like``).

    A number, a NumPy array, a (nested) list or tuple of numbers, or a tensor; bools and
    integers become floats. Strings (``["0.3", "0.7"]``, which NumPy would parse), objects,
    ``None`` and complex values raise :class:`ArgumentTypeError` naming ``name``."""
    if isinstance(x, Tensor):
        if x.is_complex():
            raise ArgumentTypeError(f"{name}: expected real numbers, got a tensor of {x.dtype}")
        t = x
    elif isinstance(x, np.ndarray | list | tuple | numbers.Real | np.generic):
        try:
            a = np.asarray(x)
        except (ValueError, TypeError, RuntimeError) as e:  # ragged lists, ...
            raise ArgumentTypeError(f"{name}: not an array of numbers ({e})") from None
        if a.dtype.kind == "O" and all(_is_real(v) for v in a.flat):
            a = a.astype(np.float64)  # numbers held as objects (a pandas column, a mixed list)
        if a.dtype.kind not in _NUMERIC_KINDS:
            what = _KIND_NAMES.get(a.dtype.kind, f"values of dtype {a.dtype}")
            raise ArgumentTypeError(
                f"{name}: expected real numbers, got {what} ({type(x).__name__}, as NumPy "
                f"reads it: dtype {a.dtype})"
            )
        t = torch.as_tensor(a.astype(np.float64))
    else:
        raise ArgumentTypeError(
            f"{name}: expected a float, list, NumPy array or tensor, got {_kind_of(x)}"
        )
    if not torch.is_floating_point(t):
        t = t.to(torch.float64 if like is None else like.dtype)
    if like is not None:
        t = t.to(device=like.device, dtype=like.dtype)
    return t


def _is_real(v: Any) -> bool:
    """A real number: Python's or NumPy's, or a 0-d real tensor (not a string, not None)."""
    if isinstance(v, Tensor):
        return v.ndim == 0 and not v.is_complex()
    return isinstance(v, numbers.Real)


def as_number(value: Any, name: str) -> float:
    """A scalar option (``beta``, ``momentum``, ...) as a Python float: a Python or NumPy
    number, or a 0-d NumPy array or tensor (``torch.tensor(0.1)``); a bool, a string,
    ``None``, a complex number or an array of several values raise
    :class:`ArgumentTypeError` naming ``name``. The range is the caller's to check."""
    return float(_scalar(value, name, integer=False))


def as_integer(value: Any, name: str) -> int:
    """An integer option (``bins``, ``warmup_steps``) as a Python int: a Python or NumPy
    integer (``np.int64(10)``), or a 0-d integer array or tensor; a float (``10.0``), a bool
    or anything else raises :class:`ArgumentTypeError` naming ``name``."""
    return int(_scalar(value, name, integer=True))


def _scalar(value: Any, name: str, *, integer: bool) -> Any:
    want = "an integer" if integer else "a number"
    if isinstance(value, Tensor | np.ndarray):
        if value.ndim != 0:
            raise ArgumentTypeError(
                f"{name}: expected {want}, got an array of shape {list(value.shape)}"
            )
        if isinstance(value, Tensor):
            floating, other = (
                value.is_floating_point(),
                value.is_complex() or value.dtype == torch.bool,
            )
        else:
            floating, other = value.dtype.kind == "f", value.dtype.kind not in "iuf"
        if other or (integer and floating):
            raise ArgumentTypeError(f"{name}: expected {want}, got {_kind_of(value)}")
        return value.item()
    kind = numbers.Integral if integer else numbers.Real
    if not isinstance(value, kind) or isinstance(value, bool | np.bool_):
        raise ArgumentTypeError(f"{name}: expected {want}, got {_kind_of(value)} {value!r}")
    return value


def resolve_device(name: str) -> str:
    """A ``--device`` value checked before anything loads: ``auto`` (CUDA when available,
    else the CPU) or a device torch knows and this machine has; a ``ValueError`` naming
    ``device`` otherwise."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: {name!r} is not a device ({e})") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device: {name!r}, but this machine has no usable CUDA device")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device: {name!r}, but this machine has {count} CUDA device(s)")
    return name


def check_finite(t: Tensor, name: str) -> Tensor:
    if not bool(torch.isfinite(t).all()):
        bad = (~torch.isfinite(t)).nonzero()[0].tolist()
        raise ValueError(f"{name}: contains NaN or inf (first at index {bad})")
    return t


def check_vector(t: Tensor, name: str) -> Tensor:
    if t.ndim != 1:
        raise ValueError(f"{name}: expected shape [B], got {list(t.shape)}")
    return t


def check_in_range(
    t: Tensor, name: str, low: float, high: float, *, high_inclusive: bool = True
) -> Tensor:
    """Every element in ``[low, high]`` (or ``[low, high)``); NaN is rejected too."""
    check_finite(t, name)
    too_high = t > high if high_inclusive else t >= high
    bad = (t < low) | too_high
    if bool(bad.any()):
        i = bad.nonzero()[0].tolist()
        v = float(t[tuple(i)]) if t.ndim else float(t)
        bracket = "]" if high_inclusive else ")"
        where = f" at index {i}" if t.ndim else ""
        raise ValueError(f"{name}: must lie in [{low}, {high}{bracket}, got {v}{where}")
    return t


def broadcast_per_pair(value: ArrayLike, like: Tensor, name: str) -> Tensor:
    """A float or a ``[B]`` tensor matching ``like`` (shape ``[B]``), as a tensor of shape ``[B]``."""
    t = as_tensor(value, name, like=like)
    if t.ndim == 0:
        return t.expand_as(like)
    if t.shape != like.shape:
        raise ValueError(
            f"{name}: expected a float or shape {list(like.shape)}, got {list(t.shape)}"
        )
    return t


def same_type_as_input(result: Tensor, original: ArrayLike):
    """Return ``result`` as a tensor, NumPy array or float, matching how the input came in."""
    if isinstance(original, Tensor):
        return result
    if isinstance(original, numbers.Real):
        return float(result)
    return result.detach().cpu().numpy()


def check_field_types(config: object) -> None:
    """Every field of the dataclass ``config`` whose default is a number or a bool holds one
    of that kind: an integer (not a bool) where the default is an int, a real number (not a
    bool) where it is a float, a bool where it is a bool. The CLI converts its arguments;
    the Python API does not, and ``batch_size=2.5`` failed only after the model loaded,
    while ``label_smoothing=True`` ran as β = 1. ``None`` passes where the field's annotation
    allows it (``save_total_limit: int | None``: keep every checkpoint)."""
    import dataclasses

    for f in dataclasses.fields(config):
        default, value = f.default, getattr(config, f.name)
        if value is None and "None" in str(f.type):
            continue
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "True or False"
        elif isinstance(default, int):
            ok, kind = (
                isinstance(value, numbers.Integral) and not isinstance(value, bool),
                "an integer",
            )
        elif isinstance(default, float):
            ok, kind = isinstance(value, numbers.Real) and not isinstance(value, bool), "a number"
        else:
            continue
        if not ok:
            raise ValueError(f"{f.name}: expected {kind}, got {type(value).__name__} {value!r}")


def check_finite_fields(config: object) -> None:
    """Every float field of the dataclass ``config`` is finite (``inf`` passes a ``> 0``
    check and then turns the weights into NaN far into a run); the fields' kinds are
    checked first (:func:`check_field_types`)."""
    import dataclasses
    import math

    check_field_types(config)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name}: must be a finite number, got {value}")


def check_ranges(
    owner: object, checks: dict[str, tuple[bool, str]], *, flags: bool = False
) -> None:
    """Raise a ``ValueError`` for the first option of ``checks`` (``name: (ok, rule)``) that
    is not ``ok``: ``name: must be RULE, got VALUE`` (the value is ``owner``'s attribute).
    ``flags``: the option is named by its command-line flag (``--max-steps``), for checks
    of parsed arguments."""
    for name, (ok, rule) in checks.items():
        if not ok:
            shown = "--" + name.replace("_", "-") if flags else name
            raise ValueError(f"{shown}: must be {rule}, got {getattr(owner, name)!r}")


def trainer_ranges(config: object) -> dict[str, tuple[bool, str]]:
    """The :func:`check_ranges` entries of the options every trainer's config has (dpo, sft,
    reward): seed, steps, batch, length, logging/eval/save cadence, LoRA, schedule."""
    c: Any = config
    return {
        "seed": (0 <= c.seed < 2**32, "in [0, 2**32)"),  # what torch and NumPy accept
        "max_steps": (c.max_steps > 0, "> 0"),
        "learning_rate": (c.learning_rate > 0, "> 0"),
        "batch_size": (c.batch_size > 0, "> 0"),
        "grad_accum": (c.grad_accum > 0, "> 0"),
        "max_length": (c.max_length > 1, "> 1"),
        "eval_fraction": (0 <= c.eval_fraction < 1, "in [0, 1)"),
        "logging_steps": (c.logging_steps > 0, "> 0"),
        "eval_steps": (c.eval_steps >= 0, ">= 0"),
        "save_steps": (c.save_steps >= 0, ">= 0"),
        "lora_r": (c.lora_r > 0, "> 0"),
        "lora_alpha": (c.lora_alpha > 0, "> 0"),
        "lr_warmup_steps": (c.lr_warmup_steps >= 0, ">= 0"),
        "weight_decay": (c.weight_decay >= 0, ">= 0"),
        # our rotation runs once the new checkpoint is certified, and counts complete ones
        # only (train.checkpoints.rotate_checkpoints): 1 keeps the newest; None keeps all
        "save_total_limit": (c.save_total_limit is None or c.save_total_limit >= 1, ">= 1"),
    }


LEAN_LAYERS = ("auto", "on", "off", "recompute")
PRECISIONS = ("auto", "fp32", "bf16")
"""``--precision``: ``auto`` (bf16 autocast on CUDA, fp32 on the CPU), ``fp32`` or ``bf16``."""
ON_BAD_ROWS = ("error", "skip")
"""``--on-bad-rows``: stop on invalid data rows, listing them, or skip them (reported)."""


def words(choices: tuple[str, ...]) -> str:
    """``("auto", "fp32", "bf16")`` as a message says it: ``auto, fp32 or bf16``."""
    return ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]


def check_lean_layers(value: Any) -> str:
    """``--lean-layers``: ``auto`` (``recompute`` on CUDA, ``off`` elsewhere), ``on``,
    ``off`` or ``recompute`` (on, and the norms' outputs and the SwiGLU product recomputed
    in the backward); ``True``/``False`` from older configs and the Python API mean
    ``on``/``off``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value not in LEAN_LAYERS:
        raise ValueError(f"lean_layers: {value!r}; choose one of {LEAN_LAYERS}")
    return value


def check_lora_options(config: object) -> None:
    """``lora_r`` / ``lora_alpha`` set away from their defaults while ``config.lora`` is off
    would be recorded in ``config.json`` and change nothing: refused."""
    import dataclasses

    if config.lora:
        return
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for name in ("lora_r", "lora_alpha"):
        if getattr(config, name) != defaults[name]:
            raise ValueError(
                f"{name}: a LoRA option, but LoRA is off (pass {option('lora', True)}, or leave "
                "it at its default)"
            )
