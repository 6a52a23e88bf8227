"""Prompt reuse for the local judge (issue 30): the same judge reads with the prefix cache off, then
on, in one run and one process (the model loaded once, one warm-up read before both).

The workload is judge-check's: its pairs (check_items, half shown chosen-first) judged in both orders
by Judge.pair in the judge's mode (auto: debiased for a local judge), `--concurrency` at a time as
judge-check's runner does, no judge cache. With --eval-dir (a main job's eval/ directory, e.g.
demo/eval after `baize pipeline`), also that eval's judge reads: every pair of models in both orders
and every 1-10 score, rebuilt from its answers/ and eval.config.json as evaluate.py asks them; with
--sdf-dir (demo/), SDF's rankings of its candidates (sdf.jsonl, sdf.rejected.jsonl), all rotations.

Prints and writes (bench/results/judge_prefix.json): prompt tokens read and computed, wall time and
the off/on ratio, the lookups' own time, the largest log-prob difference and the verdicts that
changed, and the CPU flags.

    nice python bench/judge_prefix.py --limit 20                      # a quick check
    python bench/judge_prefix.py --limit 150 --eval-dir demo/eval --sdf-dir demo   # the issue's figures
    python bench/judge_prefix.py --tokens-only ...                     # the tokens saved, no model run
"""
import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from baize.judge.check import check_items, load_pairs, shown
from baize.judge.core import Judge
from baize.judge.modes import logprobs_of
from baize.llm.models import load_llm
from baize.llm.prefix_cache import PrefixCache
from baize.schema import read_jsonl
from baize.train.speedups import cpu_info


def eval_asks(eval_dir: Path) -> list[tuple]:
    """A finished eval's judge reads: ("pair", ctx, a, b) and ("score", ctx, answer, reference)."""
    from baize.eval.evaluate import (
        EvalConfig,
        _pairs,
        _questions,
        pair_args,
        pair_items,
        parse_models,
        score_args,
        score_items,
    )
    raw = json.loads((eval_dir / "eval.config.json").read_text())
    cfg = EvalConfig(**{k: v for k, v in raw.items() if k in EvalConfig.__dataclass_fields__})
    names = list(parse_models(cfg.models))
    answers = {}
    for n in names:
        answers[n] = {r["meta"]["question_id"]: [m["content"] for m in r["messages"] if m["role"] == "assistant"]
                      for r in read_jsonl(eval_dir / "answers" / f"{n}.jsonl")}
    qs = _questions(cfg)
    asks = []
    if cfg.pairwise:
        asks += [("pair", *pair_args(it)) for it in pair_items(cfg.judge, _pairs(cfg, names), qs, answers)]
    if cfg.single:
        asks += [("score", *score_args(it)) for it in score_items(cfg.judge, names, qs, answers)]
    return asks


def sdf_asks(sdf_dir: Path) -> list[tuple]:
    """A finished SDF's rankings: ("rank", context, candidates), from sdf.jsonl and sdf.rejected.jsonl."""
    asks = []
    for name in ("sdf.jsonl", "sdf.rejected.jsonl"):
        for r in read_jsonl(sdf_dir / name) if (sdf_dir / name).exists() else []:
            cands = [c["text"] for c in r["meta"].get("candidates", [])]
            msgs = r["messages"][:-1] if r["messages"][-1]["role"] == "assistant" else r["messages"]
            if len(cands) >= 2:
                asks.append(("rank", msgs, cands))
    return asks


def run(llm, asks: list[tuple], mb: float, concurrency: int) -> dict:
    llm.prefix_cache = PrefixCache(mb)
    judge = Judge(llm, cache_dir=None)

    def one(ask):
        kind, *args = ask
        if kind == "rank":
            v = judge.rank(*args)
            return {"raw": v.raw, "verdict": v.order}
        v = judge.pair(*args) if kind == "pair" else judge.score(*args)
        return {"raw": v.raw, "verdict": v.winner if kind == "pair" else v.value}

    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        rows = list(pool.map(one, asks))
    s = llm.prefix_cache.summary()
    return {"seconds": round(time.monotonic() - t0, 1), "prompt_tokens": s["tokens"], "computed": s["computed"],
            "reused": s["reused"], "saved": s["saved"], "lookup_s": s["lookup_s"], "hits": s["hits"],
            "reads": s["reads"], "evicted": s["evicted"], "mode": judge.mode, "rows": rows}


def tokens_only(llm, asks: list[tuple], mb: float) -> dict:
    """The prompt tokens reuse would save, without a forward pass: each read in turn (pair: both
    orders back to back), stored as K/V of the model's real size so the memory bound applies."""
    import torch
    from transformers import DynamicCache

    from baize.judge.modes import DebiasedMode
    cfg = llm.model.config
    heads, dim = cfg.num_key_value_heads, getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    pc, mode = PrefixCache(mb), DebiasedMode(None)
    for kind, *args in asks:
        prompts = (mode.pair_prompts(*args) if kind == "pair" else [mode.score_prompt(*args)] if kind == "score"
                   else [m for _, m in mode.rank_prompts(*args)])
        for msgs in prompts:
            ids = llm.format.encode(llm.format.render(llm._with_system(msgs), add_generation_prompt=True)
                                    + {"pair": "[[", "score": "Rating: [[", "rank": "Ranking: [["}[kind])
            pc.lookup(ids)
            pc.store(ids, DynamicCache([(torch.empty(1, heads, len(ids), dim, dtype=llm.model.dtype),) * 2
                                        for _ in range(cfg.num_hidden_layers)]))
    return pc.summary()


def compare(name: str, asks, llm, a) -> dict:
    if a.tokens_only:
        s = tokens_only(llm, asks, a.mb)
        print(f"{name}: {len(asks)} items, {s['reads']} reads; prompt tokens read {s['tokens']:,}, computed with "
              f"reuse {s['computed']:,} ({s['saved']:.1%} reused; no forward pass run)", flush=True)
        return {"items": len(asks), "tokens_only": s}
    off = run(llm, asks, 0, a.concurrency)
    on = run(llm, asks, a.mb, a.concurrency)
    worst, changed = 0.0, 0
    for x, y in zip(off.pop("rows"), on.pop("rows")):
        changed += x["verdict"] != y["verdict"]
        for rx, ry in zip(x["raw"], y["raw"]):
            lx, ly = logprobs_of(rx), logprobs_of(ry)
            worst = max([worst] + [abs(lx[k] - ly[k]) for k in lx])
    # the judge's record rounds each log-prob to 4 decimals: 1e-4 here is one rounding step
    res = {"items": len(asks), "off": off, "on": on, "speedup": round(off["seconds"] / max(on["seconds"], 1e-9), 2),
           "max_logprob_diff": round(worst, 6), "verdicts_changed": changed}
    print(f"{name}: {len(asks)} items, {on['reads']} reads ({on['mode']}); prompt tokens read {on['prompt_tokens']:,}, "
          f"computed {off['computed']:,} off / {on['computed']:,} on ({on['saved']:.1%} reused); "
          f"{off['seconds']} s off / {on['seconds']} s on = {res['speedup']}x; lookups {on['lookup_s']} s; "
          f"largest log-prob difference {worst:.2e} (the record keeps 4 decimals), "
          f"verdicts changed {changed} of {len(asks)}", flush=True)
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--judge", default="default")
    p.add_argument("--pairs", default="builtin")
    p.add_argument("--limit", type=int, default=150)
    p.add_argument("--eval-dir", default=None, help="a main job's eval/ directory: its judge reads too")
    p.add_argument("--sdf-dir", default=None, help="a main job's directory with sdf.jsonl: its rankings too")
    p.add_argument("--concurrency", type=int, default=8, help="judge-check's and eval's default")
    p.add_argument("--mb", type=float, default=None, help="prefix cache size (default: HFLLM's)")
    p.add_argument("--tokens-only", action="store_true", help="count the tokens reuse saves; run no forward pass")
    p.add_argument("--out", default="bench/results/judge_prefix.json")
    a = p.parse_args()
    cpu = cpu_info()
    import torch
    print(f"CPU {cpu['model']} ({' '.join(cpu['flags'])}), {cpu['cpus']} CPUs; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}", flush=True)
    llm = load_llm(a.judge, max_batch=2 * a.concurrency)
    a.mb = llm.prefix_cache.max_bytes / 2 ** 20 if a.mb is None else a.mb
    if not a.tokens_only:
        llm.option_logprobs([{"role": "user", "content": "warm up"}], "[[", ["A"])
    asks = [("pair", *shown(it)) for it in check_items(llm.name, "debiased", load_pairs(a.pairs, a.limit))]
    res = {"judge": a.judge, "dtype": str(llm.model.dtype), "cache_mb": a.mb, "concurrency": a.concurrency,
           "cpu": cpu, "load_average": round(os.getloadavg()[0], 2), "judge_check": compare(
               f"judge-check ({a.pairs}, {len(asks)} pairs)", asks, llm, a)}
    if a.eval_dir:
        res["eval"] = compare(f"eval ({a.eval_dir})", eval_asks(Path(a.eval_dir)), llm, a)
        res["eval"]["dir"] = a.eval_dir
    if a.sdf_dir:
        res["sdf"] = compare(f"sdf ({a.sdf_dir})", sdf_asks(Path(a.sdf_dir)), llm, a)
        res["sdf"]["dir"] = a.sdf_dir
    llm.close()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
