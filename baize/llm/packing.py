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


class _Packed:
    """A Linear's forward: the packed weight when no gradient is wanted, F.linear otherwise."""

    def __init__(self, mod, rows: int):
        self.mod, self.rows = mod, rows
        self.key = self.packed = None
        self.weight()  # now, not in the first request's time

    def weight(self):
        import torch
        w = self.mod.weight
        key = (w.data_ptr(), w._version, tuple(w.shape))
        if key != self.key:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), self.rows)
            self.key = key
        return self.packed

    def __call__(self, x):
        import torch
        mod = self.mod
        if torch.is_grad_enabled() or x.dtype != mod.weight.dtype or x.device.type != "cpu":
            return torch.nn.functional.linear(x, mod.weight, mod.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight(), mod.bias, "none", [], "")


def lean_lora(model) -> int:
    """Make every peft LoRA Linear of model run its adapters in fewer, cheaper ops when no gradient is
    wanted; returns how many. peft's forward (cast, dropout, two Linear modules, a scale, an add, a
    cast) is a dispatch each: on a CPU decode step of a few rows that made an 8-row step of
    SmolLM2-135M with a rank-8 adapter on all 7 projections 1.66x the base's (bench/lora_speed.py).

    Where the base layer is packed (llm/packing, CPU): one packed product of x with the base weight
    and every adapter's A stacked under it ([W; A_x; A_y]: r more output columns, ~7% more time at
    rank 8 than W alone), then each active adapter's low-rank columns @ (scale * B)^T in float32,
    added in place. Elsewhere: x @ A^T @ (scale * B)^T in float32 added in place. A bf16 model gets
    x @ A^T rounded to bf16 (a relative error of ~0.4% of the adapter's own delta; peft computes it
    in float32); the rest is peft's arithmetic (it too adds the float32 delta to the output and
    rounds the sum to its dtype). Not a merge: merged into bf16 weights, W + dW would be rounded to
    W's precision and most of a small dW lost. Anything else (training, dropout in train mode, a
    merged or disabled adapter, DoRA and other variants, peft's per-row adapter_names) takes peft's
    own forward."""
    n = 0
    for mod in model.modules():
        if all(hasattr(mod, a) for a in ("lora_A", "lora_B", "base_layer", "scaling", "lora_variant")) \
                and type(mod).__name__ == "Linear" and not isinstance(mod.__dict__.get("forward"), _LeanLora):
            mod.forward = _LeanLora(mod)
            n += 1
    return n


class _LeanLora:
    """A peft LoRA Linear's forward without gradient: see lean_lora."""

    def __init__(self, mod):
        self.mod = mod
        self.factors: dict = {}  # adapter -> (key, A^T, (scale * B)^T), float32 and contiguous
        self.joint = None  # (key, packed [W; A...], bias or None, {adapter: first column})

    def _factors(self, adapter: str):
        A, B = self.mod.lora_A[adapter].weight, self.mod.lora_B[adapter].weight
        key = (A.data_ptr(), A._version, B.data_ptr(), B._version, self.mod.scaling[adapter])
        got = self.factors.get(adapter)
        if got is None or got[0] != key:
            got = self.factors[adapter] = (key, A.detach().float().t().contiguous(),
                                           (B.detach().float() * self.mod.scaling[adapter]).t().contiguous())
        return got[1], got[2]

    def _joint(self, packed: _Packed):
        import torch
        base, lora_A = self.mod.base_layer, self.mod.lora_A
        w = base.weight
        key = (w.data_ptr(), w._version, *((a, lora_A[a].weight.data_ptr(), lora_A[a].weight._version)
                                           for a in lora_A))
        if self.joint is None or self.joint[0] != key:
            cols, At = {}, [w.detach()]
            for a in lora_A:
                cols[a] = sum(t.shape[0] for t in At)
                At.append(lora_A[a].weight.detach().to(w.dtype))
            stacked = torch.cat(At)
            bias = None if base.bias is None else torch.cat([base.bias.detach(),
                                                            base.bias.new_zeros(stacked.shape[0] - w.shape[0])])
            self.joint = (key, torch.ops.mkldnn._reorder_linear_weight(stacked, packed.rows), bias, cols)
            packed.key = packed.packed = None  # the joint product serves the base too: free its copy
        return self.joint[1:]

    def __call__(self, x, *args, **kwargs):
        import torch
        mod = self.mod
        if (torch.is_grad_enabled() or args or kwargs or mod.training or mod.merged
                or any(a in mod.lora_variant for a in mod.active_adapters)):
            return type(mod).forward(mod, x, *args, **kwargs)
        active = [] if mod.disable_adapters else [a for a in mod.active_adapters if a in mod.lora_A]
        base = mod.base_layer
        packed = base.__dict__.get("forward")
        if isinstance(packed, _Packed) and x.dtype == base.weight.dtype and x.device.type == "cpu":
            w, bias, cols = self._joint(packed)
            out = torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")
            result = out[..., :base.weight.shape[0]]
            for a in active:
                low = out[..., cols[a]:cols[a] + mod.lora_A[a].weight.shape[0]]
                result.add_(torch.matmul(low.float(), self._factors(a)[1]))
            return result.contiguous()
        result = base(x)
        for a in active:
            At, Bt = self._factors(a)
            result.add_(torch.matmul(torch.matmul(x.float(), At), Bt))
        return result
