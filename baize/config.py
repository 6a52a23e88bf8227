"""One small dataclass per stage, mirrored by CLI flags and saved next to each output.

argparse has no dataclass bridge and the alternatives (HfArgumentParser, simple-parsing) either
import torch or add a dependency; this is the 40 lines we need.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path


class BaizeError(Exception):
    """An error the user can fix: printed as one line by the CLI, no traceback."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_args(parser: argparse.ArgumentParser, cls, *, skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        kw: dict = {"help": f.metadata.get("help", "") + (f" (default: {default})" if default not in (None, "", []) else ""),
                    "default": argparse.SUPPRESS, "dest": f.name}
        origin = typing.get_origin(tp)
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        base = args[0] if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args else tp
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is list:
            kw["action"] = "append"
            kw["type"] = typing.get_args(base)[0]
        else:
            kw["type"] = base
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        parser.add_argument(*f.metadata.get("flags", (_flag(f.name),)), **kw)


def dataclass_from_args(cls, args: argparse.Namespace, **overrides):
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(overrides)
    return cls(**values)


def save_config(cfg, path: str | Path, **extra) -> Path:
    """Write the resolved configuration as JSON so a run can be reproduced or resumed."""
    from . import __version__
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"baize_version": __version__, **dataclasses.asdict(cfg), **extra}
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    return path
