"""Training speed-ups that torch, transformers and peft lack on CPU, each checked against the stock path.

A CPU training step of a small model spends as much time around the matrix products as in them:
the loss over a 49K vocabulary, the LoRA dropout masks and bf16 casts. Each function here removes
one such cost without changing the result beyond float rounding; the SFT recipe (sft.py) applies them
and plans its passes with `plan_passes` (DPO plans with it too; TRL's trainer gets the rest).
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from pathlib import Path

from ..llm.models import cpu_flags

NOTED_FLAGS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}  # what decides CPU training speed
CE_CHUNK = 64  # rows of logits per chunk: 64 x 49K fp32 is 12 MB, inside a server CPU's cache


def chunked_causal_lm_loss(logits, labels=None, vocab_size: int | None = None, num_items_in_batch=None,
                           ignore_index: int = -100, shift_labels=None, **kw):
    """transformers' ForCausalLMLoss, computed a few rows at a time (set as `model.loss_function`).

    The stock loss upcasts all logits to fp32, keeps their log-softmax for backward and zero-fills a
    gradient of the same size: on CPU that was a fifth of a step of the default model (tokens x 49K
    floats, several times over, far outside any cache). Here each chunk is upcast, reduced and
    dropped; backward recomputes its softmax from the logits autograd holds anyway. Same formula,
    same reductions (sum / num_items_in_batch, else the mean over labelled tokens)."""
    y = _targets(labels, shift_labels, ignore_index, logits.device)
    total = _chunked_ce().apply(logits.reshape(-1, vocab_size or logits.shape[-1]), y, ignore_index)
    return _per_item(total, num_items_in_batch, (y != ignore_index).sum())


def _targets(labels, shift_labels, ignore_index: int, device):
    """The next-token target of every position, flat (transformers' shift when none is given)."""
    import torch
    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    return shift_labels.reshape(-1).to(device)


def _per_item(total, num_items_in_batch, labelled):
    """transformers' reduction: the sum over num_items_in_batch when the Trainer gives it, else the mean."""
    import torch
    n = num_items_in_batch if num_items_in_batch is not None else labelled
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


HEAD_CHUNK = 256  # rows of logits at a time in head_in_loss: 256 x 49K fp32 is a 50 MB buffer, reused


def cpu_info() -> dict:
    """What a benchmark figure must be quoted with: the CPU model, the flags that decide its speed and
    a kind for file names (avx2, avx512, avx512-bf16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    flags = sorted(NOTED_FLAGS & cpu_flags())
    kind = ("avx512-bf16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "avx512" if "avx512f" in flags
            else "avx2" if "avx2" in flags else "other")
    return {"model": model, "flags": flags, "kind": kind, "cpus": os.cpu_count()}


@contextlib.contextmanager
def head_in_loss(model):
    """During SFT on CPU, the LM head runs inside the loss, a chunk of rows at a time (torch, transformers
    and peft have no such fused linear + cross-entropy off GPU; Liger's is Triton-only).

    The stock path writes tokens x 49K logits, reads them back for the loss, and writes their gradient as
    large again: on a small CPU the head cost more in memory traffic and page faults than in FLOPs, and
    those tensors were a large part of the peak memory. Here the frozen head's weight multiplies each
    chunk of hidden states into one reused buffer, where the loss and the gradient of the hidden states
    are computed at once (the head is frozen: no weight gradient is needed), so backward only scales a
    tokens x hidden tensor. Same formula as the stock loss; the model's `logits` output holds the hidden
    states meanwhile, which nothing in training reads. Applies to a plain bias-free Linear head that is
    not trained and a stock causal-LM loss; anything else (softcapping, a trained head) is left alone."""
    from transformers.loss.loss_utils import ForCausalLMLoss
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    import torch
    ok = (type(head) is torch.nn.Linear and head.bias is None and not head.weight.requires_grad
          and base.loss_function in (ForCausalLMLoss, chunked_causal_lm_loss)
          and not getattr(base.config, "final_logit_softcapping", None))
    if not ok:
        yield False
        return
    stock_loss = base.loss_function
    base.set_output_embeddings(_pass_hidden_class()(head.weight))
    base.loss_function = functools.partial(fused_head_loss, weight=head.weight)
    try:
        yield True
    finally:
        base.set_output_embeddings(head)
        base.loss_function = stock_loss


@functools.cache
def _pass_hidden_class():
    import torch

    class PassHidden(torch.nn.Module):
        """Where the head was: hands the hidden states to the loss (which holds the head's weight)."""

        def __init__(self, weight):
            super().__init__()
            object.__setattr__(self, "head_weight", weight)  # not a submodule: state dicts stay the model's

        def forward(self, h):
            return h
    return PassHidden


def fused_head_loss(logits, labels=None, vocab_size=None, num_items_in_batch=None, ignore_index: int = -100,
                    shift_labels=None, *, weight, **kw):
    """transformers' causal-LM loss of `logits @ weight.T`: the `logits` it is handed are the hidden
    states (see head_in_loss); the keyword is the one the model calls the loss with."""
    y = _targets(labels, shift_labels, ignore_index, logits.device)
    h = logits.reshape(-1, logits.shape[-1])
    rows = (y != ignore_index).nonzero().squeeze(1)
    if len(rows) < len(y):  # unlabelled rows (prompts, padding) never reach the head
        h, y = h[rows], y[rows]
    return _per_item(_fused_head_ce().apply(h, weight, y), num_items_in_batch, len(y))


@functools.cache
def _fused_head_ce():
    import torch

    class FusedHeadCE(torch.autograd.Function):
        """Sum over rows of logsumexp(h W^T) - (h W^T)[y]; d/dh = (softmax - onehot) W, computed in forward."""

        @staticmethod
        def forward(ctx, h, w, y):
            # under CPU autocast the head's product runs in its dtype, as the stock lm_head's would
            dt = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else h.dtype
            with torch.autocast("cpu", enabled=False):
                hd, wd = h.detach().to(dt), w.detach().to(dt)
                grad = torch.empty(h.shape, dtype=torch.float32, device=h.device)
                total = torch.zeros((), dtype=torch.float32, device=h.device)
                # fp32: logits computed transposed, vocabulary x rows (MKL's W @ h^T ran ~1.3x faster on
                # AVX2 than h @ W^T for this product of a small K and a huge N) and used through a
                # rows x vocabulary view; bf16 keeps the row layout (not measured on a bf16 CPU)
                flip = dt == torch.float32
                n = min(HEAD_CHUNK, len(y))
                buf = torch.empty((w.shape[0], n) if flip else (n, w.shape[0]), dtype=dt, device=h.device)
                rows = torch.arange(n, device=h.device)
                for a in range(0, len(y), HEAD_CHUNK):
                    b = min(a + HEAD_CHUNK, len(y))
                    if flip:
                        z = torch.mm(wd, hd[a:b].t(), out=buf if b - a == n else buf.new_empty((len(buf), b - a))).t()
                    else:
                        z = torch.mm(hd[a:b], wd.t(), out=buf[:b - a]).float()
                    # softmax in place, in four passes over the chunk (torch.logsumexp makes two
                    # temporaries as large, and softmax would then need two more passes)
                    target = z[rows[:b - a], y[a:b]]
                    top = z.amax(-1, keepdim=True)
                    sums = z.sub_(top).exp_().sum(-1, keepdim=True)
                    total += (sums.log() + top)[:, 0].sub_(target).sum()  # logsumexp - target logit
                    z.div_(sums)
                    z[rows[:b - a], y[a:b]] -= 1
                    grad[a:b] = torch.mm(z.to(dt), wd).float()
            ctx.save_for_backward(grad)
            ctx.h_dtype = h.dtype
            return total

        @staticmethod
        def backward(ctx, g):
            (grad,) = ctx.saved_tensors
            return (grad * g).to(ctx.h_dtype), None, None

    return FusedHeadCE


def cpu_speedups(model, *, bf16: bool, ours: bool = True, skip=()) -> list[str]:
    """What `baize train` applies on CPU: bf16 frozen weights under bf16 autocast (bit-identical, always),
    and with `ours` (--speedups) the chunked loss, LoRA's products folded, glibc's allocator kept from
    returning memory to the OS, and the cheaper dropout mask. `head_in_loss` (a context)
    goes with them in SFT. `skip`: names (as returned) that the launch rules out (distributed.speedups_off).
    Returns what was applied, for the log."""
    done = []
    if bf16 and "bf16 frozen weights" not in skip:
        frozen_linears_to_bf16(model)
        done.append("bf16 frozen weights")
    if not ours:
        return done
    if keep_freed_memory():
        done.append("freed memory kept")
    if cheap_cpu_dropout(model):
        done.append("cheaper dropout mask")
    if "LoRA products folded" not in skip and fold_lora_products(model):
        done.append("LoRA products folded")
    from transformers.loss.loss_utils import ForCausalLMLoss
    base = model.get_base_model()
    if base.loss_function is ForCausalLMLoss:  # a model with its own loss keeps it
        base.loss_function = chunked_causal_lm_loss
        done.append("chunked loss")
    return done


def keep_freed_memory() -> bool:
    """glibc returns every large freed block to the OS (mmap'd, or trimmed off the heap), so the next
    step's activations of the same size fault in fresh zeroed pages: on a small CPU whose memory
    bandwidth is the limit, that cost about a tenth of a training step. Keep freed memory in the heap
    (what jemalloc/tcmalloc do, which Intel's PyTorch CPU guide preloads); peak RSS stays the same
    since every step reuses what the last one freed. A no-op off glibc."""
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 40)
                and libc.mallopt(M_TOP_PAD, 64 << 20))


def fold_lora_products(model) -> int:
    """peft computes `result + lora_B(lora_A(dropout(x))) * scaling`: three passes over a tokens x out
    tensor (B's product, the scale, the sum) and three more in backward, for an update of rank 8. The
    same sum as one `addmm_` into the base output, with the scale (and the dropout's 1/(1-p)) applied to
    the tokens x r product instead: on a CPU whose memory bandwidth is the limit, those passes cost as
    much as the LoRA matmuls. Plain lora.Linear layers only (not DoRA, variants, mixed adapters, merged
    or disabled ones: those keep peft's forward). Returns how many layers were folded."""
    import types

    from peft.tuners.lora import Linear
    n = 0
    for m in model.modules():
        if type(m) is Linear and not hasattr(m, "_stock_forward"):  # exact class: bnb/other layers keep theirs
            m._stock_forward = m.forward
            m.forward = types.MethodType(_folded_lora_forward, m)
            n += 1
    return n


def _folded_lora_forward(self, x, *args, **kwargs):
    import torch
    active = [a for a in self.active_adapters if a in self.lora_A]
    if (self.disable_adapters or self.merged or len(active) != 1 or kwargs.get("adapter_names") is not None
            or active[0] in getattr(self, "lora_variant", {}) or self.use_dora.get(active[0])):
        return self._stock_forward(x, *args, **kwargs)
    a = active[0]
    result = self.base_layer(x, *args, **kwargs)
    lora_A, lora_B, drop, scale = self.lora_A[a], self.lora_B[a], self.lora_dropout[a], self.scaling[a]
    x = self._cast_input_dtype(x, lora_A.weight.dtype)
    if isinstance(drop, torch.nn.Identity) or not drop.training:
        h = lora_A(x)
    elif isinstance(drop, _cpu_dropout_class()) and lora_A.bias is None:  # ours: its 1/(1-p) joins the rank-r product's scale
        h, scale = _drop_then_a().apply(x, lora_A.weight, drop, drop.seed()), scale * drop.inv
    else:
        h = lora_A(drop(x))
    out = result.reshape(-1, result.shape[-1])
    h = (h * scale).reshape(-1, h.shape[-1]).to(out.dtype)
    # not in place: an in-place addmm_ on the (viewed) base output makes autograd copy and zero-fill it
    return torch.addmm(out, h, lora_B.weight.t().to(out.dtype)).view(result.shape)


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
    """Swap peft's LoRA dropouts for one with the same law at a fraction of the cost (CPU only).

    nn.Dropout's bernoulli_ draws a double from torch's Mersenne Twister per element, on one thread:
    with LoRA on all 7 linears that was 18 % of a CPU training step of the default model on AVX2
    (2.6 ms for a 411 x 576 input), and neither torch nor peft has a cheaper mask. At LoRA's small p
    most of those draws decide nothing, so here only the dropped elements are drawn: M ~ Poisson(-n
    log(1-p)) positions uniform over the n elements (numpy's PCG64), each one hit at least once is
    dropped. By Poisson splitting an element's hit count is Poisson(-log(1-p)), independently of the
    others, so each is dropped with probability exactly p, independently: nn.Dropout's law, drawn with
    ~n/19 integers at p=0.05 instead of n doubles, and applied as a scatter of zeros instead of a
    mask pass. The generator is seeded per call from torch's, so torch.manual_seed (and a resumed
    checkpoint's RNG state) fixes the masks as it fixes torch's own. In the folded LoRA forward the
    positions are kept for backward in place of a mask (see _drop_then_a). Returns how many dropouts
    were swapped."""
    import torch
    cls, n = _cpu_dropout_class(), 0
    for m in model.modules():
        drops = getattr(m, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for k, d in drops.items():
            if isinstance(d, torch.nn.Dropout) and 0 < d.p < 1:
                drops[k] = cls(d.p)
                n += 1
    return n


@functools.cache
def _cpu_dropout_class():
    import torch

    class CPUDropout(torch.nn.Module):
        def __init__(self, p: float):
            super().__init__()
            self.p = p

        @property
        def p(self) -> float:
            return self._p

        @p.setter
        def p(self, p: float):
            self._p, self.inv = p, 1 / (1 - p)
            self.rate = -math.log1p(-p)  # Poisson hits per element: P(no hit) = 1 - p

        @staticmethod
        def seed() -> int:
            # from torch's generator, seeded like torch's own dropout; in parallel_step's threads, from the
            # dialogue's own generator, so a dialogue's masks do not depend on which thread ran first
            return int(torch.randint(2 ** 63 - 1, (), generator=getattr(_worker, "generator", None)))

        def dropped(self, n: int, seed: int):
            """Flat positions of the dropped elements of an n-element tensor (some repeated): each
            element is among them with probability p, independently of the others."""
            import numpy as np
            g = np.random.Generator(np.random.PCG64(seed))
            return torch.from_numpy(g.integers(0, n, size=g.poisson(n * self.rate)))

        def keep(self, shape, seed: int, dtype):
            """The {0, 1} mask that `dropped` gives (for tests and checks)."""
            return torch.ones(shape, dtype=dtype).view(-1).index_fill_(0, self.dropped(math.prod(shape), seed), 0).view(shape)

        def forward(self, x):
            if not self.training or not self.p:
                return x
            y = x.reshape(-1) * self.inv
            return y.index_fill_(0, self.dropped(y.numel(), self.seed()), 0).view(x.shape)

    return CPUDropout


@functools.cache
def _drop_then_a():
    import torch

    class DropThenA(torch.autograd.Function):
        """(x * keep) @ A^T, A being LoRA's down-projection, for our CPUDropout: the dropped input is a
        copy of x with zeros scattered in, kept for A's weight gradient; the input's gradient gets the
        same zeros from the kept positions (a twentieth of the elements at p=0.05), where autograd
        would keep a float mask as large as x. Under CPU autocast the product runs in its dtype, as
        the stock lora_A's would."""

        @staticmethod
        def forward(ctx, x, w, drop, seed):
            dt = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else w.dtype
            with torch.autocast("cpu", enabled=False):
                where = drop.dropped(x.numel(), seed)
                xd = x.reshape(-1).to(dt, copy=True).index_fill_(0, where, 0).view(x.shape)
                ctx.save_for_backward(xd, w, where)
                ctx.x_dtype = x.dtype
                return torch.matmul(xd, w.to(dt).t())

        @staticmethod
        def backward(ctx, gh):
            xd, w, where = ctx.saved_tensors
            gx = gw = None
            with torch.autocast("cpu", enabled=False):
                gh = gh.to(xd.dtype)
                if ctx.needs_input_grad[0]:
                    gx = torch.matmul(gh, w.to(xd.dtype)).to(ctx.x_dtype)
                    gx.view(-1).index_fill_(0, where, 0)
                if ctx.needs_input_grad[1]:
                    gw = torch.mm(gh.reshape(-1, gh.shape[-1]).t(), xd.reshape(-1, xd.shape[-1])).to(w.dtype)
            return gx, gw, None, None

    return DropThenA


def plan_passes(model, per_process: int, micro: int | None, parallel: int, log, *, cpu_packed: bool,
                threads: bool) -> tuple[int, int]:
    """(dialogues trained at once, dialogues per pass) for a process's `per_process` dialogues of a step;
    `micro` and `parallel` as asked (--micro-batch-size, --parallel-dialogues; None, 0: choose here).

    `cpu_packed`: packed batches on CPU; `threads`: parallel_step may run (SFT, one process, --speedups).
    Threads also need every stock dropout gone: cheap_cpu_dropout's draws from the dialogue's own
    generator, torch's would interleave the threads' draws and a run would not repeat."""
    import torch
    workers = 1
    if cpu_packed and threads and not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        workers = parallel or (2 if torch.get_num_threads() >= 2 else 1)
    elif parallel > 1:
        log("--parallel-dialogues applies to packed SFT on one CPU process with --speedups: one pass at a time here")
    if workers > 1:  # a pass holds up to 8 dialogues, so that the threads' loads even out
        micro = micro or max(d for d in range(1, min(8, per_process) + 1) if per_process % d == 0)
        log(f"{workers} dialogues trained at once, a thread each with {max(1, torch.get_num_threads() // workers)} "
            f"for its ops (--parallel-dialogues 1: one packed pass at a time)")
    else:  # on CPU 2 per pass (1 when that would round an odd batch up: the batch asked for is kept)
        micro = micro or ((2 if per_process % 2 == 0 else 1) if cpu_packed else 8)
    return workers, min(micro, per_process)


_worker = threading.local()  # a parallel_step thread's dropout generator


def parallel_trainer(trainer_class, workers: int):
    """`trainer_class` whose training step trains the dialogues of a packed batch `workers` at a time
    (parallel_step), or as the stock step does when there is one dialogue or workers is 1."""

    class ParallelDialogues(trainer_class):
        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = parallel_step(self, model, inputs, num_items_in_batch, workers) if workers > 1 else None
            return super().training_step(model, inputs, num_items_in_batch) if loss is None else loss

    return ParallelDialogues


def parallel_step(trainer, model, inputs, num_items_in_batch, workers: int):
    """The Trainer's training step for a packed row, its dialogues run `workers` at a time, each on its
    own thread with a share of the cores for its ops (2 x 1 on a 2-core CPU).

    A CPU step of a small model is not all matrix products: Python, autograd's bookkeeping, the dropout
    draws and the small ops run on one core or scale badly over two. Two dialogues at a time on one
    thread each keep both cores busy (in one process on AVX2, 2 cores: +16 % tokens/s over the packed
    pair, the 8 dialogues of a step longest first so the threads finish together). Same loss and
    gradients as the packed row up to float rounding (attention never crosses dialogues; each
    dialogue's loss is normalised by the step's num_items_in_batch), summed in dialogue order whatever
    the schedule, and dropout masks drawn from one generator per dialogue seeded in order from torch's:
    a run stays reproducible. Single process only (DDP's gradient hooks are not run here); returns None
    for a batch it does not handle, which the caller trains as usual."""
    import queue

    import torch

    from .packing import split_packed
    parts = split_packed(inputs)
    if len(parts) < 2 or trainer.args.world_size > 1:
        return None
    model.train()
    if callable(getattr(trainer.optimizer, "train", None)):
        trainer.optimizer.train()
    params = [p for p in model.parameters() if p.requires_grad]
    scaled = trainer.model_accepts_loss_kwargs and num_items_in_batch is not None  # as the stock step decides
    div = 1 if scaled else getattr(trainer, "current_gradient_accumulation_steps", 1)
    seeds = [int(torch.randint(2 ** 63 - 1, ())) for _ in parts]
    todo = queue.SimpleQueue()
    for i in sorted(range(len(parts)), key=lambda i: -parts[i]["input_ids"].shape[1]):
        todo.put(i)
    losses, grads, errors = [None] * len(parts), [None] * len(parts), []

    def work():
        try:
            with trainer.compute_loss_context_manager():  # autocast is per thread
                while not errors:
                    try:
                        i = todo.get_nowait()
                    except queue.Empty:
                        return
                    _worker.generator = torch.Generator().manual_seed(seeds[i])
                    loss = trainer.compute_loss(model, parts[i], num_items_in_batch=num_items_in_batch) / div
                    grads[i] = torch.autograd.grad(loss, params, allow_unused=True)
                    losses[i] = loss.detach()
        except BaseException as e:  # re-raised by the calling thread
            errors.append(e)
        finally:
            _worker.generator = None

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // workers))
    try:
        pool = [threading.Thread(target=work, daemon=True) for _ in range(workers - 1)]
        for t in pool:
            t.start()
        work()
        for t in pool:
            t.join()
    finally:
        torch.set_num_threads(threads)
    if errors:
        raise errors[0]
    for gs in grads:  # dialogue order: the same sums whichever thread finished first
        for p, g in zip(params, gs):
            if g is not None:
                p.grad = g if p.grad is None else p.grad.add_(g)
    return torch.stack(losses).sum()
