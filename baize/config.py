"""One vocabulary of options: a small dataclass per stage, mirrored by CLI flags and saved next to
each output.

    @dataclass
    class SDFConfig(RunFields, JudgeFields, EndpointFields, _SDFFields): ...   # own fields first

`opt()` declares a field (help, flags, choices, `secret=True`); the shared groups below are composed
into the stage configs so an endpoint, a judge or a run's knobs mean the same everywhere; and
`save_config` masks every secret field. argparse has no dataclass bridge and the alternatives
(HfArgumentParser, simple-parsing) either import torch or add a dependency; this is what we need.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path


class BaizeError(Exception):
    """An error the user can fix: printed as one line by the CLI, no traceback."""


def opt(default=None, help: str = "", *, secret: bool = False, **meta):
    """A config field: `help` for --help, `secret` (masked when saved), `cli=False` (no flag),
    `choices`, `flags`, `metavar`. A list default is copied per instance."""
    meta = {"help": help, **({"secret": True} if secret else {}), **meta}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class EndpointFields:
    """Where an openai: model lives and how hard to try it."""
    base_url: str | None = opt(None, "OpenAI-compatible base URL of openai: models (or OPENAI_BASE_URL)")
    api_key: str | None = opt(None, "API key of that endpoint (or OPENAI_API_KEY); never saved", secret=True)
    request_retries: int = opt(6, "HTTP retries per call (backoff, Retry-After)")
    timeout: float = opt(120.0, "HTTP timeout per call, seconds")


JUDGE_MODES = ["auto", "text", "choice", "debiased"]
# OpenAI's reasoning_effort values for its reasoning models (medium when none is sent)
REASONING_EFFORTS = ["minimal", "low", "medium", "high"]


def effort_opt(who: str):
    """A role's --reasoning-effort: one help text for the teacher, the policy, the models and the judge."""
    return opt(None, f"reasoning effort of {who}, where it is a reasoning model (OpenAI's o-series, gpt-5): "
                     f"lower spends fewer hidden tokens; sent only to endpoints that take it (default: the "
                     f"model's own, medium for OpenAI's)", choices=REASONING_EFFORTS)


@dataclasses.dataclass
class JudgeFields:
    """How a stage's judge is asked, where it lives and what it costs (the `judge` spec itself is
    the stage's own: its default differs between stages)."""
    judge_max_tokens: int = opt(512, "max new tokens per judge reply (a reasoning judge gets room for its "
                                     "reasoning on top)")
    judge_reasoning_effort: str | None = effort_opt("an openai: judge")
    judge_mode: str = opt("auto", "text: the judge writes its verdict; choice: each order's most probable verdict "
                          "option by log-probability (local models only); debiased: those log-probs of both "
                          "orders summed, so a position prior cancels; auto: debiased for local judges, text "
                          "for endpoints", choices=JUDGE_MODES)
    max_unparseable: int = opt(8, "stop after this many unparseable judge verdicts in a row")
    judge_prefix_cache_mb: float = opt(512.0, "a local judge keeps the K/V of recent prompts within this many MB "
                                              "and computes only what a new prompt adds to the longest shared "
                                              "prefix (0: off)")
    judge_cache: str | None = opt(None, "verdict cache directory (default: beside the output; 'none': off)")
    judge_base_url: str | None = opt(None, "base URL of an openai: judge (default: --base-url / OPENAI_BASE_URL)")
    judge_api_key: str | None = opt(None, "API key of the judge endpoint (default: --api-key); never saved",
                                    secret=True)
    judge_price_in: float = opt(0.0, "judge price per 1K prompt tokens, for the cost ledger")
    judge_price_out: float = opt(0.0, "judge price per 1K completion tokens")


@dataclasses.dataclass
class RunFields:
    """The knobs of every stage that calls a model once per item (runner.run_items)."""
    concurrency: int = opt(8, "items in flight at once")
    max_tokens_total: int | None = opt(None, "token budget (in+out) of every model call together; stops cleanly "
                                       "when spent")
    max_cost: float | None = opt(None, "cost budget in dollars (at the prices) of this run's calls; stops cleanly "
                                       "when spent")
    retry_failed: bool = opt(True, "on rerun, retry items that failed before")
    progress: bool = opt(True, "show a progress bar")


@dataclasses.dataclass
class BatchFields:
    """OpenAI's Batch API for a stage's openai: models (llm/batch.py)."""
    batch_api: bool = opt(False, "send the openai: models' calls as Batch API files (half the price, within 24h); "
                                 "a rerun polls the batches already sent. State in OUT.batch/")
    batch_poll: float = opt(60.0, "--batch-api: seconds between polls of a batch's status")
    batch_discount: float = opt(0.5, "--batch-api: the batch price as a share of the synchronous one (ledger, "
                                     "--max-cost, --dry-run)")
    batch_tries: int = opt(3, "--batch-api: sends of an expired or failed line before its item fails")


@dataclasses.dataclass
class PlanFields:
    """For the stages whose calls baize/plan.py can count before they are made."""
    dry_run: bool = opt(False, "print the plan (calls, tokens and cost per role, an upper bound) and stop: "
                               "nothing is loaded, called or written")
    plan_out: str | None = opt(None, "with --dry-run: also write the plan as JSON to this file, one row per stage and "
                                     "role: stage, role (the ledger's), calls, prompt_tokens, completion_tokens, cost")


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
        if "metavar" in f.metadata:  # a value checked later (its choices depend on other flags) still reads well
            kw["metavar"] = f.metadata["metavar"]
        parser.add_argument(*f.metadata.get("flags", (_flag(f.name),)), **kw)


def dataclass_from_args(cls, args: argparse.Namespace, **overrides):
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(overrides)
    return cls(**values)


def public_dict(cfg, *, drop_secrets: bool = False) -> dict:
    """The config as a dict with every `secret=True` field masked ("***" when set, else None), or
    left out with drop_secrets."""
    data = dataclasses.asdict(cfg)
    for f in dataclasses.fields(cfg):
        if f.metadata.get("secret"):
            if drop_secrets:
                del data[f.name]
            else:
                data[f.name] = "***" if data[f.name] else None
    return data


def save_config(cfg, path: str | Path, **extra) -> Path:
    """Write the resolved configuration as JSON (secrets masked) so a run can be reproduced or resumed."""
    from ._version import __version__
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"baize_version": __version__, **public_dict(cfg), **extra}
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    return path
