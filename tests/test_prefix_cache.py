"""Prompt reuse for the local judge's reads (issue 30): the K/V of a shared token prefix are taken from
a bounded cache of recent prompts instead of computed again, and nothing the judge reads moves."""
import pytest

from baize.judge.check import check_items, load_pairs, shown
from baize.judge.modes import DebiasedMode, choose
from baize.llm.prefix_cache import PrefixCache

# measured on these prompts with the tiny fp32 model: largest |difference| 9.5e-7 nats
TOL = 1e-4


@pytest.fixture(scope="module")
def judges(tiny_model_dir):
    """The same tiny fp32 model read with prompt reuse (on) and without (off)."""
    from baize.llm.models import HFLLM, load_model
    model, tok = load_model(str(tiny_model_dir), dtype="float32")
    on = HFLLM("tiny", model=model, tokenizer=tok)
    off = HFLLM("tiny", model=model, tokenizer=tok, prefix_cache_mb=0)
    yield on, off
    on.close()
    off.close()


def _ids(llm, msgs, prefix="[["):
    return llm.format.encode(llm.format.render(msgs, add_generation_prompt=True) + prefix)


def _common(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _real_prompts():
    """judge-check's pair prompts in both orders (the shipped human pairs) and a ranking's rotations."""
    mode = DebiasedMode(None)
    pairs = []
    for item in check_items("tiny", "debiased", load_pairs("builtin", 3)):
        pairs.append(mode.pair_prompts(*shown(item)))
    p = load_pairs("builtin", 1)[0]
    ranks = [m for _, m in mode.rank_prompts(p.context, [p.chosen, p.rejected, "I do not know."])]
    return pairs, ranks


def test_reuse_gives_the_same_logprobs_and_verdicts_on_real_judge_prompts(judges):
    on, off = judges
    on.prefix_cache.clear()
    pairs, ranks = _real_prompts()
    asks = [("pair", m, 0) for ab_ba in pairs for m in ab_ba] + [("rank", m, 3) for m in ranks]
    asks += [("score", [pairs[0][0][0] | {"content": "Rate it."}, pairs[0][0][1]], 0)]  # "10": a two-token option
    worst = 0.0
    for kind, msgs, k in asks:
        before = on.prefix_cache.stats["reused"]
        got, want = choose(on, kind, msgs, k), choose(off, kind, msgs, k)
        assert got.splitlines()[1] == want.splitlines()[1]  # the verdict
        prefix = {"pair": "[[", "rank": "Ranking: [[", "score": "Rating: [["}[kind]
        opts = {"pair": ["A", "B", "C"], "rank": ["1", "2", "3"], "score": [str(i) for i in range(1, 11)]}[kind]
        a, b = on.option_logprobs(msgs, prefix, opts), off.option_logprobs(msgs, prefix, opts)
        worst = max(worst, *(abs(x - y) for x, y in zip(a, b)))
        if kind == "pair" and msgs is pairs[0][1]:  # BA after AB: system prompt, question, both reused
            ab, ba = _ids(on, pairs[0][0]), _ids(on, msgs)
            shared = _common(ab, ba)
            question = _ids(on, [msgs[0], msgs[1] | {"content": msgs[1]["content"].split("[The Start")[0]}], "")
            assert shared >= len(question) - 2  # the layout puts the shared part first
            assert on.prefix_cache.stats["reused"] - before >= shared
    print(f'largest log-prob difference with reuse: {worst:.2e}')
    assert worst < TOL
    s = on.prefix_cache.summary()
    assert s["hits"] >= len(asks) - 1 and s["saved"] > 0.3, s  # every read after the first reused a prefix
    assert off.prefix_cache.summary()["reused"] == 0 and len(off.prefix_cache) == 0


def test_a_stored_prefix_is_not_changed_by_a_later_read(judges):
    import torch
    on, _ = judges
    on.prefix_cache.clear()
    pairs, _ = _real_prompts()
    ab, ba = pairs[0]
    first = on.option_logprobs(ab, "[[", ["A", "B", "C"])
    (entry,) = on.prefix_cache._entries.values()
    kept = [(k.clone(), v.clone()) for k, v in entry.kv]
    on.option_logprobs(ba, "[[", ["A", "B", "C"])  # extends a copy of AB's shared part
    assert all(torch.equal(k, k2) and torch.equal(v, v2) for (k, v), (k2, v2) in zip(entry.kv, kept))
    again = on.option_logprobs(ab, "[[", ["A", "B", "C"])  # all but the last token reused
    assert again == pytest.approx(first, abs=TOL)
    assert on.prefix_cache.stats["reused"] >= len(_ids(on, ab)) - 1


def _fake(n_tokens, layers=2):
    """A DynamicCache as a forward pass over n_tokens leaves it: batch 1, 2 heads, head_dim 4."""
    import torch
    from transformers import DynamicCache
    return DynamicCache([(torch.randn(1, 2, n_tokens, 4), torch.randn(1, 2, n_tokens, 4)) for _ in range(layers)])


def test_eviction_keeps_the_bound_least_recently_used_first():
    one = 2 * 2 * (1 * 2 * 100 * 4) * 4  # bytes of a 100-token prompt: layers x (k, v) x elements x fp32
    pc = PrefixCache(max_mb=2.5 * one / 2 ** 20)
    a, b, c = ([t] * 100 for t in (1, 2, 3))
    pc.store(a, _fake(100))
    pc.store(b, _fake(100))
    assert pc.lookup(a + [9])[1] == 100  # a is now the most recently used
    pc.store(c, _fake(100))
    assert pc.bytes <= pc.max_bytes and len(pc) == 2 and pc.stats["evicted"] == 1
    assert pc.lookup(b + [9]) == (None, 0) and pc.lookup(a + [9])[1] == 100
    pc.store(list(range(1000)), _fake(1000))  # larger than the whole bound: not kept
    assert len(pc) == 2 and pc.bytes <= pc.max_bytes


def test_lookup_keeps_a_token_to_compute_and_copies():
    import torch
    pc = PrefixCache()
    stored = _fake(5)
    pc.store([1, 2, 3, 4, 5], stored)
    cache, n = pc.lookup([1, 2, 3, 4, 5])
    assert n == 4 and cache.get_seq_length() == 4  # the last position's logits must be computed
    cache.layers[0].keys.add_(1.0)  # even an in-place write into the copy leaves the stored one alone
    assert torch.equal(pc._entries[(1, 2, 3, 4, 5)].kv[0][0], stored.layers[0].keys)
    assert pc.lookup([1, 2, 7])[1] == 2 and pc.lookup([7, 1])[1] == 0
    pc.store([1, 2, 3, 4, 5, 6], _fake(6))  # extends the stored prompt: replaces it
    assert len(pc) == 1
    off = PrefixCache(0)
    off.store([1, 2, 3], _fake(3))
    assert len(off) == 0 and off.lookup([1, 2, 3]) == (None, 0)
    with pytest.raises(ValueError):
        PrefixCache(-1)


def test_n_samples_of_one_prompt_are_prefilled_once(judges):
    """SDF asks n candidates of one prompt: one prefill row, copied into n rows that sample apart."""
    from baize.llm.base import GenParams
    from baize.llm.engine import BatchEngine
    on, _ = judges
    prompt = on.prompt_ids([{"role": "user", "content": "Name three rivers."}])
    params = GenParams(1.0, 1.0, 6, [], None)

    def engine(prefills):
        eng = BatchEngine(on.model, on.tokenizer, max_batch=8, wait_s=0.5, eos_ids=())  # one burst, one batch
        forward = eng._forward

        def counted(adapter, cache, **kw):
            if kw["input_ids"].shape[1] > 1:
                prefills.append(tuple(kw["input_ids"].shape))
            return forward(adapter, cache, **kw)
        eng._forward = counted
        return eng

    prefills = []
    eng = engine(prefills)
    together = [r.result().text for r in [eng.submit(prompt, params, 7 + i) for i in range(4)]]
    eng.close()
    assert prefills == [(1, len(prompt))]
    alone = []
    for i in range(4):  # each seeded row alone: the copied rows sample as a row of their own would
        eng = engine([])
        alone.append(eng.submit(prompt, params, 7 + i).result().text)
        eng.close()
    assert together == alone and len(set(together)) > 1


def test_the_judge_prefix_cache_flag_sizes_a_local_judges_cache(tiny_model_dir):
    """--judge-prefix-cache-mb (every stage with a judge) reaches the local judge: 0 stores nothing."""
    from baize.eval.evaluate import EvalConfig
    from baize.llm.models import load_endpoint
    for mb, stored in ((0, 0), (64, 1)):
        cfg = EvalConfig(judge=str(tiny_model_dir), judge_prefix_cache_mb=mb)
        llm = load_endpoint(cfg.judge, cfg, judge=True)
        try:
            assert llm.prefix_cache.max_bytes == mb * 2 ** 20
            llm.option_logprobs([{"role": "user", "content": "Rate this."}], "Rating: [[", ["1", "10"])
            assert len(llm.prefix_cache) == stored
        finally:
            llm.close()
