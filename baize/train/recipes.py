"""`baize train`: the recipe --method names, SFT (sft.py) or DPO (dpo.py), on common.py's shared parts.

    baize train --base default --data dialogues.jsonl --out runs/v1
    baize train --from runs/v1 --method dpo --data sdf.prefs.jsonl --out runs/v2-dpo
    baize train --out runs/v1 --resume          # the flags saved in runs/v1, continued
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from ..config import BaizeError, add_dataclass_args
from .common import CONFIG_FILE, TrainConfig


def train(cfg: TrainConfig, *, callbacks: list | tuple = ()) -> Path:
    """Train (or resume, or continue --from) a LoRA run by cfg.method; returns the run directory."""
    if cfg.method == "sft":
        from .sft import sft
        return sft(cfg, callbacks=callbacks)
    if cfg.method == "dpo":
        from .dpo import dpo
        return dpo(cfg, callbacks=callbacks)
    raise BaizeError(f"unknown --method {cfg.method!r}: use sft or dpo")


def _cli_train(args) -> int:
    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    saved = Path(given.get("out", TrainConfig.out)) / CONFIG_FILE
    values = {}
    if given.get("resume") and saved.exists():  # `--out runs/v1 --resume` alone continues with the saved flags
        values = {k: v for k, v in json.loads(saved.read_text()).items() if k in names}
    values.update(given)
    train(TrainConfig(**values))
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("train", help="LoRA-tune a model on dialogue JSONL (resume, DDP, --from a run)",
                       description="LoRA on all linear layers with the paper's defaults; runs under "
                                   "`accelerate launch` for DDP/FSDP/DeepSpeed.")
    add_dataclass_args(p, TrainConfig)
    p.set_defaults(func=_cli_train)
