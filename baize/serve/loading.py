"""Served models from specs: `[NAME=]SPEC` arguments, served names, and loading.

Several run directories on the same base (base, v1, v2) share one copy of the base weights: their
adapters are loaded side by side in one peft model and one batching engine switches the active set
per batch, never mixing adapters within a batch.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path

from ..config import BaizeError
from ..llm.base import GenParams
from ..llm.chat_format import BaizeFormat
from ..llm.models import HFLLM
from .config import ServeConfig


class ServedLLM(HFLLM):
    """A local model as served: it may share its base weights and engine with other adapters, so each
    request carries the adapter set it runs under."""
    adapter: tuple[str, ...] | None = None

    def submit(self, messages, *, n=1, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None,
               prompt_ids=None):
        ids = prompt_ids if prompt_ids is not None else self.prompt_ids(messages)
        # the guardrail prompt describes [|Human|]/[|AI|] turns even under a template format, and
        # small models copy them: stop there too, whatever the format
        stops = list(dict.fromkeys([*self.format.stop, *BaizeFormat.stop, *(stop or [])]))
        params = GenParams(temperature, top_p, max_tokens, stops, seed)
        return [self.engine.submit(ids, params, None if seed is None else seed + i, adapter=self.adapter)
                for i in range(n)]


def default_name(spec: str) -> str:
    if spec.startswith(("openai:", "gguf:")):
        spec = spec.split(":", 1)[1]
        return spec if spec == "default" or "/" not in spec else Path(spec).stem
    spec = spec[3:] if spec.startswith("hf:") else spec
    last = spec.split("+")[-1].rstrip("/")
    return Path(last).name or last


def parse_model_args(items: list[str]) -> dict[str, str]:
    """['runs/v2', 'base=default'] -> {'v2': 'runs/v2', 'base': 'default'}; names must be unique."""
    out: dict[str, str] = {}
    for item in items:
        m = re.match(r"^([\w.\-]+)=(.+)$", item)
        name, spec = (m.group(1), m.group(2)) if m and not item.startswith(("hf:", "openai:", "gguf:")) \
            else (default_name(item), item)
        if name in out:
            raise BaizeError(f"two models are named {name!r}: name them, e.g. {name}2={spec}")
        out[name] = spec
    return out


def load_models(specs: dict[str, str], cfg: ServeConfig | None = None) -> dict[str, object]:
    """Load every served model; local specs on the same base share one model object and one engine."""
    from ..llm import models
    from ..llm.chat_format import guardrail_prompt
    cfg = cfg or ServeConfig()
    out: dict[str, object] = {}
    groups: dict[str, list] = {}
    for name, spec in specs.items():
        if spec.startswith(("openai:", "gguf:")):
            out[name] = models.load_llm(spec)
        else:
            ref = models.resolve(spec)
            groups.setdefault(ref.base, []).append((name, spec, ref))
    for base, entries in groups.items():
        _load_group(base, entries, cfg, out, guardrail_prompt(cfg.name))
    return {name: out[name] for name in specs}


def _load_group(base, entries, cfg, out, guardrail):
    """One base and the runs on it: a run whose tokenizer grew the vocabulary gets its own copy of the
    base; the others become adapters of one peft model behind one engine."""
    from ..llm import models
    from ..llm.engine import BatchEngine
    model, tok = models.load_model(models.ModelRef(base), device=cfg.device, dtype=cfg.dtype)
    shared, keys, peft_model = [], {}, None
    for name, spec, ref in entries:
        etok = _run_tokenizer(ref, tok)
        if len(etok) != len(tok):  # resized embeddings: this run needs its own copy of the base
            m, t = models.load_model(ref, device=cfg.device, dtype=cfg.dtype)
            out[name] = _view(spec, m, t, ref, cfg, guardrail)
            out[name].engine.wait_s = cfg.batch_wait_ms / 1000
            continue
        peft_model = _add_adapters(model, peft_model, ref.adapters, keys)
        shared.append((name, spec, ref, etok))
    if not shared:
        return
    served = peft_model if peft_model is not None else model
    served.eval()
    views = []
    for name, spec, ref, etok in shared:
        v = _view(spec, served, etok, ref, cfg, guardrail)
        v.adapter = tuple(keys[a] for a in ref.adapters) or None
        out[name] = v
        views.append(v)
    eos = set().union(*(v.engine.eos_ids for v in views))
    engine = BatchEngine(served, tok, max_batch=cfg.max_batch, wait_s=cfg.batch_wait_ms / 1000,
                         eos_ids=eos, select_adapter=_adapter_selector(peft_model), pack_weights=cfg.pack_weights)
    for v in views:
        v.engine = engine


def _run_tokenizer(ref, base_tok):
    """The run's own tokenizer when its last adapter saved one (it may have added tokens), else the base's."""
    tok_dir = ref.adapters[-1] if ref.adapters and (Path(ref.adapters[-1]) / "tokenizer_config.json").exists() \
        else None
    if tok_dir is None:
        tok = base_tok
    else:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(tok_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _add_adapters(model, peft_model, adapters, keys: dict[str, str]):
    """Load each adapter once into one peft model over `model` (created on the first); `keys` maps an
    adapter path to its name in that model. Returns the peft model (None while there is no adapter)."""
    for a in adapters:
        if a in keys:
            continue
        from peft import PeftModel
        keys[a] = f"adapter{len(keys)}"
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, a, adapter_name=keys[a])
        else:
            peft_model.load_adapter(a, adapter_name=keys[a])
    return peft_model


def _adapter_selector(peft_model):
    """The engine's select_adapter: a context that makes an adapter set active for one batch."""
    @contextlib.contextmanager
    def select(adapter):
        if peft_model is None:
            yield
        elif not adapter:
            with peft_model.disable_adapter():
                yield
        else:  # several names at once: a v2 trained on top of v1 runs with both, as when merged
            peft_model.base_model.set_adapter(list(adapter), inference_mode=True)
            yield
    return select


def _view(spec, model, tok, ref, cfg, guardrail) -> ServedLLM:
    system = cfg.system if cfg.system is not None else (ref.system if ref.system is not None else guardrail)
    return ServedLLM(spec, model=model, tokenizer=tok, format=ref.format or cfg.format, system=system,
                     max_batch=cfg.max_batch, pack_weights=cfg.pack_weights)
