"""Training on several processes: FSDP through accelerate (on GPUs and, with one bridge, on CPU), the
settings QLoRA needs to shard, and the one log line that says how a run is spread. docs/fsdp.md has the
measurements and what is proven where.

accelerate and transformers' Trainer do the sharding, the gathering of a full state dict on save and the
sharded checkpoints; what is here is what they lack:
- accelerate ignores an FSDP config on CPU processes: its AcceleratorState turns FSDP on only for GPU-like
  devices, so `accelerate launch --config_file fsdp_cpu.yaml` silently trains with DDP (each process a
  full copy). `fsdp_trainer` makes accelerate's own FSDP2 path (fully_shard per decoder layer, its
  state-dict gathering, its checkpoints) run over gloo; torch's fully_shard itself runs on CPU.
- the QLoRA + FSDP settings (PEFT's FSDP+QLoRA guide, answer.ai's fsdp_qlora): a pure function of the
  launch, so a CPU unit test checks what a GPU run would get.
"""
from __future__ import annotations

import os

# speed-ups of speedups.py that a sharded launch rules out, and why (the log says so). Under FSDP the others
# hold: folded LoRA products, the chunked loss, the cheaper dropout and bf16 frozen weights (FSDP2 wants one
# dtype among a unit's trainable parameters only) give the single-process losses (tests/test_fsdp.py).
FSDP_OFF = {
    "head in the loss": "it holds the LM head's weight outside FSDP: an unsharded copy on every process, "
                        "and a meta tensor where cpu_ram_efficient_loading empties the model before sharding",
    "dialogues at once": "its threads' gradients would bypass FSDP's reduce-scatter",
}
# ZeRO-3 gathers a parameter only when its own module runs; these read weights from outside that module
ZERO3_OFF = {
    "head in the loss": "it reads the LM head's weight outside the head, where ZeRO-3 leaves it partitioned",
    "LoRA products folded": "it reads lora_B's weight outside lora_B, where ZeRO-3 leaves it partitioned",
    "bf16 frozen weights": "DeepSpeed sets the weights' dtype from its own config",
    "dialogues at once": "its threads' gradients would bypass DeepSpeed's partitioned reduction",
}


def speedups_off() -> dict:
    """{speed-up: why} for the speed-ups this launch rules out (DeepSpeed ZeRO-3, FSDP); {} otherwise."""
    if world_size() < 2:
        return {}
    if (os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
            and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"):
        return ZERO3_OFF
    return FSDP_OFF if fsdp_requested() else {}


def fsdp_requested() -> bool:
    """`accelerate launch` with an FSDP config (or --use_fsdp) exports ACCELERATE_USE_FSDP."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def fsdp_trainer(trainer_class, device: str):
    """`trainer_class`, made to run accelerate's FSDP on CPU processes launched with an FSDP config.

    accelerate's AcceleratorState enables FSDP only for GPU-like distributed types and leaves MULTI_CPU
    on DDP without a word, so `accelerate launch --config_file fsdp_cpu.yaml` would train full copies.
    Everything past that choice (fsdp2_prepare_model's fully_shard per decoder layer, get_state_dict's
    gathering, the Trainer's sharded checkpoints) is device-neutral and runs on gloo; so right after the
    Trainer builds its Accelerator, the state is switched to FSDP with the plugin accelerate launch
    described. No mixed-precision policy is set: as in one CPU process, fp32 weights are sharded and
    gradients reduced in fp32, and bf16 comes from autocast. On GPUs (or one process) the class is
    returned unchanged: accelerate does it all there."""
    if device != "cpu" or not fsdp_requested() or world_size() < 2:
        return trainer_class
    if fsdp_version() == 1:
        from ..config import BaizeError
        # only FSDP2 (fully_shard) is proven on CPU processes (docs/fsdp.md); FSDP1 would train unproven
        raise BaizeError("FSDP1 on CPU processes is not supported (only FSDP2 is proven there): set "
                         "fsdp_version: 2 in the accelerate config (as examples/accelerate/fsdp_cpu.yaml does)")

    class CPUFSDP(trainer_class):
        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
            state = self.accelerator.state
            if state.distributed_type != DistributedType.MULTI_CPU:
                raise not_enabled(str(state.distributed_type), "cpu")
            from accelerate.state import PartialState
            state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables of accelerate launch
            # in both shared states, as accelerate does on GPUs: a later AcceleratorState() copies PartialState's
            state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.is_fsdp_enabled = True  # what the Trainer set from the state a moment ago

        def autocast_smart_context_manager(self, cache_enabled=True):
            # accelerate's FSDP2 path leaves bf16 to a mixed-precision policy and wraps no autocast around
            # the forward; with none set here (see above) autocast is what gives bf16, as in one process
            return self.accelerator.autocast()

    return CPUFSDP


def describe_launch() -> str:
    """The launch's kind before the Trainer exists, for log lines: "FSDP", "DeepSpeed ZeRO-3", "DDP"."""
    off = speedups_off()
    return "DeepSpeed ZeRO-3" if off is ZERO3_OFF else "FSDP" if fsdp_requested() else "DDP"


def describe(trainer, run) -> str | None:
    """The log line of a run on several processes (None on one): FSDP's version, world size and sharding,
    or DDP; read from the Trainer's prepared accelerator, so it says what really runs."""
    if run.world < 2:
        return None
    if trainer.is_deepspeed_enabled:
        ds = trainer.accelerator.state.deepspeed_plugin
        return f"DeepSpeed ZeRO-{ds.zero_stage}: {run.world} processes"
    if not trainer.is_fsdp_enabled:
        if fsdp_requested():
            raise not_enabled(str(trainer.accelerator.state.distributed_type), trainer.args.device.type)
        return f"DDP: {run.world} processes, each a full copy of the model"
    p = trainer.accelerator.state.fsdp_plugin
    wrap = str(p.auto_wrap_policy or "").lower()  # a name until accelerate prepares the model, then a function
    layers = ", ".join(sorted(p.transformer_cls_names_to_wrap or getattr(_inner(trainer.model), "_no_split_modules",
                                                                            None) or []))
    units = (f"one unit per {layers}" if "transformer" in wrap and layers else "units by size" if "size" in wrap
             else "one unit")
    state = str(p.state_dict_type).rsplit(".", 1)[-1]
    how = ("FULL_SHARD" if p.reshard_after_forward is True else "SHARD_GRAD_OP" if p.reshard_after_forward is False
           else str(p.reshard_after_forward).rsplit(".", 1)[-1])
    offload = type(p.cpu_offload).__name__ in ("CPUOffload", "CPUOffloadPolicy") and getattr(
        p.cpu_offload, "offload_params", True)
    return (f"FSDP{p.fsdp_version}: {run.world} processes on {trainer.args.device.type}, parameters, gradients "
            f"and optimizer state sharded {run.world} ways, {units} "
            f"({how}); {state} on save{', parameters offloaded to CPU' if offload else ''}"
            f"{', activation checkpointing' if p.activation_checkpointing else ''}")


def not_enabled(distributed_type: str, device: str):
    """The error for an FSDP config that accelerate did not turn on: training on would give DDP, each
    process a full copy of the model, which is not what was asked for and may not fit."""
    from ..config import BaizeError
    kind = distributed_type.rsplit(".", 1)[-1]
    fix = ("launch plain CPU processes (accelerate's MULTI_CPU: `accelerate launch --config_file "
           "examples/accelerate/fsdp_cpu.yaml`)" if device == "cpu" else
           "set distributed_type: FSDP in the accelerate config (as examples/accelerate/fsdp_8gpu.yaml does)")
    return BaizeError(f"an FSDP config was given, but accelerate set up {kind}, not FSDP: {fix}, or drop the "
                      f"FSDP config to train DDP on purpose")


def _inner(model):
    """The transformers model under peft's wrappers (its _no_split_modules name the decoder layer)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def qlora_settings(quantize: str | None, *, fsdp_version: int | None, compute_dtype: str) -> tuple[dict, dict]:
    """(BitsAndBytesConfig kwargs, FSDP plugin kwargs) for --quantize on one process/DDP (fsdp_version None)
    or under FSDP 1 or 2; compute_dtype: "bfloat16" or "float16".

    QLoRA under FSDP (PEFT's "Use PEFT QLoRA and FSDP" guide, bitsandbytes' FSDP-QLoRA page, answer.ai's
    fsdp_qlora): FSDP shards floating-point tensors only, and one dtype per flattened unit (FSDP1), while
    bitsandbytes packs 4-bit weights into uint8 by default. bnb_4bit_quant_storage equal to the compute
    dtype (and the model loaded in it) stores the packed weights as that float, so they shard beside the
    rest. cpu_ram_efficient_loading: one process reads the checkpoint, the others get their shards (a 70B
    read 8 times over does not fit in host memory). Activation checkpointing per decoder layer by FSDP
    leaves room for the activations; FSDP1 needs use_orig_params off for its memory savings with a frozen
    base (PEFT's config; the Trainer then wraps LoRA weights apart), FSDP2 shards per parameter and has no
    such switch. int8 has no float storage: FSDP cannot shard bitsandbytes' Int8Params, so 8bit is refused."""
    if not quantize:
        return {}, {}
    if quantize == "8bit":
        if fsdp_version:
            from ..config import BaizeError
            raise BaizeError("--quantize 8bit cannot be sharded by FSDP (bitsandbytes' int8 weights have no float "
                             "storage): use --quantize 4bit (QLoRA) under FSDP, or 8bit on one GPU or DDP")
        return {"load_in_8bit": True}, {}
    bnb = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
           "bnb_4bit_compute_dtype": compute_dtype}
    if not fsdp_version:
        return bnb, {}
    plugin = {"activation_checkpointing": True, "cpu_ram_efficient_loading": True}
    return {**bnb, "bnb_4bit_quant_storage": compute_dtype}, plugin | ({"use_orig_params": False}
                                                                       if fsdp_version == 1 else {})


def fsdp_env(plugin_kwargs: dict) -> dict:
    """The FSDP_* variables that give accelerate's FullyShardedDataParallelPlugin these kwargs: the plugin
    is built from the environment `accelerate launch` exports, after the model is loaded."""
    return {f"FSDP_{k.upper()}": str(v).lower() for k, v in plugin_kwargs.items()}


def fsdp_version() -> int | None:
    """The FSDP version of this launch, None without FSDP or on one process."""
    return int(os.environ.get("FSDP_VERSION", "1")) if fsdp_requested() and world_size() > 1 else None
