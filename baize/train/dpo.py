"""The DPO recipe: v2 from preference pairs (`baize train --method dpo`), beyond the paper's SDF
fine-tuning; top to bottom in `dpo`.

    baize train --from runs/v1 --method dpo --data data/sdf.prefs.jsonl --out runs/v2-dpo

TRL's DPOTrainer computes the loss; common.py's shared parts do the rest as for SFT (checkpoints, --resume,
--val-size, progress, loss.jsonl/loss.png, the adapter check, baize_run.json). What is ours:

- The reference is v1 exactly. TRL, given a model and a LoRA config, takes the model with its adapter
  disabled as the reference; so v1's adapter chain is merged into the base first (as for any run used
  as --base) and a fresh adapter goes on top. The new run's base is v1's run directory: a chain that
  models.resolve, chat, serve and merge already follow.
- The pairs are rendered in the run's chat format and tokenized here: the prompt exactly as chat
  prompts it (`render(..., add_generation_prompt=True)`, the run's system prompt added when the row has
  none), the completion as the assistant text with the format's end of turn (baize: up to the next
  `[|Human|]`; template: up to `<|im_end|>\\n` or the template's equivalent), the tokens SFT trained.
  TRL gets token ids: from strings it would re-tokenize and end each completion with EOS, which
  neither format trains. The loss is on the completions only (TRL's completion_mask).
- Every row is validated, a bad one named by file:line and field.

Rows are TRL's conversational preference shape, so `datasets.load_dataset("json", ...)` reads them
and a plain DPOTrainer accepts them unchanged:
    {"id": "...", "prompt": [{"role": "user", "content": "..."}], "chosen": [{"role": "assistant",
     "content": "..."}], "rejected": [{"role": "assistant", "content": "..."}], "meta": {...}}
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..config import BaizeError
from .common import (
    TrainConfig,
    check_adapter,
    finish,
    fit,
    load_for_training,
    log_lora,
    lora_config,
    progress,
    save,
    split_val,
    start,
    trainer_args,
    write_record,
)
from .distributed import describe, fsdp_trainer, speedups_off
from .speedups import cpu_speedups, plan_passes

ROLES = ("system", "user", "assistant")
ASSISTANT_SHAPE = '[{"role": "assistant", "content": "..."}]'


# --- data ----------------------------------------------------------------------------------------

def _check_messages(msgs, where: str, field: str) -> None:
    if not isinstance(msgs, list) or not msgs:
        raise BaizeError(f"{where}: field '{field}' must be a non-empty list of {{role, content}} messages")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise BaizeError(f"{where}: {field}[{i}] must be {{\"role\": system|user|assistant, \"content\": string}}")
        if m["role"] == "system" and i:
            raise BaizeError(f"{where}: {field}[{i}]: a system message may only come first")


def check_row(row, where: str) -> dict:
    """One preference row, or a one-line error naming file:line and the field to fix."""
    if not isinstance(row, dict):
        raise BaizeError(f"{where}: expected a JSON object with 'prompt', 'chosen' and 'rejected', "
                         f"got {type(row).__name__}")
    for field in ("prompt", "chosen", "rejected"):
        if field not in row:
            raise BaizeError(f"{where}: field '{field}' is missing (rows are {{prompt, chosen, rejected}}, "
                             f"as `baize sdf` writes them)")
    _check_messages(row["prompt"], where, "prompt")
    if row["prompt"][-1]["role"] != "user":
        raise BaizeError(f"{where}: field 'prompt' must end with a user message, not {row['prompt'][-1]['role']}")
    for field in ("chosen", "rejected"):
        msgs = row[field]
        if (not isinstance(msgs, list) or len(msgs) != 1 or not isinstance(msgs[0], dict)
                or msgs[0].get("role") != "assistant" or not isinstance(msgs[0].get("content"), str)):
            raise BaizeError(f"{where}: field '{field}' must be one assistant message: {ASSISTANT_SHAPE}")
        if not msgs[0]["content"].strip():
            raise BaizeError(f"{where}: field '{field}' has an empty answer")
    if row["chosen"][0]["content"].strip() == row["rejected"][0]["content"].strip():
        raise BaizeError(f"{where}: chosen equals rejected: drop that row")
    return row


def read_prefs(paths: list[str]) -> list[tuple[dict, str]]:
    """Every row with its 'file:line', validated before anything is loaded or written."""
    if not paths:
        raise BaizeError("no preference data: pass --data prefs.jsonl[,more.jsonl] ({prompt, chosen, rejected} "
                         "rows, e.g. the OUT.prefs.jsonl of `baize sdf`)")
    from ..schema import read_jsonl_where
    out = [(check_row(row, where), where) for p in paths for where, row in read_jsonl_where(p)]
    if not out:
        raise BaizeError(f"no preference pairs in {', '.join(paths)}")
    return out


def _common_prefix(a: list, b: list) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def encode_pair(row: dict, fmt, tokenizer, system: str | None = None) -> dict:
    """prompt_ids / chosen_ids / rejected_ids in the run's chat format (what TRL's collator takes).

    The prompt is the chat-time prompt; each completion is the last assistant span of the rendered
    dialogue (the span SFT labels), tokenized with its prompt as SFT tokenizes and cut where the prompt's
    own tokens end (TRL does the same for its conversational rows)."""
    prompt = list(row["prompt"])
    if system and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": system}] + prompt
    text = fmt.render(prompt, add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=fmt.add_special_tokens)["input_ids"]
    full = {}
    for key in ("chosen", "rejected"):
        rendered, spans = fmt.render_spans(prompt + row[key])
        start, end = spans[-1]
        if rendered[:start] != text:
            raise BaizeError(f"the {fmt.name} format renders a prompt differently before its reply than as a chat "
                             f"prompt; use --format baize")
        full[key] = tokenizer(rendered[:end], add_special_tokens=fmt.add_special_tokens)["input_ids"]
    n = min(_common_prefix(prompt_ids, full["chosen"]), _common_prefix(prompt_ids, full["rejected"]))
    return {"prompt_ids": prompt_ids[:n], "chosen_ids": full["chosen"][n:], "rejected_ids": full["rejected"][n:]}


def prepare_prefs(cfg, fmt, tokenizer, log, items: list[tuple[dict, str]]):
    """(train, val) datasets of token ids; refuses pairs whose prompt fills --max-length."""
    from datasets import Dataset
    pairs = [encode_pair(r, fmt, tokenizer, cfg.system) for r, _ in items]
    mean = {k: sum(len(p[k]) for p in pairs) / len(pairs) for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
    cut = sum(len(p["prompt_ids"]) + max(len(p["chosen_ids"]), len(p["rejected_ids"])) > cfg.max_length for p in pairs)
    log(f"data: {len(pairs)} preference pairs ({fmt.name} format), mean tokens: prompt {mean['prompt_ids']:.0f}, "
        f"chosen {mean['chosen_ids']:.0f}, rejected {mean['rejected_ids']:.0f}; {cut} truncated to {cfg.max_length}")
    # TRL's collator keeps the first --max-length tokens of prompt + completion
    full = [where for (_, where), p in zip(items, pairs) if len(p["prompt_ids"]) >= cfg.max_length]
    if full:
        at = ", ".join(full[:3]) + (" ..." if len(full) > 3 else "")
        if not cfg.drop_truncated:
            raise BaizeError(f"{len(full)} of {len(pairs)} pairs have a prompt of {cfg.max_length}+ tokens, nothing "
                             f"left to compare (at {at}): raise --max-length, or pass --drop-truncated to skip them")
        log(f"dropping {len(full)} pairs whose prompt fills --max-length (at {at})")
        pairs = [p for p in pairs if len(p["prompt_ids"]) < cfg.max_length]
    train, val = split_val(pairs, cfg, "pairs")
    return Dataset.from_list(train), (Dataset.from_list(val) if val else [])


# --- model and trainer ---------------------------------------------------------------------------

def check(cfg) -> None:
    """Flags that DPO refuses, and a TRL with the 1.x DPOTrainer (token-id datasets, completion_mask)."""
    if cfg.loss != "assistant":
        raise BaizeError("--loss all is for SFT: DPO compares the chosen and rejected completions only")
    import trl
    from packaging.version import Version
    if Version(trl.__version__) < Version("1.0"):
        raise BaizeError(f"--method dpo needs trl>=1.0 (installed: {trl.__version__}): pip install -U 'trl>=1.0'")


def policy_spec(cfg) -> str:
    """The model DPO starts from and compares against: --from's run (v1), else --base."""
    return cfg.from_run or cfg.base


def policy_config(cfg):
    """The config load_for_training reads to load the policy with every adapter of its chain merged in."""
    return replace(cfg, base=policy_spec(cfg), from_run=None)


def args_class(cfg):
    """DPOConfig with --beta and --max-length; train.trainer_args passes the arguments both methods share."""
    import functools

    from trl import DPOConfig
    return functools.partial(DPOConfig, beta=cfg.beta, max_length=cfg.max_length, loss_type=["sigmoid"],
                             disable_dropout=True, truncation_mode="keep_start")


def _trainer_class():
    from trl import DPOTrainer

    class BaizeDPOTrainer(DPOTrainer):
        """DPOTrainer on datasets already tokenized in the run's format (prompt_ids, chosen_ids, rejected_ids)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    return BaizeDPOTrainer


def make_trainer(cfg, model, tokenizer, args, train_set, val_set, callbacks, device: str = "cpu"):
    """TRL wraps `model` (the policy, chain merged) with a fresh adapter from the LoRA flags; no `ref` copy:
    the reference is that model with the adapter disabled (under FSDP too: the switch is per LoRA layer,
    not a second set of weights)."""
    return fsdp_trainer(_trainer_class(), device)(model=model, args=args, train_dataset=train_set, eval_dataset=val_set or None,
                            processing_class=tokenizer, peft_config=lora_config(cfg), callbacks=callbacks)


def run_record(cfg) -> dict:
    """Lineage for baize_run.json (write_record adds base = the reference, from_run, data files)."""
    return {"method": "dpo", "beta": cfg.beta, "reference": policy_spec(cfg)}


def summary(trainer) -> dict:
    """The last logged reward margin and accuracy (train and eval) for train_summary.json."""
    out = {}
    for prefix in ("", "eval_"):
        last = next((h for h in reversed(trainer.state.log_history) if f"{prefix}rewards/margins" in h), None)
        if last:
            out[f"{prefix}reward_margin"] = round(last[f"{prefix}rewards/margins"], 4)
            out[f"{prefix}reward_accuracy"] = round(last[f"{prefix}rewards/accuracies"], 4)
    return out


# --- the recipe ----------------------------------------------------------------------------------

def dpo(cfg: TrainConfig, *, callbacks: list | tuple = ()) -> Path:
    """Train (or resume) a DPO run: a fresh adapter on the --from run (or --base), which stays the
    reference; returns the run directory."""
    from transformers import set_seed

    from ..llm.chat_format import get_format
    run = start(cfg, check=check)  # --from's base, format and system; an --out that holds a run needs --resume
    cfg, log = run.cfg, run.log
    if cfg.batching != "packed":  # not the default: the user asked for it, and would get something else
        log(f"warning: --batching {cfg.batching} is ignored by DPO: TRL pads each batch's pairs to the longest one")
    items = read_prefs(cfg.data_files())  # a bad row fails here, before minutes of model loading
    set_seed(cfg.seed)
    model, tok = load_for_training(policy_config(cfg), run.device, log, adapter=False)
    train_set, val_set = prepare_prefs(cfg, get_format(cfg.format, tok), tok, log, items)

    # TRL's collator pads each batch's chosen and rejected sequences to the longest one: no packing
    workers, micro = plan_passes(model, run.per_process, cfg.micro_batch_size, cfg.parallel_dialogues, log,
                                 cpu_packed=False, threads=False)
    attn = model.config._attn_implementation
    args = trainer_args(run, args_class(cfg), micro=micro, n_train=len(train_set), n_val=len(val_set),
                        batching="longest", attn=attn, unit="pairs", objective=f"DPO (beta {cfg.beta}) on the completions")
    callback = progress(run)
    trainer = make_trainer(cfg, model, tok, args, train_set, val_set, [callback, *callbacks], run.device)
    model = trainer.model  # with the adapter TRL added
    log_lora(model, log)
    if spread := describe(trainer, run):
        log(spread)
    if run.device == "cpu":
        cpu_speedups(model, bf16=run.precision == "bf16", ours=cfg.speedups, skip=speedups_off())

    fit(trainer, run, has_val=bool(val_set))
    checksums = save(trainer, model, run)
    if not run.is_main:
        return run.dir
    n = check_adapter(run.dir)
    tok.save_pretrained(run.dir)
    write_record(run, trainer, model, base=policy_spec(cfg), **run_record(cfg))
    return finish(run, trainer, callback, batching="longest", micro_batch_size=micro, parallel_dialogues=workers,
                  attention=attn, precision=run.precision, cpu_speedups=[], world_size=run.world,
                  ddp_adapter_checksums=checksums, adapter_tensors=n, **summary(trainer))
