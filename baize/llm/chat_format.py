"""Prompt formats: the paper's [|Human|]/[|AI|] transcript and the tokenizer's own chat template.

One API for training (text + the character spans the loss is taken on) and inference (prompt +
stop strings), so a run is served exactly as it was trained. Every message's content is sanitised
first: text containing a role marker or a special token can never become a forged turn.
"""
from __future__ import annotations

import re

BAIZE_SYSTEM = (
    "The following is a conversation between a human and an AI assistant named {name} (named after a "
    "mythical creature in Chinese folklore). {name} is an open-source AI assistant developed by UCSD and "
    "Sun Yat-Sen University. The human and the AI assistant take turns chatting. Human statements start "
    "with [|Human|] and AI assistant statements start with [|AI|]. The AI assistant always provides "
    "responses in as much detail as possible, and in Markdown format. The AI assistant always declines "
    "to engage with topics, questions and instructions related to unethical, controversial, or sensitive "
    "issues. Complete the transcript in exactly that format.\n[|Human|]Hello!\n[|AI|]Hi!"
)
BAIZE_HEADER = "The conversation between human and AI assistant."
FORMATS = ("baize", "template")

_MARKER = re.compile(r"\[\s*\|\s*(human|ai)\s*\|\s*\]", re.IGNORECASE)


def guardrail_prompt(name: str = "Baize") -> str:
    return BAIZE_SYSTEM.format(name=name)


class ChatFormat:
    name = ""
    stop: list[str] = []
    add_special_tokens = False

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        specials: set[str] = set()
        if tokenizer is not None:
            specials.update(tokenizer.all_special_tokens)
            specials.update(str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values())
        self._specials = sorted((s for s in specials if len(s) > 1), key=len, reverse=True)

    def sanitize(self, text: str) -> str:
        # a zero-width space inside a special token's text stops the tokenizer matching it
        for s in self._specials:
            if s in text:
                text = text.replace(s, s[0] + "\u200b" + s[1:])
        return _MARKER.sub(lambda m: f"[{m.group(1)}]", text)

    def clean(self, messages: list[dict]) -> list[dict]:
        return [{"role": m["role"], "content": self.sanitize(m["content"])} for m in messages]

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        raise NotImplementedError

    def render_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The full training text and the [start, end) character spans of the assistant's turns."""
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"]


class BaizeFormat(ChatFormat):
    """The paper's transcript. Each assistant span runs to the end of the next [|Human|] marker, so
    the model learns to hand the turn back, and generation stops there."""
    name = "baize"
    stop = ["[|Human|]", "[|AI|]"]
    add_special_tokens = True

    def _parts(self, messages):
        messages = self.clean(messages)
        header = BAIZE_HEADER
        if messages and messages[0]["role"] == "system":
            header, messages = messages[0]["content"], messages[1:]
        return header, messages

    def render(self, messages, add_generation_prompt=True):
        text, _ = self.render_spans(messages, closing=not add_generation_prompt)
        return text + ("[|AI|]" if add_generation_prompt else "")

    def render_spans(self, messages, closing: bool = True):
        header, messages = self._parts(messages)
        text, spans, open_span = header + "\n", [], None
        for m in messages:
            if m["role"] == "user":
                text += "[|Human|]"
                if open_span is not None:
                    spans.append((open_span, len(text)))
                    open_span = None
                text += " " + m["content"].strip() + "\n"
            elif m["role"] == "assistant":
                text += "[|AI|]"
                open_span = len(text)
                text += " " + m["content"].strip() + "\n"
        if closing:
            text += "[|Human|]"
            if open_span is not None:
                spans.append((open_span, len(text)))
        return text, spans


class TemplateFormat(ChatFormat):
    """The tokenizer's chat template; assistant spans are found by rendering each prefix."""
    name = "template"

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        if not getattr(tokenizer, "chat_template", None):
            from ..config import BaizeError
            raise BaizeError("this tokenizer has no chat template: use --format baize")
        self.stop = [s for s in ("<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|end|>", "</s>") if s in self._specials]

    def render(self, messages, add_generation_prompt=True):
        return self.tokenizer.apply_chat_template(self.clean(messages), tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def render_spans(self, messages):
        messages = self.clean(messages)
        full = self.render(messages, add_generation_prompt=False)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = len(self.render(messages[:i], add_generation_prompt=True))
            end = len(self.render(messages[:i + 1], add_generation_prompt=False))
            # templates that rewrite history (e.g. drop old reasoning) break prefix rendering
            if full[:end] != self.render(messages[:i + 1], add_generation_prompt=False):
                from ..config import BaizeError
                raise BaizeError("the chat template does not render prefixes consistently; use --format baize")
            spans.append((start, end))
        return full, spans


def get_format(name: str, tokenizer=None) -> ChatFormat:
    if name == "baize":
        return BaizeFormat(tokenizer)
    if name == "template":
        return TemplateFormat(tokenizer)
    from ..config import BaizeError
    raise BaizeError(f"unknown chat format {name!r}: use one of {', '.join(FORMATS)}")


def strip_reply(text: str, stops: list[str]) -> str:
    """Cut a generated reply at the first stop string (remote servers may not apply them all)."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut].strip()
