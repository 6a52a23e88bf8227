"""What the SFT and DPO recipes share (`baize train`; recipes.py picks one, sft.py and dpo.py are they).

    baize train --base default --data dialogues.jsonl --out runs/v1
    baize train --from runs/v1 --data sdf.jsonl --out runs/v2          # SDF's v2 continues v1's adapter
    baize train --from runs/v1 --method dpo --data sdf.prefs.jsonl --out runs/v2-dpo   # v2 by DPO (dpo.py)
    accelerate launch --config_file examples/accelerate/fsdp_cpu.yaml --num_processes 2 -m baize train ...  # distributed.py
    baize merge runs/v1 --out merged/

transformers' Trainer runs the loop (accumulation, DDP/FSDP/DeepSpeed through accelerate, checkpoints,
resume, eval); peft adds the adapters. Here: the flags, the run directory and its settings (--from,
--resume), the model with its adapter, the Trainer's arguments, the progress log and loss curve, the
check the original lacked (an empty or untrained adapter) and the run record. Each recipe reads top to
bottom through these; neither is imported here.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import BaizeError, opt, save_config
from .speedups import cpu_flags

CONFIG_FILE = "train_config.json"
LOSS_FILE = "loss.jsonl"
SUMMARY_FILE = "train_summary.json"


@dataclass
class TrainConfig:
    data: str | list = opt("", "dialogue JSONL file(s), comma-separated (--method dpo: preference pairs)")
    out: str = opt("runs/v1", "run directory to write (adapter, tokenizer, loss curve, checkpoints)")
    base: str | None = opt(None, "base model spec: default, hf:PATH_OR_ID, a model or run directory (default: default)")
    from_run: str | None = opt(None, "continue training this run's adapter (its base, format and system)",
                               flags=("--from",))
    format: str | None = opt(None, "chat format (default: --from's or the base run's, else baize, the paper's "
                                   "[|Human|]/[|AI|] transcript)", choices=["baize", "template"])
    system: str | None = opt(None, "system prompt put before every dialogue that has none; recorded for chat/serve")
    method: str = opt("sft", "sft: fine-tune on dialogues; dpo: preference pairs {prompt, chosen, rejected} "
                             "against the --from run (or --base) as the reference policy", choices=["sft", "dpo"])
    beta: float = opt(0.1, "DPO beta: how far the policy may move from the reference")
    loss: str = opt("assistant", "tokens the loss is taken on: the assistant's turns, or every token (the paper)",
                    choices=["assistant", "all"])
    lora_r: int = opt(8, "LoRA rank")
    lora_alpha: int = opt(16, "LoRA alpha")
    lora_dropout: float = opt(0.05, "LoRA dropout")
    target_modules: str = opt("all-linear", "modules to adapt, comma-separated; all-linear: every linear but the head")
    epochs: float = opt(1.0, "passes over the data")
    max_steps: int = opt(-1, "stop after this many optimizer steps (-1: no cap)")
    max_length: int = opt(512, "tokens per dialogue; longer ones are truncated")
    batch_size: int = opt(64, "dialogues per optimizer step over all processes (gradient accumulation)")
    micro_batch_size: int | None = opt(None, "dialogues per pass and process (default: 8; on CPU with packed "
                                             "batching and one dialogue at a time, 2: as fast there, less memory)")
    parallel_dialogues: int = opt(0, "on CPU with packed batching: dialogues trained at once, a thread each with "
                                     "cores/N threads per op (0: 2 on 2+ cores; 1: one packed pass at a time)")
    learning_rate: float = opt(2e-4, "peak learning rate")
    lr_scheduler: str = opt("linear", "transformers scheduler name")
    warmup: float = opt(0.03, "warmup: a fraction of the steps if < 1, else steps")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    batching: str = opt("packed", "packed: dialogues concatenated, no padding, attention kept within each; grouped: "
                                  "similar lengths padded together; padded: all padded to --max-length (the paper)",
                        choices=["packed", "grouped", "padded"])
    precision: str = opt("auto", "autocast precision; auto: bf16 on GPUs and CPUs with native bf16, fp16 on older "
                                 "GPUs, else fp32", choices=["auto", "fp32", "bf16", "fp16"])
    quantize: str | None = opt(None, "load the base with bitsandbytes (CUDA only): int8, or 4-bit NF4 (QLoRA)",
                               choices=["8bit", "4bit"])
    gradient_checkpointing: bool = opt(False, "trade compute for activation memory")
    speedups: bool = opt(True, "on CPU, baize's chunked cross-entropy and cheaper LoRA dropout mask (speedups.py); "
                               "--no-speedups keeps the stock transformers/peft ones")
    val_size: float = opt(0.0, "held-out dialogues for eval loss: a fraction if < 1, else a count")
    eval_steps: int | None = opt(None, "evaluate every N steps (default: --save-steps)")
    save_steps: int = opt(100, "checkpoint every N steps")
    save_total_limit: int = opt(3, "checkpoints kept")
    resume: bool = opt(False, "continue from the latest checkpoint in --out (with its saved flags)")
    drop_truncated: bool = opt(False, "skip dialogues that truncation leaves without an assistant token instead "
                                      "of refusing the data")
    log_steps: int = opt(1, "log loss, tokens/s and ETA every N steps")
    seed: int = opt(42, "random seed (split, order, LoRA init, dropout)")

    def data_files(self) -> list[str]:
        items = self.data if isinstance(self.data, list) else [self.data]
        return [p.strip() for item in items for p in str(item).split(",") if p.strip()]


def split_val(samples: list, cfg: TrainConfig, what: str = "dialogues") -> tuple[list, list]:
    """(train, val): --val-size samples held out, drawn with --seed, both in file order."""
    n_val = int(cfg.val_size if cfg.val_size >= 1 else round(cfg.val_size * len(samples)))
    if n_val >= len(samples):
        raise BaizeError(f"--val-size {cfg.val_size} leaves no training data ({len(samples)} {what})")
    order = list(range(len(samples)))
    random.Random(cfg.seed).shuffle(order)
    return [samples[i] for i in sorted(order[n_val:])], [samples[i] for i in sorted(order[:n_val])]


# --- the run -------------------------------------------------------------------------------------

@dataclass
class Run:
    """A recipe's run: its settings resolved, where it writes, and its place among the processes."""
    cfg: TrainConfig
    dir: Path
    last: str | None  # the latest checkpoint under dir, what --resume continues
    rank: int = 0
    world: int = 1
    device: str = "cpu"
    precision: str = "fp32"
    started: float = 0.0  # perf_counter when training began, for the summary's seconds
    data_digest: list | None = None  # what the data files held when training read them (data_digest())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ckpt_dir(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def per_process(self) -> int:
        return max(1, self.cfg.batch_size // self.world)

    def log(self, msg: str) -> None:
        if self.is_main:
            print(f"[train] {msg}", flush=True)


def data_digest(paths: list[str]) -> list[dict]:
    """Each data file's resolved path, line count and sha256: the run record keeps them so that
    `baize pipeline` never reuses a run trained on other data than the file now holds."""
    import hashlib
    digest = []
    for p in paths:
        h, lines = hashlib.sha256(), 0
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                lines += chunk.count(b"\n")
        digest.append({"path": str(Path(p).resolve()), "lines": lines, "sha256": h.hexdigest()})
    return digest


def start(cfg: TrainConfig, check=None) -> Run:
    """The run a recipe trains: an --out that holds a run is refused without --resume; base, format and
    system resolved (from --from's run); then the recipe's own `check` of the flags, the device and the
    precision: all before any model is loaded."""
    import torch
    from transformers.trainer_utils import get_last_checkpoint
    run = Run(cfg, Path(cfg.out), None, rank=int(os.environ.get("RANK", 0)), world=int(os.environ.get("WORLD_SIZE", 1)))
    run.last = get_last_checkpoint(str(run.ckpt_dir)) if run.ckpt_dir.is_dir() else None
    if not cfg.resume and (run.last or (run.dir / "adapter_model.safetensors").exists()):
        raise BaizeError(f"{run.dir} already holds a run: pass --resume to continue it, or choose another --out")
    if cfg.resume and not run.last:
        run.log(f"no checkpoint in {run.ckpt_dir}: starting from step 0")
    run.cfg = cfg = resolve_run_settings(cfg)
    if check:
        check(cfg)
    run.device = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.quantize and run.device != "cuda":
        raise BaizeError(f"--quantize {cfg.quantize} needs a CUDA GPU (bitsandbytes); drop the flag on CPU")
    run.precision = resolve_precision(cfg.precision, run.device)
    # read before the recipe reads the data: the record says what this training saw
    run.data_digest = data_digest([p for p in cfg.data_files() if Path(p).is_file()])
    return run


def _record_spec(spec: str) -> str:
    """A spec to store in baize_run.json: local paths made absolute so the run loads from any directory."""
    prefix, path = ("hf:", spec[3:]) if spec.startswith("hf:") else ("", spec)
    if spec != "default" and "+" not in path and Path(path).exists():
        return prefix + str(Path(path).resolve())
    return spec


def resolve_run_settings(cfg: TrainConfig) -> TrainConfig:
    """Base, format and system: from --from's run when given, which must not contradict the flags."""
    from dataclasses import replace

    from ..llm import models
    if not cfg.from_run:  # a run as the base (its adapters merged in) lends its format and system
        base = _record_spec(cfg.base or "default")
        rec = models.read_run(base) if not base.startswith("hf:") else None
        return replace(cfg, base=base, format=cfg.format or (rec or {}).get("format") or "baize",
                       system=cfg.system if cfg.system is not None else (rec or {}).get("system"))
    rec = models.read_run(cfg.from_run)
    if rec is None:
        raise BaizeError(f"--from {cfg.from_run}: not a run directory (no {models.RUN_FILE}); give a run of `baize train`")
    if cfg.base and _record_spec(cfg.base) != rec["base"]:
        raise BaizeError(f"--base {cfg.base} differs from the base of {cfg.from_run} ({rec['base']}): drop --base")
    if cfg.format and cfg.format != rec.get("format"):
        raise BaizeError(f"--format {cfg.format} differs from {cfg.from_run}'s format ({rec.get('format')}): "
                         f"a continued adapter keeps its format")
    return replace(cfg, base=rec["base"], format=rec.get("format") or "baize", from_run=str(Path(cfg.from_run).resolve()),
                   system=cfg.system if cfg.system is not None else rec.get("system"))


# --- model ---------------------------------------------------------------------------------------

def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 or AMX): there bf16 autocast beats fp32; elsewhere it is emulated."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_precision(precision: str, device: str) -> str:
    import torch
    if device == "cuda":
        return precision if precision != "auto" else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16":
        raise BaizeError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    if precision == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    return precision


def load_for_training(cfg: TrainConfig, device: str, log, *, adapter: bool = True):
    """Base model (earlier adapters of a run chain merged in), then a trainable LoRA adapter on top
    (without `adapter`, the caller adds it: DPO hands lora_config(cfg) to TRL)."""
    import torch
    from peft import PeftModel, get_peft_model
    from transformers import AutoTokenizer

    from ..llm import models
    ref = models.resolve(cfg.from_run or cfg.base)
    below = ref.adapters[:-1] if cfg.from_run else ref.adapters
    tok_dir = next((a for a in reversed(ref.adapters) if (Path(a) / "tokenizer_config.json").exists()), ref.base)
    try:
        tok = AutoTokenizer.from_pretrained(tok_dir)
    except OSError as e:
        raise BaizeError(f"cannot load the tokenizer of {tok_dir!r}: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if cfg.quantize:
        if device != "cuda":
            raise BaizeError(f"--quantize {cfg.quantize} needs a CUDA GPU (bitsandbytes); drop the flag on CPU")
        if below:
            raise BaizeError(f"--quantize cannot merge {below[-1]} into a quantized base: `baize merge {below[-1]} "
                             f"--out DIR` first and train on --base DIR")
        model = _load_quantized(cfg, ref.base, log)
    else:
        # weights stay fp32 on CPU (autocast does the bf16 math); bf16 on GPUs halves their memory
        dtype = None if device == "cpu" else ("bfloat16" if torch.cuda.is_bf16_supported() else "float32")
        model, _ = models.load_model(models.ModelRef(ref.base, list(below)), device="cpu", dtype=dtype, merge=True)
    model.config.use_cache = False  # a cache in training only costs memory, and hides packing from the mask code
    if not adapter:
        return model, tok
    if cfg.from_run:
        model = PeftModel.from_pretrained(model, cfg.from_run, is_trainable=True)
        lc = model.peft_config["default"]
        log(f"continuing the adapter of {cfg.from_run} (r={lc.r}, alpha={lc.lora_alpha})")
    else:
        model = get_peft_model(model, lora_config(cfg))
    log_lora(model, log)
    return model, tok


def _load_quantized(cfg: TrainConfig, base: str, log):
    """The base through bitsandbytes on this process's GPU, with the settings FSDP needs to shard it
    (distributed.qlora_settings) when the launch is FSDP."""
    import torch
    try:
        import bitsandbytes  # noqa: F401
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    except ImportError:
        raise BaizeError("--quantize needs bitsandbytes: pip install 'baize[cuda]'") from None
    from peft import prepare_model_for_kbit_training

    from .distributed import fsdp_env, fsdp_version, qlora_settings
    dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    bnb, plugin = qlora_settings(cfg.quantize, fsdp_version=fsdp_version(), compute_dtype=dtype)
    if plugin:  # read by accelerate's FSDP plugin when the Trainer builds it, after this load
        os.environ.update(fsdp_env(plugin))
        # PEFT's FSDP-QLoRA script loads after its TrainingArguments set up the process group and this
        # process's GPU; here the model comes first, so set them up now: transformers then puts the 4-bit
        # weights on this process's GPU and, with cpu_ram_efficient_loading, reads them on rank 0 only
        from accelerate import PartialState
        PartialState()
        log(f"QLoRA under FSDP: 4-bit weights stored as {dtype} to be sharded; "
            + ", ".join(f"{k}={v}" for k, v in plugin.items()))
    # one process per GPU: DDP pins each copy to its GPU; FSDP places the shards itself (PEFT's FSDP-QLoRA)
    model = AutoModelForCausalLM.from_pretrained(
        base, quantization_config=BitsAndBytesConfig(**bnb), dtype=getattr(torch, dtype),
        device_map=None if plugin else {"": int(os.environ.get("LOCAL_RANK", 0))})
    if plugin:  # prepare_model_for_kbit_training upcasts the norms to fp32: FSDP1 cannot flatten them beside
        return model  # the 4-bit weights stored in bf16, and FSDP's checkpointing replaces its own
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig
    targets = cfg.target_modules if cfg.target_modules == "all-linear" else \
        [t.strip() for t in cfg.target_modules.split(",") if t.strip()]
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, task_type="CAUSAL_LM", lora_dropout=cfg.lora_dropout,
                      target_modules=targets)


def log_lora(model, log) -> None:
    names = sorted({n.split(".lora_A.")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_A." in n})
    n_train, n_all = model.get_nb_trainable_parameters()
    log(f"LoRA on {', '.join(names)}: {n_train:,} trainable of {n_all:,} parameters ({100 * n_train / n_all:.2f}%)")


# --- the Trainer ---------------------------------------------------------------------------------

def trainer_args(run: Run, args_class, *, micro: int, n_train: int, n_val: int, batching: str, attn: str,
                 unit: str, objective: str):
    """`args_class` (TrainingArguments or TRL's config) for `micro` samples per pass, accumulated to
    --batch-size over the processes, checkpoints and evaluation every --save-steps. Logs the plan and
    saves it with the flags as train_config.json (what --resume reads back)."""
    cfg, world = run.cfg, run.world
    accum = max(1, math.ceil(cfg.batch_size / (micro * world)))
    batch = micro * accum * world
    if batch != cfg.batch_size:
        run.log(f"batch: {micro} x {accum} accumulation x {world} processes = {batch} dialogues per step "
                f"(asked {cfg.batch_size})")
    total = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * math.ceil(n_train / batch))
    warmup = int(cfg.warmup) if cfg.warmup >= 1 else int(cfg.warmup * total)  # floor: a short run keeps its first step
    run.log(f"{n_train} train / {n_val} val {unit}; {total} steps of {batch} {unit} ({micro} per pass, {accum} "
            f"accumulated, {world} process{'es' if world > 1 else ''}); {batching} batches ({attn} attention), "
            f"{run.precision}, {objective}")
    if run.is_main:
        save_config(cfg, run.dir / CONFIG_FILE, world_size=world, effective_batch=batch, batching_used=batching,
                    precision_used=run.precision)
    return args_class(
        output_dir=str(run.ckpt_dir), per_device_train_batch_size=micro, per_device_eval_batch_size=micro,
        gradient_accumulation_steps=accum, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=warmup,
        weight_decay=cfg.weight_decay, logging_steps=cfg.log_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit, eval_strategy="steps" if n_val else "no",
        eval_steps=cfg.eval_steps or cfg.save_steps, bf16=run.precision == "bf16", fp16=run.precision == "fp16",
        use_cpu=run.device == "cpu", seed=cfg.seed, report_to=[], disable_tqdm=True, remove_unused_columns=False,
        label_names=["labels"], ddp_find_unused_parameters=False, **_compat_args(cfg, batching),
        # packed rows hold no padding at all; padded ones are counted through their attention mask
        include_num_input_tokens_seen="all" if batching == "packed" else "non_padding",
        dataloader_num_workers=0, log_level="warning", prediction_loss_only=True)


def _compat_args(cfg: TrainConfig, batching: str) -> dict:
    from transformers import TrainingArguments  # transformers 5 renamed these (the old names warn there)
    v5 = "train_sampling_strategy" in TrainingArguments.__dataclass_fields__
    # FSDP's own activation checkpointing (its config, or QLoRA's settings) replaces the Trainer's, which
    # refuses both at once
    ckpt = cfg.gradient_checkpointing and os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "").lower() != "true"
    return {"activation_checkpointing" if v5 else "gradient_checkpointing": ckpt,
            **({"train_sampling_strategy": "group_by_length" if batching == "grouped" else "random"} if v5
               else {"group_by_length": batching == "grouped"})}


def fit(trainer, run: Run, *, has_val: bool) -> None:
    """Train (from the last checkpoint with --resume) and evaluate once more when the last step was not an
    evaluation step; on Ctrl-C, say which command continues."""
    from transformers import PrinterCallback
    from transformers.trainer_utils import get_last_checkpoint
    trainer.remove_callback(PrinterCallback)  # our Progress prints the same, one line per step
    run.started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=run.last if run.cfg.resume else None)
        if has_val and trainer.state.global_step % trainer.args.eval_steps:
            trainer.evaluate()
    except KeyboardInterrupt:
        last = get_last_checkpoint(str(run.ckpt_dir)) if run.ckpt_dir.is_dir() else None
        if last:
            run.log(f"interrupted: `baize train --out {run.dir} --resume` continues from {Path(last).name}")
        raise


def save(trainer, model, run: Run) -> list | None:
    """The adapter written to --out by every process (FSDP/DeepSpeed gather the weights together); under
    DDP first the adapter checksums of all processes, returned for the summary."""
    import torch
    checksums = None
    if run.world > 1 and torch.distributed.is_initialized() and not (trainer.is_fsdp_enabled
                                                                   or trainer.is_deepspeed_enabled):
        # proof that DDP synchronised the gradients: every process must hold the very same adapter
        local = sum(p.detach().double().sum() + p.detach().double().abs().sum()
                    for n, p in model.named_parameters() if "lora_" in n)
        checksums = trainer.accelerator.gather(local.reshape(1).to(trainer.args.device)).tolist()
        run.log(f"DDP: {run.world} processes, adapter checksums {checksums}")
    trainer.save_model(str(run.dir))
    trainer.accelerator.wait_for_everyone()
    return checksums


def write_record(run: Run, trainer, model, *, base: str, **extra) -> None:
    """baize_run.json: what chat, serve, merge and a later --from load the run with."""
    from ..llm import models
    cfg = run.cfg
    models.write_run(run.dir, base=base, format=cfg.format, system=cfg.system, from_run=cfg.from_run,
                     data=[str(Path(p).resolve()) for p in cfg.data_files()], steps=trainer.state.global_step,
                     lora=lora_record(model), data_digest=run.data_digest, **extra)


def finish(run: Run, trainer, callback, **fields) -> Path:
    """train_summary.json (throughput, from `progress`'s callback, after the first step, which pays for
    warm-up: allocations, kernel selection), loss.png and the closing line; returns the run directory."""
    import resource
    (tw, cw, kw, sw), (t1, c1, k1, s1) = callback.warm or (0, 0, 0, 0), getattr(callback, "end", (0, 0, 0, 0))
    summary = {"steps": trainer.state.global_step, "seconds": round(time.perf_counter() - run.started, 1),
               "tokens": trainer.state.num_input_tokens_seen,
               "tokens_per_s": round((k1 - kw) / (t1 - tw), 1) if s1 > sw else None,
               "tokens_per_cpu_s": round((k1 - kw) / (c1 - cw), 1) if s1 > sw else None,
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), **fields}
    (run.dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    plot_loss(run.dir)
    run.log(f"saved {run.dir} ({summary['adapter_tensors']} adapter tensors, {summary['steps']} steps, "
            f"{summary['seconds']}s); chat with: baize chat {run.dir}")
    return run.dir


# --- progress and the loss curve -----------------------------------------------------------------

def progress(run: Run):
    """The Trainer callback of both recipes; it also measures the throughput `finish` reports."""
    from transformers import TrainerCallback
    run_dir, log, is_main = run.dir, run.log, run.is_main

    class Progress(TrainerCallback):
        """One line per log (loss, lr, tokens/s, ETA), the loss curve as JSONL and PNG."""

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = self.last_t = time.perf_counter()
            self.last_c = time.process_time()
            self.step0, self.tok0 = state.global_step, state.num_input_tokens_seen
            self.last_tok, self.warm = self.tok0, None
            path = run_dir / LOSS_FILE
            if is_main and path.exists():  # a resumed run rewrites the steps after its checkpoint
                keep = [ln for ln in path.read_text().splitlines() if ln.strip()
                        and json.loads(ln)["step"] <= state.global_step]
                path.write_text("".join(ln + "\n" for ln in keep))

        def on_step_end(self, args, state, control, **kw):
            # throughput is measured from the end of the first step (warm-up); CPU time too, which a
            # neighbour on a shared machine disturbs less than wall time
            now = (time.perf_counter(), time.process_time(), state.num_input_tokens_seen, state.global_step)
            self.warm = self.warm or now
            self.end = now

        def on_log(self, args, state, control, logs=None, **kw):
            if not is_main or not logs:
                return
            now = time.perf_counter()
            rec = {"step": state.global_step, "epoch": round(state.epoch or 0, 4)}
            # DPO: TRL's implicit rewards (beta x log-ratio to the reference) and log-probs, eval_ ones too
            extra = {k: v for k, v in logs.items() if k.split("_", 1)[-1].startswith(("rewards/", "logps/"))}
            rewards = "".join(f"  {name} {logs[k]:.3f}" for k, name in (("rewards/margins", "margin"),
                                                                   ("rewards/accuracies", "acc"),
                                                                   ("eval_rewards/margins", "eval margin"),
                                                                   ("eval_rewards/accuracies", "eval acc")) if k in logs)
            if "loss" in logs:
                tps = (state.num_input_tokens_seen - self.last_tok) / max(now - self.last_t, 1e-9)
                cps = (state.num_input_tokens_seen - self.last_tok) / max(time.process_time() - self.last_c, 1e-9)
                self.last_t, self.last_c, self.last_tok = now, time.process_time(), state.num_input_tokens_seen
                done = state.global_step - self.step0
                eta = (state.max_steps - state.global_step) * (now - self.t0) / max(done, 1)
                rec.update(loss=logs["loss"], lr=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
                           tokens=state.num_input_tokens_seen, tokens_per_s=round(tps, 1),
                           tokens_per_cpu_s=round(cps, 1))
                log(f"step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}  "
                    f"lr {logs.get('learning_rate', 0):.2e}  {tps:.0f} tok/s  eta {_hms(eta)}{rewards}")
            elif "eval_loss" in logs:
                rec["eval_loss"] = logs["eval_loss"]
                log(f"step {state.global_step}  eval loss {logs['eval_loss']:.4f}{rewards}")
            else:
                return
            rec.update(extra)
            with (run_dir / LOSS_FILE).open("a") as f:
                f.write(json.dumps(rec) + "\n")

        def on_save(self, args, state, control, **kw):
            if is_main:
                plot_loss(run_dir)

    return Progress()


def _hms(s: float) -> str:
    return f"{int(s) // 3600}h{int(s) // 60 % 60:02d}m" if s >= 3600 else f"{int(s) // 60}m{int(s) % 60:02d}s"


def plot_loss(run_dir: str | Path) -> Path | None:
    """loss.png next to loss.jsonl; the Agg canvas directly, so no global matplotlib backend is touched."""
    run_dir = Path(run_dir)
    path = run_dir / LOSS_FILE
    if not path.exists():
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    recs = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    panels = [("loss", (("loss", "-", "train"), ("eval_loss", "o-", "eval")))]
    if any("rewards/margins" in r for r in recs):  # DPO: a second panel with the reward margin and accuracy
        panels.append(("reward", (("rewards/margins", "-", "margin"), ("rewards/accuracies", "--", "accuracy"),
                                  ("eval_rewards/margins", "o-", "eval margin"),
                                  ("eval_rewards/accuracies", "s--", "eval accuracy"))))
    fig = Figure(figsize=(7, 4 * len(panels)))
    FigureCanvasAgg(fig)
    for i, (ylabel, series) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1, xlabel="step", ylabel=ylabel, title=run_dir.name if i == 0 else None)
        for key, style, label in series:
            pts = [(r["step"], r[key]) for r in recs if key in r]
            if pts:
                ax.plot(*zip(*pts), style, label=label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(run_dir / "loss.png", dpi=100, bbox_inches="tight")
    return run_dir / "loss.png"


def check_adapter(run_dir: str | Path, before: dict | None = None) -> int:
    """The saved adapter has LoRA tensors and they trained (lora_B starts at zero, or at --from's values):
    the original shipped empty adapters and nobody noticed."""
    import torch
    from safetensors.torch import load_file
    f = Path(run_dir) / "adapter_model.safetensors"
    if not f.exists() or f.stat().st_size == 0:
        raise BaizeError(f"{f} was not written: the adapter is empty")
    sd = load_file(f)
    b = [k for k in sd if "lora_B" in k]
    if not b or len(b) != sum("lora_A" in k for k in sd):
        raise BaizeError(f"{f} holds no LoRA A/B pairs ({len(sd)} tensors): the adapter is empty")
    if before is None:
        before = {k: torch.zeros_like(sd[k]) for k in b}
    if all(torch.equal(sd[k], before[k]) for k in b if k in before):
        raise BaizeError(f"{f}: every lora_B equals its starting value: the adapter did not train "
                         f"(no steps, or a learning rate of 0?)")
    return len(sd)


def lora_record(model) -> dict:
    lc = model.peft_config["default"]
    t = lc.target_modules
    return {"r": lc.r, "lora_alpha": lc.lora_alpha, "lora_dropout": lc.lora_dropout,
            "target_modules": sorted(t) if isinstance(t, (set, list, tuple)) else t}


def adapter_b(model) -> dict:
    # keys as peft saves them: without the adapter name
    return {n.replace(".default", ""): p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
