"""`baize pipeline`: the whole loop, end to end, with defaults that run offline on a 2-core CPU.

seeds -> collect (teacher) -> train v1 (LoRA) -> SDF (v1 samples, the judge ranks) -> train v2 from
v1 on the best answers -> eval base, v1, v2 (judged win rates, scores, NLL) -> report. Every step
writes into --out and is resumable: a rerun after a kill skips what is done (dialogues, candidates,
verdicts, answers are appended per record; a trained run is kept, a half-trained one resumes from
its last checkpoint). --teacher and --judge openai:... swap in real models with the same command.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .config import BaizeError, add_dataclass_args, dataclass_from_args, opt, save_config
from .schema import sidecar


@dataclass
class PipelineConfig:
    out: str = opt("runs/demo", "directory for every output of the loop")
    seeds: str = opt("quora", "seeds for collection and SDF prompts (see `baize collect --help`)")
    limit: int = opt(8, "seeds to collect dialogues for")
    teacher: str = opt("default", "teacher model spec")
    judge: str = opt("default", "judge model spec, for SDF and eval")
    base_url: str | None = opt(None, "OpenAI-compatible base URL for openai: teacher/judge")
    mode: str = opt("turns", "collection mode", choices=["oneshot", "turns"])
    max_turns: int = opt(2, "exchanges per dialogue (turns mode)")
    max_tokens: int = opt(160, "max new tokens per teacher call")
    temperature: float = opt(0.7, "sampling temperature of the teacher and of SDF's candidates (the paper: 1.0; "
                                  "a 135M model rambles there)")
    concurrency: int = opt(8, "dialogues, prompts or questions in flight")
    base: str = opt("default", "model to tune")
    format: str = opt("template", "chat format to train with", choices=["baize", "template"])
    max_steps: int = opt(8, "training steps for v1 (a bounded demo run)")
    batch_size: int = opt(8, "effective batch for the demo runs")
    quantize: str | None = opt(None, "8bit | 4bit base weights for training (CUDA)", choices=["8bit", "4bit"])
    sdf_prompts: int = opt(8, "SDF prompts: the seeds after the collected ones")
    sdf_policy: str | None = opt(None, "sample SDF candidates from this spec instead of v1 in-process, e.g. "
                                       "openai:v1 with vLLM serving the base and runs/.../v1 as a LoRA module")
    sdf_base_url: str | None = opt(None, "base URL of an openai: --sdf-policy (e.g. http://127.0.0.1:8000/v1)")
    stop_after: str | None = opt(None, "stop after this stage (then start vLLM on v1 and rerun with --sdf-policy)",
                                 choices=["collect", "v1", "sdf", "v2"])
    n: int = opt(4, "SDF candidates per prompt (the paper: 4)")
    sdf_max_tokens: int = opt(96, "max new tokens per SDF candidate")
    v2_steps: int = opt(4, "training steps for v2 (SFT from v1 on the SDF best answers)")
    dpo: bool = opt(False, "also train v2-dpo from v1 on the SDF preference pairs (TRL's DPOTrainer)")
    eval_questions: str = opt("builtin", "questions for eval (see `baize eval --help`)")
    eval_limit: int | None = opt(6, "eval questions used (builtin has 12, two turns each)")
    eval_max_tokens: int = opt(128, "max new tokens per eval answer")


def _step(console, title: str):
    console.rule(f"[bold]{title}")
    return time.monotonic()


def _train_once(console, run: Path, cfg) -> None:
    from dataclasses import replace

    from .models import RUN_FILE
    from .recipes import train
    # the run record, not the adapter, marks a trained stage: train() saves the adapter first and the
    # record last, and the next stage (--from, SDF's policy, eval) needs the record
    if (run / RUN_FILE).exists():
        console.print(f"{run} already trained; delete it to train again")
        return
    # a kill before the record leaves an adapter train() refuses to overwrite without --resume; --resume
    # continues from the last checkpoint (Trainer saves one at the final step, so that costs no step) or,
    # with none, starts again from step 0
    half = (run / "checkpoints").is_dir() or (run / "adapter_model.safetensors").exists()
    train(replace(cfg, resume=half))


def _sdf_prompts(cfg: PipelineConfig, path: Path) -> Path:
    """The seeds after the collected ones: SDF asks v1 questions it was not trained on."""
    import json

    from .seeds import load_seeds
    seeds = load_seeds(cfg.seeds, limit=cfg.limit + cfg.sdf_prompts)[cfg.limit:]
    path.write_text("".join(json.dumps({"seed": s.text, "source": s.source}) + "\n" for s in seeds))
    return path


def run(cfg: PipelineConfig) -> dict:
    from rich.console import Console

    from .chat import usage_hint
    from .collect import CollectConfig, collect, print_summary
    from .data import print_stats, stats
    from .evaluate import EvalConfig, evaluate, print_results
    from .models import read_run
    from .runner import print_summary as print_run
    from .sdf import SDFConfig, sdf
    from .train import TrainConfig
    if cfg.dpo and cfg.quantize:  # fail now, not after v1 and v2 trained: train.py refuses the merge then
        raise BaizeError(f"--dpo with --quantize {cfg.quantize}: DPO merges v1 into its base, which a quantized base "
                         f"cannot take; drop --quantize or --dpo")
    console = Console()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "pipeline.config.json")
    times: dict[str, float] = {}
    steps = 7 if cfg.dpo else 6

    t = _step(console, f"1/{steps} collect: {cfg.limit} {cfg.seeds} seeds, teacher {cfg.teacher}, mode {cfg.mode}")
    dialogues = out / "dialogues.jsonl"
    summary = collect(CollectConfig(seeds=cfg.seeds, out=str(dialogues), teacher=cfg.teacher, base_url=cfg.base_url,
                                    mode=cfg.mode, limit=cfg.limit, max_turns=cfg.max_turns, max_tokens=cfg.max_tokens,
                                    temperature=cfg.temperature, top_p=0.95, concurrency=cfg.concurrency))
    print_summary(summary, str(dialogues), console)
    print_stats(stats(dialogues))
    times["collect"] = time.monotonic() - t
    if cfg.stop_after == "collect":
        return times

    v1 = out / "v1"
    t = _step(console, f"2/{steps} train v1: LoRA on {cfg.base}, {cfg.max_steps} steps, format {cfg.format}")
    _train_once(console, v1, TrainConfig(base=cfg.base, data=str(dialogues), out=str(v1), format=cfg.format,
                                         max_steps=cfg.max_steps, batch_size=cfg.batch_size, quantize=cfg.quantize))
    times["train_v1"] = time.monotonic() - t
    if cfg.stop_after == "v1":
        return times

    t = _step(console, f"3/{steps} SDF: v1 samples {cfg.n} answers to each of {cfg.sdf_prompts} new prompts, "
                       f"judge {cfg.judge} ranks them")
    sdf_out = out / "sdf.jsonl"
    scfg = SDFConfig(policy=cfg.sdf_policy or str(v1), base_url=cfg.sdf_base_url, judge=cfg.judge,
                     prompts=str(_sdf_prompts(cfg, out / "sdf_prompts.jsonl")),
                     out=str(sdf_out), n=cfg.n, max_tokens=cfg.sdf_max_tokens, concurrency=cfg.concurrency,
                     temperature=cfg.temperature, judge_base_url=cfg.base_url,
                     # an endpoint serving v1 needs v1's system prompt from us; in-process v1 adds its own
                     system=(read_run(v1) or {}).get("system") if cfg.sdf_policy else None)
    s, prefs = sdf(scfg)
    print_run(s, f"sdf -> {sdf_out}", console, unit="prompts")
    agree = prefs["mean_agreement"]
    console.print(f"{prefs['prompts']} SDF dialogues, {prefs['pairs']} preference pairs; judge order agreement "
                  f"{'n/a' if agree is None else f'{agree:.2f}'} (1: the same ranking in both orders, 0: reversed)")
    times["sdf"] = time.monotonic() - t
    if cfg.stop_after == "sdf":
        return times

    v2 = out / "v2"
    t = _step(console, f"4/{steps} train v2: v1's adapter continued on the SDF best answers (the paper), {cfg.v2_steps} steps")
    if prefs["prompts"] == 0:
        raise BaizeError(f"SDF kept no prompt (see {sidecar(sdf_out, 'rejected')}): use a stronger --judge or "
                         f"more --sdf-prompts")
    _train_once(console, v2, TrainConfig(from_run=str(v1), data=str(sdf_out), out=str(v2), max_steps=cfg.v2_steps,
                                         batch_size=min(cfg.batch_size, prefs["prompts"]), quantize=cfg.quantize))
    times["train_v2"] = time.monotonic() - t
    if cfg.stop_after == "v2":
        return times
    compared = {"base": cfg.base, "v1": str(v1), "v2": str(v2)}
    if cfg.dpo:
        t = _step(console, f"5/{steps} train v2-dpo: DPO from v1 on the SDF preference pairs, {cfg.v2_steps} steps")
        if prefs["pairs"]:
            _train_once(console, out / "v2-dpo", TrainConfig(from_run=str(v1), method="dpo", data=prefs["prefs"],
                                                             out=str(out / "v2-dpo"), max_steps=cfg.v2_steps,
                                                             batch_size=min(cfg.batch_size, prefs["pairs"]),
                                                             quantize=cfg.quantize))
            compared["v2-dpo"] = str(out / "v2-dpo")
        else:
            console.print("no preference pairs (the judge preferred no candidate): v2-dpo skipped")
        times["train_v2_dpo"] = time.monotonic() - t

    t = _step(console, f"{steps - 1}/{steps} eval: {', '.join(compared)} on {cfg.eval_questions} questions, "
                       f"judge {cfg.judge}")
    res = evaluate(EvalConfig(models=[f"{k}={v}" for k, v in compared.items()], questions=cfg.eval_questions,
                              judge=cfg.judge, judge_base_url=cfg.base_url, out=str(out / "eval"),
                              limit=cfg.eval_limit, max_tokens=cfg.eval_max_tokens, concurrency=cfg.concurrency))
    times["eval"] = time.monotonic() - t

    _step(console, f"{steps}/{steps} report")
    print_results(res, console)
    console.rule("[bold]next")
    console.print(usage_hint(str(v2), compare={"base": cfg.base, "v1": str(v1)}), soft_wrap=True)
    console.print("step times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    console.print(f"report: {res['paths']['html']}", soft_wrap=True)
    return times


def add_cli(sub) -> None:
    p = sub.add_parser("pipeline", help="the whole loop on the embedded default model (the README's main job)")
    add_dataclass_args(p, PipelineConfig)
    p.set_defaults(func=lambda a: run(dataclass_from_args(PipelineConfig, a)) and 0)
