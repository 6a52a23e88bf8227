"""What a second OpenMP team costs (baize/llm/omp.py), measured in one run on this machine:

1. one 8-row bf16 (float32 where the CPU lacks native bf16) 576x1536 linear on prepacked oneDNN
   weights, in a worker thread: alone, and with the main thread's team left alive;
2. the batching engine generating 8 x 128 tokens on the embedded model (dtype auto), with
   llm/omp.release_threads as shipped and with it made a no-op (the main thread loaded the model, so
   its team stays alive beside the engine thread's). Alternated, best round of each.

    python bench/omp_teams.py --json bench/results/omp_teams.json
"""
import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from serve_throughput import QUESTIONS  # noqa: E402  (bench/ is this script's folder)


def in_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def linear_us(dtype) -> float:
    import torch
    w = torch.randn(1536, 576).to(dtype)
    x = torch.randn(8, 576).to(dtype)
    pw = torch.ops.mkldnn._reorder_linear_weight(w, 8)
    for _ in range(200):
        torch.ops.mkldnn._linear_pointwise(x, pw, None, "none", [], "")
    t = time.perf_counter()
    for _ in range(2000):
        torch.ops.mkldnn._linear_pointwise(x, pw, None, "none", [], "")
    return (time.perf_counter() - t) / 2000 * 1e6


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--json")
    a = p.parse_args()
    import torch

    from baize.llm import engine as engine_mod
    from baize.llm.base import GenParams
    from baize.llm.models import cpu_flags, load_model, native_bf16
    from baize.llm.omp import release_threads
    from baize.train.speedups import NOTED_FLAGS

    flags = sorted(NOTED_FLAGS & cpu_flags())  # the flags train logs too
    dtype = torch.bfloat16 if native_bf16() else torch.float32
    print(f"CPU flags {' '.join(flags)}; {os.cpu_count()} CPUs; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f}")
    res = {"cpu_flags": flags, "torch": torch.__version__, "threads": torch.get_num_threads()}

    linear_us(dtype)  # the main thread now holds a team
    kept = in_thread(lambda: linear_us(dtype))
    release_threads()
    alone = in_thread(lambda: linear_us(dtype))
    print(f"8-row {dtype} 576x1536 linear in a worker thread: {alone:.1f} us alone, {kept:.1f} us beside "
          f"the main thread's team ({kept / alone:.2f}x)")
    res["linear_us"] = {"alone": round(alone, 1), "second_team_alive": round(kept, 1)}

    model, tok = load_model("default", dtype="auto")
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                       tokenize=True, return_dict=False) for q in QUESTIONS]
    best = {}
    for _ in range(a.repeat):
        for mode in ("no release (before)", "released (as shipped)"):
            engine_mod.release_threads = release_threads if mode.startswith("released") else (lambda: None)
            torch.ones(4_000_000).add_(1)  # as loading or training leaves the main thread a team
            eng = engine_mod.BatchEngine(model, tok, max_batch=16, eos_ids=())  # no EOS: equal lengths
            t = time.perf_counter()
            reqs = [eng.submit(list(p), GenParams(1.0, 0.95, a.max_tokens, [], 1), row_seed=i)
                    for i, p in enumerate(prompts)]
            n = sum(r.result().completion_tokens for r in reqs)
            tps = n / (time.perf_counter() - t)
            eng.close()
            print(f"  {mode}: {n} tokens, {tps:.1f} tokens/s")
            best[mode] = max(best.get(mode, 0.0), tps)
    engine_mod.release_threads = release_threads
    before, after = best["no release (before)"], best["released (as shipped)"]
    print(f"engine, 8 x {a.max_tokens} tokens, embedded model (dtype auto): {before:.1f} -> {after:.1f} "
          f"tokens/s ({after / before:.2f}x)")
    res["engine_tokens_per_s"] = {"no_release": round(before, 1), "released": round(after, 1)}
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
