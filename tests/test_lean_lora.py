"""The engine's LoRA fast path (llm/packing.lean_lora): without gradient a peft LoRA Linear adds its
adapter as two float32 products in place of peft's chain of modules. The logits equal peft's own
forward's for any active adapter set, stacked adapters included; a disabled adapter, training and a
changed adapter weight are not served stale."""
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture
def two_adapters(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(base, cfg, adapter_name="x")
    model.add_adapter("y", cfg)
    return model.eval()


def logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_lean_lora_gives_peft_s_logits_for_every_adapter_set(two_adapters, tok):
    from baize.llm.engine import BatchEngine
    from baize.llm.packing import _LeanLora
    model = two_adapters
    ids = torch.randint(5, 500, (3, 9), generator=torch.Generator().manual_seed(0))
    sets = [["x"], ["y"], ["x", "y"]]
    want = {}
    for s in sets:
        model.base_model.set_adapter(s, inference_mode=True)
        want[tuple(s)] = logits(model, ids)
    with model.disable_adapter():
        want[()] = logits(model, ids)
    assert not torch.allclose(want[("x",)], want[()], atol=1e-3)  # the adapters do change the logits

    BatchEngine(model, tok, eos_ids=()).close()  # what the engine does to its model
    lean = [m for m in model.modules() if isinstance(m.__dict__.get("forward"), _LeanLora)]
    assert len(lean) == 2 * 7  # every projection of the tiny model's 2 layers
    for s in sets:
        model.base_model.set_adapter(s, inference_mode=True)
        torch.testing.assert_close(logits(model, ids), want[tuple(s)], rtol=1e-4, atol=1e-5)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, ids), want[()], rtol=1e-4, atol=1e-5)

    model.base_model.set_adapter(["x"], inference_mode=True)
    layer = lean[0]
    with torch.no_grad():
        layer.lora_B["x"].weight.mul_(3)  # an adapter changed in place is cast again, not served stale
        x = torch.randn(2, layer.in_features)
        A, B = layer.lora_A["x"].weight, layer.lora_B["x"].weight
        torch.testing.assert_close(layer(x), layer.base_layer(x) + x @ A.T @ B.T * layer.scaling["x"])
        layer.lora_A["x"].weight = torch.nn.Parameter(A * -2)  # replaced, not changed: seen too
        A = layer.lora_A["x"].weight
        torch.testing.assert_close(layer(x), layer.base_layer(x) + x @ A.T @ B.T * layer.scaling["x"])
        layer.scaling["x"] *= 0.5  # peft's set_scale
        torch.testing.assert_close(layer(x), layer.base_layer(x) + x @ A.T @ B.T * layer.scaling["x"])


def test_training_takes_peft_s_forward_and_gets_gradients(two_adapters, tok):
    from baize.llm.packing import lean_lora
    model = two_adapters
    model.base_model.set_adapter(["x"], inference_mode=False)
    assert lean_lora(model) == 2 * 7
    model.train()
    ids = torch.randint(5, 500, (2, 7), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B.x" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_on_a_bf16_model_the_error_is_a_small_part_of_the_adapters_own_effect(two_adapters, tok):
    """On bf16 weights A and x @ A^T are rounded to bf16 (peft keeps them float32): what that moves
    is measured against what the adapter moves, as merging into bf16 weights would not keep it."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("bf16 linears are packed only where the CPU has native bf16")
    from baize.llm.engine import BatchEngine
    model = two_adapters.to(torch.bfloat16)
    ids = torch.randint(5, 500, (3, 9), generator=torch.Generator().manual_seed(0))
    model.base_model.set_adapter(["x"], inference_mode=True)
    want = logits(model, ids).float()
    with model.disable_adapter():
        base = logits(model, ids).float()
    BatchEngine(model, tok, eos_ids=()).close()
    got = logits(model, ids).float()
    effect, error = (want - base).abs().mean(), (got - want).abs().mean()
    assert error < 0.02 * effect  # measured 0.9% on an AVX-512-bf16 EPYC, (float(error), float(effect))


def test_an_unpacked_base_layer_gets_the_same_logits(two_adapters):
    """A base layer that is not packed (CUDA, bf16 on a CPU without native bf16, pack_weights off)
    takes the two float32 products around peft's own base layer."""
    from baize.llm.packing import lean_lora
    model = two_adapters
    model.base_model.set_adapter(["x", "y"], inference_mode=True)
    ids = torch.randint(5, 500, (2, 7), generator=torch.Generator().manual_seed(0))
    want = logits(model, ids)
    assert lean_lora(model) == 2 * 7  # no BatchEngine: the linears stay unpacked
    torch.testing.assert_close(logits(model, ids), want, rtol=1e-4, atol=1e-5)
    assert all(type(plan.run.func).__name__ == "function" and plan.run.func.__name__ == "_plain_run"
               for m in model.modules() if "forward" in m.__dict__ for plan in m.__dict__["forward"].plans.values())
