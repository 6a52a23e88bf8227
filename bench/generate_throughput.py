"""Local generation throughput: 64 requests (prompts 30-400 tokens, 16-256 new tokens each, seeded)
(a) through `model.generate` one at a time, (b) through the engine all submitted at once, and (c) through
the engine with Poisson arrivals. Prints aggregate generated tokens/s, time to first token p50/p95 and
the (b)/(a) ratio; writes bench/results/generate_throughput.json with the CPU flags and load average.

    python bench/generate_throughput.py                 # the embedded default model, all three modes
    python bench/generate_throughput.py --skip-a        # the engine only
    python bench/generate_throughput.py --ideas         # also: threads / bf16 / attention kernel / compile

Every request generates exactly its max tokens (eos ignored: min_new_tokens in generate, no eos ids in
the engine), so all modes do the same work. Sampling: temperature 1, top-p 0.95, one seed per request.
(c)'s arrival rate defaults to 0.7x (b)'s completed requests per second: loaded but not saturated.
"""
import argparse
import json
import os
import random
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TEXT = ("The river runs past the old mill, where the miller kept his accounts in a leather book. Each spring "
        "the water rose and the village argued about the weir, the fish, the price of flour and the new road. ")


def cpu_flags():
    try:
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split(":")[1].split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma")))


def workload(tok, n=64, seed=0):
    rng = random.Random(seed)
    base = tok(TEXT * 40)["input_ids"]
    out = []
    for i in range(n):
        plen, mt = rng.randint(30, 400), rng.randint(16, 256)
        off = rng.randrange(0, len(base) - plen)
        out.append((base[off:off + plen], mt, 1000 + i))
    return out


def pct(xs, q):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3)


def summary(name, wall, tokens, ttfts, **extra):
    return {"mode": name, "requests": len(ttfts), "wall_s": round(wall, 2), "tokens": tokens,
            "tokens_per_s": round(tokens / wall, 1), "ttft_p50_s": pct(ttfts, 0.5), "ttft_p95_s": pct(ttfts, 0.95),
            "load_average": round(os.getloadavg()[0], 2), **extra}


def sequential(model, tok, work):
    """(a) model.generate, one request at a time; TTFT from the start of its own call."""
    import torch
    from transformers import GenerationConfig

    class First:
        def __init__(self):
            self.calls, self.t = 0, None

        def put(self, v):
            self.calls += 1
            if self.calls == 2 and self.t is None:  # the first put is the prompt
                self.t = time.perf_counter()

        def end(self):
            pass

    ttfts, tokens = [], 0
    t0 = time.perf_counter()
    for ids, mt, seed in work:
        torch.manual_seed(seed)
        cfg = GenerationConfig(do_sample=True, temperature=1.0, top_p=0.95, top_k=0, max_new_tokens=mt,
                               min_new_tokens=mt, pad_token_id=tok.pad_token_id or tok.eos_token_id)
        s, first = time.perf_counter(), First()
        with torch.inference_mode():
            out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 generation_config=cfg, streamer=first)
        ttfts.append(first.t - s)
        tokens += out.shape[1] - len(ids)
    return summary("a: model.generate one at a time", time.perf_counter() - t0, tokens, ttfts)


def through_engine(engine, work, arrivals=None):
    """(b) all submitted at once (arrivals None) or (c) submitted at the given times; TTFT from submission."""
    from baize.engine import GenParams
    ttfts, done = [None] * len(work), [0] * len(work)

    def consume(i, req, s):
        for _ in req.deltas():
            if ttfts[i] is None:
                ttfts[i] = time.perf_counter() - s
        done[i] = len(req.tokens)

    threads = []
    t0 = time.perf_counter()
    for i, (ids, mt, seed) in enumerate(work):
        if arrivals is not None:
            time.sleep(max(0.0, t0 + arrivals[i] - time.perf_counter()))
        s = time.perf_counter()
        req = engine.submit(ids, GenParams(temperature=1.0, top_p=0.95, max_tokens=mt), row_seed=seed)
        th = threading.Thread(target=consume, args=(i, req, s), daemon=True)
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    name = "b: engine, all at once" if arrivals is None else "c: engine, Poisson arrivals"
    return summary(name, wall, sum(done), [t or 0.0 for t in ttfts], max_batch_seen=engine.max_batch_seen,
                   prefills=engine.batches_run)


def make_engine(model, tok, max_batch):
    from baize.engine import BatchEngine
    return BatchEngine(model, tok, max_batch=max_batch, wait_s=0.02, eos_ids=())


def ideas(spec, args):
    """Each 'use the machine' idea on a small engine workload (16 requests at once), same run."""
    import torch

    from baize import models
    rows = []
    small = lambda tok: [(ids[:120], 48, seed) for ids, _, seed in workload(tok, 16, seed=1)]
    base_threads = torch.get_num_threads()

    def trial(label, dtype=None, attn=None, threads=None, compile_=False):
        if threads:
            torch.set_num_threads(threads)
        try:
            model, tok = models.load_model(models.resolve(spec), dtype=dtype)
            if attn:
                model.set_attn_implementation(attn)
            if compile_:
                model.forward = torch.compile(model.forward, dynamic=True)
            eng = make_engine(model, tok, 16)
            through_engine(eng, small(tok)[:2])  # warm up (compiles)
            t = time.perf_counter()
            r = through_engine(eng, small(tok))
            eng.close()
            rows.append({"idea": label, "tokens_per_s": r["tokens_per_s"], "wall_s": round(time.perf_counter() - t, 2),
                         "load_average": round(os.getloadavg()[0], 2)})
        except Exception as e:  # report, do not stop the benchmark
            rows.append({"idea": label, "error": f"{type(e).__name__}: {e}"[:300]})
        finally:
            torch.set_num_threads(base_threads)
        print("  ", rows[-1], flush=True)

    trial(f"baseline: fp32, sdpa, {base_threads} threads")
    trial("1 thread", threads=1)
    trial("bf16 weights (AMX)", dtype="bfloat16")
    trial("eager attention", attn="eager")
    if args.compile:
        trial("torch.compile(forward, dynamic)", compile_=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--rate", type=float, default=0.0, help="(c) arrivals per second (0: 0.7x what (b) served)")
    p.add_argument("--skip-a", action="store_true", help="skip the slow one-at-a-time baseline")
    p.add_argument("--ideas", action="store_true")
    p.add_argument("--compile", action="store_true", help="with --ideas: also try torch.compile")
    p.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "generate_throughput.json"))
    args = p.parse_args()

    import torch
    import transformers

    from baize import models
    model, tok = models.load_model(models.resolve(args.model))
    work = workload(tok, args.requests)
    res = {"model": args.model, "torch": torch.__version__, "transformers": transformers.__version__,
           "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "cpu_flags": cpu_flags(),
           "load_average_start": [round(x, 2) for x in os.getloadavg()],
           "workload": {"requests": len(work), "prompt_tokens": sum(len(w[0]) for w in work),
                        "new_tokens": sum(w[1] for w in work), "prompt_range": [30, 400], "max_tokens_range": [16, 256],
                        "sampling": "temperature 1, top-p 0.95, seeded, eos ignored"}}
    print(f"model {args.model}; torch {torch.__version__}, {res['threads']} threads, {res['cpus']} CPUs, "
          f"load average {res['load_average_start']}; {len(work)} requests, {res['workload']['prompt_tokens']} "
          f"prompt tokens, {res['workload']['new_tokens']} new tokens", flush=True)
    def save():  # after every mode: a long run cut short keeps what it measured
        res["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")

    eng = make_engine(model, tok, args.max_batch)
    through_engine(eng, work[:2])  # warm up
    eng.max_batch_seen = eng.batches_run = 0
    res["b"] = through_engine(eng, work)
    print(res["b"], flush=True)
    save()
    rate = args.rate or 0.7 * len(work) / res["b"]["wall_s"]
    rng = random.Random(1)
    t, arrivals = 0.0, []
    for _ in work:
        arrivals.append(t)
        t += rng.expovariate(rate)
    eng.max_batch_seen = eng.batches_run = 0
    res["c"] = dict(through_engine(eng, work, arrivals), rate_per_s=round(rate, 3))
    print(res["c"], flush=True)
    save()
    eng.close()
    if not args.skip_a:
        res["a"] = sequential(model, tok, work)
        print(res["a"], flush=True)
        res["ratio_b_over_a"] = round(res["b"]["tokens_per_s"] / res["a"]["tokens_per_s"], 2)
        print(f"(b)/(a) = {res['ratio_b_over_a']}x", flush=True)
        save()
    if args.ideas:
        res["ideas"] = ideas(args.model, args)
    save()


if __name__ == "__main__":
    main()
