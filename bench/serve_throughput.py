"""Serving throughput: N clients at once against the same N requests one at a time, through a real
`baize serve` process and the official openai client (streaming, so time to first token is measured
too). The server runs in its own process, as in use: clients parsing SSE must not share its GIL.

    python bench/serve_throughput.py                      # the embedded default, 8 clients
    python bench/serve_throughput.py --model runs/v1 --clients 16 --max-tokens 256

Prints aggregate generated tokens/s for both and the ratio (target: >= 3x with 8 clients), plus time
to first token. If llama.cpp is installed, the same numbers for the embedded GGUF through it.
The machine's load average is printed: on a shared machine, other jobs skew both numbers; --repeat
alternates the two modes and keeps the best round of each.
"""
import argparse
import concurrent.futures as cf
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QUESTIONS = [
    "How do I start learning to play the guitar?",
    "What is the difference between a list and a tuple in Python?",
    "Why is the sky blue?",
    "How can I improve my sleep?",
    "What should I pack for a weekend hiking trip?",
    "Explain what a hash table is.",
    "How do vaccines train the immune system?",
    "What are good habits for saving money?",
]


def one(client, model, i, max_tokens):
    """One streamed request: (seconds to first token, seconds in all, completion tokens)."""
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], max_tokens=max_tokens,
        temperature=1.0, top_p=0.95, seed=1000 + i, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - t0
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return ttft or 0.0, time.perf_counter() - t0, tokens


def run(client, model, n, max_tokens, concurrent):
    t0 = time.perf_counter()
    if concurrent:
        gate = threading.Barrier(n)

        def go(i):
            gate.wait()  # every client sends at the same moment
            return one(client, model, i, max_tokens)
        with cf.ThreadPoolExecutor(n) as pool:
            results = list(pool.map(go, range(n)))
    else:
        results = [one(client, model, i, max_tokens) for i in range(n)]
    wall = time.perf_counter() - t0
    tokens = sum(r[2] for r in results)
    ttfts = [r[0] for r in results]
    return {"mode": "concurrent" if concurrent else "sequential", "clients": n, "wall_s": round(wall, 2),
            "tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
            "ttft_mean_s": round(statistics.mean(ttfts), 3), "ttft_max_s": round(max(ttfts), 3),
            "latency_mean_s": round(statistics.mean(r[1] for r in results), 2)}


@contextlib.contextmanager
def server(spec, args):
    """`baize serve SPEC` on a free port in a subprocess; yields (base URL, served name)."""
    import httpx
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "baize", "serve", f"m={spec}", "--port", str(port),
           "--max-batch", str(max(16, args.clients))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    log = []
    threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start:\n" + "".join(log[-20:]))
            time.sleep(0.5)
        yield url, "m"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bench(spec, args):
    import openai
    with server(spec, args) as (url, name):
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=900)
        one(client, name, 0, 8)  # warm up: first-call allocations, engine thread start
        rounds = []
        for _ in range(args.repeat):
            seq = run(client, name, args.clients, args.max_tokens, concurrent=False)
            conc = run(client, name, args.clients, args.max_tokens, concurrent=True)
            rounds.append((seq, conc))
            if args.repeat > 1:
                print(f"  round: one at a time {seq['tokens_per_s']} tok/s, at once {conc['tokens_per_s']} tok/s, "
                      f"load average {os.getloadavg()[0]:.1f}", flush=True)
    seq = max((r[0] for r in rounds), key=lambda r: r["tokens_per_s"])
    conc = max((r[1] for r in rounds), key=lambda r: r["tokens_per_s"])
    ratio = conc["tokens_per_s"] / seq["tokens_per_s"] if seq["tokens_per_s"] else float("nan")
    return seq, conc, ratio


def report(title, seq, conc, ratio, target):
    print(f"\n{title}")
    print(f"  {'mode':<11} {'wall s':>7} {'tokens':>7} {'tok/s':>7} {'TTFT mean':>10} {'TTFT max':>9} {'latency':>8}")
    for r in (seq, conc):
        print(f"  {r['mode']:<11} {r['wall_s']:>7} {r['tokens']:>7} {r['tokens_per_s']:>7} "
              f"{r['ttft_mean_s']:>9}s {r['ttft_max_s']:>8}s {r['latency_mean_s']:>7}s")
    verdict = "meets" if ratio >= target else "BELOW"
    print(f"  throughput ratio, {conc['clients']} at once / one at a time: {ratio:.2f}x ({verdict} the {target}x target)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="model spec (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--target", type=float, default=3.0)
    p.add_argument("--repeat", type=int, default=1, help="alternate the two modes N times, keep the best of each")
    p.add_argument("--json", help="also write the numbers here")
    p.add_argument("--no-gguf", action="store_true", help="skip the llama.cpp comparison")
    p.add_argument("--gguf-only", action="store_true", help="only the llama.cpp numbers")
    args = p.parse_args(argv)

    import torch

    from baize.train.speedups import cpu_info
    cpu = cpu_info()
    print(f"CPU {cpu['model']} ({' '.join(cpu['flags'])}), {cpu['cpus']} CPUs")
    print(f"model {args.model} through `baize serve` (own process); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{args.clients} clients x {args.max_tokens} max new tokens, temperature 1, top-p 0.95, seeded", flush=True)
    results = []
    if not args.gguf_only:
        seq, conc, ratio = bench(args.model, args)
        report(f"transformers + baize batching engine ({args.model})", seq, conc, ratio, args.target)
        results.append({"model": args.model, "engine": "transformers", "cpu": cpu, "sequential": seq, "concurrent": conc,
                        "ratio": round(ratio, 2), "load_average_end": round(os.getloadavg()[0], 2)})
    if not args.no_gguf:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            print("\nllama.cpp: not installed (pip install llama-cpp-python): GGUF comparison skipped")
        else:
            seq, conc, ratio = bench("gguf:default", args)
            report("llama.cpp, the embedded GGUF (one request at a time inside)", seq, conc, ratio, args.target)
            results.append({"model": "gguf:default", "engine": "llama.cpp", "cpu": cpu, "sequential": seq,
                            "concurrent": conc, "ratio": round(ratio, 2)})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
