"""`baize export SRC --format gguf --out FILE [--dtype f16|q8_0] [--ollama]`: one GGUF file for llama.cpp,
Ollama and LM Studio, with the chat template the run was trained with.

SRC is a run directory (its adapters are folded in with `baize merge` into a temporary directory), a
merged model directory (`baize merge --out`), any local LLaMA model directory, or `default`.

The file is written with the `gguf` package (`GGUFWriter`, `SpecialVocab` for merges, special token ids
and flags, `gguf.quants` for Q8_0, the LLaMA tensor-name map) following llama.cpp's `convert_hf_to_gguf.py`,
which is not on PyPI. What neither provides is here, kept short: the q/k row permutation llama.cpp's
LLaMA graph expects, the token list and types (llama.cpp's `get_vocab_base`), the pre-tokenizer name
(read from tokenizer.json's structure; llama.cpp hashes a probe text against a table we do not have),
SentencePiece scores for byte-fallback BPE tokenizers (from the merge ranks; the gguf package's
LlamaHfVocab gives every token -1000) and llama3 rope factors (llama.cpp's formula).

`--ollama` adds NAME.Modelfile beside NAME.gguf: a Go template equivalent to the run's chat format (checked
at export time against the Jinja template on probe dialogues), the system prompt `baize chat` would use,
the format's stop strings and the paper's sampling settings.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path

from ..config import BaizeError

SUPPORTED = ("llama", "mistral")  # mistral: only without sliding-window attention, written as llama
# the paper's generation settings (top-p 0.95, temperature 1, up to 512 new tokens, 2048-token history)
SAMPLING = {"temperature": 1, "top_p": 0.95, "num_predict": 512, "num_ctx": 2048}
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


# --- the source: run, merged model or model directory ------------------------------------------------

def _describe(src: str) -> tuple[str, dict]:
    """('run' | 'merged' | 'model', record) for SRC, or a one-line error."""
    from ..llm import models
    from .merge import MERGED_FILE
    if src == "default":
        return "model", {"dir": str(models.default_model_dir()), "name": models.DEFAULT_NAME}
    p = Path(src)
    try:
        run = models.read_run(p)
    except ValueError as e:
        raise BaizeError(f"{p / models.RUN_FILE} is not valid JSON ({e}): fix it, or train the run again") from None
    if run is not None:
        if not isinstance(run, dict) or not isinstance(run.get("base"), str):
            raise BaizeError(f"{p / models.RUN_FILE} names no \"base\" model: add the base the run was trained "
                             f"on, or train the run again")
        return "run", {"dir": src, "name": p.resolve().name}
    if (p / MERGED_FILE).is_file():
        return "merged", {"dir": src, "name": p.resolve().name, **json.loads((p / MERGED_FILE).read_text())}
    if (p / "config.json").is_file():
        return "model", {"dir": src, "name": p.resolve().name}
    what = "does not exist" if not p.exists() else "is not a directory" if not p.is_dir() else \
        "has no baize_run.json, baize_merged.json or config.json"
    raise BaizeError(f"{src} {what}: give a run directory (baize train), a merged model (baize merge), "
                     f"a LLaMA model directory or 'default'")


def _config(model_dir: str):
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise BaizeError(f"cannot read the model config of {model_dir}: {str(e).splitlines()[0]}") from None


def check_architecture(cfg) -> None:
    """LLaMA-architecture models only: other layouts need llama.cpp's own converter."""
    mt = getattr(cfg, "model_type", None)
    if mt not in SUPPORTED:
        raise BaizeError(f"GGUF export supports LLaMA-architecture models (model_type llama, or mistral without "
                         f"sliding window), not {mt!r}: use llama.cpp's convert_hf_to_gguf.py on a `baize merge` output")
    if mt == "mistral" and getattr(cfg, "sliding_window", None) not in (None, 0) and \
            cfg.sliding_window < cfg.max_position_embeddings:
        raise BaizeError(f"this mistral model uses sliding-window attention ({cfg.sliding_window}), which the "
                         f"llama layout does not express: use llama.cpp's convert_hf_to_gguf.py")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise BaizeError("GGUF export supports LLaMA models without attention/MLP biases")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise BaizeError(f"GGUF export supports LLaMA models with silu activations, not {cfg.hidden_act!r}")
    _rope(cfg)  # refuses the rope scalings it cannot write


def _rope(cfg) -> tuple[float, dict]:
    """(rope theta, scaling dict) from a transformers 5 `rope_parameters` or an older rope_theta/rope_scaling."""
    rp = dict(getattr(cfg, "rope_parameters", None) or {})
    scaling = rp or dict(getattr(cfg, "rope_scaling", None) or {})
    theta = float(rp.get("rope_theta", getattr(cfg, "rope_theta", None) or 10000.0))
    kind = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if kind not in ("default", "linear", "llama3"):
        raise BaizeError(f"rope scaling {kind!r} is not supported by the GGUF export (default, linear, llama3 are)")
    return theta, {**scaling, "rope_type": kind}


def llama3_rope_factors(cfg) -> list[float]:
    """llama.cpp's `rope_freqs` for llama3 rope scaling: the divisor of each rotary frequency."""
    theta, s = _rope(cfg)
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    factor, lo, hi = s.get("factor", 8.0), s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old = s.get("original_max_position_embeddings", 8192)
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * theta ** (i / dim)
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(float(factor))
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return out


# --- tokenizer -----------------------------------------------------------------------------------------

def _steps(node) -> list[dict]:
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [s for child in node.get("pretokenizers", node.get("normalizers", [])) for s in _steps(child)]
    return [node]


def _pre_name(pre_tokenizer: dict | None) -> str:
    """llama.cpp's name for a byte-level BPE pre-tokenizer, read from its structure."""
    steps = _steps(pre_tokenizer)
    shape = [(s["type"], s.get("use_regex"), s.get("individual_digits"),
              (s.get("pattern") or {}).get("Regex")) for s in steps]
    if shape == [("ByteLevel", True, None, None)]:
        return "gpt-2"
    if shape == [("Digits", None, True, None), ("ByteLevel", True, None, None)]:
        return "smollm"  # llama.cpp: single digits, then GPT-2's regex
    if len(steps) == 2 and shape[0][0] == "Split" and shape[0][3] == LLAMA3_SPLIT and shape[1][:2] == ("ByteLevel", False):
        return "llama-bpe"
    raise BaizeError(f"cannot convert this tokenizer's pre-tokenizer ({' + '.join(s['type'] for s in steps) or 'none'}) "
                     f"for llama.cpp: supported are GPT-2 byte-level, SmolLM's and LLaMA-3's")


def tokenizer_fields(model_dir: str | Path, tok, n_vocab: int) -> dict:
    """The tokenizer as llama.cpp stores it: model, pre, tokens, token types (+ scores, space prefix)."""
    import gguf
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise BaizeError(f"{model_dir} has no tokenizer.json: GGUF export needs a fast (tokenizers) tokenizer")
    tj = json.loads(path.read_text(encoding="utf-8"))
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise BaizeError(f"cannot convert a {model.get('type')} tokenizer to GGUF: BPE tokenizers (byte-level like "
                         f"SmolLM2 and LLaMA 3, or byte-fallback like LLaMA 2) are supported")
    vocab, added = dict(model["vocab"]), {a["id"]: a for a in tj.get("added_tokens", [])}
    by_id = {i: t for t, i in vocab.items()}
    by_id.update({i: a["content"] for i, a in added.items()})
    if max(by_id) >= n_vocab:
        raise BaizeError(f"the tokenizer has ids up to {max(by_id)} but the model only {n_vocab} embeddings")
    T = gguf.TokenType
    spm = bool(model.get("byte_fallback"))
    if not spm and not any(s["type"] == "ByteLevel" for s in _steps(tj.get("pre_tokenizer"))):
        raise BaizeError("cannot convert this BPE tokenizer: neither byte-level nor byte-fallback")
    scores = None
    if spm:
        # llama.cpp's SentencePiece tokenizer merges the adjacent pair whose result scores highest: the
        # negated merge rank reproduces the BPE merge order exactly
        ranks = {}
        for r, m in enumerate(model.get("merges", [])):
            a, b = m.split(" ", 1) if isinstance(m, str) else m
            ranks.setdefault(a + b, r)
        scores = [-float(ranks[by_id[i]]) if by_id.get(i) in ranks else 0.0 for i in range(n_vocab)]
    tokens, types = [], []
    for i in range(n_vocab):
        t = by_id.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
        elif i in added and added[i].get("special"):
            tokens.append(t)
            types.append(T.UNKNOWN if spm and t == model.get("unk_token") else T.CONTROL)
        elif i in added:
            tokens.append(t.replace("\u2581", " ") if spm else t)  # llama.cpp: user-defined tokens pre-normalized
            types.append(T.USER_DEFINED)
        elif spm and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t):
            tokens.append(t)
            types.append(T.BYTE)
        else:
            tokens.append(t)
            types.append(T.UNKNOWN if spm and t == model.get("unk_token") else T.NORMAL)
    ids = tok("a")["input_ids"]
    out = {"model": "llama" if spm else "gpt2", "pre": "default" if spm else _pre_name(tj.get("pre_tokenizer")),
           "tokens": tokens, "types": types, "scores": scores,
           "add_bos": bool(tok.bos_token_id is not None and ids and ids[0] == tok.bos_token_id),
           "add_eos": bool(tok.eos_token_id is not None and ids and ids[-1] == tok.eos_token_id)}
    if spm:
        steps = _steps(tj.get("pre_tokenizer")) + _steps(tj.get("normalizer"))
        out["add_space_prefix"] = any(s["type"] == "Metaspace" and s.get("prepend_scheme", "always") != "never"
                                      or s["type"] == "Prepend" for s in steps)
    return out


# --- tensors -------------------------------------------------------------------------------------------

def _weights(model_dir: Path) -> dict[str, Path]:
    """tensor name -> safetensors file."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return {k: model_dir / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise BaizeError(f"{model_dir} has no safetensors weights: save the model with save_pretrained "
                         f"(safe_serialization) or merge the run with `baize merge`")
    from safetensors import safe_open
    out = {}
    for f in files:
        with safe_open(f, framework="pt") as st:
            out.update(dict.fromkeys(st.keys(), f))
    return out


def permute_qk(w, n_head: int, n_head_kv: int | None = None):
    """llama.cpp's row order for q/k (its rotary pairs are adjacent; HF's are half a head apart)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _natural(name: str):
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", name)]


# --- the file ------------------------------------------------------------------------------------------

def _plan_tensors(model_dir: Path, cfg, dtype: str, head_dim: int, scaling: dict):
    """(plan, weights, open files): each tensor's gguf name, HF name (None: computed), shape and ggml type."""
    import gguf
    from safetensors import safe_open
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    weights = _weights(model_dir)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    if not tied and "lm_head.weight" not in weights:
        raise BaizeError(f"{model_dir} has untied embeddings but no lm_head.weight")
    plan = []
    Q = gguf.GGMLQuantizationType
    files: dict[Path, object] = {}
    for hf in sorted(weights, key=_natural):
        if hf.endswith("rotary_emb.inv_freq") or (tied and hf == "lm_head.weight"):
            continue
        gname = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise BaizeError(f"cannot map tensor {hf!r} to llama.cpp's LLaMA layout")
        st = files.get(weights[hf]) or files.setdefault(weights[hf], safe_open(weights[hf], framework="pt"))
        shape = tuple(st.get_slice(hf).get_shape())
        if len(shape) == 1:
            qt = Q.F32  # norms stay f32, as llama.cpp keeps them
        elif dtype == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
            qt = Q.Q8_0
        else:
            qt = Q.F16  # llama.cpp's fallback for rows that do not split into Q8_0 blocks
        plan.append((gname, hf, shape, qt))
    if "token_embd.weight" not in {g for g, *_ in plan}:
        raise BaizeError(f"{model_dir} has no token embeddings (model.embed_tokens.weight)")
    if scaling["rope_type"] == "llama3":
        plan.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", None, (head_dim // 2,), Q.F32))
    return plan, weights, files


def _add_model_keys(w, cfg, *, name: str, n_vocab: int, head_dim: int, dtype: str) -> None:
    """The LLaMA hyperparameters llama.cpp reads, the file type and the paper's sampling defaults."""
    import gguf
    n_head = cfg.num_attention_heads
    theta, scaling = _rope(cfg)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or n_head)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(n_vocab)
    w.add_rope_dimension_count(head_dim)
    if head_dim != cfg.hidden_size // n_head:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if scaling["rope_type"] == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if dtype == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if hasattr(w, "add_sampling_temp"):  # the paper's sampling as the file's defaults (gguf >= 0.17)
        w.add_sampling_temp(float(SAMPLING["temperature"]))
        w.add_sampling_top_p(float(SAMPLING["top_p"]))


def _add_tokenizer_keys(w, tf: dict, special) -> None:
    w.add_tokenizer_model(tf["model"])
    w.add_tokenizer_pre(tf["pre"])
    w.add_token_list(tf["tokens"])
    w.add_token_types(tf["types"])
    if tf["scores"] is not None:
        w.add_token_scores(tf["scores"])
    if "add_space_prefix" in tf:
        w.add_add_space_prefix(tf["add_space_prefix"])
    special.add_to_gguf(w, quiet=True)


def _write_tensors(w, tmp: Path, plan, weights, files, cfg) -> None:
    """Header and tensor infos first, then one tensor at a time: memory stays at one tensor, not the model."""
    import gguf
    import numpy as np
    import torch
    Q = gguf.GGMLQuantizationType
    n_head = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_head
    for gname, _, shape, qt in plan:
        bshape = gguf.quant_shape_to_byte_shape(shape, qt) if qt == Q.Q8_0 else shape
        np_dtype = {Q.F32: np.float32, Q.F16: np.float16, Q.Q8_0: np.uint8}[qt]
        nbytes = int(np.prod(bshape)) * np.dtype(np_dtype).itemsize
        w.add_tensor_info(gname, bshape, np.dtype(np_dtype), nbytes, raw_dtype=qt if qt == Q.Q8_0 else None)
    w.write_header_to_file(tmp)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for gname, hf, _shape, qt in plan:
        if hf is None:
            data = np.asarray(llama3_rope_factors(cfg), dtype=np.float32)
        else:
            t = files[weights[hf]].get_tensor(hf).to(torch.float32)
            if gname.endswith("attn_q.weight"):
                t = permute_qk(t, n_head, n_head)
            elif gname.endswith("attn_k.weight"):
                t = permute_qk(t, n_head, n_kv)
            data = t.numpy()
        w.write_tensor_data(gguf.quants.quantize(data, qt))


def write_gguf(model_dir: str | Path, out: str | Path, *, chat_template: str, dtype: str = "f16",
               name: str | None = None, extra: dict | None = None) -> dict:
    """Write a LLaMA model directory (weights, tokenizer) and a chat template as one GGUF file; `extra`:
    more metadata (str, or list of str)."""
    import gguf
    from transformers import AutoTokenizer

    if dtype not in ("f16", "q8_0"):
        raise BaizeError(f"--dtype {dtype}: use f16 or q8_0")
    model_dir, out = Path(model_dir), Path(out)
    cfg = _config(str(model_dir))
    check_architecture(cfg)
    tok = AutoTokenizer.from_pretrained(model_dir)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    plan, weights, files = _plan_tensors(model_dir, cfg, dtype, head_dim, _rope(cfg)[1])
    n_vocab = next(shape for g, _, shape, _ in plan if g == "token_embd.weight")[0]
    tf = tokenizer_fields(model_dir, tok, n_vocab)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab)
    special.add_special_token.update(bos=tf["add_bos"], eos=tf["add_eos"])
    special.chat_template = chat_template

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    w = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        _add_model_keys(w, cfg, name=name or out.stem, n_vocab=n_vocab, head_dim=head_dim, dtype=dtype)
        _add_tokenizer_keys(w, tf, special)
        for k, v in (extra or {}).items():
            w.add_array(k, v) if isinstance(v, list) else w.add_string(k, v)
        _write_tensors(w, tmp, plan, weights, files, cfg)
        w.close()
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return {"path": str(out), "bytes": out.stat().st_size, "dtype": dtype, "tensors": len(plan),
            "tokenizer": f"{tf['model']}/{tf['pre']}", "vocab": n_vocab}


# --- Ollama --------------------------------------------------------------------------------------------

def _go_chatml():
    return ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
            '<|im_start|>assistant\n{{ "" }}')


def _py_chatml(messages):
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def _go_llama3():
    return ('{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>'
            '{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ "" }}')


def _py_llama3(messages):
    return "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
                   for m in messages) + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def _go_baize():
    from ..llm.chat_format import BAIZE_HEADER
    return ('{{ if .System }}{{ .System }}{{ else }}' + BAIZE_HEADER + '{{ end }}\n'
            '{{ range .Messages }}{{ if eq .Role "user" }}[|Human|] {{ .Content }}\n'
            '{{ else if eq .Role "assistant" }}[|AI|] {{ .Content }}\n{{ end }}{{ end }}[|AI|]')


def _py_baize(messages):
    # Ollama hands the template all system messages joined by a blank line as .System
    from ..llm.chat_format import BAIZE_HEADER
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    text = (system or BAIZE_HEADER) + "\n"
    for m in messages:
        marker = {"user": "[|Human|] ", "assistant": "[|AI|] "}.get(m["role"])
        if marker:
            text += marker + m["content"] + "\n"
    return text + "[|AI|]"


# the Go templates and a Python rendering of each, which must agree with the file's Jinja template
OLLAMA_TEMPLATES = {"baize": (_go_baize, _py_baize), "chatml": (_go_chatml, _py_chatml),
                    "llama3": (_go_llama3, _py_llama3)}
PROBES = [
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there, what is 2+2?"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello!"},
     {"role": "assistant", "content": "Bonjour !\n\nComment puis-je aider ?"}, {"role": "user", "content": "Thanks."}],
]


def _renderer(tok, chat_template: str):
    """Render dialogues with the file's template as transformers (and so baize) renders it."""
    def render(messages):
        return tok.apply_chat_template(messages, chat_template=chat_template, tokenize=False,
                                       add_generation_prompt=True)
    return render


def ollama_template(render, bos: str = "") -> str | None:
    """The kind of Go template that renders as the Jinja template does on the probe dialogues, or None."""
    def jinja(messages):
        text = render(messages)
        return text[len(bos):] if bos and text.startswith(bos) else text  # llama.cpp adds BOS itself
    from jinja2 import TemplateError
    try:
        rendered = [jinja(p) for p in PROBES]
    except (TemplateError, TypeError, ValueError, KeyError, IndexError):  # needs more than messages (tools...)
        return None
    return next((kind for kind, (_, py) in OLLAMA_TEMPLATES.items()
                 if all(r == py(p) for r, p in zip(rendered, PROBES))), None)


def _implied_system(kind: str, render, bos: str = "") -> str | None:
    """The system prompt the template writes when the dialogue has none (SmolLM2's, say)."""
    text = render([{"role": "user", "content": "Hi"}])
    text = text[len(bos):] if bos and text.startswith(bos) else text
    m = {"chatml": r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n",
         "llama3": r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>"}.get(kind)
    found = re.match(m, text, re.DOTALL) if m else None
    return found.group(1) if found else None


def modelfile(gguf_name: str, *, tok, chat_template: str, system: str | None, stop: list[str],
              bos: str = "", tag: str = "NAME", mf_name: str = "Modelfile") -> tuple[str, str | None]:
    """(Modelfile text, template kind or None)."""
    from ..llm.chat_format import BaizeFormat, guardrail_prompt
    render = _renderer(tok, chat_template)
    kind = ollama_template(render, bos)
    # what `baize chat` would send: the run's recorded prompt, else the Baize guardrail
    sys_prompt = system if system is not None else guardrail_prompt("Baize")
    if not sys_prompt and kind:
        sys_prompt = _implied_system(kind, render, bos) or ""
    # `baize chat` stops at the baize markers whatever the format (the guardrail describes them)
    stops = list(dict.fromkeys(list(stop) + list(BaizeFormat.stop)))
    lines = [f"# written by `baize export`; create the model with: ollama create {tag} -f {mf_name}",
             f"FROM ./{gguf_name}"]
    if kind:
        lines.append(f'TEMPLATE """{OLLAMA_TEMPLATES[kind][0]()}"""')
    else:
        lines.append("# no TEMPLATE: the chat template is not one baize can write for Ollama (ChatML, LLaMA-3, "
                     "baize); Ollama falls back to the template it recognises in the GGUF file")
    if sys_prompt:
        if '"""' in sys_prompt:
            raise BaizeError('the system prompt contains """, which a Modelfile cannot quote')
        lines.append(f'SYSTEM """{sys_prompt}"""')
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    lines += [f"PARAMETER {k} {v}" for k, v in SAMPLING.items()]
    return "\n".join(lines) + "\n", kind


# --- the stage -----------------------------------------------------------------------------------------

def export(src: str, out: str | Path, *, format: str = "gguf", dtype: str = "f16", ollama: bool = False,
           name: str | None = None) -> dict:
    """Export SRC (run, merged model, model directory or `default`) as one GGUF file (+ an Ollama Modelfile)."""
    if format != "gguf":
        raise BaizeError(f"--format {format}: only gguf is supported")
    out = Path(out)
    if out.is_dir():
        raise BaizeError(f"--out {out} is a directory: give a file name such as {out / 'model.gguf'}")
    kind, rec = _describe(str(src))
    from ..llm import models
    base = models.resolve(str(src)).base if kind == "run" else rec["dir"]
    check_architecture(_config(base))  # before a merge that would be thrown away
    with tempfile.TemporaryDirectory(prefix="baize-export-") as tmp:
        if kind == "run":
            from .merge import MERGED_FILE, merge
            merged = merge(src, Path(tmp) / "merged")
            rec = {**rec, **json.loads((merged / MERGED_FILE).read_text()), "dir": str(merged)}
        from transformers import AutoTokenizer

        from ..llm.chat_format import get_format
        tok = AutoTokenizer.from_pretrained(rec["dir"])
        template = tok.chat_template
        fmt = rec.get("format") or ("template" if template else "baize")
        ids = tok("a")["input_ids"]
        bos = tok.bos_token if tok.bos_token_id is not None and ids and ids[0] == tok.bos_token_id else ""
        if not template:  # a model directory without a template: the baize transcript, as chat would use
            from .merge import baize_chat_template
            template = baize_chat_template(None, bos)
        if not isinstance(template, str):
            raise BaizeError("the tokenizer has several named chat templates: GGUF export needs one")
        stop = rec.get("stop") or get_format(fmt, tok).stop
        # how baize prompts this model, for tools that read more than the template (llama.cpp ignores them)
        extra = {"baize.format": fmt, "baize.stop": list(stop),
                 **({"baize.system": rec["system"]} if rec.get("system") is not None else {})}
        info = write_gguf(rec["dir"], out, chat_template=template, dtype=dtype, name=name or rec["name"], extra=extra)
    info.update(format=fmt, system=rec.get("system"), source=str(src), kind=kind)
    if ollama:
        tag = re.sub(r"[^a-z0-9._-]+", "-", (name or out.stem).lower()).strip("-.") or "baize"
        # named after the file: two exports into one folder (f16 and q8_0, say) keep their own Modelfile
        mf = out.with_name(f"{out.stem}.Modelfile")
        text, tkind = modelfile(out.name, tok=tok, chat_template=template, system=rec.get("system"), stop=stop,
                                bos=bos, tag=tag, mf_name=mf.name)
        mf.write_text(text, encoding="utf-8")
        info.update(modelfile=str(mf), ollama_template=tkind, ollama_create=f"ollama create {tag} -f {mf}")
    return info


def _cli_export(args) -> int:
    info = export(args.src, args.out, format=args.format, dtype=args.dtype, ollama=args.ollama, name=args.name)
    print(f"exported {args.src} to {info['path']}: {info['dtype']}, {info['bytes'] / 1e6:.1f} MB, {info['tensors']} "
          f"tensors, chat format {info['format']}; chat with it: baize chat gguf:{info['path']}")
    if args.ollama:
        if not info["ollama_template"]:
            print("note: the Modelfile has no TEMPLATE (not a chat template baize can write for Ollama)")
        print(f"wrote {info['modelfile']}; create the Ollama model with:\n  {info['ollama_create']}")
    return 0


def add_cli(sub) -> None:
    e = sub.add_parser("export", help="export a run or model as one GGUF file (llama.cpp, Ollama, LM Studio)")
    e.add_argument("src", help="run directory (baize train), merged model (baize merge), LLaMA model directory or 'default'")
    e.add_argument("--format", default="gguf", choices=["gguf"], help="output format (default: gguf)")
    e.add_argument("--out", required=True, help="the .gguf file to write")
    e.add_argument("--dtype", default="f16", choices=["f16", "q8_0"],
                   help="weights: f16 (default) or q8_0; norms stay f32")
    e.add_argument("--ollama", action="store_true", help="also write NAME.Modelfile beside it for `ollama create -f`")
    e.add_argument("--name", help="the model's name in the file and for ollama create (default: the source's)")
    e.set_defaults(func=_cli_export)
