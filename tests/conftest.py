import os

import pytest

# tests never touch a hub; the embedded default's converted copy is cached per machine
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def default_dir():
    from baize.llm.models import default_model_dir
    return default_model_dir()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_dir):
    """A tiny random LLaMA with the embedded model's real tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(default_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    """The tiny model's tokenizer (the embedded model's real one)."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def sigkill_when():
    """run(args, ready, cwd=, env=) starts a command and SIGKILLs it once the file `ready` exists (or after
    `timeout` s): a kill at a known point of a pipeline. Returns (whether it was still running, its stderr)."""
    import os
    import signal
    import subprocess
    import time

    def run(args, ready, *, cwd, env, timeout: float = 240) -> tuple[bool, str]:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd, env=env)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None and not ready.exists():
                time.sleep(0.05)
            alive = proc.poll() is None
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=10)
        return alive, proc.stderr.read().decode(errors="replace")[-3000:]
    return run


@pytest.fixture(autouse=True, scope="session")
def float32_on_cpu():
    """Local models load with dtype "auto": bfloat16 on a CPU with native bf16 (baize/llm/models.py). The
    tests compare log-probs across code paths to 1e-4, float32's precision, so in this process they load
    float32 on every CPU; tests/test_cpu_dtype.py tests the bf16 choice itself."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("baize.llm.models.native_bf16", lambda: False)
        yield


@pytest.fixture
def fake_throttle(monkeypatch):
    """make(start) -> (Throttle(64, cooldown 1 s), clock, hits) on a clock the test moves: clock[0] is
    the time in seconds, hits[0] the 429s counted so far."""
    from baize.runner import Throttle

    def make(start: float = 0.0):
        clock, hits = [start], [0]
        monkeypatch.setattr("baize.runner.time.monotonic", lambda: clock[0])
        return Throttle(64, lambda: hits[0], cooldown=1.0), clock, hits
    return make
