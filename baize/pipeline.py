"""`baize pipeline`: the whole loop, end to end, with defaults that run offline on a 2-core CPU.

seeds -> collect (teacher) -> data stats -> train v1 (LoRA) -> base vs v1 on one question ->
the commands to chat with and serve the result. Every step writes into --out and is resumable:
rerunning skips dialogues already collected and a run already trained.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import add_dataclass_args, dataclass_from_args, save_config


@dataclass
class PipelineConfig:
    out: str = field(default="runs/demo", metadata={"help": "directory for every output of the loop"})
    seeds: str = field(default="quora", metadata={"help": "seeds for collection (see `baize collect --help`)"})
    limit: int = field(default=8, metadata={"help": "number of seeds to collect dialogues for"})
    teacher: str = field(default="default", metadata={"help": "teacher model spec"})
    base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible base URL for an openai: teacher"})
    mode: str = field(default="turns", metadata={"help": "collection mode", "choices": ["oneshot", "turns"]})
    max_turns: int = field(default=2, metadata={"help": "exchanges per dialogue (turns mode)"})
    max_tokens: int = field(default=160, metadata={"help": "max new tokens per teacher call"})
    temperature: float = field(default=0.7, metadata={"help": "teacher temperature (a 135M teacher rambles at 1.0)"})
    concurrency: int = field(default=8, metadata={"help": "dialogues in flight"})
    base: str = field(default="default", metadata={"help": "model to tune"})
    format: str = field(default="template", metadata={"help": "chat format to train with", "choices": ["baize", "template"]})
    max_steps: int = field(default=8, metadata={"help": "training steps for v1 (a bounded demo run)"})
    batch_size: int = field(default=8, metadata={"help": "effective batch for the demo run"})
    question: str = field(default="How can I learn to cook healthy meals on a budget?",
                          metadata={"help": "asked of base and v1 at the end"})


def _step(console, title: str):
    console.rule(f"[bold]{title}")
    return time.monotonic()


def run(cfg: PipelineConfig) -> dict:
    from rich.console import Console
    from .chat import usage_hint
    from .collect import CollectConfig, collect, print_summary
    from .data import print_stats, stats
    from .train import TrainConfig, train
    console = Console()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "pipeline.config.json")
    times: dict[str, float] = {}

    t = _step(console, f"1/4 collect: {cfg.limit} {cfg.seeds} seeds, teacher {cfg.teacher}, mode {cfg.mode}")
    dialogues = out / "dialogues.jsonl"
    ccfg = CollectConfig(seeds=cfg.seeds, out=str(dialogues), teacher=cfg.teacher, base_url=cfg.base_url,
                         mode=cfg.mode, limit=cfg.limit, max_turns=cfg.max_turns, max_tokens=cfg.max_tokens,
                         temperature=cfg.temperature, top_p=0.95, concurrency=cfg.concurrency)
    summary = collect(ccfg)
    print_summary(summary, str(dialogues), console)
    times["collect"] = time.monotonic() - t
    t = _step(console, "2/4 data stats")
    print_stats(stats(dialogues))
    times["stats"] = time.monotonic() - t

    v1 = out / "v1"
    t = _step(console, f"3/4 train v1: LoRA on {cfg.base}, {cfg.max_steps} steps, format {cfg.format}")
    if (v1 / "adapter_model.safetensors").exists():
        console.print(f"{v1} already trained; delete it to train again")
    else:
        train(TrainConfig(base=cfg.base, data=str(dialogues), out=str(v1), format=cfg.format,
                          max_steps=cfg.max_steps, batch_size=cfg.batch_size, resume=(v1 / "checkpoints").is_dir()))
    times["train"] = time.monotonic() - t
    t = _step(console, "4/4 base vs v1, same question, same seed")
    compare(cfg, v1, console)
    times["compare"] = time.monotonic() - t
    console.rule("[bold]next")
    console.print(usage_hint(str(v1)), soft_wrap=True)  # commands stay one line each, ready to copy
    console.print("step times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    return times


def compare(cfg: PipelineConfig, run_dir: Path, console) -> None:
    from .llm import load_llm
    msgs = [{"role": "user", "content": cfg.question}]
    for label, spec in (("base", cfg.base), ("v1", str(run_dir))):
        llm = load_llm(spec, format=cfg.format)
        reply = llm.chat(msgs, temperature=0.7, top_p=0.95, max_tokens=128, seed=0)[0].text
        console.print(f"[bold]{label}[/bold] ({spec}): {reply}\n")
        llm.engine.close()


def add_cli(sub) -> None:
    p = sub.add_parser("pipeline", help="the whole loop on the embedded default model (the README's main job)")
    add_dataclass_args(p, PipelineConfig)
    p.set_defaults(func=lambda a: run(dataclass_from_args(PipelineConfig, a)) and 0)
