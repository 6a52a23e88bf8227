"""Serving throughput: N clients at once against the same N requests one at a time, through a real
`baize serve` process and the official openai client (streaming, so time to first token is measured
too). The server runs in its own process, as in use: clients parsing SSE must not share its GIL.

    python bench/serve_throughput.py                      # the embedded default, 8 clients
    python bench/serve_throughput.py --model runs/v1 --clients 16 --max-tokens 256

Prints aggregate generated tokens/s for both and the ratio (target: >= 3x with 8 clients), plus time
to first token and prefill speed (prompt tokens / seconds of one request with a ~700-token prompt
and max_tokens 1, timed by the client). If llama-cpp-python is installed, the same numbers for the
embedded GGUF served through it by `baize serve`.

The real peer (issue 30.3): llama.cpp's own `llama-server -np 8` (parallel slots, continuous
batching) on the embedded GGUF, built once by bench/llama_server.sh, measured by the same client
code, questions, max_tokens and sampling; printed last, with `baize serve`'s aggregate tokens/s at
N clients over llama-server's (target: >= 1.0x).

    python bench/serve_throughput.py --no-gguf --repeat 3 --json bench/results/serve_throughput.json

The machine's load average is printed: on a shared machine, other jobs skew both numbers; --repeat
alternates the two modes and keeps the best round of each.
"""
import argparse
import concurrent.futures as cf
import contextlib
import json
import os
import shlex
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


# Sent with every request, so both servers render the same prompt: with none, `baize serve` adds
# its guardrail prompt (~140 tokens) and llama-server the GGUF template's default, this one.
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# llama-server's sampler chain adds top-k 40 and min-p 0.05 to what a request asks for (its
# defaults, tools/server/README.md); off, so both servers sample from the same distribution.
# `baize serve` takes no such fields (it samples temperature and top-p only): it is sent none.
LLAMA_SERVER_SAMPLING = {"top_k": 0, "min_p": 0.0}


def long_prompt(k: int) -> str:
    """A ~700-token prompt (about 700 for SmolLM2's tokenizer; usage says how many each server
    counted). k leads it, so no round's prompt is a prefix-cache hit on an earlier one's."""
    body = " ".join(f"Question {j + 1}: {q}" for j, q in enumerate(QUESTIONS))
    return f"Notes, set {k}. " + " ".join([body] * 7) + " Which of these questions is the hardest, and why?"


def one(client, model, i, max_tokens, extra=None, content=None):
    """One streamed request: (seconds to first token, seconds in all, completion tokens, prompt tokens).
    Tokens are the usage of the stream's last chunk (stream_options include_usage), on both servers."""
    t0 = time.perf_counter()
    ttft, tokens, prompt_tokens = None, 0, 0
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": SYSTEM},
                               {"role": "user", "content": content or QUESTIONS[i % len(QUESTIONS)]}],
        max_tokens=max_tokens, temperature=1.0, top_p=0.95, seed=1000 + i, stream=True,
        stream_options={"include_usage": True}, extra_body=extra)
    for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - t0
        if chunk.usage:
            tokens, prompt_tokens = chunk.usage.completion_tokens, chunk.usage.prompt_tokens
    return ttft or 0.0, time.perf_counter() - t0, tokens, prompt_tokens


def prefill(client, model, k, extra=None):
    """Prompt tokens/s on the ~700-token prompt: one request with max_tokens 1, timed from sending
    to the stream's end (prefill, one sampled token, HTTP): the client's view, the same for both."""
    _, seconds, _, prompt_tokens = one(client, model, 0, 1, extra, content=long_prompt(k))
    return {"prompt_tokens": prompt_tokens, "seconds": round(seconds, 3),
            "prompt_tokens_per_s": round(prompt_tokens / seconds, 1)}


def run(client, model, n, max_tokens, concurrent, extra=None):
    t0 = time.perf_counter()
    if concurrent:
        gate = threading.Barrier(n)

        def go(i):
            gate.wait()  # every client sends at the same moment
            return one(client, model, i, max_tokens, extra)
        with cf.ThreadPoolExecutor(n) as pool:
            results = list(pool.map(go, range(n)))
    else:
        results = [one(client, model, i, max_tokens, extra) for i in range(n)]
    wall = time.perf_counter() - t0
    tokens = sum(r[2] for r in results)
    ttfts = [r[0] for r in results]
    return {"mode": "concurrent" if concurrent else "sequential", "clients": n, "wall_s": round(wall, 2),
            "tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
            "ttft_mean_s": round(statistics.mean(ttfts), 3), "ttft_max_s": round(max(ttfts), 3),
            "latency_mean_s": round(statistics.mean(r[1] for r in results), 2)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(spec, args):
    """`baize serve SPEC` on a free port in a subprocess; yields (base URL, served name)."""
    port = free_port()
    cmd = [sys.executable, "-m", "baize", "serve", f"m={spec}", "--port", str(port),
           "--max-batch", str(max(16, args.clients))]
    with serving(cmd, port) as url:
        yield url, "m"


def build_llama_server() -> str:
    """bench/llama_server.sh: builds llama-server once into the cache (minutes, the first time);
    its build info goes to stderr, the binary's path is the last line of stdout."""
    script = Path(__file__).resolve().parent / "llama_server.sh"
    done = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def llama_server(binary, gguf, args):
    """llama.cpp's server with args.clients parallel slots (continuous batching), each with room
    for the ~700-token prompt and the answer, on 127.0.0.1; yields (base URL, served name)."""
    port = free_port()
    cmd = [binary, "-m", gguf, "-a", "m", "--host", "127.0.0.1", "--port", str(port),
           "-np", str(args.clients), "-c", str(args.clients * args.slot_ctx),
           "--threads", str(args.threads), "--threads-batch", str(args.threads)]
    print("# " + shlex.join(cmd), flush=True)
    # its own account of its threads and slots (its default log level says no more)
    with serving(cmd, port, show=("n_ctx_slot", "n_threads")) as url:
        yield url, "m"


@contextlib.contextmanager
def serving(cmd, port, show=()):
    """Runs CMD (a server on PORT) until /health answers 200, then prints its log lines containing
    any of SHOW; stops it on the way out."""
    import httpx
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
        for line in list(log):
            if any(s in line for s in show):
                print("# " + line.rstrip(), flush=True)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bench(spec, args, serve=None, extra=None):
    """Best of args.repeat rounds of: N one at a time, N at once, one ~700-token prefill.
    SERVE (default: `baize serve SPEC`) is a context manager yielding (base URL, served name)."""
    import openai
    with (serve or server(spec, args)) as (url, name):
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=900)
        one(client, name, 0, 8, extra)  # warm up: first-call allocations, engine thread start
        rounds = []
        for k in range(args.repeat):
            seq = run(client, name, args.clients, args.max_tokens, False, extra)
            conc = run(client, name, args.clients, args.max_tokens, True, extra)
            rounds.append((seq, conc, prefill(client, name, k, extra)))
            if args.repeat > 1:
                print(f"  round: one at a time {seq['tokens_per_s']} tok/s, at once {conc['tokens_per_s']} tok/s, "
                      f"prefill {rounds[-1][2]['prompt_tokens_per_s']} tok/s, "
                      f"load average {os.getloadavg()[0]:.1f}", flush=True)
    seq = max((r[0] for r in rounds), key=lambda r: r["tokens_per_s"])
    conc = max((r[1] for r in rounds), key=lambda r: r["tokens_per_s"])
    pf = max((r[2] for r in rounds), key=lambda r: r["prompt_tokens_per_s"])
    ratio = conc["tokens_per_s"] / seq["tokens_per_s"] if seq["tokens_per_s"] else float("nan")
    return seq, conc, ratio, pf


def report(title, seq, conc, ratio, target, pf):
    print(f"\n{title}")
    print(f"  {'mode':<11} {'wall s':>7} {'tokens':>7} {'tok/s':>7} {'TTFT mean':>10} {'TTFT max':>9} {'latency':>8}")
    for r in (seq, conc):
        print(f"  {r['mode']:<11} {r['wall_s']:>7} {r['tokens']:>7} {r['tokens_per_s']:>7} "
              f"{r['ttft_mean_s']:>9}s {r['ttft_max_s']:>8}s {r['latency_mean_s']:>7}s")
    verdict = "meets" if ratio >= target else "BELOW"
    print(f"  throughput ratio, {conc['clients']} at once / one at a time: {ratio:.2f}x ({verdict} the {target}x target)")
    print(f"  prefill: {pf['prompt_tokens']} prompt tokens, max_tokens 1, in {pf['seconds']}s = "
          f"{pf['prompt_tokens_per_s']} prompt tokens/s (one request, timed by the client)")


def gguf_quant(path) -> str:
    """The GGUF's file type and its tensors' types, read by the gguf package (llama.cpp's own)."""
    try:
        import gguf
    except ImportError:
        return "file type unknown (pip install gguf to read it)"
    from collections import Counter
    reader = gguf.GGUFReader(path)
    field = reader.fields["general.file_type"]
    kind = gguf.LlamaFileType(int(field.parts[field.data[0]][0])).name
    tensors = Counter(t.tensor_type.name for t in reader.tensors)
    return f"{kind}, tensors " + ", ".join(f"{n} {k}" for k, n in tensors.most_common())


def peer(args, cpu, results) -> dict:
    """llama-server -np N on the embedded GGUF, and `baize serve`'s tokens/s at N clients over it."""
    from baize.llm.models import default_gguf_path
    binary, gguf = build_llama_server(), str(default_gguf_path())
    version = subprocess.run([binary, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True).stdout.strip()
    build_info = (Path(binary).parent / "BUILD_INFO").read_text().strip()
    quant = gguf_quant(gguf)
    print(f"# {Path(gguf).name}: {quant}", flush=True)
    seq, conc, ratio, pf = bench(None, args, llama_server(binary, gguf, args), LLAMA_SERVER_SAMPLING)
    title = f"llama.cpp's llama-server -np {args.clients} ({Path(gguf).name}, {args.threads} threads)"
    report(title, seq, conc, ratio, args.target, pf)
    row = {"model": Path(gguf).name, "engine": f"llama-server -np {args.clients}", "cpu": cpu,
           "llama_server": {"binary": binary, "version": version, "build": build_info,
                            "quantization": quant, "threads": args.threads, "ctx": args.clients * args.slot_ctx,
                            "sampling_extra": LLAMA_SERVER_SAMPLING},
           "sequential": seq, "concurrent": conc, "ratio": round(ratio, 2), "prefill": pf,
           "load_average_end": round(os.getloadavg()[0], 2)}
    ours = next((r for r in results if r["engine"] == "transformers"), None)
    if ours:
        vs = ours["concurrent"]["tokens_per_s"] / conc["tokens_per_s"]
        row["baize_serve_ratio"] = round(vs, 2)
        verdict = "meets" if vs >= 1.0 else "BELOW"
        print(f"\n`baize serve` / llama-server -np {args.clients}, {args.clients} clients x {args.max_tokens} tokens: "
              f"{ours['concurrent']['tokens_per_s']} / {conc['tokens_per_s']} tok/s = {vs:.2f}x "
              f"({verdict} the 1.0x target)")
    return row


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
    p.add_argument("--no-llama-server", action="store_true", help="skip llama.cpp's own llama-server (the real peer)")
    p.add_argument("--llama-server-only", action="store_true", help="only the llama-server numbers")
    p.add_argument("--slot-ctx", type=int, default=2048, help="llama-server's context per slot (-c is N times it)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="llama-server's --threads")
    args = p.parse_args(argv)

    import torch

    from baize.train.speedups import cpu_info
    cpu = cpu_info()
    print(f"CPU {cpu['model']} ({' '.join(cpu['flags'])}), {cpu['cpus']} CPUs")
    print(f"model {args.model} through `baize serve` (own process); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{args.clients} clients x {args.max_tokens} max new tokens, temperature 1, top-p 0.95, seeded, "
          f"system prompt {SYSTEM!r}; EOS ends a reply early (baize serve cannot ignore it): tokens are as generated",
          flush=True)
    results = []
    if not args.gguf_only and not args.llama_server_only:
        seq, conc, ratio, pf = bench(args.model, args)
        report(f"transformers + baize batching engine ({args.model})", seq, conc, ratio, args.target, pf)
        results.append({"model": args.model, "engine": "transformers", "cpu": cpu, "sequential": seq, "concurrent": conc,
                        "ratio": round(ratio, 2), "prefill": pf, "load_average_end": round(os.getloadavg()[0], 2)})
    if not args.no_gguf and not args.llama_server_only:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            print("\nllama.cpp: not installed (pip install llama-cpp-python): GGUF comparison skipped")
        else:
            seq, conc, ratio, pf = bench("gguf:default", args)
            report("llama.cpp, the embedded GGUF (one request at a time inside)", seq, conc, ratio, args.target, pf)
            results.append({"model": "gguf:default", "engine": "llama.cpp", "cpu": cpu, "sequential": seq,
                            "concurrent": conc, "ratio": round(ratio, 2), "prefill": pf})
    if not args.no_llama_server and not args.gguf_only:
        results.append(peer(args, cpu, results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
