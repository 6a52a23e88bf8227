"""The continuous-batching engine on the tiny random LLaMA: requests join and leave a running batch,
seeds do not depend on the neighbours, adapters share one queue, stops, max_tokens, cancellation and
streaming."""
import contextlib
import time

import pytest

from baize.engine import BatchEngine, GenParams

GREEDY = {"temperature": 0.0, "top_p": 1.0}
# the random model's next-token distribution is nearly flat: with top_p < 1 the nucleus order among
# near-ties would hinge on float noise, so seeded sampling is checked over the whole vocabulary
SAMPLED = {"temperature": 1.0, "top_p": 1.0}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def engine(tiny):
    model, tok = tiny
    eng = BatchEngine(model, tok, max_batch=8, wait_s=0.01, eos_ids=())  # no eos: lengths are exact
    yield eng
    eng.close()


def ids(tok, text):
    return tok(text)["input_ids"]


def wait_tokens(req, n, timeout=30):
    deadline = time.monotonic() + timeout
    while len(req.tokens) < n and req.finish is None:
        assert time.monotonic() < deadline
        time.sleep(0.002)


def test_join_and_leave_mid_batch(engine, tiny):
    tok = tiny[1]
    long = engine.submit(ids(tok, "A long story about the sea and the ships."), GenParams(max_tokens=120, **GREEDY))
    wait_tokens(long, 5)
    short = engine.submit(ids(tok, "Hi"), GenParams(max_tokens=6, **GREEDY))
    c = short.result()
    assert (c.completion_tokens, c.finish_reason) == (6, "length")
    assert long.finish is None  # the short one joined the running batch and left before it
    assert engine.max_batch_seen >= 2
    assert long.result().completion_tokens == 120
    solo = engine.submit(ids(tok, "Hi"), GenParams(max_tokens=6, **GREEDY)).result()
    assert solo.text == c.text  # joining a batch of another length changes nothing


def test_seed_gives_the_same_text_in_any_batch(engine, tiny):
    tok = tiny[1]
    prompt = ids(tok, "Tell me about the moon.")
    alone = engine.submit(prompt, GenParams(max_tokens=24, **SAMPLED), row_seed=7).result()
    # now with neighbours: a long one already decoding (longer prompt), one joining later, one leaving early
    others = [engine.submit(ids(tok, "Some other, much longer question about rivers, lakes and the sea?"),
                            GenParams(max_tokens=60, **SAMPLED), row_seed=1)]
    wait_tokens(others[0], 4)
    mine = engine.submit(prompt, GenParams(max_tokens=24, **SAMPLED), row_seed=7)
    others.append(engine.submit(ids(tok, "x"), GenParams(max_tokens=3, **SAMPLED), row_seed=2))
    wait_tokens(mine, 8)
    others.append(engine.submit(ids(tok, "Why?"), GenParams(max_tokens=40, **GREEDY)))
    got = mine.result()
    assert got.text == alone.text and mine.tokens == engine_tokens(engine, prompt, 7)
    assert engine.max_batch_seen >= 3
    for o in others:
        o.result()
    other = engine.submit(prompt, GenParams(max_tokens=24, **SAMPLED), row_seed=8).result()
    assert other.text != alone.text


def engine_tokens(engine, prompt, seed):
    r = engine.submit(prompt, GenParams(max_tokens=24, **SAMPLED), row_seed=seed)
    r.result()
    return r.tokens


def test_adapters_mixed_in_one_queue(tiny_model_dir, tiny):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    tok = tiny[1]
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
    peft = get_peft_model(base, cfg, adapter_name="x")
    peft.add_adapter("y", cfg)
    peft.eval()
    active = []

    @contextlib.contextmanager
    def select(adapter):  # as baize.server does it
        active.append(adapter)
        if not adapter:
            with peft.disable_adapter():
                yield
        else:
            peft.base_model.set_adapter(list(adapter), inference_mode=True)
            yield

    eng = BatchEngine(peft, tok, max_batch=8, wait_s=0.05, eos_ids=(), select_adapter=select)
    try:
        prompt = ids(tok, "Tell me about the sea.")
        names = [None, ("x",), ("y",)]
        solo = {n: eng.submit(prompt, GenParams(max_tokens=10, **GREEDY), adapter=n).result().text for n in names}
        assert len(set(solo.values())) == 3  # the adapters really change the answer
        active.clear()
        reqs = [(n, eng.submit(prompt, GenParams(max_tokens=10 + 3 * i, **GREEDY), adapter=n))
                for i in range(2) for n in names]
        late = eng.submit(prompt, GenParams(max_tokens=10, **GREEDY), adapter=("x",))
        for n, r in reqs + [(("x",), late)]:
            assert r.result().text[:len(solo[n])] == solo[n]
        assert set(active) == set(names) and eng.max_batch_seen >= 2
    finally:
        eng.close()


def test_stop_strings_and_max_tokens(engine, tiny):
    tok = tiny[1]
    prompt = ids(tok, "Count to ten.")
    full = engine.submit(prompt, GenParams(max_tokens=30, **GREEDY)).result()
    assert (full.completion_tokens, full.finish_reason) == (30, "length")
    stop = full.text[len(full.text) // 2:len(full.text) // 2 + 3]
    r = engine.submit(prompt, GenParams(max_tokens=30, stop=[stop], **GREEDY))
    pieces = list(r.deltas())
    text = "".join(pieces)
    assert text == full.text[:full.text.find(stop)] and stop not in text
    assert r.finish == "stop" and len(r.tokens) < 30
    one = engine.submit(prompt, GenParams(max_tokens=1, **GREEDY)).result()
    assert one.completion_tokens == 1 and one.finish_reason == "length"


def test_cancel_mid_decode(engine, tiny):
    tok = tiny[1]
    keep = engine.submit(ids(tok, "Keep going."), GenParams(max_tokens=40, **GREEDY))
    gone = engine.submit(ids(tok, "Stop me."), GenParams(max_tokens=2000, **GREEDY))
    wait_tokens(gone, 5)
    gone.cancel()
    c = gone.result()
    assert c.finish_reason == "cancelled" and 5 <= c.completion_tokens < 2000
    assert keep.result().completion_tokens == 40
    assert keep.text == engine.submit(ids(tok, "Keep going."), GenParams(max_tokens=40, **GREEDY)).result().text
    # cancelled before it was ever admitted
    r = engine.submit(ids(tok, "never"), GenParams(max_tokens=5, **GREEDY))
    r.cancel()
    assert r.result().finish_reason in ("cancelled", "length")


def test_streaming_deltas(engine, tiny):
    tok = tiny[1]
    prompt = ids(tok, "Stream this.")
    text = engine.submit(prompt, GenParams(max_tokens=20, **SAMPLED), row_seed=3).result().text
    r = engine.submit(prompt, GenParams(max_tokens=20, **SAMPLED), row_seed=3)
    gen = r.deltas()
    pieces = []
    with contextlib.suppress(StopIteration):
        while True:
            pieces.append(next(gen))
    assert len(pieces) > 1 and "".join(pieces) == text
    # a consumer that goes away cancels its row
    r = engine.submit(prompt, GenParams(max_tokens=2000, **SAMPLED), row_seed=3)
    gen = r.deltas()
    next(gen)
    gen.close()
    deadline = time.monotonic() + 30
    while r.finish is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.finish == "cancelled" and len(r.tokens) < 2000
