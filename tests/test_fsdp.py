"""FSDP through accelerate: the QLoRA+FSDP settings and the configs (unit), then two FSDP processes on CPU
(gloo) against one process on a tiny random LLaMA: loss per step, the saved adapter, the log, resume, merge
and DPO. docs/fsdp.md has the same comparison on the embedded model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from baize.config import BaizeError

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
FSDP_VARS = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "WORLD_SIZE",
             "FSDP_VERSION", "FSDP_ACTIVATION_CHECKPOINTING", "FSDP_CPU_RAM_EFFICIENT_LOADING", "FSDP_USE_ORIG_PARAMS")


@pytest.fixture
def launch_env(monkeypatch):
    """Sets the variables `accelerate launch` exports; every one is restored after the test."""
    for k in FSDP_VARS:
        monkeypatch.delenv(k, raising=False)

    def set_env(**kw):
        for k, v in kw.items():
            monkeypatch.setenv(k, str(v))
    return set_env


# --- QLoRA under FSDP, on paper (no GPU here) -----------------------------------------------------

def test_qlora_settings_store_4bit_weights_as_the_compute_dtype_only_under_fsdp():
    from transformers import BitsAndBytesConfig

    from baize.train.distributed import qlora_settings
    assert qlora_settings(None, fsdp_version=2, compute_dtype="bfloat16") == ({}, {})
    one, plugin = qlora_settings("4bit", fsdp_version=None, compute_dtype="bfloat16")
    assert plugin == {} and "bnb_4bit_quant_storage" not in one  # one GPU / DDP: uint8 storage, as before
    bnb, plugin = qlora_settings("4bit", fsdp_version=2, compute_dtype="bfloat16")
    assert bnb == {**one, "bnb_4bit_quant_storage": "bfloat16"}
    assert plugin == {"activation_checkpointing": True, "cpu_ram_efficient_loading": True}
    import torch
    q = BitsAndBytesConfig(**bnb)
    assert q.bnb_4bit_quant_storage == q.bnb_4bit_compute_dtype == torch.bfloat16 and q.load_in_4bit
    bnb16, plugin1 = qlora_settings("4bit", fsdp_version=1, compute_dtype="float16")
    assert bnb16["bnb_4bit_quant_storage"] == "float16" and plugin1["use_orig_params"] is False  # PEFT's FSDP1 config
    assert qlora_settings("8bit", fsdp_version=None, compute_dtype="bfloat16") == ({"load_in_8bit": True}, {})
    with pytest.raises(BaizeError, match="8bit cannot be sharded by FSDP"):
        qlora_settings("8bit", fsdp_version=2, compute_dtype="bfloat16")


def test_qlora_plugin_settings_reach_accelerates_fsdp_plugin(launch_env):
    from accelerate.utils import FullyShardedDataParallelPlugin

    from baize.train.distributed import fsdp_env, qlora_settings
    _, plugin = qlora_settings("4bit", fsdp_version=2, compute_dtype="bfloat16")
    launch_env(FSDP_VERSION=2, **fsdp_env(plugin))
    p = FullyShardedDataParallelPlugin()  # as the Trainer builds it, from the environment
    assert p.fsdp_version == 2 and p.activation_checkpointing and p.cpu_ram_efficient_loading


def test_fsdp_activation_checkpointing_replaces_the_trainers(launch_env):
    from baize.train.common import TrainConfig, _compat_args
    cfg = TrainConfig(gradient_checkpointing=True)
    assert any(_compat_args(cfg, "packed").values())
    launch_env(FSDP_ACTIVATION_CHECKPOINTING="true")  # the Trainer refuses both at once
    assert _compat_args(cfg, "packed").get("activation_checkpointing", False) is False


def test_speedups_each_launch_rules_out(launch_env):
    from baize.train.distributed import FSDP_OFF, ZERO3_OFF, describe_launch, fsdp_version, speedups_off
    assert speedups_off() == {} and fsdp_version() is None
    launch_env(ACCELERATE_USE_FSDP="true", WORLD_SIZE=2, FSDP_VERSION=2)
    assert speedups_off() is FSDP_OFF and describe_launch() == "FSDP" and fsdp_version() == 2
    assert set(FSDP_OFF) == {"head in the loss", "dialogues at once"}
    launch_env(ACCELERATE_USE_FSDP="false", ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE=3)
    assert speedups_off() is ZERO3_OFF and "LoRA products folded" in ZERO3_OFF


def test_fsdp_trainer_is_the_trainer_itself_unless_fsdp_on_cpu_processes(launch_env):
    from transformers import Trainer

    from baize.train.distributed import fsdp_trainer
    assert fsdp_trainer(Trainer, "cpu") is Trainer
    launch_env(ACCELERATE_USE_FSDP="true", WORLD_SIZE=2, FSDP_VERSION=2)
    assert fsdp_trainer(Trainer, "cuda") is Trainer  # accelerate does it all on GPUs
    assert issubclass(fsdp_trainer(Trainer, "cpu"), Trainer) and fsdp_trainer(Trainer, "cpu") is not Trainer


def test_fsdp_asked_for_but_not_enabled_is_an_error_naming_the_fix(launch_env):
    from types import SimpleNamespace

    from transformers import Trainer

    from baize.train.distributed import describe, fsdp_trainer
    launch_env(ACCELERATE_USE_FSDP="true", WORLD_SIZE=2, FSDP_VERSION=1)
    with pytest.raises(BaizeError, match="fsdp_version: 2"):
        fsdp_trainer(Trainer, "cpu")  # FSDP1 on CPU processes was never proven
    launch_env(FSDP_VERSION=2)
    # a Trainer whose accelerator did not turn the FSDP config on: it would train DDP, full copies
    trainer = SimpleNamespace(is_deepspeed_enabled=False, is_fsdp_enabled=False,
                              accelerator=SimpleNamespace(state=SimpleNamespace(distributed_type="DistributedType.NO")),
                              args=SimpleNamespace(device=SimpleNamespace(type="cpu")))
    with pytest.raises(BaizeError, match=r"set up NO, not FSDP: .*fsdp_cpu\.yaml"):
        describe(trainer, SimpleNamespace(world=2))
    trainer.args.device.type = "cuda"
    with pytest.raises(BaizeError, match="distributed_type: FSDP"):
        describe(trainer, SimpleNamespace(world=2))
    launch_env(ACCELERATE_USE_FSDP="false")
    assert describe(trainer, SimpleNamespace(world=2)).startswith("DDP: 2 processes")  # DDP asked for: fine


def test_configs_cpu_and_gpu_twins():
    import yaml
    cpu, gpu = (yaml.safe_load((CONFIGS / f"fsdp_{n}.yaml").read_text()) for n in ("cpu", "8gpu"))
    for c in (cpu, gpu):
        assert c["distributed_type"] == "FSDP" and c["fsdp_config"]["fsdp_version"] == 2
        assert c["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # one adapter file
        assert c["fsdp_config"]["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert cpu["num_processes"] == 2 and gpu["num_processes"] == 8
    assert gpu["fsdp_config"]["fsdp_activation_checkpointing"] and gpu["fsdp_config"]["fsdp_cpu_ram_efficient_loading"]
    assert {p.name for p in CONFIGS.glob("*.yaml")} == {"ddp.yaml", "deepspeed_zero3.yaml", "fsdp_cpu.yaml",
                                                          "fsdp_8gpu.yaml"}


# --- two FSDP processes against one ---------------------------------------------------------------

def write_dialogues(path, n=16):
    import random
    rng = random.Random(1)
    path.write_text("".join(json.dumps({"id": f"d{i}", "messages": [
        {"role": "user", "content": f"Question {i} about topic {rng.randint(0, 99)}?"},
        {"role": "assistant", "content": " ".join(f"word{rng.randint(0, 50)}" for _ in range(rng.randint(5, 30)))}]})
        + "\n" for i in range(n)))
    return path


def write_prefs(path, n=8):
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
                                        "chosen": [{"role": "assistant", "content": f"{i} and {i} make {2 * i}."}],
                                        "rejected": [{"role": "assistant", "content": "no idea, whatever"}]}) + "\n"
                        for i in range(n)))
    return path


# same data, seed and flags in both; dropout off, fp32: the runs differ only in how they are spread
FLAGS = {"max_steps": 3, "batch_size": 4, "micro_batch_size": 1, "precision": "fp32", "lora_dropout": 0.0,
         "learning_rate": 1e-3, "save_steps": 2}


def as_args(flags: dict) -> list[str]:
    return [a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def fsdp_train(*args) -> subprocess.CompletedProcess:
    # one thread per process: two processes on two cores
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "fsdp_cpu.yaml"),
           "--num_processes", "2", "-m", "baize", "train", *map(str, args)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def losses(run) -> list[float]:
    return [r["loss"] for r in map(json.loads, (Path(run) / "loss.jsonl").read_text().splitlines()) if "loss" in r]


def adapter(run) -> dict:
    from safetensors.torch import load_file
    return load_file(Path(run) / "adapter_model.safetensors")


def assert_close_adapters(a: dict, b: dict, rtol: float) -> None:
    """Same tensors, each within rtol of its norm (not elementwise: Adam scales the rounding noise of
    near-zero gradients up to a full step, in one process as well; see docs/fsdp.md)."""
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    worst = max(float((a[k] - b[k]).norm() / a[k].norm()) for k in a)
    assert worst <= rtol, worst


@pytest.fixture(scope="module")
def sft_runs(tiny_model_dir, tmp_path_factory):
    from baize.train.common import TrainConfig
    from baize.train.recipes import train
    d = tmp_path_factory.mktemp("fsdp")
    data = write_dialogues(d / "d.jsonl")
    one = train(TrainConfig(base=str(tiny_model_dir), data=str(data), out=str(d / "one"), **FLAGS))
    r = fsdp_train("--base", tiny_model_dir, "--data", data, "--out", d / "two", *as_args(FLAGS))
    return one, d / "two", r.stdout, d


@pytest.mark.slow
def test_fsdp_loss_per_step_matches_one_process(sft_runs):
    one, two, _, _ = sft_runs
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == FLAGS["max_steps"]
    assert all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b)), (a, b)


@pytest.mark.slow
def test_fsdp_saves_one_full_size_adapter_that_matches_one_process(sft_runs):
    one, two, _, _ = sft_runs
    assert not list(two.glob("adapter_model*shard*")) and not list(two.glob("*.distcp"))
    assert_close_adapters(adapter(one), adapter(two), 1e-3)  # shapes as one process saves them: gathered
    summary = json.loads((two / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ddp_adapter_checksums"] is None


@pytest.mark.slow
def test_fsdp_log_says_fsdp_world_size_and_sharding_once(sft_runs):
    _, _, out, _ = sft_runs
    line = [ln for ln in out.splitlines() if ln.startswith("[train] FSDP2: 2 processes on cpu")]
    assert len(line) == 1 and "sharded 2 ways, one unit per LlamaDecoderLayer (FULL_SHARD)" in line[0]
    assert "FULL_STATE_DICT on save" in line[0]
    assert "[train] FSDP: head in the loss off (" in out and "dialogues at once off (" in out
    assert "DDP" not in out  # accelerate alone would have trained full copies here


@pytest.mark.slow
def test_fsdp_resumes_from_a_checkpoint_to_the_same_step_and_adapter(sft_runs):
    import shutil
    _, two, _, d = sft_runs
    resumed = d / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(two / "checkpoints" / "checkpoint-2", resumed / "checkpoints" / "checkpoint-2")
    shutil.copy(two / "train_config.json", resumed)
    r = fsdp_train("--out", resumed, "--resume")
    assert "step 3/3" in r.stdout and "step 2/3" not in r.stdout
    assert losses(resumed) == losses(two)[2:]
    assert_close_adapters(adapter(two), adapter(resumed), 1e-6)


@pytest.mark.slow
def test_fsdp_run_merges_and_loads_as_usual(sft_runs, tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from baize.train.merge import merge
    _, two, _, _ = sft_runs
    merged = AutoModelForCausalLM.from_pretrained(merge(two, tmp_path / "merged")).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), two).eval()
    ids = torch.randint(3, 40000, (1, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (adapted(input_ids=ids).logits - merged(input_ids=ids).logits).abs().max() < 1e-4


@pytest.mark.slow
def test_dpo_under_fsdp_matches_one_process_with_the_same_reference(sft_runs):
    from baize.train.common import TrainConfig
    from baize.train.recipes import train
    one, two, _, d = sft_runs
    prefs = write_prefs(d / "prefs.jsonl")
    flags = {**FLAGS, "max_steps": 2, "save_steps": 100, "max_length": 64}
    single = train(TrainConfig(method="dpo", from_run=str(two), data=str(prefs), out=str(d / "dpo1"), **flags))
    r = fsdp_train("--method", "dpo", "--from", two, "--data", prefs, "--out", d / "dpo2", *as_args(flags))
    assert "[train] FSDP2: 2 processes on cpu" in r.stdout
    recs = [[json.loads(x) for x in (run / "loss.jsonl").read_text().splitlines()] for run in (single, d / "dpo2")]
    for a, b in zip(*recs):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * a["loss"]
        # TRL's reward is beta x (policy - reference) log-prob: the implied reference is the same model
        ref_a, ref_b = (x["logps/chosen"] - x["rewards/chosen"] / 0.1 for x in (a, b))
        assert abs(ref_a - ref_b) <= 1e-4 * abs(ref_a)
    assert recs[1][0]["rewards/margins"] == 0  # the fresh adapter starts as the reference: --from's model
    assert_close_adapters(adapter(single), adapter(d / "dpo2"), 1e-3)


@pytest.mark.slow
def test_deepspeed_zero3_on_cpu_processes_matches_one_process(sft_runs, tiny_model_dir):
    """Runs where deepspeed is installed (not in CI: optional, see the README's More than one GPU)."""
    pytest.importorskip("deepspeed")
    one, _, _, d = sft_runs
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "deepspeed_zero3.yaml"),
           "--num_processes", "2", "-m", "baize", "train", "--base", str(tiny_model_dir), "--data", str(d / "d.jsonl"),
           "--out", str(d / "zero3"), *as_args(FLAGS)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[train] DeepSpeed ZeRO-3: 2 processes" in r.stdout and "LoRA products folded off (" in r.stdout
    assert all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(losses(one), losses(d / "zero3")))
    assert_close_adapters(adapter(one), adapter(d / "zero3"), 1e-3)
