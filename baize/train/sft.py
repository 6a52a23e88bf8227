"""The SFT recipe: LoRA on dialogue JSONL (`baize train`, the paper's method), top to bottom in `sft`.

    baize train --base default --data dialogues.jsonl --out runs/v1
    baize train --from runs/v1 --data sdf.jsonl --out runs/v2          # SDF's v2 continues v1's adapter

What is SFT's own: the labels (packing.tokenize: the assistant's turns, or every token with --loss all),
the refusal of dialogues that truncation leaves nothing to learn from, the choice of batching, and on
CPU the speed-ups of speedups.py (the LM head inside the loss, dialogues trained on threads). The rest
is common.py's, shared with DPO.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from ..config import BaizeError
from .common import (
    TrainConfig,
    adapter_b,
    check_adapter,
    finish,
    fit,
    load_for_training,
    progress,
    save,
    split_val,
    start,
    trainer_args,
    write_record,
)
from .distributed import describe, describe_launch, fsdp_trainer, speedups_off
from .packing import Collator, accepts_logits_to_keep, choose_packing, tokenize
from .speedups import NOTED_FLAGS, cpu_flags, cpu_speedups, head_in_loss, parallel_trainer, plan_passes


def read_dialogues(paths: list[str]) -> list[tuple[dict, str]]:
    """Every record with its 'file:line', validated; a bad line raises an error naming file and line."""
    from ..schema import read_jsonl_where, validate_record
    if not paths:
        raise BaizeError("no training data: pass --data dialogues.jsonl[,more.jsonl]")
    out = [(validate_record(obj, where), where) for p in paths for where, obj in read_jsonl_where(p)]
    if not out:
        raise BaizeError(f"no dialogues in {', '.join(paths)}")
    return out


def prepare_data(cfg: TrainConfig, fmt, tokenizer, log, items: list | None = None) -> tuple[list[dict], list[dict]]:
    """Tokenized (train, val) samples; refuses dialogues left without an assistant token."""
    items = items if items is not None else read_dialogues(cfg.data_files())
    samples = tokenize([r for r, _ in items], fmt, tokenizer, max_length=cfg.max_length, loss=cfg.loss,
                       system=cfg.system)
    empty = [(where, s) for (_, where), s in zip(items, samples) if s["assistant_tokens"] == 0]
    cut = sum(s["truncated"] for s in samples)
    full = sum(s["full_length"] for s in samples)
    kept = sum(len(s["input_ids"]) for s in samples)
    log(f"data: {len(samples)} dialogues, {kept} tokens (mean {kept / len(samples):.0f}); {cut} truncated to "
        f"{cfg.max_length} tokens ({full - kept} tokens cut)")
    if empty:
        where = ", ".join(w for w, _ in empty[:3]) + (" ..." if len(empty) > 3 else "")
        why = ("no assistant message" if all(not s["truncated"] for _, s in empty)
               else f"no assistant token left after truncation to {cfg.max_length} tokens")
        if not cfg.drop_truncated:
            raise BaizeError(f"{len(empty)} of {len(samples)} dialogues have {why} (at {where}): raise --max-length, "
                             f"fix those records, or pass --drop-truncated to skip them")
        log(f"dropping {len(empty)} dialogues with {why} (at {where})")
        bad = {id(s) for _, s in empty}
        samples = [s for s in samples if id(s) not in bad]
    return split_val([{"input_ids": s["input_ids"], "labels": s["labels"]} for s in samples], cfg)


def sft(cfg: TrainConfig, *, callbacks: list | tuple = ()) -> Path:
    """Train (or resume, or continue --from) a LoRA run on dialogues; returns the run directory."""
    from transformers import Trainer, TrainingArguments, set_seed

    from ..llm.chat_format import get_format
    run = start(cfg)  # --from's base, format and system; an --out that holds a run needs --resume
    cfg, log = run.cfg, run.log
    items = read_dialogues(cfg.data_files())  # a bad line fails here, before minutes of model loading
    set_seed(cfg.seed)
    model, tok = load_for_training(cfg, run.device, log)
    train_set, val_set = prepare_data(cfg, get_format(cfg.format, tok), tok, log, items)

    batching = choose_packing(model, len(tok), cfg.max_length, log) if cfg.batching == "packed" else cfg.batching
    cpu, off = run.device == "cpu", speedups_off()
    applied = cpu_speedups(model, bf16=run.precision == "bf16", ours=cfg.speedups, skip=off) if cpu else []
    if cpu:
        log(f"CPU ({' '.join(sorted(NOTED_FLAGS & cpu_flags())) or 'no AVX2'}): "
            f"{', '.join(applied) or 'stock implementations'}")
    if cpu and off and cfg.speedups:
        log(f"{describe_launch()}: " + "; ".join(f"{k} off ({why})" for k, why in off.items()))
    workers, micro = plan_passes(model, run.per_process, cfg.micro_batch_size, cfg.parallel_dialogues, log,
                                 cpu_packed=cpu and batching == "packed", threads=cfg.speedups and run.world == 1)
    applied += [f"{workers} dialogues at once"] if workers > 1 else []
    attn = model.config._attn_implementation
    args = trainer_args(run, TrainingArguments, micro=micro, n_train=len(train_set), n_val=len(val_set),
                        batching=batching, attn=attn, unit="dialogues",
                        objective=f"loss on {'assistant turns' if cfg.loss == 'assistant' else 'all tokens'}")
    callback = progress(run)
    trainer = fsdp_trainer(parallel_trainer(Trainer, workers) if workers > 1 else Trainer, run.device)(
        model=model, args=args, train_dataset=train_set, eval_dataset=val_set or None,
        data_collator=Collator(tok, batching, cfg.max_length, trim=accepts_logits_to_keep(model)),
        processing_class=tok, callbacks=[callback, *callbacks])
    before = adapter_b(model) if cfg.from_run else None  # a continued adapter must move from --from's values
    if spread := describe(trainer, run):
        log(spread)

    with head_in_loss(model) if cpu and cfg.speedups and "head in the loss" not in off else contextlib.nullcontext() as fused:
        if fused:
            log("the LM head runs inside the loss, a chunk of rows at a time (no tokens x vocabulary logits)")
        fit(trainer, run, has_val=bool(val_set))
    checksums = save(trainer, model, run)
    if not run.is_main:
        return run.dir
    n = check_adapter(run.dir, before)
    tok.save_pretrained(run.dir)
    write_record(run, trainer, model, base=cfg.base)
    return finish(run, trainer, callback, batching=batching, micro_batch_size=micro, parallel_dialogues=workers,
                  attention=attn, precision=run.precision,
                  cpu_speedups=applied + (["head in the loss"] if fused else []), world_size=run.world,
                  ddp_adapter_checksums=checksums, adapter_tensors=n)
