"""`baize export`: GGUF files that load back with transformers' GGUF loader and match the merged model,
carry the run's chat template, and an Ollama Modelfile; on a tiny random LLaMA (offline)."""
import contextlib
import io
import json
import shutil
import subprocess
import sys

import pytest

from baize.config import BaizeError

DIALOGUES = [
    [{"role": "user", "content": "Hi there, what is 2+2?"}],
    [{"role": "user", "content": "Name three colours."}, {"role": "assistant", "content": "Red, green and blue."},
     {"role": "user", "content": "And one more?"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "How are you today?"}],
]
# max |logit difference| over the logits' scale (max |logit|): f16 rounds weights to 11 bits, Q8_0 to 8
TOLERANCE = {"f16": 2e-3, "q8_0": 3e-2}
TEXTS = ["Hello world 12345", "<|im_start|>user\nHi there!<|im_end|>\n", "  two spaces\n\ttab é ü 中文 🙂 [|AI|]"]


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    from test_train import write_dialogues

    from baize.train.common import TrainConfig
    from baize.train.recipes import train
    tmp = tmp_path_factory.mktemp("export-run")
    cfg = TrainConfig(base=str(tiny_model_dir), data=str(write_dialogues(tmp / "d.jsonl", n=8)), out=str(tmp / "v1"),
                      batch_size=4, micro_batch_size=4, max_steps=1, save_steps=1, precision="fp32",
                      learning_rate=1e-2, val_size=0, system="Be helpful.")
    return train(cfg)


@pytest.fixture(scope="module")
def merged(run, tmp_path_factory):
    from baize.train.merge import merge
    return merge(run, tmp_path_factory.mktemp("export-merged") / "v1")


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    """The run exported at both dtypes into one folder, both with --ollama: f16 through the CLI (its
    output kept), q8_0 through the API."""
    from baize.cli import main
    from baize.train.export import export
    out = tmp_path_factory.mktemp("export-out")
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["export", str(run), "--format", "gguf", "--out", str(out / "v1.gguf"), "--ollama"]) == 0
    info = export(str(run), out / "v1-q8_0.gguf", dtype="q8_0", ollama=True)
    assert info["dtype"] == "q8_0" and info["format"] == "baize" and info["kind"] == "run"
    return {"f16": out / "v1.gguf", "q8_0": out / "v1-q8_0.gguf", "printed": printed.getvalue()}


def _metadata(path):
    """(tensor table, metadata) of a GGUF file, by the reader transformers' GGUF loader uses (the gguf
    package's GGUFReader takes seconds on a 49k vocabulary)."""
    from transformers.integrations.gguf.reader import GgufHeader, read_gguf_metadata
    meta, _ = read_gguf_metadata(str(path), ("tokenizer.ggml.tokens", "baize.stop"))
    return GgufHeader.from_file(str(path)).tensors, meta


def _prompt_ids(tok, fmt_name, system=None):
    from baize.llm.chat_format import get_format
    fmt = get_format(fmt_name, tok)
    return [fmt.encode(fmt.render(([{"role": "system", "content": system}] if system and d[0]["role"] != "system"
                                   else []) + d)) for d in DIALOGUES]


@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_logits_match_the_merged_model(exported, merged, dtype):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = exported[dtype]
    ref = AutoModelForCausalLM.from_pretrained(merged).eval()
    got = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    assert got.config.tie_word_embeddings and got.config.num_key_value_heads == 2
    worst = 0.0
    for ids in _prompt_ids(AutoTokenizer.from_pretrained(merged), "baize", "Be helpful."):
        x = torch.tensor([ids])
        with torch.no_grad():
            a, b = ref(input_ids=x).logits, got(input_ids=x).logits
        rel = ((a - b).abs().max() / a.abs().max()).item()
        worst = max(worst, rel)
        assert a[0, -1].argmax() == b[0, -1].argmax() or dtype == "q8_0"
    print(f"\n{dtype}: {path.stat().st_size} bytes, max |logit diff| / max |logit| = {worst:.2e}")
    assert worst < TOLERANCE[dtype]


def test_file_layout_and_metadata(exported, tiny_model_dir):
    import gguf
    Q = gguf.GGMLQuantizationType
    sizes = {}
    for dtype in TOLERANCE:
        path = exported[dtype]
        r, meta = _metadata(path)
        types = {t.name: t.ggml_type for t in r}
        assert "output.weight" not in types  # tied embeddings: llama.cpp reuses token_embd
        assert len(types) == 2 + 9 * 2 and types["output_norm.weight"] == Q.F32 and types["blk.1.ffn_norm.weight"] == Q.F32
        assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == {"f16": Q.F16, "q8_0": Q.Q8_0}[dtype]
        assert meta["general.architecture"] == "llama" and meta["general.file_type"] == {"f16": 1, "q8_0": 7}[dtype]
        assert (meta["llama.block_count"], meta["llama.embedding_length"], meta["llama.feed_forward_length"],
                meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"],
                meta["llama.context_length"], meta["llama.rope.dimension_count"]) == (2, 64, 128, 4, 2, 1024, 16)
        assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
        assert meta["tokenizer.ggml.add_bos_token"] is False and meta["tokenizer.ggml.eos_token_id"] == 2
        tokens, token_types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
        assert len(tokens) == len(token_types) == meta["llama.vocab_size"] == 49152
        assert tokens[1] == "<|im_start|>" and token_types[1] == 3  # CONTROL
        assert meta["general.sampling.top_p"] == pytest.approx(0.95)
        assert (meta["baize.format"], meta["baize.system"], meta["baize.stop"]) == ("baize", "Be helpful.", ["[|Human|]", "[|AI|]"])
        sizes[dtype] = sum(t.nbytes for t in r)
    assert sizes["q8_0"] < 0.56 * sizes["f16"]  # Q8_0: 34 bytes per 32 weights, f16: 64


def test_tokenizer_and_chat_template_from_the_file(exported, run, merged):
    from transformers import AutoTokenizer

    from baize.llm.chat_format import get_format
    path = exported["f16"]
    got = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ref = AutoTokenizer.from_pretrained(merged)
    for s in TEXTS:
        assert got(s)["input_ids"] == ref(s)["input_ids"], s
    # the template in the file renders exactly as baize renders the run's format (with its system prompt)
    fmt = get_format("baize", ref)
    dialogue = DIALOGUES[1] + [{"role": "assistant", "content": "Yellow: [|Human|] not a turn"},
                               {"role": "user", "content": "Thanks!"}]
    assert got.apply_chat_template(dialogue, tokenize=False, add_generation_prompt=True) == \
        fmt.render([{"role": "system", "content": "Be helpful."}] + dialogue)
    assert got.apply_chat_template(DIALOGUES[2], tokenize=False, add_generation_prompt=True) == fmt.render(DIALOGUES[2])
    _, meta = _metadata(path)
    assert meta["tokenizer.chat_template"] == got.chat_template


def test_a_merged_directory_exports_the_same_file(exported, merged, tmp_path):
    from baize.train.export import export
    info = export(str(merged), tmp_path / "v1.gguf")
    assert info["kind"] == "merged" and info["format"] == "baize" and info["system"] == "Be helpful."
    assert (tmp_path / "v1.gguf").read_bytes() == exported["f16"].read_bytes()


def test_ollama_modelfile_for_a_baize_run(exported):
    folder = exported["f16"].parent
    mf = (folder / "v1.Modelfile").read_text()
    assert mf.splitlines()[:2] == ["# written by `baize export`; create the model with: ollama create v1 -f v1.Modelfile",
                                   "FROM ./v1.gguf"]
    # the CLI prints the command to run, with the Modelfile's path
    assert f"ollama create v1 -f {folder / 'v1.Modelfile'}\n" in exported["printed"]
    # a second export into the same folder writes its own Modelfile, not over the first
    assert (folder / "v1-q8_0.Modelfile").read_text().splitlines()[1] == "FROM ./v1-q8_0.gguf"
    assert not (folder / "Modelfile").exists()
    assert 'TEMPLATE """{{ if .System }}{{ .System }}' in mf and '[|Human|] {{ .Content }}' in mf
    assert 'SYSTEM """Be helpful."""' in mf
    assert 'PARAMETER stop "[|Human|]"' in mf and 'PARAMETER stop "[|AI|]"' in mf
    for p in ("temperature 1", "top_p 0.95", "num_predict 512", "num_ctx 2048"):
        assert f"PARAMETER {p}\n" in mf


def test_template_format_run_and_model_directory(run, tiny_model_dir, tmp_path):
    """A `template` run: the tokenizer's own template with the run's system prompt as the default; and a
    plain model directory exports its own template unchanged; Ollama gets ChatML."""
    from transformers import AutoTokenizer

    from baize.llm.chat_format import get_format
    from baize.train.export import export
    trun = tmp_path / "trun"
    shutil.copytree(run, trun, ignore=shutil.ignore_patterns("checkpoints"))
    rec = json.loads((trun / "baize_run.json").read_text())
    (trun / "baize_run.json").write_text(json.dumps({**rec, "format": "template", "system": "Be brief."}))
    info = export(str(trun), tmp_path / "t" / "t.gguf", dtype="q8_0", ollama=True, name="Baize Tiny")
    plain = export(str(tiny_model_dir), tmp_path / "plain.gguf")
    assert info["format"] == plain["format"] == "template" and info["ollama_template"] == "chatml"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    fmt = get_format("template", tok)
    for path, system in ((tmp_path / "t" / "t.gguf", "Be brief."), (tmp_path / "plain.gguf", None)):
        template = _metadata(path)[1]["tokenizer.chat_template"]
        for d in DIALOGUES:
            want = fmt.render(([{"role": "system", "content": system}] if system and d[0]["role"] != "system" else []) + d)
            assert tok.apply_chat_template(d, chat_template=template, tokenize=False, add_generation_prompt=True) == want
    mf = (tmp_path / "t" / "t.Modelfile").read_text()
    assert "ollama create baize-tiny -f t.Modelfile" in mf and "<|im_start|>{{ .Role }}" in mf
    assert 'SYSTEM """Be brief."""' in mf and 'PARAMETER stop "<|im_end|>"' in mf


def _byte_fallback_tokenizer():
    """A tiny LLaMA-2-style tokenizer: byte-fallback BPE over a few letters."""
    from transformers import LlamaTokenizer
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for c in "▁abcdehilnorstw":
        vocab.setdefault(c, len(vocab))
    merges = [("▁", "h"), ("e", "l"), ("el", "l"), ("▁h", "ell"), ("o", "r"), ("▁", "w"), ("▁w", "or"), ("l", "d"),
              ("▁wor", "ld"), ("▁hell", "o")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = LlamaTokenizer(vocab=vocab, merges=merges, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                         add_bos_token=True)
    assert tok("hi")["input_ids"][0] == 1
    return tok


def test_sentencepiece_style_tokenizer_and_untied_head(tmp_path):
    """A byte-fallback BPE (LLaMA-2 style) vocabulary becomes llama.cpp's 'llama' tokenizer; an untied head
    is written as output.weight."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from baize.train.export import export
    tok = _byte_fallback_tokenizer()
    vocab = tok.get_vocab()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    info = export(str(tmp_path / "m"), tmp_path / "m.gguf", ollama=True)
    assert info["tokenizer"] == "llama/default" and info["format"] == "baize" and info["ollama_template"] == "baize"
    r, meta = _metadata(tmp_path / "m.gguf")
    assert "output.weight" in {t.name for t in r} and meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.ggml.token_type"][3] == 6 and meta["tokenizer.ggml.add_space_prefix"] is True  # BYTE
    got = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    for s in ("hello world", "Hello, wörld! 12", " leading  double", "world hello\nnew"):
        assert got(s)["input_ids"] == tok(s)["input_ids"], s
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf")
    assert not model.config.tie_word_embeddings
    ids = torch.randint(3, len(vocab), (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = AutoModelForCausalLM.from_pretrained(tmp_path / "m")(input_ids=ids).logits, model(input_ids=ids).logits
    assert (a - b).abs().max() / a.abs().max() < TOLERANCE["f16"]


def test_mistral_without_sliding_window_is_written_as_llama(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM

    from baize.train.export import export
    tok = _byte_fallback_tokenizer()
    for window in (None, 16):
        cfg = MistralConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2, sliding_window=window,
                            max_position_embeddings=64)
        torch.manual_seed(0)
        MistralForCausalLM(cfg).save_pretrained(tmp_path / f"m{window}")
        tok.save_pretrained(tmp_path / f"m{window}")
    with pytest.raises(BaizeError, match="sliding-window"):
        export(str(tmp_path / "m16"), tmp_path / "m16.gguf")
    export(str(tmp_path / "mNone"), tmp_path / "m.gguf")
    ids = torch.randint(3, len(tok), (1, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(tmp_path / "mNone")(input_ids=ids).logits
        b = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf")(input_ids=ids).logits
    assert (a - b).abs().max() / a.abs().max() < TOLERANCE["f16"]


def test_llama3_rope_factors_match_transformers():
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from baize.train.export import llama3_rope_factors
    cfg = LlamaConfig(hidden_size=256, num_attention_heads=4, max_position_embeddings=131072,
                      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 8192})
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    base = 1.0 / (500000.0 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    factors = torch.tensor(llama3_rope_factors(cfg), dtype=torch.float64)
    assert factors.min() == 1.0 and factors.max() == 8.0
    torch.testing.assert_close(base / factors, scaled.double(), rtol=1e-5, atol=0)


def test_not_llama_is_a_clear_error(tmp_path, capsys):
    from transformers import GPT2Config

    from baize.cli import main
    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path / "gpt2")
    assert main(["export", str(tmp_path / "gpt2"), "--out", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "LLaMA" in err and "'gpt2'" in err
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("src", ["missing", "empty"])
def test_bad_source_is_a_one_line_error(tmp_path, src):
    (tmp_path / "empty").mkdir()
    p = subprocess.run([sys.executable, "-m", "baize", "export", str(tmp_path / src), "--out", str(tmp_path / "x.gguf")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("baize: error:") and "run directory" in lines[0]


@pytest.mark.parametrize("record", ["{not json", '{"format": "baize"}', "[]"])
def test_bad_run_record_is_a_one_line_error_naming_it(tmp_path, capsys, record):
    from baize.cli import main
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "baize_run.json").write_text(record)
    assert main(["export", str(tmp_path / "v1"), "--out", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "v1" / "baize_run.json") in err
    assert ("not valid JSON" if record.startswith("{not") else 'no "base"') in err and "train the run again" in err


def test_prompting_defaults_from_the_file_metadata(exported):
    """The stop strings and system prompt `baize export` records, as the gguf package reads them and as
    llama.cpp hands them over (strings only: it drops array values)."""
    import gguf

    from baize.llm.base import gguf_prompting
    reader = gguf.GGUFReader(exported["q8_0"])
    meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith(("baize.", "general."))}
    assert gguf_prompting(meta) == (["[|Human|]", "[|AI|]"], "Be helpful.")
    assert gguf_prompting({**meta, "baize.stop": '["[|Human|]", "a \\"quoted\\" stop"]'}) == \
        (["[|Human|]", 'a "quoted" stop'], "Be helpful.")
    for junk in ({}, {"baize.stop": "not a list", "baize.system": ""}, {"baize.stop": [1, ""], "baize.system": 3}):
        assert gguf_prompting(junk) == ([], None)


def test_llama_cpp_backend_uses_the_file_defaults(exported, monkeypatch):
    """Without llama-cpp-python: a stand-in Llama that, like llama.cpp, exposes only string metadata."""
    import types

    from baize.llm.base import LlamaCppLLM
    _, meta = _metadata(exported["q8_0"])
    calls = []

    class Llama:
        def __init__(self, model_path, **kw):
            self.metadata = {k: str(v) for k, v in meta.items() if not isinstance(v, list)}

        def reset(self):  # llama.cpp's: forget the cached prompt
            calls.append("reset")

        def create_chat_completion(self, **kw):
            calls.append(kw)
            if kw.get("stream"):
                return iter([{"choices": [{"delta": {"content": "ok"}}]}])
            return {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}], "usage": {}}

    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=Llama))
    llm = LlamaCppLLM(str(exported["q8_0"]))
    assert llm.chat([{"role": "user", "content": "Hi"}], stop=["END", "[|AI|]"])[0].text == "ok"
    assert calls[-2] == "reset"  # every request starts from a fresh context: the same request, the same text
    assert calls[-1]["messages"][0] == {"role": "system", "content": "Be helpful."}
    assert calls[-1]["stop"] == ["END", "[|AI|]", "[|Human|]"]
    own = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    assert list(llm.stream(own)) == ["ok"]
    assert calls[-1]["messages"] == own and calls[-1]["stop"] == ["[|Human|]", "[|AI|]"]


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


@pytest.mark.parametrize("pre, name", [
    (BYTE_LEVEL, "gpt-2"),
    # SmolLM/SmolLM2 as published on the hub: single digits first
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]}, "smollm"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "LLAMA3"}, "behavior": "Isolated"},
                                            {**BYTE_LEVEL, "use_regex": False}]}, "llama-bpe"),
])
def test_pre_tokenizer_names(pre, name):
    from baize.train.export import LLAMA3_SPLIT, _pre_name
    if name == "llama-bpe":
        pre["pretokenizers"][0]["pattern"]["Regex"] = LLAMA3_SPLIT
    assert _pre_name(pre) == name
    with pytest.raises(BaizeError, match="pre-tokenizer"):
        _pre_name({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": False}, BYTE_LEVEL]})


@pytest.mark.slow
def test_the_embedded_default_exports(default_dir, tmp_path):
    """The real SmolLM2 loads back from its file with the same logits. Its tokenizer.json, converted from
    the embedded GGUF by transformers, has no Digits step, so it is written as 'gpt-2', not 'smollm':
    the same tokens, as no token of its vocabulary holds a digit beside anything else."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from baize.train.export import export
    info = export("default", tmp_path / "default.gguf")
    assert info["tokenizer"] == "gpt2/gpt-2" and info["kind"] == "model"
    assert _metadata(tmp_path / "default.gguf")[1]["tokenizer.ggml.pre"] == "gpt-2"
    tok = AutoTokenizer.from_pretrained(default_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "Name three colours."}], tokenize=False,
                                   add_generation_prompt=True)
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(default_dir).eval()(input_ids=ids).logits
        b = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="default.gguf").eval()(input_ids=ids).logits
    assert a[0, -1].argmax() == b[0, -1].argmax()
    assert (a - b).abs().max() / a.abs().max() < TOLERANCE["f16"]


def test_gguf_spec_loads_through_llama_cpp(exported):
    pytest.importorskip("llama_cpp")
    from baize.llm.models import load_llm
    llm = load_llm(f"gguf:{exported['q8_0']}")
    out = llm.chat([{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0.0, stop=["[|Human|]"])
    assert out and out[0].completion_tokens <= 4
