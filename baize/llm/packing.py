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
