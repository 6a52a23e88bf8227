"""`baize merge RUN --out DIR`: fold a run's LoRA adapters into its base, a standalone transformers model.

The merged directory loads with AutoModelForCausalLM alone (no peft), and its tokenizer carries a chat
template that prompts exactly as the run was trained (the baize transcript or the model's own template,
with the run's system prompt), so vLLM, TGI or llama.cpp converters use it as it was meant.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..config import BaizeError

MERGED_FILE = "baize_merged.json"


def baize_chat_template(system: str | None, bos: str = "") -> str:
    """The baize format as a Jinja chat template, so tools that only read the tokenizer (vLLM, TGI,
    llama.cpp converters) prompt a merged model as it was trained; chat_format.BaizeFormat is the reference."""
    from ..llm.chat_format import BAIZE_HEADER
    header = json.dumps(system or BAIZE_HEADER)
    return (
        "{%- if messages and messages[0]['role'] == 'system' %}{%- set header = messages[0]['content'] %}"
        "{%- else %}{%- set header = " + header + " %}{%- endif %}"
        "{{- " + json.dumps(bos) + " + header + '\\n' }}"
        "{%- for m in messages %}"
        # the common spellings of the role markers; BaizeFormat.sanitize is the full rule
        "{%- set c = m['content'] | replace('[|Human|]', '[Human]') | replace('[|AI|]', '[AI]') | trim %}"
        "{%- if m['role'] == 'user' %}{{- '[|Human|] ' + c + '\\n' }}"
        "{%- elif m['role'] == 'assistant' %}{{- '[|AI|] ' + c + '\\n' }}{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '[|AI|]' }}{%- endif %}")


def _with_default_system(template: str, system: str) -> str:
    return ("{%- if not (messages and messages[0]['role'] == 'system') %}{%- set messages = [{'role': 'system', "
            "'content': " + json.dumps(system) + "}] + messages %}{%- endif %}" + template)


def merge(run_dir: str | Path, out: str | Path, *, dtype: str | None = None) -> Path:
    """Fold the run's adapters into the base: a plain transformers model directory, no peft needed."""
    import torch
    from transformers import AutoConfig

    from ..llm import models
    from ..llm.chat_format import get_format
    ref = models.resolve(str(run_dir))
    if not ref.adapters:
        raise BaizeError(f"{run_dir} has no adapter: give a run directory written by `baize train`")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MERGED_FILE).exists():
        raise BaizeError(f"{out} exists and is not an earlier merge: choose an empty --out")
    # merge in fp32, then store in the base's own dtype (a bf16 merge would round the LoRA delta)
    model, tok = models.load_model(ref, device="cpu", dtype="float32", merge=True)
    target = dtype or str(getattr(AutoConfig.from_pretrained(ref.base), "dtype", None) or "float32").replace("torch.", "")
    model = model.to(getattr(torch, target))
    fmt = ref.format or "baize"
    if fmt == "baize":
        ids = tok("a")["input_ids"]
        bos = tok.bos_token if tok.bos_token_id is not None and ids and ids[0] == tok.bos_token_id else ""
        tok.chat_template = baize_chat_template(ref.system, bos)
    elif ref.system:
        tok.chat_template = _with_default_system(tok.chat_template, ref.system)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    # the stop strings stay out of generation_config: generate() refuses them without a tokenizer
    rec = {"format": fmt, "system": ref.system, "stop": get_format(fmt, tok).stop, "dtype": target,
           "merged_from": str(Path(run_dir).resolve()), "base": ref.run.get("base") if ref.run else ref.base}
    (out / MERGED_FILE).write_text(json.dumps(rec, indent=2, ensure_ascii=False) + "\n")
    return out


def _cli_merge(args) -> int:
    out = merge(args.run, args.out, dtype=args.dtype)
    print(f"merged {args.run} into {out}: load it with AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


def add_cli(sub) -> None:
    m = sub.add_parser("merge", help="merge a run's adapter into a standalone transformers model")
    m.add_argument("run", help="run directory written by `baize train`")
    m.add_argument("--out", required=True, help="directory for the merged model")
    m.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="stored dtype (default: the base's)")
    m.set_defaults(func=_cli_merge)
