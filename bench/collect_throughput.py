#!/usr/bin/env python
"""Collection throughput: the original Baize collector's behaviour vs `baize collect`, same fake teacher.

A fake OpenAI-compatible teacher (`python -m baize.testing`) runs in its own process with a fixed
latency per call, so the numbers measure the collector, not the model:

  (a) baseline: what the original Baize `collect.py` did: one request at a time with the paper's
      one-shot template, then `time.sleep(1)` before the next seed (baize's OpenAILLM makes the call);
  (a0) the same loop without the sleep: one request at a time and nothing else, so the ratio to it
      is what concurrency alone buys (the 1 s sleep is most of (a)'s time at 0.3 s per call);
  (b) baize: `baize.data.collect.collect(...)` with --concurrency 64 on a generated seed file.

The bound for (b) is concurrency / latency dialogues per second (64 / 0.3 s = 213/s).
`--teacher-default` adds how many dialogues per minute the embedded default model (SmolLM2-135M on
this CPU) manages as the teacher (mode turns, max_turns 1, max_tokens 128).

    python bench/collect_throughput.py [--seeds 1280] [--concurrency 64] [--latency 0.3] [--teacher-default]

Prints the numbers and writes a JSON copy to bench/results/collect_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

TEMPLATES = ["How does {0} {1} relate to {2} {3} in {4}?", "Why would {0} {1} change {2} {3} for {4}?",
             "What is the link between {0} {1} and {2} {3} in {4}?", "Can {0} {1} explain {2} {3} when {4} matters?"]


def make_seeds(n: int, path: Path) -> Path:
    """n distinct generated questions over the shipped samples' vocabulary: varied enough that the
    near-duplicate filter rejects about as many as on real seeds (2-3 %)."""
    import re

    from baize.data.seeds import load_seeds
    vocab = sorted({w.lower() for name in ("quora", "stackoverflow", "medquad") for s in load_seeds(name)
                    for w in re.findall(r"[A-Za-z]{4,}", s.text)})
    rng = random.Random(0)
    seen: set[str] = set()
    with path.open("w") as f:
        while len(seen) < n:
            q = rng.choice(TEMPLATES).format(*rng.sample(vocab, 5))
            if q not in seen:
                seen.add(q)
                f.write(json.dumps({"seed": q}) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_fake_teacher(latency: float) -> tuple[subprocess.Popen, str]:
    import httpx
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "baize.testing", "--port", str(port), "--latency", str(latency)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"fake teacher exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/models", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("fake teacher did not start within 60 s")


def baseline(url: str, seeds: list[str], sleep_s: float = 1.0) -> dict:
    """The original collector's loop: one call, parse, sleep(1), next seed; a bare except that slept."""
    from baize.data.collect import SELF_CHAT_TEMPLATE, parse_transcript
    from baize.llm.base import OpenAILLM
    llm = OpenAILLM("fake-teacher", base_url=url, api_key="EMPTY")
    kept = 0
    start = time.perf_counter()
    for seed in seeds:
        try:
            c = llm.chat([{"role": "user", "content": SELF_CHAT_TEMPLATE.replace("${SEED}", seed)}],
                         temperature=1.0, top_p=1.0, max_tokens=1024)[0]
        except Exception:  # noqa: BLE001  (the original's bare except)
            time.sleep(5)
            continue
        kept += bool(parse_transcript(c.text))
        time.sleep(sleep_s)
    seconds = time.perf_counter() - start
    return {"dialogues": len(seeds), "kept": kept, "seconds": round(seconds, 3),
            "dialogues_per_s": round(len(seeds) / seconds, 4)}


def client_only(url: str, seeds: list[str], concurrency: int) -> dict:
    """The same requests from a bare thread pool, no collection logic: the most the client allows."""
    import concurrent.futures as cf

    from baize.data.collect import SELF_CHAT_TEMPLATE
    from baize.llm.base import OpenAILLM
    llm = OpenAILLM("fake-teacher", base_url=url, api_key="EMPTY")
    llm.chat([{"role": "user", "content": "warm up"}])

    def one(seed):
        return llm.chat([{"role": "user", "content": SELF_CHAT_TEMPLATE.replace("${SEED}", seed)}],
                        temperature=1.0, top_p=1.0, max_tokens=1024)

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        n = sum(1 for _ in pool.map(one, seeds))
    seconds = time.perf_counter() - start
    return {"requests": n, "seconds": round(seconds, 3), "dialogues_per_s": round(n / seconds, 2)}


def baize_collect(url: str, seed_file: Path, out_dir: Path, concurrency: int, progress: bool) -> dict:
    from rich.console import Console

    from baize.data.collect import CollectConfig, collect
    cfg = CollectConfig(seeds=str(seed_file), out=str(out_dir / "dialogues.jsonl"), teacher="openai:fake-teacher",
                        base_url=url, api_key="EMPTY", concurrency=concurrency, progress=progress)
    wall = time.perf_counter()
    s = collect(cfg, console=Console(stderr=True))
    wall = time.perf_counter() - wall
    return {"dialogues": s.done, "kept": s.kept, "rejected": s.rejected, "failed": s.failed,
            "seconds": s.seconds, "wall_seconds_incl_setup": round(wall, 3),
            "dialogues_per_s": round(s.done / s.seconds, 2), "progress_bar": progress}


def teacher_default(n: int, out_dir: Path, torch_threads: int | None) -> dict:
    """The embedded default model as the teacher, on this CPU (local batching, no HTTP)."""
    import torch

    from baize.data.collect import CollectConfig, collect
    from baize.data.seeds import load_seeds
    torch_default = torch.get_num_threads()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    seeds = load_seeds("quora", limit=n)
    seed_file = out_dir / "default_seeds.jsonl"
    seed_file.write_text("".join(json.dumps({"seed": s.text}) + "\n" for s in seeds))
    cfg = CollectConfig(seeds=str(seed_file), out=str(out_dir / "default.jsonl"), teacher="default", mode="turns",
                        max_turns=1, max_tokens=128, concurrency=n, progress=False)
    t0 = time.perf_counter()
    from baize.llm.models import load_llm
    llm = load_llm("default", max_batch=n)
    load_s = time.perf_counter() - t0
    s = collect(cfg, llm)
    return {"dialogues": s.done, "kept": s.kept, "rejected": s.rejected, "failed": s.failed,
            "seconds": s.seconds, "model_load_seconds": round(load_s, 2),
            "completion_tokens": s.completion_tokens, "tokens_per_s": round(s.completion_tokens / s.seconds, 1),
            "dialogues_per_min": round(60 * s.done / s.seconds, 2), "concurrency": n,
            "torch_threads": torch.get_num_threads(), "torch_default_threads": torch_default,
            "max_batch_seen": llm.engine.max_batch_seen}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=1280, help="seeds for (b); at least 10 x concurrency")
    p.add_argument("--baseline-seeds", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--latency", type=float, default=0.3, help="fake teacher seconds per call")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="(b) with the progress bar, as `baize collect` runs by default")
    p.add_argument("--teacher-default", action="store_true", help="also time the embedded default model as teacher")
    p.add_argument("--default-seeds", type=int, default=8)
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch intra-op threads for --teacher-default (0: torch's default). 1 by default: on a small "
                        "shared CPU torch's spinning worker threads fight the other processes (measured here: "
                        "2 threads 2.8 dialogues/min, 1 thread 17/min, same load)")
    p.add_argument("--out", default=str(HERE / "results" / "collect_throughput.json"))
    a = p.parse_args()
    os.environ.pop("OPENAI_API_KEY", None)

    from baize.train.speedups import cpu_info
    results: dict = {"machine": {"cpus": os.cpu_count(), "cpu": cpu_info(), "python": platform.python_version(),
                                 "loadavg_at_start": list(os.getloadavg())},
                     "settings": {"latency_s": a.latency, "concurrency": a.concurrency, "seeds": a.seeds,
                                  "baseline_seeds": a.baseline_seeds}}
    with tempfile.TemporaryDirectory(prefix="baize-bench-") as tmp:
        tmp = Path(tmp)
        seed_file = make_seeds(a.seeds, tmp / "seeds.jsonl")
        server, url = start_fake_teacher(a.latency)
        try:
            base_seeds = [json.loads(line)["seed"] for line in seed_file.read_text().splitlines()[:a.baseline_seeds]]
            print(f"(a) baseline: {len(base_seeds)} seeds, one at a time, sleep(1) between ...", flush=True)
            results["baseline"] = b = baseline(url, base_seeds)
            print(f"(a0) the same loop without the sleep: {len(base_seeds)} seeds ...", flush=True)
            results["baseline_no_sleep"] = b0 = baseline(url, base_seeds, sleep_s=0.0)
            print(f"(b) baize collect: {a.seeds} seeds, concurrency {a.concurrency} ...", flush=True)
            results["baize"] = c = baize_collect(url, seed_file, tmp, a.concurrency, a.progress)
            print(f"(b0) bare client: the same {a.seeds} requests from {a.concurrency} threads ...", flush=True)
            all_seeds = [json.loads(line)["seed"] for line in seed_file.read_text().splitlines()]
            results["client_only"] = c0 = client_only(url, all_seeds, a.concurrency)
        finally:
            server.terminate()
            server.wait(timeout=10)
        bound = a.concurrency / a.latency
        results["ratio"] = round(c["dialogues_per_s"] / b["dialogues_per_s"], 1)
        results["ratio_without_sleep"] = round(c["dialogues_per_s"] / b0["dialogues_per_s"], 1)
        results["bound_dialogues_per_s"] = round(bound, 1)
        results["fraction_of_bound"] = round(c["dialogues_per_s"] / bound, 3)
        results["targets"] = {"ratio>=50": results["ratio"] >= 50, "fraction_of_bound>=0.8": results["fraction_of_bound"] >= 0.8}
        if a.teacher_default:
            print(f"(c) embedded default model as teacher: {a.default_seeds} seeds ...", flush=True)
            results["teacher_default"] = teacher_default(a.default_seeds, tmp, a.torch_threads)
    results["machine"]["loadavg_at_end"] = list(os.getloadavg())

    print()
    print(f"fake teacher: {a.latency} s per call, separate process; machine: {os.cpu_count()} CPUs "
          f"({results['machine']['cpu']['model']}, flags: {' '.join(results['machine']['cpu']['flags']) or 'none'}), "
          f"load average {results['machine']['loadavg_at_start'][0]:.1f} at start")
    print(f"(a) original Baize loop     : {b['dialogues_per_s']:8.3f} dialogues/s  ({b['dialogues']} in {b['seconds']} s, "
          f"sleep(1) after each)")
    print(f"(a0) the loop, no sleep     : {b0['dialogues_per_s']:8.3f} dialogues/s  ({b0['dialogues']} in {b0['seconds']} s)")
    print(f"(b) baize collect, conc {a.concurrency:<3} : {c['dialogues_per_s']:8.2f} dialogues/s  ({c['dialogues']} in "
          f"{c['seconds']} s; kept {c['kept']}, rejected {sum(c['rejected'].values())}, failed {c['failed']})")
    print(f"    ratio (b)/(a)           : {results['ratio']:8.1f}x   (target >= 50x)")
    print(f"    ratio (b)/(a0)          : {results['ratio_without_sleep']:8.1f}x   (concurrency alone, no sleep in the baseline)")
    print(f"    (b) / bound {bound:.0f}/s       : {100 * results['fraction_of_bound']:8.1f} %  (target >= 80 %)")
    print(f"(b0) bare openai client     : {c0['dialogues_per_s']:8.2f} requests/s   (same requests, thread pool, no "
          f"collection logic: (b) is {100 * c['dialogues_per_s'] / c0['dialogues_per_s']:.0f} % of it)")
    if "teacher_default" in results:
        d = results["teacher_default"]
        print(f"(c) default model as teacher: {d['dialogues_per_min']:8.2f} dialogues/min  ({d['dialogues']} in "
              f"{d['seconds']} s, {d['tokens_per_s']} tokens/s, batch {d['max_batch_seen']}, "
              f"torch threads {d['torch_threads']} (default {d['torch_default_threads']}); model load {d['model_load_seconds']} s)")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
