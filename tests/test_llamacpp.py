"""gguf: specs through llama.cpp, the optional extra (pip install 'baize[llamacpp]'): the embedded GGUF
itself, no conversion. Skipped where llama-cpp-python is not installed (CI: it builds from source)."""
import pytest

pytest.importorskip("llama_cpp")

MSGS = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def llm():
    from baize.llm.models import load_llm
    return load_llm("gguf:default")


def test_chat_counts_tokens_and_streams_the_same_text(llm):
    [c] = llm.chat(MSGS, max_tokens=24, temperature=0.0, seed=0)
    assert c.text.strip() and c.prompt_tokens > 5 and 0 < c.completion_tokens <= 24
    assert "".join(llm.stream(MSGS, max_tokens=24, temperature=0.0, seed=0)) == c.text


def test_n_seeds_stop_and_limits(llm):
    a = llm.chat(MSGS, n=2, max_tokens=16, temperature=1.0, seed=7)
    b = llm.chat(MSGS, n=2, max_tokens=16, temperature=1.0, seed=7)
    assert [x.text for x in a] == [x.text for x in b] and len(a) == 2
    [short] = llm.chat(MSGS, max_tokens=3, temperature=0.0)
    assert short.completion_tokens == 3 and short.finish_reason == "length"
    [full] = llm.chat(MSGS, max_tokens=24, temperature=0.0)
    word = full.text.split()[1]
    [cut] = llm.chat(MSGS, max_tokens=24, temperature=0.0, stop=[word])
    assert word not in cut.text and full.text.startswith(cut.text.rstrip())


def test_unknown_file_is_a_clear_error(tmp_path):
    from baize.llm.base import LLMError
    from baize.llm.models import load_llm
    with pytest.raises(LLMError, match="nope.gguf: no such file"):
        load_llm(f"gguf:{tmp_path / 'nope.gguf'}")
