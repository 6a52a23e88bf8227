"""`baize collect | data | sdf | train | eval | judge-check | batches | merge | chat | serve | ui | pipeline`.

Each stage module adds its own subcommand (`add_cli`) and keeps torch/fastapi imports inside the
functions that need them, so `baize --help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# (module, what it adds); a stage module only needs `add_cli(subparsers)`
STAGES = [
    "baize.data.collect",   # collect
    "baize.data.commands",  # data stats | export | import
    "baize.sdf",            # sdf (Baize v2 data: sample, judge, keep the best and the ranking)
    "baize.train.recipes",  # train (the SFT recipe in sft.py, the DPO recipe in dpo.py)
    "baize.train.merge",    # merge
    "baize.train.export",   # export (one GGUF file for llama.cpp / Ollama, + a Modelfile)
    "baize.eval.evaluate",  # eval (judged win rates, scores, NLL, report)
    "baize.judge.check",    # judge-check (agreement with human preference pairs)
    "baize.llm.batch",      # batches (a --batch-api run's batches: list, cancel, import results)
    "baize.serve.chat",     # chat
    "baize.serve.cli",      # serve, ui
    "baize.pipeline",       # pipeline (the README's main job)
]


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__
    p = argparse.ArgumentParser(prog="baize", description="Seed questions in, a served chat model out.")
    p.add_argument("--version", action="version", version=f"baize {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in STAGES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a stage not written yet is skipped; a broken import is not
                raise
            continue
        mod.add_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .config import BaizeError
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except BaizeError as e:
        print(f"baize: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("baize: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
