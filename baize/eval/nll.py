"""eval's judge-free measure: the mean negative log-likelihood of the assistant tokens of a dialogue
set (--nll-data, and the questions' references) under each local model, cached per model and set."""
from __future__ import annotations

import json
from pathlib import Path

from ..schema import read_jsonl


def nll(lazy, records: list[dict]) -> list | None:
    """[total negative log-likelihood, assistant tokens] of each record (None where it has none), in the
    model's own chat format: the mean is mean_nll's, and its interval resamples the records (judge_free)."""
    import torch

    from ..train.packing import IGNORE, tokenize
    llm = lazy.get()
    if not llm.is_local or not records:
        return None
    samples = tokenize(records, llm.format, llm.tokenizer, max_length=llm.context_length, system=llm.system)

    def score():
        parts = []
        with torch.inference_mode():
            for s in samples:
                labels = torch.tensor([s["labels"]])
                if (labels != IGNORE).sum() < 1:
                    parts.append(None)
                    continue
                ids = torch.tensor([s["input_ids"]], device=llm.model.device)
                logits = llm.model(input_ids=ids).logits[0, :-1].float()
                tgt = labels[0, 1:].to(logits.device)
                total = float(torch.nn.functional.cross_entropy(logits, tgt, ignore_index=IGNORE, reduction="sum"))
                parts.append([round(total, 4), int((tgt != IGNORE).sum())])
        return parts
    # on the engine's thread: never concurrent with the model's generation for other requests
    return llm.engine.call(score)


def mean_nll(parts: list | None) -> float | None:
    """Nats per assistant token over every record: a long dialogue weighs by its tokens."""
    parts = [p for p in parts or [] if p]
    count = sum(c for _, c in parts)
    return round(sum(t for t, _ in parts) / count, 4) if count else None


def reference_dialogues(questions: list) -> list[dict]:
    """One dialogue per question with a reference: each turn's question, then its reference answer.
    Turn k's context is the earlier turns with their references, not a model's own answers, so every
    model is scored on the same text; the dialogue stops at the first turn without one (a later
    reference would follow an answer nobody wrote)."""
    out = []
    for q in questions:
        msgs = []
        for turn, ref in zip(q.turns, q.reference or []):
            if not ref:
                break
            msgs += [{"role": "user", "content": turn}, {"role": "assistant", "content": ref}]
        if msgs:
            out.append({"messages": msgs})
    return out


class _NllCache:
    def __init__(self, path: Path):
        self.path = path
        self.data = {}
        if path.exists():
            for r in read_jsonl(path):
                self.data[tuple(r["key"])] = r["value"]

    def get(self, key, compute):
        if key not in self.data:
            self.data[key] = compute()
            with self.path.open("a") as f:
                f.write(json.dumps({"key": list(key), "value": self.data[key]}) + "\n")
        return self.data[key]
