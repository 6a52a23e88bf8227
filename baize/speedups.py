"""Training speed-ups that torch, transformers and peft lack on CPU, each checked against the stock path.

A CPU training step of a small model spends as much time around the matrix products as in them:
the loss over a 49K vocabulary, the LoRA dropout masks and bf16 casts. Each function here removes
one such cost without changing the result beyond float rounding; train.py applies them.
"""
from __future__ import annotations

import functools

CE_CHUNK = 64  # rows of logits per chunk: 64 x 49K fp32 is 12 MB, inside a server CPU's cache


def chunked_causal_lm_loss(logits, labels=None, vocab_size: int | None = None, num_items_in_batch=None,
                           ignore_index: int = -100, shift_labels=None, **kw):
    """transformers' ForCausalLMLoss, computed a few rows at a time (set as `model.loss_function`).

    The stock loss upcasts all logits to fp32, keeps their log-softmax for backward and zero-fills a
    gradient of the same size: on CPU that was a fifth of a step of the default model (tokens x 49K
    floats, several times over, far outside any cache). Here each chunk is upcast, reduced and
    dropped; backward recomputes its softmax from the logits autograd holds anyway. Same formula,
    same reductions (sum / num_items_in_batch, else the mean over labelled tokens)."""
    import torch
    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    vocab_size = vocab_size or logits.shape[-1]
    y = shift_labels.reshape(-1).to(logits.device)
    total = _chunked_ce().apply(logits.reshape(-1, vocab_size), y, ignore_index)
    n = num_items_in_batch if num_items_in_batch is not None else (y != ignore_index).sum()
    return total / (n.to(total.device) if torch.is_tensor(n) else n)


@functools.cache  # one autograd Function class, built on first use (torch is imported lazily)
def _chunked_ce():
    import torch

    class ChunkedCE(torch.autograd.Function):
        """Sum over labelled rows of logsumexp(x) - x[y]; d/dx = softmax(x) - onehot(y)."""

        @staticmethod
        def forward(ctx, logits, y, ignore_index):
            keep = y != ignore_index
            yc = torch.where(keep, y, 0)
            lse = torch.empty(len(y), dtype=torch.float32, device=logits.device)
            total = torch.zeros((), dtype=torch.float32, device=logits.device)
            for a in range(0, len(y), CE_CHUNK):
                x = logits[a:a + CE_CHUNK].float()
                lse[a:a + CE_CHUNK] = torch.logsumexp(x, -1)
                tgt = x.gather(1, yc[a:a + CE_CHUNK, None])[:, 0]
                total += ((lse[a:a + CE_CHUNK] - tgt) * keep[a:a + CE_CHUNK]).sum()
            ctx.save_for_backward(logits, yc, keep, lse)
            return total

        @staticmethod
        def backward(ctx, grad):
            logits, yc, keep, lse = ctx.saved_tensors
            out = torch.empty_like(logits)  # every row is written below: no zero-fill of the whole
            scale = grad.float() * keep
            rows = torch.arange(min(CE_CHUNK, len(yc)), device=logits.device)
            for a in range(0, len(yc), CE_CHUNK):
                b = min(a + CE_CHUNK, len(yc))
                g = (logits[a:b].float() - lse[a:b, None]).exp_()
                g[rows[:b - a], yc[a:b]] -= 1
                out[a:b] = g.mul_(scale[a:b, None])
            return out, None, None

    return ChunkedCE


def cpu_speedups(model, *, bf16: bool, ours: bool = True) -> None:
    """What `baize train` applies on CPU: bf16 frozen weights under bf16 autocast (bit-identical, always),
    and with `ours` (--speedups) the chunked loss and the cheaper dropout mask."""
    if bf16:
        frozen_linears_to_bf16(model)
    if not ours:
        return
    cheap_cpu_dropout(model)
    from transformers.loss.loss_utils import ForCausalLMLoss
    base = model.get_base_model()
    if base.loss_function is ForCausalLMLoss:  # a model with its own loss keeps it
        base.loss_function = chunked_causal_lm_loss


def frozen_linears_to_bf16(model) -> None:
    """Under bf16 autocast every linear casts its fp32 weight to bf16 on each forward; casting the frozen
    base weights once gives bit-identical results without that traffic (norms, embeddings stay fp32)."""
    import torch
    for m in model.modules():
        base = getattr(m, "base_layer", None)
        if isinstance(base, torch.nn.Linear) and not base.weight.requires_grad:
            base.weight.data = base.weight.data.to(torch.bfloat16)
            if base.bias is not None:
                base.bias.data = base.bias.data.to(torch.bfloat16)


def cheap_cpu_dropout(model) -> int:
    """Swap peft's LoRA dropouts for one with the same law and a quarter of the random draws (CPU only).

    nn.Dropout's bernoulli_ draws one random number per element: with LoRA on 7 linears that share 3
    inputs it took about a tenth of a CPU training step of the default model, and neither torch nor
    peft has a cheaper mask. One 63-bit draw gives four 15-bit uniforms here (half the time per mask);
    the drop probability is rounded to 1/32768 and the scale matches it, so the expectation is exact.
    Returns how many dropouts were swapped."""
    import torch

    class CPUDropout(torch.nn.Module):
        def __init__(self, p: float):
            super().__init__()
            self.p, self.cut = p, round(p * 32768)

        def forward(self, x):
            if not self.training or not self.cut:
                return x
            bits = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_()
            keep = (bits.view(torch.int16)[:x.numel()].view(x.shape) & 0x7FFF) >= self.cut
            return x * keep * (32768 / (32768 - self.cut))

    n = 0
    for m in model.modules():
        drops = getattr(m, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for k, d in drops.items():
            if isinstance(d, torch.nn.Dropout) and 0 < d.p < 1:
                drops[k] = CPUDropout(d.p)
                n += 1
    return n
