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


SHORT = 120  # prompt tokens at most: a "short request" for the time-to-first-token split


def summary(name, wall, tokens, ttfts, work=None, **extra):
    out = {"mode": name, "requests": len(ttfts), "wall_s": round(wall, 2), "tokens": tokens,
           "tokens_per_s": round(tokens / wall, 1), "ttft_p50_s": pct(ttfts, 0.5), "ttft_p95_s": pct(ttfts, 0.95)}
    if work is not None:
        short = [t for t, (ids, _, _) in zip(ttfts, work) if len(ids) <= SHORT]
        if short:
            out.update(short_requests=len(short), short_ttft_p50_s=pct(short, 0.5), short_ttft_p95_s=pct(short, 0.95))
    return {**out, "load_average": round(os.getloadavg()[0], 2), **extra}


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
    return summary("a: model.generate one at a time", time.perf_counter() - t0, tokens, ttfts, work)


def through_engine(engine, work, arrivals=None):
    """(b) all submitted at once (arrivals None) or (c) submitted at the given times; TTFT from submission."""
    from baize.llm.base import GenParams
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
    return summary(name, wall, sum(done), [t or 0.0 for t in ttfts], work, max_batch_seen=engine.max_batch_seen,
                   prefills=engine.batches_run)


def llamacpp(path, tok, work):
    """(d) the same token ids through llama.cpp (llama-cpp-python), one request at a time: a reference
    line from the runtime people compare against. eos is biased away so every request makes its max."""
    from llama_cpp import Llama
    llama = Llama(model_path=str(path), n_ctx=1024, n_threads=os.cpu_count(), verbose=False, seed=0)
    eos = {i for i in (tok.eos_token_id, llama.token_eos()) if i is not None}
    ttfts, tokens = [], 0
    t0 = time.perf_counter()
    for ids, mt, seed in work:
        llama.reset()
        s, first = time.perf_counter(), None
        for chunk in llama.create_completion(prompt=ids, max_tokens=mt, temperature=1.0, top_p=0.95, top_k=0,
                                             seed=seed, stream=True, logit_bias={i: -1e9 for i in eos}):
            if first is None:
                first = time.perf_counter() - s
        ttfts.append(first or 0.0)
        tokens += llama.n_tokens - len(ids) + 1  # positions evaluated, + the last token sampled
    return summary(f"d: llama.cpp ({Path(path).name}) one at a time", time.perf_counter() - t0, tokens, ttfts, work)


def make_engine(model, tok, max_batch):
    from baize.llm.engine import BatchEngine
    return BatchEngine(model, tok, max_batch=max_batch, wait_s=0.02, eos_ids=())


def ideas(spec, args, save=lambda rows: None):
    """Each 'use the machine' idea on a small engine workload (16 requests at once), same run."""
    import torch

    from baize.llm import models
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
            torch.set_num_threads(base_threads)  # process-wide in torch, the engine thread included
        print("  ", rows[-1], flush=True)
        save(rows)

    def gen_trial(label, **gen):
        """A static cache (and the compiled decode step it allows) is a generate() feature; it pays on
        CPU only if it pays for one request there, so it is measured on one request through generate."""
        from transformers import GenerationConfig
        try:
            model, tok = models.load_model(models.resolve(spec))
            ids, _, seed = small(tok)[0]
            cfg = GenerationConfig(do_sample=True, temperature=1.0, top_p=0.95, top_k=0, max_new_tokens=48,
                                   min_new_tokens=48, pad_token_id=tok.pad_token_id or tok.eos_token_id, **gen)
            x = torch.tensor([ids])
            times = []
            for i in range(4):  # the first two warm up (and compile)
                torch.manual_seed(seed)
                t = time.perf_counter()
                with torch.inference_mode():
                    model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=cfg)
                times.append(time.perf_counter() - t)
            rows.append({"idea": label, "tokens_per_s": round(48 / min(times[2:]), 1),
                         "first_call_s": round(times[0], 2), "load_average": round(os.getloadavg()[0], 2)})
        except Exception as e:
            rows.append({"idea": label, "error": f"{type(e).__name__}: {e}"[:300]})
        print("  ", rows[-1], flush=True)
        save(rows)

    gen_trial("one request, generate(): dynamic cache")
    gen_trial("one request, generate(): static cache, not compiled", cache_implementation="static",
              disable_compile=True)
    if args.compile:
        from transformers import CompileConfig
        cc = CompileConfig(mode="default")  # reduce-overhead means CUDA graphs
        cc._compile_all_devices = True  # generate() compiles only on accelerators unless told
        gen_trial("one request, generate(): static cache, compiled decode step", cache_implementation="static",
                  compile_config=cc)
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
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--rate", type=float, default=0.0, help="(c) arrivals per second (0: 0.7x what (b) served)")
    p.add_argument("--skip-a", action="store_true", help="skip the slow one-at-a-time baseline")
    p.add_argument("--gguf", help="(d) the llama.cpp reference: this GGUF (default: the embedded model's file)")
    p.add_argument("--ideas", action="store_true")
    p.add_argument("--compile", action="store_true", help="with --ideas: also try torch.compile (the engine "
                   "trial recompiles per batch shape: it ran 9 minutes without finishing here)")
    p.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "generate_throughput.json"))
    args = p.parse_args()

    import torch
    import transformers

    from baize.llm import models
    from baize.train.speedups import cpu_info
    model, tok = models.load_model(models.resolve(args.model))
    work = workload(tok, args.requests)
    res = {"model": args.model, "torch": torch.__version__, "transformers": transformers.__version__,
           "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "cpu": cpu_info(),
           "load_average_start": [round(x, 2) for x in os.getloadavg()],
           "workload": {"requests": len(work), "prompt_tokens": sum(len(w[0]) for w in work),
                        "new_tokens": sum(w[1] for w in work), "prompt_range": [30, 400], "max_tokens_range": [16, 256],
                        "sampling": "temperature 1, top-p 0.95, seeded, eos ignored"}}
    print(f"model {args.model}; CPU {res['cpu']['model']} ({' '.join(res['cpu']['flags'])}); torch {torch.__version__}, "
          f"{res['threads']} threads, {res['cpus']} CPUs, "
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
    gguf = args.gguf or (str(models.default_gguf_path()) if args.model == "default" else None)
    if gguf and not args.skip_a:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            print("(d) skipped: llama-cpp-python is not installed", flush=True)
        else:
            res["d"] = llamacpp(gguf, tok, work)
            print(res["d"], flush=True)
            save()
    if args.ideas:
        def keep(rows):
            res["ideas"] = rows
            save()
        ideas(args.model, args, keep)
    save()


if __name__ == "__main__":
    main()
