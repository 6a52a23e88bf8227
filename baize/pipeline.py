"""`baize pipeline`: the whole loop, end to end, with defaults that run offline on a 2-core CPU.

seeds -> collect (teacher) -> train v1 (LoRA) -> SDF (v1 samples, the judge ranks) -> train v2 from
v1 on the best answers -> eval base, v1, v2 (judged win rates, scores, NLL) -> report. Every step
writes into --out and is resumable: a rerun after a kill skips what is done (dialogues, candidates,
verdicts, answers are appended per record; a trained run is kept, a half-trained one resumes from
its last checkpoint). --teacher and --judge openai:... swap in real models with the same command.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .config import BaizeError, add_dataclass_args, dataclass_from_args, effort_opt, opt, save_config
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
    max_tokens: int = opt(160, "max new tokens per teacher call (a reasoning teacher gets room for its reasoning "
                               "on top)")
    reasoning_effort: str | None = effort_opt("an openai: teacher and --sdf-policy")
    judge_max_tokens: int = opt(512, "max new tokens per judge reply, SDF and eval (a reasoning judge gets room for "
                                     "its reasoning on top)")
    judge_reasoning_effort: str | None = effort_opt("an openai: judge")
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
    stop_after: str | None = opt(None, "stop after this stage: collect, v1, sdf, v2; with --rounds N also round k's "
                                       "sdf{k} and v{k+1} (sdf2, v3, ...). E.g. v1, then start vLLM on v1 and rerun "
                                       "with --sdf-policy", metavar="STAGE")
    n: int = opt(4, "SDF candidates per prompt (the paper: 4)")
    sdf_max_tokens: int = opt(96, "max new tokens per SDF candidate")
    v2_steps: int = opt(4, "training steps for v2 (SFT from v1 on the SDF best answers)")
    dpo: bool = opt(False, "also train v2-dpo from v1 on the SDF preference pairs (TRL's DPOTrainer)")
    rounds: int = opt(1, "SDF rounds: round k (k >= 2) samples the newest version v{k} on the next --sdf-prompts "
                         "fresh seeds into round{k}/ and trains v{k+1} from v{k} (with --dpo also v{k+1}-dpo)")
    eval_questions: str = opt("builtin", "questions for eval (see `baize eval --help`)")
    eval_limit: int | None = opt(6, "eval questions used (builtin has 12, two turns each)")
    eval_max_tokens: int = opt(128, "max new tokens per eval answer")
    # prices per 1K tokens, as each stage's --price-in/--price-out and --judge-price-in/--judge-price-out
    teacher_price_in: float = opt(0.0, "teacher price per 1K prompt tokens, for the cost ledger and the plan")
    teacher_price_out: float = opt(0.0, "teacher price per 1K completion tokens")
    policy_price_in: float = opt(0.0, "policy price per 1K prompt tokens (an openai: --sdf-policy; eval's openai: "
                                      "models)")
    policy_price_out: float = opt(0.0, "policy price per 1K completion tokens")
    judge_price_in: float = opt(0.0, "judge price per 1K prompt tokens (SDF and eval)")
    judge_price_out: float = opt(0.0, "judge price per 1K completion tokens")
    max_cost: float | None = opt(None, "dollars the whole pipeline may spend, every stage and every resumed run "
                                       "together; stops cleanly when spent")
    max_tokens_total: int | None = opt(None, "tokens (in+out) the whole pipeline may spend, every stage and every "
                                             "resumed run together")
    batch_api: bool = opt(False, "every stage's openai: models (teacher, judge, an openai: --sdf-policy) through "
                                 "OpenAI's Batch API: half the price, within 24h; a rerun polls the batches sent")
    batch_poll: float = opt(60.0, "--batch-api: seconds between polls of a batch's status")
    batch_discount: float = opt(0.5, "--batch-api: the batch price as a share of the synchronous one")
    dry_run: bool = opt(False, "print the plan of every stage (calls, tokens and cost per role, an upper bound) and "
                               "stop: nothing is loaded, called or written")
    plan_out: str | None = opt(None, "with --dry-run: also write the plan as JSON to this file, one row per stage and "
                                     "role: stage, role (the ledger's), calls, prompt_tokens, completion_tokens, cost")


def _step(console, title: str):
    console.rule(f"[bold]{title}")
    return time.monotonic()


def _train_once(console, run: Path, cfg) -> None:
    from dataclasses import replace

    from .llm.models import read_run
    from .train.recipes import train
    # the run record, not the adapter, marks a trained stage: train() saves the adapter first and the
    # record last, and the next stage (--from, SDF's policy, eval) needs the record
    record = read_run(run)
    if record is not None:
        _check_trained_on(run, record.get("data_digest"), cfg.data_files())
        console.print(f"{run} already trained on this data; delete it to train again")
        return
    # a kill before the record leaves an adapter train() refuses to overwrite without --resume; --resume
    # continues from the last checkpoint (Trainer saves one at the final step, so that costs no step) or,
    # with none, starts again from step 0
    half = (run / "checkpoints").is_dir() or (run / "adapter_model.safetensors").exists()
    train(replace(cfg, resume=half))


def _check_trained_on(run: Path, recorded: list | None, paths: list[str]) -> None:
    """A trained run is reused only on the data it was trained on: data that changed since (a larger
    --limit, other --seeds, a hand edit) stops the pipeline rather than build on the wrong model.
    Lines and hash, not paths, are compared: a moved --out is the same data."""
    from .train.common import data_digest
    if recorded is None:  # a record from before baize kept the data's digest: nothing to compare with
        return
    now = data_digest([p for p in paths if Path(p).is_file()])
    if [(d["lines"], d["sha256"]) for d in recorded] == [(d["lines"], d["sha256"]) for d in now]:
        return
    said = lambda ds: "; ".join(f"{d['lines']} lines, sha256 {d['sha256'][:12]}" for d in ds) or "no file"  # noqa: E731
    raise BaizeError(f"{run} was trained on {', '.join(paths)} when it held {said(recorded)}; it now holds "
                     f"{said(now)}: delete {run} (and the stages after it) to train on this data, or restore the file")


def _inputs(cfg: PipelineConfig, planning: bool = False) -> tuple[list, list, list, list[str], list[list]]:
    """The seeds to collect on, the SDF prompts (the seeds after those: SDF asks v1 questions it was not
    trained on), the eval questions, a line for each limit that asks for more than there is (and,
    planning, for what this machine lacks), and rounds 2..N's prompts (each the next --sdf-prompts seeds:
    a round never asks what an earlier version was trained on)."""
    from .data.seeds import load_seeds
    from .eval.questions import load_questions
    from .plan import limit_warning
    seeds = load_seeds(cfg.seeds, limit=cfg.limit + cfg.sdf_prompts * max(cfg.rounds, 1))
    questions = load_questions(cfg.eval_questions)
    collected, prompts = seeds[:cfg.limit], seeds[cfg.limit:cfg.limit + cfg.sdf_prompts]
    later = [seeds[cfg.limit + (k - 1) * cfg.sdf_prompts:cfg.limit + k * cfg.sdf_prompts]
             for k in range(2, cfg.rounds + 1)]
    warnings = [limit_warning("--limit", cfg.limit, len(collected), f"{cfg.seeds} has"),
                limit_warning("--sdf-prompts", cfg.sdf_prompts, len(prompts),
                              f"{cfg.seeds} has {len(seeds)} seeds, {cfg.limit} for collection, so SDF prompts:"),
                limit_warning("--eval-limit", cfg.eval_limit, len(questions), f"{cfg.eval_questions} has")]
    warnings += [limit_warning("--rounds", cfg.sdf_prompts, len(ps), f"{cfg.seeds} has {len(seeds)} seeds, so round "
                               f"{k}'s SDF prompts:") for k, ps in enumerate(later, 2)]
    warnings += _refuse(cfg, len(collected), prompts, planning, later)
    return collected, prompts, questions[:cfg.eval_limit or None], [w for w in warnings if w], later


def _refuse(cfg: PipelineConfig, collected: int, prompts: list, planning: bool = False,
            later: list[list] = ()) -> list[str]:
    """What a stage would refuse after the earlier ones ran, refused before any work, and by --dry-run
    alike: a plan of a run that cannot happen is no plan. What this machine lacks (a GPU) is refused
    by the run but only said by the plan: pricing a GPU run on a laptop first is a real use."""
    if cfg.dpo and cfg.quantize:  # train/common.py refuses the merge only after v1 and v2 trained
        raise BaizeError(f"--dpo with --quantize {cfg.quantize}: DPO merges v1 into its base, which a quantized base "
                         f"cannot take; drop --quantize or --dpo")
    if not prompts:
        raise BaizeError(f"--limit {cfg.limit} takes every seed of {cfg.seeds} ({collected}): SDF has no prompt left; "
                         f"lower --limit or give more seeds")
    if cfg.rounds < 1:
        raise BaizeError(f"--rounds {cfg.rounds}: at least 1 (the paper's one SDF round)")
    if cfg.rounds > 1 and cfg.sdf_policy:  # an endpoint serves v1; round k samples v{k}, which is trained here
        raise BaizeError(f"--rounds {cfg.rounds} with --sdf-policy: rounds 2.. sample the versions they train "
                         f"in-process; drop --sdf-policy or use --rounds 1")
    if cfg.stop_after is not None and cfg.stop_after not in (stages := _stop_after(cfg.rounds).values()):
        raise BaizeError(f"--stop-after {cfg.stop_after}: no such stage with --rounds {cfg.rounds}; use one of "
                         f"{', '.join(stages)}" + (" (or raise --rounds)" if re.fullmatch(r"(sdf|v)\d+", cfg.stop_after)
                                                   else ""))
    if (empty := next((k for k, ps in enumerate(later, 2) if not ps), None)):
        raise BaizeError(f"--rounds {cfg.rounds}: {cfg.seeds} has no seed left for round {empty}'s SDF prompts "
                         f"(--limit {cfg.limit}, --sdf-prompts {cfg.sdf_prompts} per round); lower --rounds or "
                         f"--sdf-prompts, or give more seeds")
    if cfg.n < 2:  # sdf.py's refusal, which would come after collect and v1
        raise BaizeError(f"--n {cfg.n}: SDF needs at least 2 candidates per prompt to rank")
    if cfg.quantize:  # train/common.py's refusal, which would come after collect
        import torch
        if not torch.cuda.is_available():
            if not planning:
                raise BaizeError(f"--quantize {cfg.quantize} needs a CUDA GPU (bitsandbytes); drop the flag on CPU")
            return [f"--quantize {cfg.quantize} needs a CUDA GPU, which this machine lacks: the run refuses here "
                    f"(plan here, run where a GPU is)"]
    return []


def _collect_cfg(cfg: PipelineConfig, out: Path, n: int, budget: dict):
    from .data.collect import CollectConfig
    return CollectConfig(seeds=cfg.seeds, out=str(out / "dialogues.jsonl"), teacher=cfg.teacher, base_url=cfg.base_url,
                         mode=cfg.mode, limit=n, max_turns=cfg.max_turns, max_tokens=cfg.max_tokens,
                         temperature=cfg.temperature, top_p=0.95, concurrency=cfg.concurrency,
                         reasoning_effort=cfg.reasoning_effort, price_in=cfg.teacher_price_in,
                         price_out=cfg.teacher_price_out, **_batch(cfg), **budget)


def _batch(cfg: PipelineConfig) -> dict:
    """--batch-api's fields, the same for every stage (each batches its openai: models' calls)."""
    return {"batch_api": cfg.batch_api, "batch_poll": cfg.batch_poll, "batch_discount": cfg.batch_discount}


def _round_dir(out: Path, k: int) -> Path:
    """Where round k's SDF writes: round 1 (the paper's) in --out itself, as before rounds existed."""
    return out if k == 1 else out / f"round{k}"


def _sdf_cfg(cfg: PipelineConfig, out: Path, budget: dict, system: str | None = None, k: int = 1):
    from .sdf import SDFConfig
    d = _round_dir(out, k)
    return SDFConfig(policy=(cfg.sdf_policy if k == 1 else None) or str(out / f"v{k}"), base_url=cfg.sdf_base_url,
                     judge=cfg.judge, prompts=str(d / "sdf_prompts.jsonl"), out=str(d / "sdf.jsonl"), n=cfg.n,
                     max_tokens=cfg.sdf_max_tokens, concurrency=cfg.concurrency, temperature=cfg.temperature,
                     judge_base_url=cfg.base_url, system=system, price_in=cfg.policy_price_in,
                     price_out=cfg.policy_price_out, judge_price_in=cfg.judge_price_in,
                     judge_price_out=cfg.judge_price_out, reasoning_effort=cfg.reasoning_effort,
                     judge_max_tokens=cfg.judge_max_tokens, judge_reasoning_effort=cfg.judge_reasoning_effort,
                     **_batch(cfg), **budget)


def _eval_cfg(cfg: PipelineConfig, out: Path, compared: dict, n: int, budget: dict):
    from .eval.evaluate import EvalConfig
    return EvalConfig(models=[f"{k}={v}" for k, v in compared.items()], questions=cfg.eval_questions,
                      judge=cfg.judge, judge_base_url=cfg.base_url, out=str(out / "eval"), limit=n,
                      max_tokens=cfg.eval_max_tokens, concurrency=cfg.concurrency, price_in=cfg.policy_price_in,
                      price_out=cfg.policy_price_out, judge_price_in=cfg.judge_price_in,
                      judge_price_out=cfg.judge_price_out, judge_max_tokens=cfg.judge_max_tokens,
                      judge_reasoning_effort=cfg.judge_reasoning_effort, **_batch(cfg), **budget)


def _compared(cfg: PipelineConfig, out: Path) -> dict:
    """base, v1, then each round's version (and its -dpo one): eval pairs every two, so each version
    meets the base and the version before it."""
    compared = {"base": cfg.base, "v1": str(out / "v1")}
    for v in range(2, cfg.rounds + 2):
        compared[f"v{v}"] = str(out / f"v{v}")
        if cfg.dpo:
            compared[f"v{v}-dpo"] = str(out / f"v{v}-dpo")
    return compared


def plan(cfg: PipelineConfig):
    """Every stage's plan at the pipeline's settings: what `--dry-run` prints (nothing is loaded or written)."""
    from .data.collect import plan as collect_plan
    from .eval.evaluate import plan as eval_plan
    from .sdf import Prompt
    from .sdf import plan as sdf_plan
    out = Path(cfg.out)
    collected, prompts, questions, warnings, later = _inputs(cfg, planning=True)
    p = collect_plan(_collect_cfg(cfg, out, len(collected), {}), collected)
    for k, ps in enumerate([prompts, *later], 1):
        q = sdf_plan(_sdf_cfg(cfg, out, {}, k=k), [Prompt(s.id, [{"role": "user", "content": s.text}], s.source)
                                                   for s in ps])
        if k > 1:  # each round its own rows: the plan says what every round adds
            for r in q.rows:
                r.stage = f"sdf{k}"
            q.items = {f"sdf{k}": q.items["sdf"]}
        p.extend(q)
    compared = _compared(cfg, out)
    p.extend(eval_plan(_eval_cfg(cfg, out, compared, len(questions), {}), questions))
    p.warnings = warnings + p.warnings
    # eval's models are the ledger's roles by name; the pipeline prices them as policies
    p.price_flags = {role: f"--{role}-price-in/--{role}-price-out" for role in ("teacher", "policy", "judge")}
    p.price_flags.update({name: "--policy-price-in/--policy-price-out" for name in compared})
    return p


def _summaries(out: Path) -> list[Path]:
    """Where the stages write what they spent (each summary's `total` counts every resumed run)."""
    ev = out / "eval"
    return [out / "dialogues.summary.json", out / "sdf.summary.json", *sorted(out.glob("round*/sdf.summary.json")),
            *(sorted(ev.rglob("*.summary.json")) if ev.is_dir() else [])]


def _budget(cfg: PipelineConfig, out: Path) -> dict | None:
    """What the next stage may spend: the pipeline's caps less what every earlier run spent (read from
    the summaries on disk, so a resumed pipeline knows); None when a cap is already spent."""
    from .plan import spent
    used = spent(_summaries(out))
    budget = {}
    if cfg.max_cost is not None:
        budget["max_cost"] = cfg.max_cost - used["cost"]
    if cfg.max_tokens_total is not None:
        budget["max_tokens_total"] = cfg.max_tokens_total - used["tokens"]
    return None if any(v <= 0 for v in budget.values()) else budget


def _stop_line(cfg: PipelineConfig, out: Path) -> str:
    from .plan import budget_hint, spent
    used = spent(_summaries(out))
    if cfg.max_cost is not None and used["cost"] >= cfg.max_cost:
        return budget_hint("--max-cost", cfg.max_cost, used["cost"], scope="every stage and run so far")
    return budget_hint("--max-tokens-total", cfg.max_tokens_total or 0, used["tokens"],
                       scope="every stage and run so far")


# --- the steps -------------------------------------------------------------------------------------
# Each step takes the run's context and the results of the steps it needs, and returns a Result:
# done (with its outputs), skipped (nothing to do here) or stopped (why, and the exit status it
# means). The loop in run() starts no step after a stop; the exit status follows from the results.

@dataclass
class Result:
    status: str                      # "done" | "skipped" | "stopped"
    why: str = ""                    # stopped or skipped: the reason, in words
    outputs: dict = field(default_factory=dict)
    exit_status: int = 0             # what a stop here means for the process (a spent budget is a clean stop)

    @classmethod
    def done(cls, **outputs) -> Result:
        return cls("done", outputs=outputs)

    @classmethod
    def skipped(cls, why: str) -> Result:
        return cls("skipped", why)

    @classmethod
    def stopped(cls, why: str, exit_status: int = 0) -> Result:
        return cls("stopped", why, exit_status=exit_status)


@dataclass
class Context:
    """What every step reads: the console, the settings, the output directory and the inputs."""
    console: object
    cfg: PipelineConfig
    out: Path
    steps: int                       # how many numbered steps the run shows (7 with --dpo, more with --rounds)
    collected: list                  # seeds to collect dialogues on
    prompts: list                    # SDF prompts: the seeds after those
    questions: list                  # eval questions
    later: list = field(default_factory=list)  # rounds 2..N's SDF prompts, each the seeds after the last's


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[..., Result]
    needs: tuple[str, ...] = ()      # earlier steps whose results this one reads


def resume_command(cfg: PipelineConfig) -> str:
    """The `baize pipeline` command line that goes on from here: every flag that differs from its default."""
    import dataclasses
    import shlex

    from .config import _flag
    words = ["baize", "pipeline"]
    for f in dataclasses.fields(cfg):
        value, flag = getattr(cfg, f.name), f.metadata.get("flags", (_flag(f.name),))[0]
        if f.name == "dry_run" or f.metadata.get("secret") or value == f.default:
            continue
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def _interrupted(ctx: Context) -> Result:
    """Ctrl-C: the stage finished what was in flight (or a training stopped where it was); no later
    stage may start on half an output, and the process exits 130 like any interrupted command."""
    line = f"interrupted: everything written is kept; resume with: {resume_command(ctx.cfg)}"
    ctx.console.print(line, style="bold yellow", soft_wrap=True)
    return Result.stopped(line, exit_status=130)


def _budget_stop(ctx: Context, stopped: str | None) -> Result | None:
    """A stopped Result (after the one line saying how to resume) when the budget ran out: before a
    stage (stopped None: the caps are spent already) or in it (its summary's `stopped`); Ctrl-C in it
    stops too, with exit status 130."""
    if stopped == "interrupted":
        return _interrupted(ctx)
    if stopped is None or stopped in ("budget", "--max-cost", "--max-tokens-total"):
        line = _stop_line(ctx.cfg, ctx.out)
        ctx.console.print(line, style="bold yellow", soft_wrap=True)
        return Result.stopped(line)
    return None


def _budget_or_stop(ctx: Context) -> tuple[dict | None, Result | None]:
    budget = _budget(ctx.cfg, ctx.out)
    return budget, (_budget_stop(ctx, None) if budget is None else None)


def _collect_step(ctx: Context) -> Result:
    from .data.collect import collect, print_summary
    from .data.commands import print_stats, stats
    cfg, out = ctx.cfg, ctx.out
    budget, stop = _budget_or_stop(ctx)
    if stop:
        return stop
    _step(ctx.console, f"1/{ctx.steps} collect: {cfg.limit} {cfg.seeds} seeds, teacher {cfg.teacher}, mode {cfg.mode}")
    ccfg = _collect_cfg(cfg, out, len(ctx.collected), budget)
    summary = collect(ccfg)
    print_summary(summary, ccfg.out, ctx.console)
    if Path(ccfg.out).stat().st_size:  # a budget spent before any dialogue finished leaves none to describe
        print_stats(stats(Path(ccfg.out)))
    return _budget_stop(ctx, summary.stopped or "done") or Result.done(dialogues=Path(ccfg.out))


def _v1_step(ctx: Context) -> Result:
    from .train.common import TrainConfig
    cfg, out = ctx.cfg, ctx.out
    _step(ctx.console, f"2/{ctx.steps} train v1: LoRA on {cfg.base}, {cfg.max_steps} steps, format {cfg.format}")
    _train_once(ctx.console, out / "v1", TrainConfig(base=cfg.base, data=str(out / "dialogues.jsonl"),
                                                     out=str(out / "v1"), format=cfg.format, max_steps=cfg.max_steps,
                                                     batch_size=cfg.batch_size, quantize=cfg.quantize))
    return Result.done(run=out / "v1")


def _number(ctx: Context, k: int, i: int) -> int:
    """Round k's i-th step's number (1 SDF, 2 train, 3 DPO): round 1's are 3, 4, 5; later rounds follow."""
    dpo = int(ctx.cfg.dpo)
    return 2 + i if k == 1 else 4 + dpo + (k - 2) * (2 + dpo) + i


def _sdf_step(ctx: Context, k: int = 1) -> Result:
    import json

    from .llm.models import read_run
    from .runner import print_summary
    from .sdf import prefs_line, sdf
    cfg, out, d = ctx.cfg, ctx.out, _round_dir(ctx.out, k)
    prompts = ctx.prompts if k == 1 else ctx.later[k - 2]
    budget, stop = _budget_or_stop(ctx)
    if stop:
        return stop
    _step(ctx.console, f"{_number(ctx, k, 1)}/{ctx.steps} SDF{f' round {k}' if k > 1 else ''}: v{k} samples {cfg.n} "
                       f"answers to each of {len(prompts)} new prompts, judge {cfg.judge} ranks them")
    d.mkdir(parents=True, exist_ok=True)
    (d / "sdf_prompts.jsonl").write_text("".join(json.dumps({"seed": s.text, "source": s.source}) + "\n"
                                                 for s in prompts))
    # an endpoint serving v1 needs v1's system prompt from us; in-process v1 adds its own
    scfg = _sdf_cfg(cfg, out, budget, (read_run(out / "v1") or {}).get("system") if cfg.sdf_policy and k == 1
                    else None, k=k)
    s, prefs = sdf(scfg)
    print_summary(s, f"sdf -> {scfg.out}", ctx.console, unit="prompts")
    ctx.console.print(prefs_line(prefs), soft_wrap=True)
    return _budget_stop(ctx, s.stopped or "done") or Result.done(prefs=prefs)


def _v2_step(ctx: Context, sdf: Result, k: int = 1) -> Result:
    """Round k's SFT: v{k+1} continues v{k}'s adapter on round k's best answers (round 1: v2 from v1)."""
    from .train.common import TrainConfig
    cfg, out, prefs, d = ctx.cfg, ctx.out, sdf.outputs["prefs"], _round_dir(ctx.out, k)
    new, old = f"v{k + 1}", f"v{k}"
    what = "the SDF best answers (the paper)" if k == 1 else f"round {k}'s SDF best answers"
    _step(ctx.console, f"{_number(ctx, k, 2)}/{ctx.steps} train {new}: {old}'s adapter continued on {what}, "
                       f"{cfg.v2_steps} steps")
    if prefs["prompts"] == 0:
        raise BaizeError(f"SDF kept no prompt (see {sidecar(d / 'sdf.jsonl', 'rejected')}): use a stronger --judge "
                         f"or more --sdf-prompts")
    _train_once(ctx.console, out / new, TrainConfig(from_run=str(out / old), data=str(d / "sdf.jsonl"),
                                                    out=str(out / new), max_steps=cfg.v2_steps,
                                                    batch_size=min(cfg.batch_size, prefs["prompts"]),
                                                    quantize=cfg.quantize))
    return Result.done(run=out / new)


def _dpo_step(ctx: Context, sdf: Result, k: int = 1) -> Result:
    """Round k's DPO: v{k+1}-dpo from v{k} on round k's pairs (the SFT line, not this one, feeds the next round)."""
    from .train.common import TrainConfig
    cfg, out, prefs = ctx.cfg, ctx.out, sdf.outputs["prefs"]
    new, old = f"v{k + 1}-dpo", f"v{k}"
    if not cfg.dpo:
        return Result.skipped("no --dpo")
    what = "the SDF preference pairs" if k == 1 else f"round {k}'s SDF preference pairs"
    _step(ctx.console, f"{_number(ctx, k, 3)}/{ctx.steps} train {new}: DPO from {old} on {what}, {cfg.v2_steps} steps")
    if not prefs["pairs"]:
        ctx.console.print(f"no preference pairs (the judge preferred no candidate): {new} skipped")
        return Result.done()  # a step that ran and found nothing to train: timed like the others
    _train_once(ctx.console, out / new, TrainConfig(from_run=str(out / old), method="dpo", data=prefs["prefs"],
                                                    out=str(out / new), max_steps=cfg.v2_steps,
                                                    batch_size=min(cfg.batch_size, prefs["pairs"]),
                                                    quantize=cfg.quantize))
    return Result.done(run=out / new)


def _eval_step(ctx: Context) -> Result:
    from .eval.evaluate import evaluate, print_results
    from .serve.chat import usage_hint
    cfg, out, console = ctx.cfg, ctx.out, ctx.console
    budget, stop = _budget_or_stop(ctx)
    if stop:
        return stop
    compared = {k: v for k, v in _compared(cfg, out).items() if not k.endswith("-dpo") or Path(v).is_dir()}
    _step(console, f"{ctx.steps - 1}/{ctx.steps} eval: {', '.join(compared)} on {cfg.eval_questions} questions, "
                   f"judge {cfg.judge}")
    res = evaluate(_eval_cfg(cfg, out, compared, len(ctx.questions), budget))
    _step(console, f"{ctx.steps}/{ctx.steps} report")
    print_results(res, console, pair_lines=False)  # said once, last, under 'did the loop help?'
    stop = _budget_stop(ctx, res.get("stopped") or "done")
    if stop:
        return stop
    from .eval.judge_free import summaries
    if (lines := summaries(res)):  # the evidence that does not rest on a judge, as the last word on the loop
        console.rule("[bold]did the loop help? (no judge)")
        for line in lines:
            console.print(line, soft_wrap=True)
    if cfg.rounds > 1:  # one round has no trend; its results.json stays as eval wrote it
        from .eval.report import write_report
        from .eval.trend import add_trend, trend_lines
        console.rule("[bold]trend across rounds")
        for line in trend_lines(add_trend(res, out / "eval" / "results.json")):
            console.print(line, soft_wrap=True)
        write_report(res, out / "eval")  # eval wrote it before the trend was known; the same paths, now with it
    console.rule("[bold]next")
    newest = cfg.rounds + 1
    console.print(usage_hint(str(out / f"v{newest}"), compare={"base": cfg.base, f"v{newest - 1}":
                                                               str(out / f"v{newest - 1}")}), soft_wrap=True)
    console.print(f"report: {res['paths']['html']}", soft_wrap=True)
    return Result.done(report=res["paths"]["html"])


STEPS = (Step("collect", _collect_step), Step("train_v1", _v1_step), Step("sdf", _sdf_step),
         Step("train_v2", _v2_step, needs=("sdf",)), Step("train_v2_dpo", _dpo_step, needs=("sdf",)),
         Step("eval", _eval_step))


def _steps(cfg: PipelineConfig) -> tuple[Step, ...]:
    """STEPS, with rounds 2..N (SDF, SFT, DPO each) between round 1's and eval."""
    from functools import partial
    rounds = [s for k in range(2, cfg.rounds + 1)
              for s in (Step(f"sdf_round{k}", partial(_sdf_step, k=k)),
                        Step(f"train_v{k + 1}", partial(_v2_step, k=k), needs=(f"sdf_round{k}",)),
                        Step(f"train_v{k + 1}_dpo", partial(_dpo_step, k=k), needs=(f"sdf_round{k}",)))]
    return (*STEPS[:-1], *rounds, *STEPS[-1:]) if rounds else STEPS


def _stop_after(rounds: int) -> dict[str, str]:
    """Step name -> the --stop-after word naming it, by what the step makes: round k's SDF is sdf{k}
    (round 1's plain sdf, as before rounds), its SFT model v{k+1}."""
    words = {"collect": "collect", "train_v1": "v1", "sdf": "sdf", "train_v2": "v2"}
    for k in range(2, rounds + 1):
        words.update({f"sdf_round{k}": f"sdf{k}", f"train_v{k + 1}": f"v{k + 1}"})
    return words


def run(cfg: PipelineConfig) -> dict[str, Result]:
    """The steps in order, each with the results it needs; none starts after a stop. Returns each
    step's result by name (--dry-run: none)."""
    from rich.console import Console

    from .plan import check_plan_out, dry_run, spent, warn
    from .runner import sigints, watch_sigints
    console = Console()
    out = Path(cfg.out)
    check_plan_out(cfg)
    if cfg.dry_run:  # plan() reads the inputs, and refuses what the run refuses (_refuse)
        dry_run(plan(cfg), cfg, console, spent=spent(_summaries(out)))
        return {}
    collected, prompts, questions, warnings, later = _inputs(cfg)
    for w in warnings:
        warn(w)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "pipeline.config.json")
    ctx = Context(console, cfg, out, (7 if cfg.dpo else 6) + (cfg.rounds - 1) * (3 if cfg.dpo else 2), collected,
                  prompts, questions, later)
    results: dict[str, Result] = {}
    times: dict[str, float] = {}
    stop_after = _stop_after(cfg.rounds)
    watch_sigints()
    seen = sigints()
    for step in _steps(cfg):
        t = time.monotonic()
        try:
            r = results[step.name] = step.run(ctx, *(results[n] for n in step.needs))
        except KeyboardInterrupt:  # outside run_items' loop (loading, training, a report): stop here too
            r = results[step.name] = _interrupted(ctx)
        if sigints() > seen and r.status != "stopped":  # a Ctrl-C whose KeyboardInterrupt got lost in the step
            r = results[step.name] = _interrupted(ctx)
        if r.status != "skipped":
            times[step.name] = time.monotonic() - t
        if r.status == "stopped" or (cfg.stop_after and cfg.stop_after == stop_after.get(step.name)):
            return results
    console.print("step times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    return results


def exit_status(results: dict[str, Result]) -> int:
    """The process's exit status: that of the step that stopped the run, 0 when none did."""
    return next((r.exit_status for r in results.values() if r.status == "stopped"), 0)


def add_cli(sub) -> None:
    p = sub.add_parser("pipeline", help="the whole loop on the embedded default model (the README's main job)")
    add_dataclass_args(p, PipelineConfig)
    p.set_defaults(func=lambda a: exit_status(run(dataclass_from_args(PipelineConfig, a))))
