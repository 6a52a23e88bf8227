"""Cheaper weights for the local model on CPU (issue 30, point 2): for each variant of the embedded
SmolLM2-135M, in one run,
  - prefill tokens/s on judge prompts (the judge's own pair prompts, cut to --prompt-tokens, batch 1:
    what `baize eval`/`judge-check` spend their time on),
  - decode tokens/s at batch 1 and 8 (greedy, KV cache),
  - quality: the mean NLL of the reference answers in baize/samples/nll_heldout.jsonl (eval's own NLL
    code) and the debiased judge's verdicts on human pairs (baize/samples/hh_helpful_online.jsonl,
    through Judge.pair and option_logprobs) compared with the baseline's,
with ratios against the baseline measured in the same run. Writes bench/results/weights_speed-<kind>.json.

    python bench/weights_speed.py                         # this CPU, then the AVX2 emulation in a subprocess
    python bench/weights_speed.py --pairs 6 --nll 6 --variants fp32,bf16,int8   # a quick look

Variants: fp32 (transformers' default on CPU), bf16 (all of it, logits included), auto (what HFLLM and
`baize serve` load by default: on a CPU with native bf16, bf16 with a float32 LM head; else fp32),
int8 (torch.ao's quantize_dynamic of the linear layers: int8 weights per channel, int8 activations
quantized per call, fbgemm/oneDNN VNNI kernels), torchao-int8-wo and torchao-int8-dyn (torchao's
Int8WeightOnlyConfig / Int8DynamicActivationInt8WeightConfig through transformers' TorchAoConfig, if
torchao is installed), compile (torch.compile(forward, dynamic=True) of
the baseline: its compile time is reported apart from its steady state).

The AVX2 kind is measured by rerunning this script in a subprocess with ATEN_CPU_CAPABILITY=avx2 and
ONEDNN_MAX_CPU_ISA=AVX2: an EMULATION on this AVX-512 CPU (torch's and oneDNN's kernels restricted to
AVX2), not a real AVX2 machine: memory bandwidth, caches and clocks stay this machine's. bf16 is left out
there (AVX2 has no native bf16).
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parent.parent
EMULATED_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
ALL = ["fp32", "bf16", "auto", "int8", "torchao-int8-wo", "torchao-int8-dyn", "compile"]


def load_variant(name: str, base_dtype: str):
    """(model, tokenizer, load seconds) of one variant; the shipped ones through load_model."""
    import torch

    from baize.llm.models import load_model
    t0 = time.monotonic()
    if name in ("fp32", "bf16"):
        model, tok = load_model("default", device="cpu", dtype={"fp32": "float32", "bf16": "bfloat16"}[name])
    elif name == "auto":  # what local inference loads by default: bf16 + float32 head where the CPU has bf16
        model, tok = load_model("default", device="cpu", dtype="auto")
    elif name == "int8":
        model, tok = load_model("default", device="cpu", dtype="float32")
        model = quantize_int8(model)
    elif name.startswith("torchao-"):
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
        from transformers import AutoModelForCausalLM, TorchAoConfig

        from baize.llm.models import resolve
        ref, (_, tok) = resolve("default"), load_model("default", device="cpu")
        cfg = Int8WeightOnlyConfig() if name.endswith("-wo") else Int8DynamicActivationInt8WeightConfig()
        model = AutoModelForCausalLM.from_pretrained(ref.base, dtype=getattr(torch, base_dtype),
                                                     quantization_config=TorchAoConfig(cfg)).eval()
    elif name == "compile":
        model, tok = load_model("default", device="cpu", dtype=base_dtype)
        model.forward = torch.compile(model.forward, dynamic=True)
    else:
        raise SystemExit(f"unknown variant {name!r}: use {', '.join(ALL)}")
    return model, tok, time.monotonic() - t0


def quantize_int8(model):
    """torch's dynamic int8 quantization of the linear layers in its kindest setting for quality here:
    per-channel weights, lm_head (the tied embedding) left in float. Its default (per-tensor weights,
    lm_head included) moved the NLL further: 3.88 against fp32's 2.52 on 3 held-out dialogues."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    names = {n: per_channel_dynamic_qconfig for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    return quantize_dynamic(model, names, dtype=torch.qint8)


def judge_prompts(tok, n: int, length: int) -> list[list[int]]:
    """The judge's pair prompts of the first pairs, in the model's chat format, cut to `length` tokens."""
    from baize.judge.check import load_pairs
    from baize.judge.modes import TextMode
    from baize.llm.chat_format import get_format
    fmt = get_format("template", tok)
    out = []
    for p in load_pairs("builtin"):
        for msgs in TextMode(None).pair_prompts(p.context, p.chosen, p.rejected)[:1]:
            ids = fmt.encode(fmt.render(msgs, add_generation_prompt=True))
            if len(ids) >= length:
                out.append(ids[:length])
        if len(out) >= n:
            break
    return out


def prefill_s(model, prompts) -> float:
    import torch
    with torch.inference_mode():
        t0 = time.perf_counter()
        for ids in prompts:
            model(input_ids=torch.tensor([ids]), logits_to_keep=1)
        return time.perf_counter() - t0


def decode_s(model, batch: int, steps: int, prompt_len: int = 32) -> float:
    """Seconds for `steps` greedy decode steps of `batch` rows after a `prompt_len`-token prefill."""
    import torch
    from transformers import DynamicCache
    ids = torch.arange(1000, 1000 + batch * prompt_len).reshape(batch, prompt_len) % 40000
    with torch.inference_mode():
        cache = DynamicCache()
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True, logits_to_keep=1)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        return time.perf_counter() - t0


def quality(model, tok, n_nll: int, n_pairs: int) -> dict:
    """Mean NLL of the held-out references (eval/nll.py) and the debiased judge's winners on human pairs."""
    from baize.eval.nll import mean_nll, nll
    from baize.judge.check import check_items, load_pairs, shown
    from baize.judge.core import Judge
    from baize.llm.models import HFLLM
    from baize.schema import read_jsonl
    llm = HFLLM("default", model=model, tokenizer=tok, max_batch=2)
    try:
        class Lazy:
            def get(self):
                return llm
        recs = list(read_jsonl(ROOT / "baize" / "samples" / "nll_heldout.jsonl"))[:n_nll]
        parts = nll(Lazy(), recs)
        judge = Judge(llm, cache_dir=None, mode="debiased")
        items = check_items(judge.name, judge.mode, load_pairs("builtin", limit=n_pairs))
        winners, margins, human = [], [], []
        for it in items:
            v = judge.pair(*shown(it))
            winners.append(v.winner)
            margins.append(v.margin)
            human.append({"A": "a", "B": "b"}.get(v.winner) == it.human)
        return {"nll": mean_nll(parts), "nll_records": len(recs), "winners": winners,
                "margins": [None if m is None else round(m, 4) for m in margins],
                "human_agreement": round(sum(human) / len(human), 4) if human else None}
    finally:
        llm.close()


def linear_types(model) -> list[str]:
    import torch
    return sorted({f"{type(m).__module__}.{type(m).__name__}" + (f"[{type(m.weight).__name__}]" if isinstance(
        getattr(m, "weight", None), torch.Tensor) and type(m.weight) is not torch.nn.Parameter else "")
        for n, m in model.named_modules() if n.endswith(("q_proj", "down_proj", "lm_head"))})


def measure(args, kind: str) -> dict:
    import torch
    base = "bfloat16" if kind == "avx512-bf16" else "float32"
    baseline = "bf16" if base == "bfloat16" else "fp32"
    variants = [v for v in args.variants.split(",") if v]
    if kind == "avx2-emulated":
        variants = [v for v in variants if v != "bf16"]
    res = {"variants": {}, "baseline": "fp32", "kind_baseline_dtype": baseline}
    models = {}
    for v in variants:
        try:
            model, tok, secs = load_variant(v, base)
        except Exception as e:  # a variant that cannot run here is a result too
            res["variants"][v] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            print(f"  {v}: cannot load: {res['variants'][v]['error']}", flush=True)
            continue
        models[v] = (model, tok)
        res["variants"][v] = {"load_s": round(secs, 1), "dtype": str(next(model.parameters()).dtype),
                              "linear_types": linear_types(model)}
    if not models:
        return res
    tok = next(iter(models.values()))[1]
    prompts = judge_prompts(tok, args.prompts, args.prompt_tokens)
    res["prompt_tokens"] = [len(p) for p in prompts]
    # the first call of each variant warms it up (and compiles the compile variant: its own figure)
    for v, (m, _) in models.items():
        t0 = time.monotonic()
        prefill_s(m, prompts[:1])
        decode_s(m, 1, 2)
        decode_s(m, 8, 2)
        res["variants"][v]["warmup_s"] = round(time.monotonic() - t0, 1)
        print(f"  {v}: loaded in {res['variants'][v]['load_s']} s, warm-up {res['variants'][v]['warmup_s']} s "
              f"({res['variants'][v]['dtype']}; {', '.join(res['variants'][v]['linear_types'])})", flush=True)
    # round robin over the variants, best of --repeat: a shared machine's noise hits each alike
    best: dict = {v: {} for v in models}
    for r in range(args.repeat):
        for v, (m, _) in models.items():
            for key, fn, fargs, tokens in (("prefill", prefill_s, (prompts,), sum(map(len, prompts))),
                                           ("decode_b1", decode_s, (1, args.steps), args.steps),
                                           ("decode_b8", decode_s, (8, args.steps), 8 * args.steps)):
                rate = tokens / fn(m, *fargs)
                best[v][key] = max(best[v].get(key, 0.0), rate)
        print(f"  round {r + 1}/{args.repeat}: " + "; ".join(
            f"{v} {best[v]['prefill']:.0f}/{best[v]['decode_b1']:.1f}/{best[v]['decode_b8']:.1f}" for v in models)
            + "  (prefill / decode b1 / decode b8 tok/s, best so far)", flush=True)
    for v in models:
        res["variants"][v].update({f"{k}_tok_s": round(x, 1) for k, x in best[v].items()})
    for v, (m, t) in list(models.items()):
        if args.pairs or args.nll:
            res["variants"][v]["quality"] = quality(m, t, args.nll, args.pairs)
            q = res["variants"][v]["quality"]
            print(f"  {v}: NLL {q['nll']}, human agreement {q['human_agreement']}", flush=True)
        del models[v]
    ref = res["variants"].get("fp32", {})
    for row in res["variants"].values():
        if "prefill_tok_s" not in row or "prefill_tok_s" not in ref:
            continue
        row["vs_fp32"] = {k: round(row[f"{k}_tok_s"] / ref[f"{k}_tok_s"], 2) for k in ("prefill", "decode_b1",
                                                                                       "decode_b8")}
        q, rq = row.get("quality"), ref.get("quality")
        if q and rq:
            same = [a == b for a, b in zip(q["winners"], rq["winners"])]
            row["vs_fp32"]["verdict_agreement"] = round(sum(same) / len(same), 4) if same else None
            row["vs_fp32"]["nll_delta"] = (None if q["nll"] is None or rq["nll"] is None
                                           else round(q["nll"] - rq["nll"], 4))
    res["torch"], res["threads"] = torch.__version__, torch.get_num_threads()
    res["aten_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return res


def table(res: dict) -> str:
    rows = [f"{'variant':18} {'prefill':>8} {'dec b1':>7} {'dec b8':>7}   x fp32 (prefill/b1/b8)   NLL     d NLL  "
            f"verdicts = fp32"]
    for v, r in res["variants"].items():
        if "error" in r:
            rows.append(f"{v:18} {r['error']}")
            continue
        x, q = r.get("vs_fp32", {}), r.get("quality") or {}
        rows.append(f"{v:18} {r.get('prefill_tok_s', '-'):>8} {r.get('decode_b1_tok_s', '-'):>7} "
                    f"{r.get('decode_b8_tok_s', '-'):>7}   {x.get('prefill', '-')}/{x.get('decode_b1', '-')}/"
                    f"{x.get('decode_b8', '-'):<14} {q.get('nll', '-')!s:7} {x.get('nll_delta', '-')!s:6} "
                    f"{x.get('verdict_agreement', '-')}")
    return "\n".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(ALL), help=f"comma-separated, of {', '.join(ALL)}")
    p.add_argument("--prompts", type=int, default=4, help="judge prompts timed per round")
    p.add_argument("--prompt-tokens", type=int, default=500)
    p.add_argument("--steps", type=int, default=32, help="decode steps timed per batch size")
    p.add_argument("--repeat", type=int, default=3, help="rounds over all variants; each keeps its best")
    p.add_argument("--pairs", type=int, default=30, help="human pairs judged by each variant (0: none)")
    p.add_argument("--nll", type=int, default=20, help="held-out dialogues scored by each variant (0: none)")
    p.add_argument("--no-avx2", action="store_true", help="skip the AVX2 emulation subprocess")
    p.add_argument("--emulated-avx2", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args()

    import torch

    from baize.train.speedups import cpu_info
    cpu = cpu_info()
    kind = "avx2-emulated" if args.emulated_avx2 else cpu["kind"]
    t0 = time.monotonic()
    print(f"CPU: {cpu['model']}, {cpu['cpus']} cores, flags {' '.join(cpu['flags']) or '-'} ({cpu['kind']}); "
          f"torch {torch.__version__}, ATen capability {torch.backends.cpu.get_cpu_capability()}", flush=True)
    if args.emulated_avx2:
        print("EMULATED AVX2: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 on this AVX-512 CPU, not a real "
              "AVX2 machine", flush=True)
    with contextlib.suppress(OSError):
        load = os.getloadavg()
    res = {"cpu": cpu, "kind": kind, "emulated": bool(args.emulated_avx2), "load_average_start": list(load),
           "args": {k: v for k, v in vars(args).items() if k != "out"}}
    res.update(measure(args, kind))
    res["seconds"] = round(time.monotonic() - t0, 1)
    res["load_average_end"] = list(os.getloadavg())
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    res["commit"] = rev.stdout.strip() or None
    print(f"\n== {kind}" + (" (EMULATED on an AVX-512 CPU)" if args.emulated_avx2 else "") +
          f": {cpu['model']} ({' '.join(cpu['flags'])}), load average {res['load_average_start'][0]:.1f}"
          f" -> {res['load_average_end'][0]:.1f}")
    print(table(res))
    out = Path(args.out) / f"weights_speed-{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")
    if not args.emulated_avx2 and not args.no_avx2 and kind != "avx2":
        print("\n== now the AVX2 kind, EMULATED in a subprocess (" +
              " ".join(f"{k}={v}" for k, v in EMULATED_AVX2.items()) + ")", flush=True)
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--emulated-avx2"],
                       env={**os.environ, **EMULATED_AVX2}, check=False)


if __name__ == "__main__":
    main()
