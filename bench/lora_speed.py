"""A decode step with a LoRA adapter (llm/packing.lean_lora) against peft's own forward and the base
model alone, measured in one run: the embedded model (dtype auto) with a random rank-8 adapter on
all 7 projections (the shape `baize train` makes; speed does not depend on the values), 8 rows
decoding through the engine's own step, alternated --repeat times, best of each.

    python bench/lora_speed.py --json bench/results/lora_speed-avx512-bf16.json
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from serve_throughput import QUESTIONS  # noqa: E402  (bench/ is this script's folder)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--json")
    a = p.parse_args()
    import torch
    from peft import LoraConfig, get_peft_model

    from baize.llm.base import GenParams
    from baize.llm.engine import BatchEngine, Request
    from baize.llm.models import cpu_flags, load_model
    from baize.llm.packing import _LeanLora
    from baize.train.speedups import NOTED_FLAGS

    flags = sorted(NOTED_FLAGS & cpu_flags())  # the flags train logs too
    model, tok = load_model("default", dtype="auto")
    torch.manual_seed(0)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                            init_lora_weights=False)).eval()
    eng = BatchEngine(peft, tok, max_batch=16, eos_ids=())  # packs the linears and makes LoRA lean
    lean = {m: m.__dict__["forward"] for m in peft.modules() if isinstance(m.__dict__.get("forward"), _LeanLora)}
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                       tokenize=True, return_dict=False) for q in QUESTIONS]
    print(f"CPU flags {' '.join(flags)}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{model.dtype} with a float32 head where auto picks bf16; {len(lean)} LoRA layers, rank 8; "
          f"load average {os.getloadavg()[0]:.1f}")

    def step_ms(mode: str) -> float:
        for m, fwd in lean.items():
            if mode == "peft":
                m.__dict__.pop("forward", None)
            else:
                m.forward = fwd
        ctx = peft.disable_adapter() if mode == "base" else torch.no_grad()
        with ctx:
            eng._groups.clear()
            eng._run([Request(list(q), GenParams(1.0, 0.95, 10 ** 6, [], 1), i) for i, q in enumerate(prompts)])
            g = eng._groups[None]
            for _ in range(5):
                eng._step(g)
            t = time.perf_counter()
            for _ in range(a.steps):
                eng._step(g)
            return (time.perf_counter() - t) / a.steps * 1000

    best: dict = {}
    for _ in range(a.repeat):
        for mode in ("base", "peft", "lean"):
            best[mode] = min(best.get(mode, 1e9), step_ms(mode))
    for mode, label in (("base", "base model alone"), ("peft", "LoRA, peft's forward"),
                        ("lean", "LoRA, lean_lora (as shipped)")):
        print(f"  {label:30s} {best[mode]:6.1f} ms per 8-row decode step ({best[mode] / best['base']:.2f}x the base)")
    print(f"lean_lora vs peft's forward: {best['peft'] / best['lean']:.2f}x faster steps")
    if a.json:
        Path(a.json).write_text(json.dumps({"cpu_flags": flags, "torch": torch.__version__,
                                            "step_ms": {k: round(v, 1) for k, v in best.items()}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
