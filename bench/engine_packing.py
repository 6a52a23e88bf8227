"""The engine with and without prepacked oneDNN linears (llm/packing.py), in one process, rounds
alternating: N clients' requests (the serve bench's 8 questions, chat template, temperature 1,
top-p 0.95, seeded) all at once and one at a time. Prints aggregate tokens/s per mode and the
ratios; both runs sample the same seeds, so the texts are compared too.

    python bench/engine_packing.py                       # 8 x 128 tokens, 2 rounds
    python bench/engine_packing.py --max-tokens 32 --json bench/results/engine_packing.json
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from serve_throughput import QUESTIONS  # noqa: E402  (the same 8 questions)


def run(engine, prompts, max_tokens, at_once):
    from baize.llm.base import GenParams
    params = GenParams(temperature=1.0, top_p=0.95, max_tokens=max_tokens)
    t0 = time.perf_counter()
    if at_once:
        reqs = [engine.submit(p, params, 1000 + i) for i, p in enumerate(prompts)]
        done = [r.result() for r in reqs]
    else:
        done = [engine.submit(p, params, 1000 + i).result() for i, p in enumerate(prompts)]
    wall = time.perf_counter() - t0
    tokens = sum(c.completion_tokens for c in done)
    return {"wall_s": round(wall, 2), "tokens": tokens, "tokens_per_s": round(tokens / wall, 1)}, [c.text for c in done]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--repeat", type=int, default=2, help="rounds; the best of each mode is kept")
    p.add_argument("--json")
    args = p.parse_args(argv)
    import torch

    from baize.llm.engine import BatchEngine
    from baize.llm.models import HFLLM
    from baize.llm.packing import unpack_linears
    from baize.train.speedups import cpu_info
    llm = HFLLM(args.model)
    llm.close()
    unpack_linears(llm.model)
    prompts = [llm.prompt_ids([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]) for i in range(args.clients)]
    cpu = cpu_info()
    print(f"CPU {cpu['model']} ({' '.join(cpu['flags'])}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}; {args.clients} x {args.max_tokens} tokens", flush=True)
    best, texts = {}, {}
    for _ in range(args.repeat):
        for packed in (False, True):
            eng = BatchEngine(llm.model, llm.tokenizer, max_batch=16, eos_ids=llm.engine.eos_ids, pack_weights=packed)
            run(eng, prompts[:1], 4, True)  # warm
            for at_once in (False, True):
                key = f"{'packed' if packed else 'plain'} {'at once' if at_once else 'one at a time'}"
                r, texts[key] = run(eng, prompts, args.max_tokens, at_once)
                print(f"  {key:<28} {r['tokens_per_s']:>6} tok/s ({r['tokens']} tokens, {r['wall_s']} s), "
                      f"load average {os.getloadavg()[0]:.1f}", flush=True)
                if key not in best or r["tokens_per_s"] > best[key]["tokens_per_s"]:
                    best[key] = r
            eng.close()
            if packed:
                unpack_linears(llm.model)
    tps = {k: v["tokens_per_s"] for k, v in best.items()}
    out = {"cpu": cpu, "threads": torch.get_num_threads(), "clients": args.clients, "max_tokens": args.max_tokens,
           "best": best,
           "packed_over_plain_at_once": round(tps["packed at once"] / tps["plain at once"], 2),
           "at_once_over_one_at_a_time": {m: round(tps[f"{m} at once"] / tps[f"{m} one at a time"], 2)
                                          for m in ("plain", "packed")},
           "same_texts": {m: texts[f"plain {m}"] == texts[f"packed {m}"] for m in ("at once", "one at a time")}}
    print(json.dumps({k: v for k, v in out.items() if k not in ("cpu", "best")}))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
