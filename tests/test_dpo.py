"""v2 by DPO (`baize train --from v1 --method dpo`) on a tiny random LLaMA: data, format, reference, resume."""
import contextlib
import json
import re

import pytest

from baize.config import BaizeError

SYSTEM = "Be helpful."


def write_prefs(path, n=10):
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"What is {i} plus {i}?"}]
        if i % 3 == 1:  # multi-turn prompts, and one with its own system message
            prompt = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, ask away."}] + prompt
        if i == 2:
            prompt = [{"role": "system", "content": "Answer with numbers."}] + prompt
        rows.append({"id": f"p{i}", "prompt": prompt,
                     "chosen": [{"role": "assistant", "content": f"It is {2 * i}: {i} and {i} make {2 * i}."}],
                     "rejected": [{"role": "assistant", "content": "no idea lol, whatever"}],
                     "meta": {"chosen_rank": 1, "rejected_rank": 2, "judge": "fake"}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_dialogues(path, n=8):
    path.write_text("".join(json.dumps({"id": f"d{i}", "messages": [
        {"role": "user", "content": f"Tell me about {i}."},
        {"role": "assistant", "content": f"The number {i} is a number; {i} plus one is {i + 1}."}]}) + "\n"
        for i in range(n)))
    return path


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    return write_prefs(tmp_path_factory.mktemp("prefs") / "prefs.jsonl")


def dpo_config(from_run, data, out, **kw):
    from baize.train.common import TrainConfig
    kw = {"method": "dpo", "batch_size": 4, "micro_batch_size": 2, "max_steps": 8, "save_steps": 4, "val_size": 2,
          "learning_rate": 5e-3, "precision": "fp32", "max_length": 128, **kw}
    return TrainConfig(from_run=str(from_run), data=str(data), out=str(out), **kw)


def collate(rows, fmt, tok, system=None):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from baize.train.dpo import encode_pair
    return DataCollatorForPreference(pad_token_id=tok.pad_token_id)([encode_pair(r, fmt, tok, system) for r in rows])


def completion_logps(model, batch, reference=False):
    """Sum log-prob of each completion (chosen rows first); `reference`: the adapter disabled, as TRL does."""
    import torch
    was = model.training
    model.eval()
    with torch.no_grad(), torch.random.fork_rng(), (model.disable_adapter() if reference else contextlib.nullcontext()):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    model.train(was)
    lp = logits[:, :-1].log_softmax(-1).gather(2, batch["input_ids"][:, 1:, None])[..., 0]
    return (lp * batch["completion_mask"][:, 1:]).sum(1)


def margins(pol, ref, beta=0.1):
    ratio = pol - ref
    chosen, rejected = ratio.chunk(2)
    return beta * (chosen - rejected)


class Probe:
    """Parameters and completion log-probs (policy, reference) at the start and the end of training."""

    def __new__(cls, batch):
        from transformers import TrainerCallback

        class _P(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kw):
                self.adapters = set(model.peft_config)
                self.columns = train_dataloader.dataset.column_names
                self.first_row = train_dataloader.dataset[0]
                self.lora_dropout = {m.p for n, m in model.named_modules() if n.endswith("lora_dropout.default")}
                self.start = {n: p.detach().clone() for n, p in model.named_parameters()}
                self.pol0, self.ref0 = completion_logps(model, batch), completion_logps(model, batch, reference=True)

            def on_train_end(self, args, state, control, model=None, **kw):
                self.end = {n: p.detach().clone() for n, p in model.named_parameters()}
                self.pol1, self.ref1 = completion_logps(model, batch), completion_logps(model, batch, reference=True)
        return _P()


@pytest.fixture(scope="module")
def v1(tiny_model_dir, tmp_path_factory):
    from baize.train.common import TrainConfig
    from baize.train.recipes import train
    d = tmp_path_factory.mktemp("v1data")
    return train(TrainConfig(base=str(tiny_model_dir), data=str(write_dialogues(d / "d.jsonl")),
                             out=str(d / "v1"), system=SYSTEM, max_steps=3, batch_size=4, micro_batch_size=2,
                             learning_rate=5e-3, precision="fp32"))


@pytest.fixture(scope="module")
def v2(v1, prefs, tok, tmp_path_factory):
    from baize.llm.chat_format import get_format
    from baize.schema import read_jsonl
    from baize.train.recipes import train
    rows = list(read_jsonl(prefs))
    probe = Probe(collate(rows, get_format("baize", tok), tok, SYSTEM))
    run = train(dpo_config(v1, prefs, tmp_path_factory.mktemp("v2") / "v2-dpo"), callbacks=[probe])
    return run, probe, rows


# --- data ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, match", [
    ('{"prompt": [{"role": "user", "content": "q"}], "chosen": [}', "not valid JSON"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}]},
     "field 'rejected' is missing"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
     "field 'prompt' must end with a user message"),
    ({"prompt": [{"role": "human", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, r"prompt\[0\] must be"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": "a",
      "rejected": [{"role": "assistant", "content": "b"}]}, "field 'chosen' must be one assistant message"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "  "}]}, "field 'rejected' has an empty answer"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "same"}],
      "rejected": [{"role": "assistant", "content": "same "}]}, "chosen equals rejected: drop that row"),
])
def test_bad_rows_name_file_line_and_field(prefs, tmp_path, line, match):
    from baize.train.dpo import read_prefs
    path = tmp_path / "bad.jsonl"
    good = prefs.read_text().splitlines()[:2]
    path.write_text(good[0] + "\n\n" + (line if isinstance(line, str) else json.dumps(line)) + "\n" + good[1] + "\n")
    with pytest.raises(BaizeError, match=f"^{path}:3: {match}") as e:
        read_prefs([str(path)])
    assert "\n" not in str(e.value)


def test_cli_refuses_bad_data_and_specs_in_one_line_writing_nothing(v1, prefs, tiny_model_dir, tmp_path, capsys):
    from baize.cli import main
    bad = tmp_path / "bad.jsonl"
    row = json.loads(prefs.read_text().splitlines()[0])
    bad.write_text(prefs.read_text() + json.dumps(row | {"rejected": row["chosen"]}) + "\n")
    out = tmp_path / "out"
    for argv, want in (
            (["--from", str(v1), "--data", str(bad)], f"{bad}:11: chosen equals rejected: drop that row"),
            (["--base", str(tmp_path / "no-such-model"), "--data", str(prefs)], "unknown model spec"),
            (["--from", str(tiny_model_dir), "--data", str(prefs)], "not a run directory"),
            (["--from", str(v1), "--data", str(prefs), "--loss", "all"], "--loss all is for SFT"),
            (["--from", str(v1), "--data", str(prefs), "--format", "template"], "format")):
        assert main(["train", "--method", "dpo", "--out", str(out), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert want in err and len(err.splitlines()) == 1, err
        assert not out.exists()


def test_help_shows_method_and_beta(capsys):
    from baize.cli import main
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--method {sft,dpo}" in text and "--beta BETA" in text


def test_baize_format_prompt_is_the_chat_prompt_and_only_completions_are_scored(prefs, tok):
    from baize.llm.chat_format import get_format
    from baize.schema import read_jsonl
    from baize.train.dpo import encode_pair
    fmt = get_format("baize", tok)
    rows = list(read_jsonl(prefs))
    for row in rows[:3]:
        pair = encode_pair(row, fmt, tok, SYSTEM)
        msgs = row["prompt"] if row["prompt"][0]["role"] == "system" else \
            [{"role": "system", "content": SYSTEM}] + row["prompt"]
        # exactly what `baize chat` sends: the transcript up to [|AI|]; the row's own system prompt wins
        assert tok.decode(pair["prompt_ids"]) == fmt.render(msgs, add_generation_prompt=True)
        assert tok.decode(pair["prompt_ids"]).endswith(row["prompt"][-1]["content"] + "\n[|AI|]")
        # the completion ends at the next [|Human|] marker, as SFT trained it, with no EOS appended
        assert tok.decode(pair["chosen_ids"]) == " " + row["chosen"][0]["content"] + "\n[|Human|]"
        assert tok.decode(pair["rejected_ids"]) == " " + row["rejected"][0]["content"] + "\n[|Human|]"
        assert tok.eos_token_id not in pair["chosen_ids"]
    assert "Answer with numbers." in tok.decode(encode_pair(rows[2], fmt, tok, SYSTEM)["prompt_ids"])
    # TRL's collator puts the loss on completion tokens only: prompt and padding are masked
    batch = collate(rows[:2], fmt, tok, SYSTEM)
    for i, row in enumerate(rows[:2] * 2):
        pair = encode_pair(row, fmt, tok, SYSTEM)
        comp = pair["chosen_ids"] if i < 2 else pair["rejected_ids"]
        n = len(pair["prompt_ids"])
        mask = batch["completion_mask"][i].tolist()
        assert mask == [0] * n + [1] * len(comp) + [0] * (len(mask) - n - len(comp))
        assert batch["input_ids"][i, n:n + len(comp)].tolist() == comp


def test_rows_load_with_datasets_and_a_plain_dpotrainer_tokenizes_them_as_we_do(prefs, tok, tiny_model_dir, tmp_path):
    """The rows are TRL's conversational shape: unchanged into a stock DPOTrainer, which then tokenizes the
    template format exactly as baize does (same prompt ids, same completion ids)."""
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from baize.llm.chat_format import get_format
    from baize.train.dpo import encode_pair
    ds = load_dataset("json", data_files=str(prefs), split="train")
    assert len(ds) == 10 and {"id", "prompt", "chosen", "rejected", "meta"} <= set(ds.column_names)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     use_cpu=True, bf16=False, gradient_checkpointing=False, max_length=128, disable_tqdm=True)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args, train_dataset=ds,
                         processing_class=tok, peft_config=LoraConfig(r=4, target_modules="all-linear"))
    assert trainer.train().global_step == 1
    fmt = get_format("template", tok)
    for i in range(len(ds)):
        ours = encode_pair(ds[i], fmt, tok)
        assert {k: trainer.train_dataset[i][k] for k in ours} == ours, i
    assert tok.decode(ours["chosen_ids"]).endswith("<|im_end|>\n")


# --- training ------------------------------------------------------------------------------------

def test_reference_is_v1_not_the_bare_base(v2, v1, tiny_model_dir, tok):
    import torch
    from transformers import AutoModelForCausalLM

    from baize.llm import models
    from baize.llm.chat_format import get_format
    _, probe, rows = v2
    batch = collate(rows, get_format("baize", tok), tok, SYSTEM)
    v1_model, _ = models.load_model(str(v1), device="cpu")  # v1 as chat/serve load it: base + adapter
    want = completion_logps(v1_model, batch)
    assert (probe.ref0 - want).abs().max() < 1e-4, (probe.ref0, want)
    assert (probe.ref1 - want).abs().max() < 1e-4  # and it stays v1 through training
    base = completion_logps(AutoModelForCausalLM.from_pretrained(tiny_model_dir), batch)
    assert (want - base).abs().max() > 1e-2  # v1 is not the base: the test tells them apart
    # the fresh adapter starts as the reference itself, and no `ref` adapter copy is kept
    assert torch.equal(probe.pol0, probe.ref0) and probe.adapters == {"default"}


def test_only_the_new_lora_weights_change(v2):
    import torch
    _, probe, _ = v2
    lora = [n for n in probe.start if "lora_" in n]
    assert lora and all("lora_" in n for n, p in probe.start.items() if p.requires_grad)
    assert all(torch.equal(probe.start[n], probe.end[n]) for n in probe.start if "lora_" not in n)
    b = [n for n in lora if "lora_B" in n]
    assert len(b) == 14 and all(probe.start[n].abs().sum() == 0 and not torch.equal(probe.start[n], probe.end[n])
                                for n in b)


def test_reward_margin_grows_and_is_logged(v2, tok):
    import torch

    from baize.llm.chat_format import get_format
    from baize.train.common import TrainConfig, split_val
    from baize.train.dpo import encode_pair
    run, probe, rows = v2
    train_idx, _ = split_val(list(range(len(rows))), TrainConfig(val_size=2))
    idx = torch.tensor(train_idx)
    # the trainer got our token ids (prompt as chat prompts it, completion to the next [|Human|])
    assert probe.columns == ["prompt_ids", "chosen_ids", "rejected_ids"]
    assert probe.first_row == encode_pair(rows[train_idx[0]], get_format("baize", tok), tok, SYSTEM)
    assert probe.lora_dropout == {0}  # TRL turns dropout off: the policy's log-probs are not noisy
    before = margins(probe.pol0, probe.ref0)[idx]
    after = margins(probe.pol1, probe.ref1)[idx]
    assert before.abs().max() == 0 and after.mean() > 0.2 and (after > 0).all(), after
    recs = [json.loads(ln) for ln in (run / "loss.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert steps[0]["rewards/margins"] == 0 and steps[0]["loss"] == pytest.approx(0.6931, abs=1e-4)
    assert steps[-1]["rewards/margins"] > steps[1]["rewards/margins"] > 0 and steps[-1]["rewards/accuracies"] == 1
    assert all({"rewards/chosen", "rewards/rejected", "logps/chosen", "tokens_per_s"} <= set(r) for r in steps)
    evals = [r for r in recs if "eval_loss" in r]
    assert [r["step"] for r in evals] == [4, 8] and all("eval_rewards/margins" in r for r in evals)
    assert (run / "loss.png").stat().st_size > 1000
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 8 and summary["reward_margin"] == round(steps[-1]["rewards/margins"], 4)


def test_run_is_a_chain_on_v1_and_loads_as_trained(v2, v1, tok):
    from baize.llm import models
    from baize.llm.chat_format import get_format
    run, probe, rows = v2
    rec = models.read_run(run)
    assert rec["base"] == rec["from_run"] == rec["reference"] == str(v1.resolve())
    assert rec["method"] == "dpo" and rec["beta"] == 0.1 and rec["format"] == "baize" and rec["system"] == SYSTEM
    assert rec["data"] and rec["steps"] == 8
    ref = models.resolve(str(run))
    assert ref.adapters == [str(v1.resolve()), str(run)] and ref.format == "baize" and ref.system == SYSTEM
    # base + v1 + v2 loaded as chat loads them gives the trained policy
    model, _ = models.load_model(str(run), device="cpu")
    got = completion_logps(model, collate(rows, get_format("baize", tok), tok, SYSTEM))
    assert (got - probe.pol1).abs().max() < 1e-3


class Interrupt(Exception):
    pass


def test_resume_continues_to_the_same_adapter(v2, v1, prefs, tmp_path, capsys):
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from baize.cli import main
    from baize.train.recipes import train

    class StopAt5(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:
                raise Interrupt()
    out = tmp_path / "r"
    with pytest.raises(Interrupt):
        train(dpo_config(v1, prefs, out), callbacks=[StopAt5()])
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["checkpoint-4"]
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume"]) == 0  # the saved flags: DPO, from v1
    steps = [ln for ln in capsys.readouterr().out.splitlines() if "] step " in ln and "tok/s" in ln]
    assert steps[0].startswith("[train] step 5/8") and "margin" in steps[0]
    recs = [json.loads(ln) for ln in (out / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss" in r] == list(range(1, 9))
    ref, got = load_file(v2[0] / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert ref.keys() == got.keys()
    for k in ref:
        assert (ref[k] - got[k]).abs().max() < 1e-5, k


def test_quantize_needs_cuda_and_a_merged_v1(v1, prefs, tmp_path):
    import torch

    from baize.train.common import load_for_training, resolve_run_settings
    from baize.train.dpo import policy_config
    from baize.train.recipes import train
    if not torch.cuda.is_available():
        with pytest.raises(BaizeError, match="CUDA"):
            train(dpo_config(v1, prefs, tmp_path / "q", quantize="4bit"))
    # on a GPU, v1's adapter cannot be merged into a 4-bit base: the error says to `baize merge` it first
    cfg = resolve_run_settings(dpo_config(v1, prefs, tmp_path / "q", quantize="4bit"))
    with pytest.raises(BaizeError, match=re.escape(f"`baize merge {v1.resolve()} --out DIR` first")):
        load_for_training(policy_config(cfg), "cuda", print, adapter=False)


@pytest.mark.parametrize("batching, warned", [("grouped", True), ("padded", True), ("packed", False)])
def test_dpo_warns_that_batching_is_ignored(v1, prefs, tmp_path, capsys, batching, warned):
    from transformers import TrainerCallback

    from baize.train.recipes import train

    class StopAtOnce(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            raise Interrupt()
    with pytest.raises(Interrupt):
        train(dpo_config(v1, prefs, tmp_path / "r", batching=batching), callbacks=[StopAtOnce()])
    out = capsys.readouterr().out
    said = [ln for ln in out.splitlines() if "--batching" in ln]
    # TRL's preference collator pads each batch to its longest pair: --batching has no say in DPO
    assert bool(said) == warned, out
    if warned:
        assert said[0] == f"[train] warning: --batching {batching} is ignored by DPO: TRL pads each batch's " \
                          f"pairs to the longest one"
