"""`baize chat`: history trimming, commands, saving, the paper's defaults, and the command itself."""
import io
import itertools
import os
import subprocess
import sys

import pytest
from rich.console import Console

from baize.llm.base import LLM
from baize.llm.chat_format import guardrail_prompt
from baize.schema import read_jsonl, validate_record
from baize.serve.chat import ChatConfig, ChatSession, count_tokens, run_chat, trim_history, usage_hint


class Stub(LLM):
    """Streams canned answers word by word and records the settings of each call."""
    name = "stub"
    system = None

    def __init__(self, answers=("First answer.", "Second answer.", "Third answer.")):
        self.answers = itertools.cycle(answers)
        self.calls = []

    def stream(self, messages, **kw):
        self.calls.append((messages, kw))
        for word in next(self.answers).split(" "):
            yield word + " "


def session(llm=None, **cfg):
    out = io.StringIO()
    return ChatSession(llm or Stub(), ChatConfig(model="stub", **cfg), Console(file=out, width=200)), out


def test_trim_drops_oldest_whole_turns():
    msgs = [{"role": "system", "content": "S" * 10}]
    for i in range(4):
        msgs += [{"role": "user", "content": f"u{i}" * 10}, {"role": "assistant", "content": f"a{i}" * 10}]
    msgs.append({"role": "user", "content": "last"})
    count = lambda m: sum(len(x["content"]) for x in m)  # noqa: E731
    kept, dropped = trim_history(msgs, 60, count)
    assert dropped == 3 and kept[0]["role"] == "system"
    assert [m["content"][:2] for m in kept[1:]] == ["u3", "a3", "la"]  # a user message always opens it
    assert count(kept) <= 60 < count(msgs[:1] + msgs[5:])
    kept, dropped = trim_history(msgs, 10, count)  # too small even for one turn: the newest stays
    assert dropped == 4 and [m["content"] for m in kept[1:]] == ["last"]
    assert trim_history(msgs, 10 ** 6, count) == (msgs, 0)


def test_defaults_are_the_papers():
    cfg = ChatConfig()
    assert (cfg.top_p, cfg.temperature, cfg.max_tokens, cfg.max_history_tokens) == (0.95, 1.0, 512, 2048)
    s, _ = session(name="Zhang")
    assert s.system == guardrail_prompt("Zhang") and "named Zhang" in s.system
    recorded = Stub()
    recorded.system = "trained with this prompt"
    assert session(recorded)[0].system == "trained with this prompt"  # a run's own prompt wins


def test_commands():
    llm = Stub()
    s, out = session(llm)
    assert s.ask("Hello?") == "First answer."
    assert llm.calls[0][0][0] == {"role": "system", "content": guardrail_prompt("Baize")}
    assert llm.calls[0][1] == {"temperature": 1.0, "top_p": 0.95, "max_tokens": 512, "seed": None,
                               "stop": ["[|Human|]", "[|AI|]"]}
    s.command("/retry")
    assert [m["content"] for m in s.turns] == ["Hello?", "Second answer."]
    s.ask("More?")
    s.command("/undo")
    assert [m["content"] for m in s.turns] == ["Hello?", "Second answer."]
    s.command("/set temperature 0.3")
    s.command("/set max_tokens 64")
    s.command("/set seed 9")
    s.command("/set top_p lots")
    s.command("/system You are terse.")
    s.ask("Again")
    msgs, kw = llm.calls[-1]
    assert kw == {"temperature": 0.3, "top_p": 0.95, "max_tokens": 64, "seed": 9, "stop": ["[|Human|]", "[|AI|]"]}
    assert msgs[0]["content"] == "You are terse." and msgs[-1] == {"role": "user", "content": "Again"}
    s.command("/system none")
    s.ask("No system")
    assert llm.calls[-1][0][0]["role"] == "user"
    s.command("/reset")
    assert s.turns == []
    assert s.command("/quit") is False
    assert "not a number" in out.getvalue()


def test_save_writes_a_dialogue_record(tmp_path):
    s, _ = session()
    s.ask("What is a baize?")
    s.ask("And its name?")
    s.command(f"/save {tmp_path / 'c.jsonl'}")
    s.command(f"/save {tmp_path / 'c.jsonl'}")
    recs = list(read_jsonl(tmp_path / "c.jsonl"))
    assert len(recs) == 2 and recs[0]["id"] != recs[1]["id"]
    rec = validate_record(recs[0], "saved")
    assert [m["role"] for m in rec["messages"]] == ["user", "assistant", "user", "assistant"]
    assert rec["meta"]["source"] == "chat" and rec["meta"]["system"].startswith("The following is a conversation")


def test_loop_reads_until_eof():
    lines = iter(["Hi there", "", "/help", "Bye"])

    def read(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None
    out = io.StringIO()
    s = run_chat(Stub(), ChatConfig(model="stub"), console=Console(file=out, width=200), read=read)
    assert [m["content"] for m in s.turns] == ["Hi there", "First answer.", "Bye", "Second answer."]
    assert "First answer." in out.getvalue() and "/retry" in out.getvalue()


def test_history_cut_with_the_real_tokenizer(tiny_model_dir):
    from baize.llm.models import HFLLM
    llm = HFLLM(f"hf:{tiny_model_dir}")
    s, out = session(llm, max_history_tokens=260, max_tokens=3, seed=0)
    for i in range(6):
        s.turns += [{"role": "user", "content": f"question {i} " * 10}, {"role": "assistant", "content": "answer " * 10}]
    s.turns.append({"role": "user", "content": "the last question"})
    prompt = s.prompt()
    assert count_tokens(llm, prompt) <= 260 < count_tokens(llm, s.messages())
    assert prompt[0]["role"] == "system" and prompt[1]["role"] == "user" and prompt[-1]["content"] == "the last question"
    assert "left out" in out.getvalue()
    assert isinstance(s.generate(), str)  # streams through the real engine


def test_generation_stops_at_role_markers_and_eos(tiny_model_dir):
    from baize.llm.models import HFLLM
    for fmt, markers in (("baize", ["[|Human|]", "[|AI|]"]), ("template", ["<|im_start|>", "<|im_end|>"])):
        llm = HFLLM(f"hf:{tiny_model_dir}", format=fmt)
        (req,) = llm.submit([{"role": "user", "content": "hi"}], max_tokens=1, stop=["END"])
        req.result()
        assert all(m in req.params.stop for m in markers) and "END" in req.params.stop
        assert llm.tokenizer.eos_token_id in llm.engine.eos_ids


def test_usage_hint():
    hint = usage_hint("runs/v2", compare={"base": "default", "v1": "runs/v1"})
    assert "baize chat runs/v2" in hint and "baize serve runs/v2 --port 8000 --ui" in hint
    assert "baize serve base=default v1=runs/v1 v2=runs/v2" in hint
    assert "'my run'" in usage_hint("my run")  # quoted for the shell


def test_chat_command(tiny_model_dir, tmp_path):
    save = tmp_path / "chats.jsonl"
    p = subprocess.run([sys.executable, "-m", "baize", "chat", f"hf:{tiny_model_dir}", "--max-new-tokens", "5",
                        "--seed", "1", "--save", str(save)], input="Hello!\n/save\n/quit\n", text=True,
                       capture_output=True, timeout=180, env=dict(os.environ, COLUMNS="200"))
    assert p.returncode == 0, p.stderr
    assert "ai>" in p.stdout and "saved chat-" in p.stdout
    (rec,) = read_jsonl(save)
    assert rec["messages"][0] == {"role": "user", "content": "Hello!"} and rec["meta"]["params"]["max_tokens"] == 5


def test_bad_flags_are_one_line_errors(tiny_model_dir):
    p = subprocess.run([sys.executable, "-m", "baize", "chat", "no/such/model"], input="", text=True,
                       capture_output=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("baize: error:") and "Traceback" not in p.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
