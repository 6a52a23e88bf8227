"""The CPU training speed-ups of speedups.py, each against the stock torch/transformers/peft path it
replaces (same loss and gradients up to float rounding), and the CPU batch plan; on a tiny random LLaMA."""
import pytest
from test_train import MSGS


def test_bf16_frozen_weights_change_nothing_under_autocast(tiny_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from baize.train.speedups import frozen_linears_to_bf16
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.0))
    ids = torch.randint(3, 40000, (1, 40), generator=torch.Generator().manual_seed(0))

    def loss_and_grads():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]
    ref = loss_and_grads()
    frozen_linears_to_bf16(model)
    got = loss_and_grads()
    assert ref[0] == got[0] and all(torch.equal(a, b) for a, b in zip(ref[1], got[1]))
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_chunked_loss_matches_cross_entropy(dtype):
    import torch
    import torch.nn.functional as F

    from baize.train.speedups import CE_CHUNK, chunked_causal_lm_loss
    g = torch.Generator().manual_seed(0)
    rows = 2 * CE_CHUNK + 17  # whole chunks and a partial one
    logits = (3 * torch.randn(1, rows, 1000, generator=g)).to(getattr(torch, dtype))
    labels = torch.randint(0, 1000, (1, rows), generator=g)
    labels[0, ::5] = -100
    for n in (None, torch.tensor(123)):
        a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        ref = F.cross_entropy(a.float()[0, :-1], labels[0, 1:], reduction="mean" if n is None else "sum")
        ref = ref if n is None else ref / n
        got = chunked_causal_lm_loss(b, labels, 1000, num_items_in_batch=n)
        (2 * ref).backward()
        (2 * got).backward()
        assert torch.allclose(got, ref, rtol=1e-6), (got, ref)
        # the same gradient, rounded to the logits' dtype as autograd's own cast would
        assert torch.allclose(b.grad.float(), a.grad.float(), rtol=1e-2 if dtype == "bfloat16" else 1e-5, atol=1e-7)
        assert b.grad[0, -1].abs().sum() == 0 and b.grad[0, 4].abs().sum() == 0  # unlabelled rows


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_head_loss_matches_cross_entropy(autocast):
    """The head inside the loss, over whole chunks of rows and a partial one: the stock head + loss's value
    and hidden-state gradient; unlabelled rows get none."""
    import torch
    import torch.nn.functional as F

    from baize.train.speedups import HEAD_CHUNK, fused_head_loss
    g = torch.Generator().manual_seed(0)
    rows = 2 * HEAD_CHUNK + 17
    w = torch.randn(1000, 64, generator=g) / 8
    hidden = torch.randn(1, rows, 64, generator=g)
    labels = torch.randint(0, 1000, (1, rows), generator=g)
    labels[0, ::5] = -100
    a, b = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ref = F.cross_entropy((a[0, :-1] @ w.t()).float(), labels[0, 1:])
        got = fused_head_loss(b, labels, weight=w)
    ref.backward()
    got.backward()
    tol = 2e-2 if autocast else 1e-5
    assert torch.allclose(got, ref, rtol=tol), (got, ref)
    assert ((b.grad - a.grad).abs().max() / a.grad.abs().max()).item() < tol
    assert b.grad[0, -1].abs().sum() == 0 and b.grad[0, 4].abs().sum() == 0  # unlabelled rows


def test_chunked_loss_in_the_model_matches_the_stock_one(tiny_model_dir, tok):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.loss.loss_utils import ForCausalLMLoss

    from baize.llm.chat_format import get_format
    from baize.train.packing import Collator, tokenize
    from baize.train.speedups import chunked_causal_lm_loss
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False))
    samples = tokenize([{"messages": MSGS}, {"messages": MSGS[1:3]}], get_format("template", tok), tok, max_length=512)

    def loss_and_grads(batch):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]
    for batching in ("packed", "grouped"):
        batch = Collator(tok, batching, 512, trim=True)(samples)
        model.get_base_model().loss_function = ForCausalLMLoss
        ref = loss_and_grads(batch)
        model.get_base_model().loss_function = chunked_causal_lm_loss
        got = loss_and_grads(batch)
        assert torch.allclose(got[0], ref[0], rtol=1e-6)
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(ref[1], got[1]))


def _unfold(model):
    for m in model.modules():
        if hasattr(m, "_stock_forward"):
            del m.forward, m._stock_forward  # back to peft's own forward


@pytest.mark.parametrize("dropout", ["none", "torch", "cheap"])
def test_folded_lora_and_head_in_loss_match_the_stock_path(tiny_model_dir, tok, dropout):
    """peft's forward + transformers' loss against baize's folded LoRA sum + head inside the loss: same
    loss and gradients, dropout masks included (the same random draws in the same order)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.loss.loss_utils import ForCausalLMLoss

    from baize.llm.chat_format import get_format
    from baize.train.packing import Collator, tokenize
    from baize.train.speedups import cheap_cpu_dropout, fold_lora_products, head_in_loss
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.0 if dropout == "none" else 0.1,
                                      init_lora_weights=False)).train()
    if dropout == "cheap":
        assert cheap_cpu_dropout(model) == 14
    base = model.get_base_model()
    assert base.loss_function is ForCausalLMLoss
    samples = tokenize([{"messages": MSGS}, {"messages": MSGS[1:3]}, {"messages": MSGS[3:]}],
                       get_format("baize", tok), tok, max_length=512)

    def loss_and_grads(batch, autocast=False):
        model.zero_grad()
        torch.manual_seed(7)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(**batch).loss
        loss.backward()
        return loss.detach().float(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    for batching, autocast in (("packed", False), ("grouped", False), ("packed", True)):
        batch = Collator(tok, batching, 512, trim=True)(samples)
        ref = loss_and_grads(batch, autocast)
        assert fold_lora_products(model) == 14
        with head_in_loss(model) as on:
            assert on and type(base.get_output_embeddings()).__name__ == "PassHidden"
            got = loss_and_grads(batch, autocast)
        _unfold(model)
        assert type(base.get_output_embeddings()) is torch.nn.Linear and base.loss_function is ForCausalLMLoss
        assert torch.allclose(got[0], ref[0], rtol=1e-2 if autocast else 1e-6), (batching, got[0], ref[0])
        # fp32: equal to float rounding; bf16: products rounded in other places, so within bf16's own error
        worst = max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(ref[1], got[1]))
        assert worst < (3e-2 if autocast else 1e-5), (batching, autocast, worst)
        assert all(g.abs().sum() > 0 for g in got[1])  # every LoRA matrix gets a gradient


def test_head_in_loss_leaves_other_heads_alone(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from baize.train.speedups import head_in_loss
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules="all-linear"))
    head = model.get_base_model().get_output_embeddings()
    head.weight.requires_grad_(True)  # a trained head needs its weight's gradient: the stock path keeps it
    with head_in_loss(model) as on:
        assert not on and model.get_base_model().get_output_embeddings() is head


def test_cpu_dropout_keeps_the_law(tiny_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from baize.train.speedups import cheap_cpu_dropout
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert cheap_cpu_dropout(get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))) == 0
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.05))
    assert cheap_cpu_dropout(model) == 14  # 7 linears x 2 layers
    drops = [m for n, m in model.named_modules() if n.endswith(".lora_dropout.default")]
    assert len(drops) == 14 and not any(isinstance(d, torch.nn.Dropout) for d in drops)
    d = drops[0].train()
    x = torch.full((2, 1000, 500), 3.0)
    torch.manual_seed(1)
    y = d(x)
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - 0.05) < 0.002 and abs(y.mean().item() - 3.0) < 0.01
    assert torch.allclose(y[y != 0], torch.tensor(3.0 / 0.95))  # p exactly, scaled by 1 / (1 - p)
    torch.manual_seed(1)
    assert torch.equal(d(x), y) and not torch.equal(d(x), y)  # seeded like torch's own, and fresh per call
    assert torch.equal(d.eval()(x), x)
    # drawn positions, not a mask: neighbours are still dropped together at p^2 (independence), and
    # a repeated position does not make the law drift from p
    keep = d.keep((1_000_000,), 5, torch.float32).bool()
    both = (~keep[:-1] & ~keep[1:]).double().mean().item()
    assert abs(both - 0.05 ** 2) < 4e-4 and abs((~keep).double().mean().item() - 0.05) < 1e-3, both


def test_dropout_then_lora_a_matches_autograd_through_the_mask():
    """The folded LoRA branch keeps the dropped input and the dropped positions for backward, not a
    mask: its gradients must equal autograd's through `(x * mask) @ A^T` with the mask kept."""
    import torch

    from baize.train.speedups import _drop_then_a, cheap_cpu_dropout
    holder = torch.nn.Module()
    holder.lora_dropout = torch.nn.ModuleDict({"default": torch.nn.Dropout(0.3)})
    assert cheap_cpu_dropout(holder) == 1
    drop = holder.lora_dropout["default"].train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 37, 24, generator=g, requires_grad=True)
    w = torch.randn(4, 24, generator=g, requires_grad=True)
    up = torch.randn(2, 37, 4, generator=g)
    seed = drop.seed()
    mask = drop.keep(x.shape, seed, x.dtype)
    assert 0 < mask.sum() < mask.numel()
    ref = torch.matmul(x * mask, w.t())
    gx_ref, gw_ref = torch.autograd.grad((ref * up).sum(), (x, w))
    got = _drop_then_a().apply(x, w, drop, seed)
    gx, gw = torch.autograd.grad((got * up).sum(), (x, w))
    assert torch.allclose(got, ref, atol=1e-6) and torch.allclose(gx, gx_ref, atol=1e-6)
    assert torch.allclose(gw, gw_ref, atol=1e-5)
    assert torch.equal(gx == 0, mask.expand_as(gx) == 0)  # dropped inputs get no gradient, kept ones do


def test_parallel_dialogues_match_the_packed_step(tiny_model_dir, tok, tmp_path):
    """Dialogues of a packed batch trained two at a time on threads: the packed step's loss and gradients
    (dropout off); with dropout, the same gradients again under the same seed whatever the schedule."""
    import threading

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from baize.llm.chat_format import get_format
    from baize.train.packing import Collator, choose_packing, split_packed, tokenize
    from baize.train.speedups import cheap_cpu_dropout, fold_lora_products, head_in_loss, parallel_step, parallel_trainer
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.1, init_lora_weights=False))
    assert choose_packing(model, len(tok), 512, print) == "packed"  # attention kept inside each dialogue
    assert cheap_cpu_dropout(model) == 14 and fold_lora_products(model) == 14
    drops = [m for n, m in model.named_modules() if n.endswith(".lora_dropout.default")]
    samples = tokenize([{"messages": MSGS}, {"messages": MSGS[1:3]}, {"messages": MSGS[3:]}, {"messages": MSGS[:3]}],
                       get_format("baize", tok), tok, max_length=512)
    batch = Collator(tok, "packed", 512, trim=True)(samples)
    parts = split_packed(batch)
    assert [p["input_ids"].shape[1] for p in parts] == [len(s["input_ids"]) for s in samples]
    assert all("logits_to_keep" in p for p in parts)
    again = split_packed(parts[0])
    assert len(again) == 1 and all(torch.equal(again[0][k], parts[0][k]) for k in parts[0])
    n_items = (batch["shift_labels"] != -100).sum()
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], disable_tqdm=True)
    trainer = parallel_trainer(Trainer, 2)(model=model, args=args)

    def step(fn):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        loss = fn()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    stock = lambda: Trainer.training_step(trainer, model, dict(batch), n_items)
    ours = lambda: trainer.training_step(model, dict(batch), n_items)
    with head_in_loss(model):
        for d in drops:
            d.p = 0.0  # CPUDropout then passes its input through
        ref, got = step(stock), step(ours)
        assert torch.allclose(got[0], ref[0], rtol=1e-6), (got[0], ref[0])
        worst = max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(ref[1], got[1]))
        assert worst < 1e-5 and all(g.abs().sum() > 0 for g in got[1])
        for d in drops:
            d.p = 0.1
        a, b = step(ours), step(ours)
        assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
        assert not torch.allclose(a[0], ref[0])  # the masks took part
        # one dialogue at a time, longest first, all cores per op: each dialogue's masks are its own
        c = step(lambda: parallel_step(trainer, model, dict(batch), n_items, workers=1))
        assert torch.allclose(c[0], a[0], rtol=1e-6)
        assert max(((x - y).abs().max() / x.abs().max()).item() for x, y in zip(a[1], c[1])) < 1e-5
        assert parallel_step(trainer, model, dict(parts[0]), n_items, workers=2) is None  # one dialogue: the stock step
        # bf16 autocast is per thread: accelerate's, which the Trainer relies on, wraps model.forward, so each
        # dialogue's forward enters it on whichever thread runs it
        bf16 = parallel_trainer(Trainer, 2)(model=model, args=TrainingArguments(
            str(tmp_path / "bf16"), use_cpu=True, bf16=True, report_to=[], disable_tqdm=True))
        wrapped = bf16.accelerator.prepare_model(model)
        seen = []
        probe = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
        hook = probe.register_forward_pre_hook(
            lambda m, a: seen.append((threading.current_thread(), torch.is_autocast_enabled("cpu"))))
        bf16.training_step(wrapped, dict(batch), n_items)
        hook.remove()
        assert len(seen) == len(parts) and all(on for _, on in seen), seen
        assert {t for t, _ in seen} - {threading.main_thread()}  # some ran on the other thread


def test_plan_passes_keeps_the_batch_asked_for():
    """Dialogues at once and per pass: a pass size that divides each process's share of the batch, so the
    batch asked for is the batch trained; threads only where parallel_step may run and no stock dropout is left."""
    import torch

    from baize.train.speedups import plan_passes
    plain, stock_dropout = torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Dropout(0.1))
    said = []
    for share, micro, parallel, want in ((12, None, 2, (2, 6)), (16, None, 3, (3, 8)), (7, None, 2, (2, 7)),
                                         (12, 5, 2, (2, 5)), (12, None, 1, (1, 2)), (3, None, 1, (1, 1)),
                                         (4, 16, 1, (1, 4))):
        assert plan_passes(plain, share, micro, parallel, said.append, cpu_packed=True, threads=True) == want
    # no packing on CPU (a GPU, --batching grouped, DPO): 8 per pass by default
    assert plan_passes(plain, 12, None, 0, said.append, cpu_packed=False, threads=False) == (1, 8)
    assert plan_passes(plain, 4, None, 0, said.append, cpu_packed=False, threads=False) == (1, 4)
    assert not any("applies to" in s for s in said)
    # threads asked for where they cannot run: one pass at a time, and the log says so
    said.clear()
    assert plan_passes(stock_dropout, 12, None, 2, said.append, cpu_packed=True, threads=True) == (1, 2)
    assert plan_passes(plain, 12, None, 2, said.append, cpu_packed=True, threads=False) == (1, 2)
    assert plan_passes(plain, 12, None, 2, said.append, cpu_packed=False, threads=False) == (1, 8)
    assert len(said) == 3 and all(s.startswith("--parallel-dialogues applies to") for s in said)
    # the default: 2 at once where there are 2 cores
    two = torch.get_num_threads() >= 2
    assert plan_passes(plain, 4, None, 0, said.append, cpu_packed=True, threads=True) == ((2, 4) if two else (1, 2))
