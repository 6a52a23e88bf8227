"""`baize chat SPEC`: a terminal chat that streams tokens, plus the history handling that the web UI
shares (cut to a token budget by dropping the oldest whole turns).

Defaults are the paper's demo: top-p 0.95, temperature 1, up to 512 new tokens, history cut to
2048 tokens, the Baize guardrail system prompt (a run directory's recorded prompt wins: it is the
one the model was trained with).
"""
from __future__ import annotations

import shlex
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..config import BaizeError, add_dataclass_args, dataclass_from_args, opt
from ..llm.chat_format import BaizeFormat

HELP = """commands:
  /reset              start a new conversation (also /new)
  /retry              sample the last answer again
  /undo               remove the last exchange
  /system [TEXT]      show or set the system prompt (/system default: the guardrail, /system none: no prompt)
  /set KEY VALUE      temperature | top_p | max_tokens | max_history_tokens | seed (seed none: random)
  /save [PATH]        append the conversation to a JSONL file as a dialogue record
  /help, /quit        (Ctrl-C stops an answer, Ctrl-D quits)"""


@dataclass
class ChatConfig:
    model: str = opt("default", cli=False)
    name: str = opt("Baize", "the assistant's name in the guardrail system prompt")
    system: str | None = opt(None, "system prompt ('' for none); default: the run's recorded prompt, else the Baize "
                                   "guardrail")
    temperature: float = opt(1.0, "sampling temperature (0: greedy)")
    top_p: float = opt(0.95, "nucleus sampling probability mass")
    max_tokens: int = opt(512, "most new tokens per answer", flags=("--max-tokens", "--max-new-tokens"))
    max_history_tokens: int = opt(2048, "prompt budget; the oldest whole turns are dropped to fit")
    seed: int | None = opt(None, "sampling seed, for repeatable answers")
    save: str = opt("chats.jsonl", "where /save appends dialogue records")
    format: str | None = opt(None, "chat format override: baize | template", choices=["baize", "template"])
    device: str | None = opt(None, "cpu | cuda (default: cuda when available)")
    base_url: str | None = opt(None, "for openai: specs, an OpenAI-compatible base URL")


# -- history shared with the web UI --------------------------------------------------------------

def count_tokens(llm, messages: list[dict]) -> int:
    """Prompt length as the model will see it (rendered with its chat format)."""
    if llm.can_count_tokens:
        return len(llm.prompt_ids(messages))
    # remote and llama.cpp backends do their own templating: about 4 characters a token
    return sum(len(m["content"]) + 8 for m in messages) // 4


def trim_history(messages: list[dict], max_tokens: int, count) -> tuple[list[dict], int]:
    """Drop the oldest whole turns (a user message and the replies after it) until the prompt fits in
    max_tokens. The system message and the newest turn always stay. Returns (messages, turns dropped)."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system):]
    starts = [i for i, m in enumerate(rest) if m["role"] == "user"] or [0]
    if starts[0] != 0:
        starts.insert(0, 0)
    dropped = 0
    # binary search would save calls, but histories are short and each count is one tokenizer pass
    while dropped < len(starts) - 1 and count(system + rest[starts[dropped]:]) > max_tokens:
        dropped += 1
    return system + rest[starts[dropped]:], dropped


def default_system(llm, name: str = "Baize") -> str:
    from ..llm.chat_format import guardrail_prompt
    recorded = getattr(llm, "system", None)
    return recorded if recorded is not None else guardrail_prompt(name)


def dialogue_record(messages: list[dict], *, model: str, system: str | None, params: dict) -> dict:
    """A conversation in the one on-disk dialogue format, ready for `baize train` or `baize data`."""
    return {"id": f"chat-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
            "messages": [m for m in messages if m["role"] != "system"],
            "meta": {"source": "chat", "model": model, "system": system, "params": params,
                     "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}


def usage_hint(run_dir: str | Path, *, compare: dict[str, str] | None = None, port: int = 8000) -> str:
    """The commands that use a trained run, for the end of `baize pipeline` / `baize train`.
    `compare` maps served names to other specs (e.g. {"base": "default", "v1": "runs/v1"})."""
    run = shlex.quote(str(run_dir))
    name = Path(str(run_dir)).name or "model"
    lines = ["Chat with it in the terminal:",
             f"  baize chat {run}",
             "Serve it (OpenAI-compatible API on 127.0.0.1, with the web UI at /ui):",
             f"  baize serve {run} --port {port} --ui",
             f"  curl http://127.0.0.1:{port}/v1/chat/completions -H 'Content-Type: application/json' "
             f"-d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'"]
    if compare:
        specs = " ".join(shlex.quote(f"{k}={v}") for k, v in compare.items())
        lines += ["Compare versions side by side (one base in memory, adapters switched per batch):",
                  f"  baize serve {specs} {shlex.quote(f'{name}={run_dir}')} --port {port} --ui"]
    return "\n".join(lines)


# -- the terminal chat ---------------------------------------------------------------------------

class ChatSession:
    """Conversation state and commands, separate from the terminal so tests can drive it."""

    PARAMS = {"temperature": float, "top_p": float, "max_tokens": int, "max_history_tokens": int, "seed": int}

    def __init__(self, llm, cfg: ChatConfig, console=None):
        from rich.console import Console
        self.llm, self.cfg = llm, cfg
        self.console = console or Console(highlight=False)
        self.system = cfg.system if cfg.system is not None else default_system(llm, cfg.name)
        self.turns: list[dict] = []  # user/assistant messages, oldest first

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.turns

    def prompt(self) -> list[dict]:
        msgs, dropped = trim_history(self.messages(), self.cfg.max_history_tokens,
                                     lambda m: count_tokens(self.llm, m))
        if dropped:
            self.console.print(f"[dim](history over {self.cfg.max_history_tokens} tokens: "
                               f"the oldest {dropped} turn(s) left out)[/dim]")
        return msgs

    def generate(self) -> str:
        """Stream an answer to the current history; Ctrl-C keeps what was written so far."""
        # the guardrail describes [|Human|]/[|AI|] turns whatever the model's format: stop at them too
        kw = dict(temperature=self.cfg.temperature, top_p=self.cfg.top_p, max_tokens=self.cfg.max_tokens,
                  seed=self.cfg.seed, stop=list(BaizeFormat.stop))
        text, stream = "", self.llm.stream(self.prompt(), **kw)
        live = self._live()
        try:
            with live:
                for piece in stream:
                    text += piece
                    live.show(text)
        except KeyboardInterrupt:
            self.console.print("[dim](stopped)[/dim]")
        finally:
            stream.close()  # ends the engine's generation for this answer
        text = text.strip()
        self.turns.append({"role": "assistant", "content": text})
        return text

    def _live(self):
        return _MarkdownLive(self.console) if self.console.is_terminal else _PlainLive(self.console)

    def ask(self, text: str) -> str:
        self.turns.append({"role": "user", "content": text})
        return self.generate()

    def command(self, line: str) -> bool:
        """Run a /command; False means quit."""
        cmd, _, arg = line[1:].partition(" ")
        cmd, arg = cmd.lower(), arg.strip()
        out = self.console.print
        if cmd in ("quit", "exit", "q"):
            return False
        if cmd in ("reset", "new", "clear"):
            self.turns = []
            out("[dim](new conversation)[/dim]")
        elif cmd == "retry":
            if not self.turns or self.turns[-1]["role"] != "assistant":
                out("[dim](nothing to retry)[/dim]")
            else:
                self.turns.pop()
                self.generate()
        elif cmd == "undo":
            while self.turns and self.turns[-1]["role"] == "assistant":
                self.turns.pop()
            if self.turns:
                self.turns.pop()
            out(f"[dim](last exchange removed; {len(self.turns) // 2} left)[/dim]")
        elif cmd == "system":
            if arg == "default":
                self.system = default_system(self.llm, self.cfg.name)
            elif arg == "none":
                self.system = ""
            elif arg:
                self.system = arg
            out(f"[dim]system: {self.system or '(none)'}[/dim]", markup=False)
        elif cmd == "set":
            key, _, value = arg.partition(" ")
            if key not in self.PARAMS or not value.strip():
                out(f"usage: /set KEY VALUE, KEY one of {', '.join(self.PARAMS)}")
                return True
            try:
                v = None if key == "seed" and value.strip() == "none" else self.PARAMS[key](value)
            except ValueError:
                out(f"/set {key}: {value!r} is not a number")
                return True
            setattr(self.cfg, key, v)
            out(f"[dim]{key} = {v}[/dim]")
        elif cmd == "save":
            path = Path(arg or self.cfg.save)
            rec = self.save(path)
            out(f"[dim]saved {rec['id']} ({len(rec['messages'])} messages) to {path}[/dim]")
        elif cmd in ("help", "h", "?"):
            out(HELP, markup=False)
        else:
            out(f"unknown command /{cmd}; /help lists them")
        return True

    def save(self, path: Path) -> dict:
        from ..schema import JsonlAppender
        params = {k: getattr(self.cfg, k) for k in self.PARAMS}
        rec = dialogue_record(self.turns, model=self.cfg.model, system=self.system, params=params)
        with JsonlAppender(path) as w:
            w.append(rec)
        return rec


class _PlainLive:
    """Pipes and tests: write each new piece as it comes."""

    def __init__(self, console):
        self.console, self.shown = console, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.console.file.write("\n")
        self.console.file.flush()

    def show(self, text):
        self.console.file.write(text[self.shown:].lstrip() if self.shown == 0 else text[self.shown:])
        self.console.file.flush()
        self.shown = len(text)


class _MarkdownLive:
    """A terminal: re-render the answer as Markdown while it streams."""

    def __init__(self, console):
        from rich.live import Live
        self.live = Live(console=console, refresh_per_second=12, vertical_overflow="visible")

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.__exit__(*exc)

    def show(self, text):
        from rich.markdown import Markdown
        self.live.update(Markdown(text))


def run_chat(llm, cfg: ChatConfig, *, console=None, read=None) -> ChatSession:
    """The read-eval loop; `read(prompt) -> str` raises EOFError at the end of input."""
    session = ChatSession(llm, cfg, console)
    con = session.console
    read = read or (lambda p: con.input(p))
    con.print(f"[bold]{cfg.model}[/bold] [dim]({getattr(llm, 'name', cfg.model)}; /help for commands, "
              f"Ctrl-D to quit)[/dim]")
    while True:
        try:
            line = read("[bold green]you>[/bold green] ").strip()
        except EOFError:
            con.print()
            break
        except KeyboardInterrupt:
            con.print()
            continue
        if not line:
            continue
        if line.startswith("/"):
            if not session.command(line):
                break
            continue
        # a terminal re-renders the answer as Markdown below the label; a pipe gets it on the same line
        con.print("[bold cyan]ai>[/bold cyan] ", end="\n" if con.is_terminal else "")
        session.ask(line)
    return session


def add_cli(sub) -> None:
    import argparse
    p = sub.add_parser("chat", help="chat with a model in the terminal (streams tokens)",
                       description="Chat with a model in the terminal; answers stream as they are written.\n\n"
                       + HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="default",
                   help="model spec: default, a run directory, hf:PATH[+ADAPTER], openai:MODEL, gguf:PATH")
    add_dataclass_args(p, ChatConfig)
    p.set_defaults(func=_main)


def load_for_chat(cfg: ChatConfig):
    from ..llm.models import load_llm
    kw = {k: v for k, v in (("format", cfg.format), ("device", cfg.device)) if v}
    return load_llm(cfg.model, base_url=cfg.base_url, **kw)


def _main(args) -> int:
    cfg = dataclass_from_args(ChatConfig, args)
    if cfg.max_tokens < 1 or cfg.max_history_tokens < 1:
        raise BaizeError("--max-tokens and --max-history-tokens must be positive")
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    llm = load_for_chat(cfg)
    run_chat(llm, cfg)
    return 0

