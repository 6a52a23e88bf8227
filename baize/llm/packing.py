"""The engine's linear layers in oneDNN's blocked weight layout (CPU, float32 or bf16), which is what
torch.compile's CPU "freezing" does to a linear, without the compile.

Why: a decode step is a few rows (one per client) times every weight matrix, and for such skinny
products MKL's sgemm is slow: measured on a 2-core AVX-512 EPYC, a 576x1536 linear took 0.58 ms for
8 rows against 0.32 ms from prepacked oneDNN (0.095 vs 0.072 ms for one row), and a whole 8-row
decode step of SmolLM2-135M went from 256-273 ms to 161-189 ms (1 thread, the machine loaded). The
results agree with F.linear to float rounding (the sums are taken in another order), not bit for bit.
bf16 weights (on a CPU with native bf16): F.linear 0.70 ms, packed 0.33 ms at 8 rows, the same bits.

The packed copy is extra memory (as much again as the fp32 linear weights); it is made once, and
made again if the weight tensor is replaced or changed in place through autograd-visible ops (its
version counter moves). With grad enabled (training) the layer runs as before.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import threading


def pack_linears(model, rows: int = 16) -> int:
    """Make every plain float32 (and, where the CPU has native bf16, bfloat16) CPU nn.Linear of
    model run on a prepacked oneDNN weight when no gradient is wanted; returns how many were packed.
    rows: the batch the layout is tuned for."""
    import torch
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return 0
    dtypes = {torch.float32}
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # else oneDNN would emulate bf16, slowly
        dtypes.add(torch.bfloat16)
    n = 0
    for mod in model.modules():
        w = getattr(mod, "weight", None)
        if type(mod) is torch.nn.Linear and type(w) is torch.nn.Parameter and w.dtype in dtypes \
                and w.device.type == "cpu" and not isinstance(mod.__dict__.get("forward"), _Packed):
            mod.forward = _Packed(mod, rows)
            n += 1
    return n


def unpack_linears(model) -> None:
    for mod in model.modules():
        if isinstance(mod.__dict__.get("forward"), _Packed):
            del mod.forward


_sampling = threading.local()


@contextlib.contextmanager
def sampled_logits():
    """Within (on this thread): the logits computed are only sampled from (the engine's prefills and
    decode steps), never read as log-probabilities. An LM head kept in float32 on a bf16 model for
    the judge's reads (models.float32_head: bf16 logits move option log-probs in steps of 0.125) then
    runs a bf16 copy of its weight instead: half the bytes of the largest matrix read each step
    (3.6 -> 1.8 ms of an 8-row step of the embedded model). Sampling from bf16 logits is what
    transformers and vLLM do with bf16 models; log-probs (the judge, NLL, the server's `logprobs`)
    are computed outside this context, in float32."""
    before = getattr(_sampling, "on", False)
    _sampling.on = True
    try:
        yield
    finally:
        _sampling.on = before


class _Packed:
    """A Linear's forward: the packed weight when no gradient is wanted, F.linear otherwise."""

    def __init__(self, mod, rows: int):
        self.mod, self.rows = mod, rows
        self.key = self.packed = None
        self.sample_key = self.sample_packed = None  # the bf16 copy a float32 head samples with
        self.weight()  # now, not in the first request's time

    def _repack(self, slot: str, dtype=None):
        """The weight packed (cast to dtype first, if given), made again when the weight changed."""
        import torch
        w = self.mod.weight
        key = (w.data_ptr(), w._version, tuple(w.shape))
        if key != getattr(self, slot + "key"):
            src = w.detach() if dtype is None else w.detach().to(dtype)
            setattr(self, slot + "packed", torch.ops.mkldnn._reorder_linear_weight(src, self.rows))
            setattr(self, slot + "key", key)
        return getattr(self, slot + "packed")

    def weight(self):
        return self._repack("")

    def sample_weight(self):
        import torch
        return self._repack("sample_", torch.bfloat16)

    def __call__(self, x):
        import torch
        mod = self.mod
        if getattr(mod, "samples_in_bf16", False) and getattr(_sampling, "on", False) and mod.bias is None \
                and x.device.type == "cpu" and not torch.is_grad_enabled():
            return torch.ops.mkldnn._linear_pointwise(x.bfloat16(), self.sample_weight(), None, "none", [], "")
        if torch.is_grad_enabled() or x.dtype != mod.weight.dtype or x.device.type != "cpu":
            return torch.nn.functional.linear(x, mod.weight, mod.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight(), mod.bias, "none", [], "")


def lean_lora(model) -> int:
    """Make every peft LoRA Linear of model run its adapters in fewer, cheaper ops when no gradient is
    wanted; returns how many. peft's forward (cast, dropout, two Linear modules, a scale, an add, a
    cast) is a dispatch each: on a CPU decode step of a few rows that made an 8-row step of
    SmolLM2-135M with a rank-8 adapter on all 7 projections 1.70x the base's; lean, 1.33x
    (bench/lora_speed.py, bench/results/lora_speed-avx512-bf16.json).

    Where the base layer is packed (llm/packing, CPU): one packed product of x with the base weight
    and every adapter's A stacked under it ([W; A_x; A_y]: r more output columns, ~7% more time at
    rank 8 than W alone), then each active adapter's low-rank columns @ (scale * B)^T in float32,
    added in place. Elsewhere: x @ A^T @ (scale * B)^T in float32 added in place. A bf16 model gets
    A and x @ A^T rounded to bf16 (an error of ~1% of the adapter's own effect on the logits, tested; peft
    computes them in float32); the rest is peft's arithmetic (it too adds the float32 delta to the output and
    rounds the sum to its dtype). Not a merge: merged into bf16 weights, W + dW would be rounded to
    W's precision and most of a small dW lost. Anything else (training, dropout in train mode, a
    merged adapter, DoRA and other variants, peft's per-row adapter_names) takes peft's
    own forward."""
    n = 0
    for mod in model.modules():
        if all(hasattr(mod, a) for a in ("lora_A", "lora_B", "base_layer", "scaling", "lora_variant")) \
                and type(mod).__name__ == "Linear" and not isinstance(mod.__dict__.get("forward"), _LeanLora):
            mod.forward = _LeanLora(mod)
            n += 1
    return n


class _LeanLora:
    """A peft LoRA Linear's forward without gradient: see lean_lora. What a call needs for one set of
    active adapters is a plan, built once and checked each call for a changed or replaced weight (a
    tensor's version counter and identity) or scale: the checks read module dicts directly, because
    at ~1 us per nn.Module attribute lookup, peft-style lookups cost a decode step more than the
    adapter's products (an 8-row step of the embedded model: ~9 ms of ~55 ms; bench/lora_speed.py)."""

    def __init__(self, mod):
        self.mod = mod
        self.joint = None  # (key, packed [W; every adapter's A], bias or None, {adapter: first column})
        self.plans: dict = {}  # active adapters -> _Plan

    def __call__(self, x, *args, **kwargs):
        import torch
        mod = self.mod
        if args or kwargs or torch.is_grad_enabled() or mod.training or mod.merged:
            return type(mod).forward(mod, x, *args, **kwargs)
        active = () if mod.disable_adapters else tuple(a for a in mod.active_adapters if a in mod.lora_A)
        plan = self.plans.get(active)
        if plan is None or not plan.fresh(mod, x):
            if any(a in mod.lora_variant for a in active):  # DoRA and other variants: peft's own
                return type(mod).forward(mod, x, *args, **kwargs)
            plan = self.plans[active] = self._plan(active, x)
        return plan.run(x)

    def _plan(self, active: tuple, x) -> _Plan:
        import torch
        mod = self.mod
        base = mod.base_layer
        w = base.weight
        packed = base.__dict__.get("forward")
        adapters = [(a, mod.lora_A[a].weight, mod.lora_B[a].weight, mod.scaling[a]) for a in active]
        lows = [(B.detach().float() * scale).t().contiguous() for _, _, B, scale in adapters]
        if isinstance(packed, _Packed) and x.dtype == w.dtype and x.device.type == "cpu":
            names = tuple(mod.lora_A)
            every = [mod.lora_A[a].weight for a in names]
            key = (names, *((t.data_ptr(), t._version) for t in (w, *every)))  # as _Packed keys its weight
            if self.joint is None or self.joint[0] != key:
                stacked = torch.cat([w.detach(), *(A.detach().to(w.dtype) for A in every)])
                bias = None if base.bias is None else torch.cat(
                    [base.bias.detach(), base.bias.new_zeros(stacked.shape[0] - w.shape[0])])
                cols = dict(zip(names, itertools.accumulate((A.shape[0] for A in every[:-1]), initial=w.shape[0])))
                self.joint = (key, torch.ops.mkldnn._reorder_linear_weight(stacked, packed.rows), bias, cols)
                packed.key = packed.packed = None  # the joint product serves the base too: free its copy
                self.plans = {}  # plans of other adapter sets held the old joint
            _, joint, bias, cols = self.joint
            spans = [(cols[a], cols[a] + A.shape[0], low) for (a, A, _, _), low in zip(adapters, lows)]
            run = functools.partial(_joint_run, joint, bias, w.shape[0], spans)
        else:
            factors = [(A.detach().float().t().contiguous(), low) for (_, A, _, _), low in zip(adapters, lows)]
            run = functools.partial(_plain_run, base, factors)
        tensors = [w, *(t for _, A, B, _ in adapters for t in (A, B))]
        return _Plan(run, tensors, [(a, scale) for a, _, _, scale in adapters], x.dtype, x.device)


class _Plan:
    def __init__(self, run, tensors, scales, dtype, device):
        self.run, self.scales, self.dtype, self.device = run, scales, dtype, device
        self.tensors = [(t, t._version) for t in tensors]

    def fresh(self, mod, x) -> bool:
        if x.dtype != self.dtype or x.device != self.device:
            return False
        for t, version in self.tensors:
            if t._version != version:
                return False
        m = mod._modules
        if m["base_layer"]._parameters["weight"] is not self.tensors[0][0]:
            return False
        lora_A, lora_B, scaling = m["lora_A"]._modules, m["lora_B"]._modules, mod.scaling
        for i, (a, scale) in enumerate(self.scales):
            if (a not in lora_A or lora_A[a]._parameters["weight"] is not self.tensors[1 + 2 * i][0]
                    or lora_B[a]._parameters["weight"] is not self.tensors[2 + 2 * i][0] or scaling[a] != scale):
                return False
        return True


def _joint_run(joint, bias, n: int, spans: list, x):
    """One packed product of x with [W; A...]; each active adapter's columns @ (scale*B)^T added."""
    import torch
    out = torch.ops.mkldnn._linear_pointwise(x, joint, bias, "none", [], "")
    result = out[..., :n]
    for c0, c1, low in spans:
        result.add_(torch.matmul(out[..., c0:c1].float(), low))
    return result.contiguous()


def _plain_run(base, factors: list, x):
    import torch
    result = base(x)
    for At, low in factors:
        result.add_(torch.matmul(torch.matmul(x.float(), At), low))
    return result
