"""The embedded default model through the one LLM interface: generation, batching, seeds, stops, streaming.

Slow-ish (the converted model is cached per machine; each test generates a handful of tokens)."""
import threading

import pytest

pytestmark = pytest.mark.slow

Q = [{"role": "user", "content": "Name three fruits."}]


@pytest.fixture(scope="module")
def llm():
    # one intra-op thread: on a small shared CPU, torch's spinning worker threads fight the other
    # processes and a 12-token reply takes 10 s instead of 1.5 s; the behaviour tested is the same
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    from baize.llm.models import load_llm
    yield load_llm("default", max_batch=16)
    torch.set_num_threads(threads)


def test_default_loads_and_generates(llm):
    (c,) = llm.chat(Q, max_tokens=12, seed=0)
    assert isinstance(c.text, str) and c.text.strip() == c.text and c.text
    assert c.prompt_tokens == len(llm.prompt_ids(Q)) > 5
    assert 0 < c.completion_tokens <= 12
    assert c.finish_reason in ("stop", "length")
    assert llm.name == "default"


def test_seeded_calls_reproducible(llm):
    a = llm.chat(Q, max_tokens=12, seed=7)[0]
    b = llm.chat(Q, max_tokens=12, seed=7)[0]
    assert a.text == b.text and a.completion_tokens == b.completion_tokens
    # n samples get different seeds (seed, seed+1, ...): not all the same text
    texts = {c.text for c in llm.chat(Q, max_tokens=12, seed=100, n=3)}
    assert len(texts) > 1


def test_concurrent_calls_are_batched(llm):
    before = llm.engine.max_batch_seen
    llm.engine.max_batch_seen = 0
    n = 8
    barrier = threading.Barrier(n)
    results = [None] * n
    errors = []

    def worker(i):
        try:
            barrier.wait(timeout=30)
            # rows i and i+4 ask the same thing with the same seed
            msgs = [{"role": "user", "content": f"Write a word about the number {i % 4}."}]
            results[i] = llm.chat(msgs, max_tokens=6, seed=i % 4)[0]
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    assert all(r is not None and r.completion_tokens > 0 for r in results)
    assert llm.engine.max_batch_seen > 1  # several threads shared one generate call
    for i in range(4):  # a seeded row does not depend on its neighbours in the batch
        assert results[i].text == results[i + 4].text
    llm.engine.max_batch_seen = max(before, llm.engine.max_batch_seen)


def test_stop_strings_cut_the_text(llm):
    full = llm.chat(Q, max_tokens=16, seed=3)[0]
    words = full.text.split()
    assert len(words) >= 3, full.text
    stop = words[len(words) // 2]
    cut = llm.chat(Q, max_tokens=16, seed=3, stop=[stop])[0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.text
    assert cut.text == full.text[:full.text.find(stop)].strip()
    assert cut.completion_tokens <= full.completion_tokens


def test_stream_joins_to_chat_text(llm):
    text = llm.chat(Q, max_tokens=12, seed=5)[0].text
    pieces = list(llm.stream(Q, max_tokens=12, seed=5))
    assert len(pieces) > 1  # really incremental
    joined = "".join(pieces)
    assert joined == joined.lstrip() and joined.rstrip() == text
