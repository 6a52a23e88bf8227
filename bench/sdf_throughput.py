#!/usr/bin/env python
"""SDF throughput, in one run: sampling candidates and judging them.

  sampling, on the embedded default as the policy (SmolLM2-135M on this CPU), the same 32 Quora
  prompts and 4 candidates each:
    (a) one request at a time: each candidate is its own `llm.chat(n=1)` call, waited for before the next;
    (b) `baize sdf`'s sampling: `sdf.sdf(...)` with --concurrency 8 (so up to 32 rows batched by the
        engine), judged by an instant fake judge so that the time is the policy's.
  judging, against a fake OpenAI-compatible judge with a fixed latency per call (its own process):
    (c) judge calls one at a time (`Judge.rank` in a loop);
    (d) `sdf.sdf(...)` with --concurrency 64 and an instant fake policy.

Targets: (b)/(a) >= 3x; (d)/(c) >= 50x.
    python bench/sdf_throughput.py [--prompts 32] [--n 4] [--max-tokens 64] [--latency 0.3] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def instant_judge(k_seen: list):
    """Ranks as given, instantly: the sampling runs measure the policy alone."""
    from baize.testing import FakeLLM

    def reply(messages):
        text = messages[-1]["content"]
        k = sum(f"[[{i}]]" in text for i in range(1, 17))
        k_seen.append(k)
        return "Ranking: " + " > ".join(f"[[{i}]]" for i in range(1, k + 1))
    return FakeLLM(reply, name="instant-judge")


def sampling(args, out_dir: Path) -> dict:
    from baize.llm.models import load_llm
    from baize.sdf import SDFConfig, load_prompts, sdf
    prompts = load_prompts("quora", limit=args.prompts)
    policy = load_llm("default", max_batch=64)
    policy.chat([{"role": "user", "content": "Hello"}], max_tokens=8, seed=0)  # warm-up
    # (a) one request at a time
    t0 = time.perf_counter()
    tok_a = 0
    for p in prompts:
        for i in range(args.n):
            c = policy.chat(p.context, n=1, temperature=1.0, top_p=0.95, max_tokens=args.max_tokens, seed=i)[0]
            tok_a += c.completion_tokens
    sec_a = time.perf_counter() - t0
    # (b) baize sdf's sampling
    cfg = SDFConfig(policy="default", judge="fake", prompts="quora", limit=args.prompts, n=args.n,
                    max_tokens=args.max_tokens, concurrency=args.concurrency, out=str(out_dir / "sdf.jsonl"),
                    judge_cache="none", progress=False)
    t0 = time.perf_counter()
    s, prefs = sdf(cfg, policy=policy, judge_llm=instant_judge([]))
    sec_b = time.perf_counter() - t0
    tok_b = s.ledger["policy"]["completion_tokens"]
    policy.engine.close()
    return {"candidates": len(prompts) * args.n, "max_tokens": args.max_tokens,
            "a_one_at_a_time": {"seconds": round(sec_a, 1), "tokens": tok_a, "tokens_per_s": round(tok_a / sec_a, 1),
                                "candidates_per_s": round(len(prompts) * args.n / sec_a, 3)},
            "b_baize_sdf": {"seconds": round(sec_b, 1), "tokens": tok_b, "tokens_per_s": round(tok_b / sec_b, 1),
                            "candidates_per_s": round(len(prompts) * args.n / sec_b, 3), "kept": s.kept,
                            "rejected": s.rejected, "concurrency": args.concurrency},
            "ratio_tokens_per_s": round((tok_b / sec_b) / (tok_a / sec_a), 2),
            "ratio_candidates_per_s": round(sec_a / sec_b, 2)}


def judging(args, out_dir: Path) -> dict:
    from collect_throughput import start_fake_teacher

    from baize.judge.core import Judge
    from baize.llm.models import load_llm
    from baize.sdf import SDFConfig, load_prompts, sdf
    from baize.testing import FakeLLM
    proc, url = start_fake_teacher(args.latency)
    try:
        judge_llm = load_llm("openai:fake-judge", base_url=url, api_key="x")
        prompts = load_prompts("quora", limit=args.judge_prompts)
        answers = [f"answer {i}" for i in range(args.n)]
        # (c) one judge call at a time (no cache: every call goes to the judge)
        judge = Judge(judge_llm, cache_dir=None, orders=2, max_unparseable=10 ** 9)
        seq = prompts[:args.seq_prompts]
        t0 = time.perf_counter()
        for p in seq:
            judge.rank(p.context, [f"{a} to {p.id}" for a in answers])
        sec_c = time.perf_counter() - t0
        calls_c = judge.usage["calls"]
        # (d) baize sdf with --concurrency 64 and an instant policy; the fake judge (baize.testing's
        # default_reply) answers every ranking prompt with a parseable verdict, so each ranking is one
        # call per order (2) and never a format reminder: 300 prompts, 600 calls
        cands = iter(range(10 ** 9))
        policy = FakeLLM(lambda m: f"candidate {next(cands)}", name="instant-policy")
        cfg = SDFConfig(policy="instant-policy", judge="openai:fake-judge", judge_base_url=url, prompts="quora",
                        limit=args.judge_prompts, n=args.n, concurrency=64, out=str(out_dir / "judged.jsonl"),
                        judge_cache="none", max_unparseable=10 ** 9, progress=False)
        t0 = time.perf_counter()
        s, _ = sdf(cfg, policy=policy, judge_llm=judge_llm)
        sec_d = time.perf_counter() - t0
        calls_d = s.ledger["judge"]["calls"]
    finally:
        proc.kill()
    return {"latency_s": args.latency,
            "c_sequential": {"prompts": len(seq), "calls": calls_c, "seconds": round(sec_c, 2),
                             "calls_per_s": round(calls_c / sec_c, 2)},
            "d_baize_sdf_conc64": {"prompts": args.judge_prompts, "calls": calls_d, "seconds": round(sec_d, 2),
                                   "calls_per_s": round(calls_d / sec_d, 2)},
            "ratio": round((calls_d / sec_d) / (calls_c / sec_c), 1),
            "bound_calls_per_s": round(64 / args.latency, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--latency", type=float, default=0.3)
    ap.add_argument("--judge-prompts", type=int, default=300)
    ap.add_argument("--seq-prompts", type=int, default=10)
    ap.add_argument("--skip-sampling", action="store_true")
    ap.add_argument("--json", default=str(HERE / "results" / "sdf_throughput.json"))
    args = ap.parse_args()
    import torch

    from baize.train.speedups import cpu_info
    res = {"machine": {"cpu_flags": " ".join(cpu_info()["flags"]) or "unknown", "cores": os.cpu_count(),
                       "torch_threads": torch.get_num_threads(),
                       "python": platform.python_version(), "load_avg": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as d:
        res["judging"] = judging(args, Path(d))
        j = res["judging"]
        print(f"judging (fake judge, {args.latency}s per call): one at a time {j['c_sequential']['calls_per_s']} calls/s, "
              f"baize sdf --concurrency 64 {j['d_baize_sdf_conc64']['calls_per_s']} calls/s: {j['ratio']}x "
              f"(bound {j['bound_calls_per_s']}/s)", flush=True)
        if not args.skip_sampling:
            res["sampling"] = sampling(args, Path(d))
            s = res["sampling"]
            print(f"sampling ({s['candidates']} candidates, <= {args.max_tokens} tokens, embedded default, "
                  f"CPU {res['machine']['cpu_flags']}): one at a time {s['a_one_at_a_time']['tokens_per_s']} tok/s "
                  f"({s['a_one_at_a_time']['seconds']} s), baize sdf {s['b_baize_sdf']['tokens_per_s']} tok/s "
                  f"({s['b_baize_sdf']['seconds']} s): {s['ratio_tokens_per_s']}x tokens/s, "
                  f"{s['ratio_candidates_per_s']}x wall time", flush=True)
    res["load_avg_after"] = os.getloadavg()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
