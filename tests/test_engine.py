"""The continuous-batching engine on the tiny random LLaMA: requests join and leave a running batch,
seeds do not depend on the neighbours, adapters share one queue, stops, max_tokens, cancellation and
streaming."""
import contextlib
import threading
import time

import pytest

from baize.llm.base import GenParams
from baize.llm.engine import BatchEngine

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
    def select(adapter):  # as baize.serve.loading does it
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


def test_text_is_the_full_decode_of_the_tokens(engine, tiny):
    """The reply is detokenized a window at a time; sampled over the whole random vocabulary (odd byte
    pieces, half characters), it must still equal decoding all its tokens at once."""
    tok = tiny[1]
    for seed in range(4):
        r = engine.submit(ids(tok, "Ünïcödé, 日本語 and emoji 🙂."), GenParams(max_tokens=60, **SAMPLED), row_seed=seed)
        c = r.result()
        assert c.text == tok.decode(r.tokens, skip_special_tokens=True)
        assert c.completion_tokens == 60


def test_other_model_work_runs_on_the_engine_thread_between_steps(engine, tiny):
    tok = tiny[1]
    long = engine.submit(ids(tok, "A long story."), GenParams(max_tokens=80, **GREEDY))
    wait_tokens(long, 3)
    seen = []

    def job():
        seen.append((threading.current_thread().name, len(long.tokens), long.finish))
        return 42
    assert engine.call(job) == 42
    name, at, finish = seen[0]
    assert name == "baize-engine" and 3 <= at < 80 and finish is None  # ran while the row was decoding
    with pytest.raises(ZeroDivisionError):  # the job's error reaches the caller; the engine goes on
        engine.call(lambda: 1 / 0)
    assert long.result().completion_tokens == 80
    assert engine.call(lambda: "idle") == "idle"  # and with nothing decoding


def test_growing_cache_gives_the_logits_of_dynamic_cache(tiny):
    """The engine's cache writes each step in place into spare room; through growth past that room,
    a pruned row and a trimmed column it must give what transformers' DynamicCache gives."""
    import torch
    from transformers import DynamicCache

    from baize.llm.engine import cache_kwarg, growing_cache
    model, _ = tiny
    kw = cache_kwarg(model)
    torch.manual_seed(0)
    ids = torch.randint(5, 200, (3, 9))
    caches = [growing_cache(), DynamicCache()]
    outs = [[], []]
    with torch.inference_mode():
        for c, o in zip(caches, outs):
            o.append(model(input_ids=ids, use_cache=True, **{kw: c}).logits[:, -1])
        for step in range(140):  # past the 128 positions of room the first buffer has
            nxt = torch.randint(5, 200, (ids.shape[0], 1))
            if step == 60:  # a row leaves
                for c in caches:
                    c.batch_select_indices(torch.tensor([0, 2]))
                ids = ids[[0, 2]]
                nxt = nxt[[0, 2]]
            if step == 90:  # the leading column goes (as the engine trims padding)
                for c in caches:
                    for layer in c.layers:
                        layer.keys, layer.values = layer.keys[:, :, 1:], layer.values[:, :, 1:]
            for c, o in zip(caches, outs):
                o.append(model(input_ids=nxt, use_cache=True, **{kw: c}).logits[:, -1])
    assert caches[0].get_seq_length() == caches[1].get_seq_length() == 9 + 140 - 1
    assert type(caches[0].layers[0]).__name__ == "GrowingLayer"
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)


def test_prefill_is_sliced_and_grouped_by_length(tiny):
    """A burst of prompts is prefilled a slice at a time (decode steps of the running rows between the
    slices), in batches of similar length; a short prompt may pass a long one that does not fit."""
    from baize.llm.engine import _similar_lengths
    model, tok = tiny

    class R:
        def __init__(self, n):
            self.prompt_ids = [1] * n
    groups = _similar_lengths([R(n) for n in (400, 30, 410, 32, 35)])
    assert [[len(r.prompt_ids) for r in g] for g in groups] == [[30, 32, 35], [400, 410]]
    eng = BatchEngine(model, tok, max_batch=8, wait_s=0.01, eos_ids=(), prefill_tokens=60)
    try:
        running = eng.submit(ids(tok, "A long story."), GenParams(max_tokens=150, **GREEDY))
        wait_tokens(running, 2)
        seen = []
        run = eng._run

        def spy(batch):
            seen.append((len(running.tokens), [len(r.prompt_ids) for r in batch]))
            return run(batch)
        eng._run = spy
        gate = threading.Event()  # hold the engine thread so the burst arrives as one
        held = threading.Thread(target=eng.call, args=(gate.wait,))
        held.start()
        burst = [eng.submit([7] * n, GenParams(max_tokens=3, **GREEDY)) for n in (50, 50, 80, 10)]
        gate.set()
        for r in burst:
            r.result()
        held.join()
        order = [n for _, b in seen for n in b]
        assert sorted(order) == [10, 50, 50, 80] and order.index(10) < order.index(80)  # it passed the 80
        assert all(len(b) == 1 for _, b in seen)  # 10 and 50: too unequal to share a padded batch
        steps = [t for t, _ in seen]
        assert steps == sorted(steps) and len(set(steps)) == 3  # slices 50+10, 50, 80; decode between
        assert running.result().completion_tokens == 150
    finally:
        eng.close()


def test_merged_and_pruned_rows_see_the_logits_of_a_plain_cache(tiny, monkeypatch):
    """The engine's batch surgery (prompts of other lengths prefilled apart and merged, rows leaving,
    padding trimmed) on its in-place cache gives the logits it gives on transformers' DynamicCache.
    Logits, not text: on the tiny random model sampled text hardly depends on them. The tokens fed
    are fixed, so both runs do exactly the same work."""
    import itertools

    import torch
    from transformers import DynamicCache

    import baize.llm.engine as E
    model, tok = tiny

    def run(cache_factory):
        seen, counter, late = [], itertools.count(), []

        class FixedTokens:  # records the scores, feeds tokens that do not depend on them
            def __init__(self, params, gens, device):
                pass

            def __call__(self, scores):
                seen.append(scores.clone())
                i = next(counter)
                if i == 20:  # from the engine thread: the late one joins at the same step in both runs
                    late.append(eng.submit([9] * 70, GenParams(max_tokens=40, **GREEDY)))  # longer than all
                return torch.full((scores.shape[0],), 10 + i % 50, dtype=torch.long)
        monkeypatch.setattr(E, "RowSampler", FixedTokens)
        monkeypatch.setattr(E, "growing_cache", cache_factory)
        eng = BatchEngine(model, tok, max_batch=8, wait_s=0.01, eos_ids=(), prefill_tokens=10_000)
        try:
            gate = threading.Event()
            held = threading.Thread(target=eng.call, args=(gate.wait,))
            held.start()
            first = [eng.submit([5 + i] * n, GenParams(max_tokens=m, **GREEDY)) for i, (n, m) in
                     enumerate([(40, 150), (6, 30), (8, 60)])]  # apart: too unequal to share padding
            gate.set()
            for r in first:
                r.result()
            late[0].result()
            held.join()
        finally:
            eng.close()
        return seen

    growing = E.growing_cache  # before run() patches it
    plain, grown = run(DynamicCache), run(growing)
    assert len(plain) == len(grown) > 150
    for a, b in zip(plain, grown):
        torch.testing.assert_close(a, b)


def test_packed_linears_agree_with_plain_ones_and_step_aside_for_training(tiny_model_dir, tiny):
    """The engine runs its model's linears on prepacked oneDNN weights (llm/packing.py): the logits
    agree with plain F.linear to float rounding, training (grad enabled) gets plain F.linear and its
    gradients, and a weight changed in place is packed again, not served stale."""
    import torch
    from transformers import AutoModelForCausalLM

    from baize.llm.packing import _Packed, pack_linears, unpack_linears
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()  # its own: packing mutates it
    torch.manual_seed(0)
    ids = torch.randint(5, 500, (3, 11))
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
    eng = BatchEngine(model, tiny[1], eos_ids=())
    eng.close()
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert linears and all(isinstance(m.__dict__.get("forward"), _Packed) for m in linears)
    with torch.inference_mode():
        packed = model(input_ids=ids).logits
    torch.testing.assert_close(packed, plain, rtol=1e-4, atol=1e-5)
    assert model(input_ids=ids).logits.requires_grad  # grad enabled: the plain path, differentiable
    proj = linears[0]
    with torch.no_grad():
        proj.weight.mul_(2)
        x = torch.randn(4, proj.in_features)
        torch.testing.assert_close(proj(x), torch.nn.functional.linear(x, proj.weight, proj.bias))
    unpack_linears(model)
    assert not any("forward" in m.__dict__ for m in linears)
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # bf16 weights are packed too where the CPU has bf16
        model.bfloat16()
        with torch.inference_mode():
            plain = model(input_ids=ids).logits
            assert pack_linears(model) == len(linears)
            torch.testing.assert_close(model(input_ids=ids).logits, plain)


def test_greedy_engine_tokens_are_those_of_generate(tiny):
    """Greedy decoding through the engine (prompts of different lengths batched, left padding, the
    packed linears, the in-place cache) gives model.generate's tokens for each prompt alone."""
    import torch
    model, tok = tiny
    prompts = [ids(tok, t) for t in ("Tell me about the sea.", "Hi", "Why is the sky blue? Explain it to a child.")]
    eng = BatchEngine(model, tok, max_batch=8, wait_s=0.05, eos_ids=())
    try:
        reqs = [eng.submit(p, GenParams(max_tokens=24, **GREEDY)) for p in prompts]
        got = [r.result() and r.tokens for r in reqs]
    finally:
        eng.close()
    assert eng.max_batch_seen == 3
    for p, toks in zip(prompts, got):
        with torch.no_grad():
            out = model.generate(torch.tensor([p]), max_new_tokens=24, min_new_tokens=24, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        assert toks == out[0, len(p):].tolist()
