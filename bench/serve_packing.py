"""`baize serve` with --no-pack-weights against the default (packed linears), rounds alternating,
through bench/serve_throughput.py's client code (same questions, streaming openai client, seeded):
N requests one at a time and at once for each, the best round of each kept.

    python bench/serve_packing.py --clients 8 --max-tokens 32 --repeat 2
"""
import argparse
import contextlib
import json
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_throughput as S  # noqa: E402


@contextlib.contextmanager
def serve(extra):
    """A `baize serve` of the embedded default (EXTRA: more flags), through the serve bench's own start-and-wait."""
    import openai
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "baize", "serve", "m=default", "--port", str(port), "--max-batch", "16", *extra]
    with S.serving(cmd, port) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=900)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.1f}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"{args.clients} x {args.max_tokens}", flush=True)
    best = {}
    for _ in range(args.repeat):
        for label, extra in (("plain", ["--no-pack-weights"]), ("packed", [])):
            with serve(extra) as client:
                S.one(client, "m", 0, 8)
                for conc in (False, True):
                    r = S.run(client, "m", args.clients, args.max_tokens, conc)
                    key = f"{label} {r['mode']}"
                    print(f"  {key:<22} {r['tokens_per_s']:>6} tok/s  TTFT mean {r['ttft_mean_s']} s  wall {r['wall_s']} s  "
                          f"load {os.getloadavg()[0]:.1f}", flush=True)
                    if key not in best or r["tokens_per_s"] > best[key]["tokens_per_s"]:
                        best[key] = r
    t = {k: v["tokens_per_s"] for k, v in best.items()}
    print(json.dumps({"packed/plain concurrent": round(t["packed concurrent"] / t["plain concurrent"], 2),
                      "ratio plain": round(t["plain concurrent"] / t["plain sequential"], 2),
                      "ratio packed": round(t["packed concurrent"] / t["packed sequential"], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
