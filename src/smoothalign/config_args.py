"""Command-line flags from a config dataclass, and the config back from parsed flags.

Every field but ``extra`` becomes ``--field-name`` with the field's default and a help text
from ``help_texts`` (a missing help text is an error, so every option is documented).
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from typing import Any


def _fields(config_cls: type) -> list:
    return [f for f in fields(config_cls) if f.name != "extra"]


def add_config_arguments(
    parser: argparse.ArgumentParser, config_cls: type, help_texts: dict[str, str]
) -> None:
    for f in _fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        if f.type in ("bool", bool):
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_texts[f.name],
            )
            continue
        base = str(f.type).replace(" | None", "")  # annotations are strings here
        kind = {"int": int, "float": float, "str": str}[base]
        parser.add_argument(flag, type=kind, default=default, help=help_texts[f.name])


def config_from_args(args: argparse.Namespace, config_cls: type) -> Any:
    return config_cls(**{f.name: getattr(args, f.name) for f in _fields(config_cls)})
