"""Eval's questions: FastChat's MT-bench shape (`question_id`, `category`, `turns`, optional
`reference`), the legacy Vicuna shape (`text`), any seed source (one-turn questions; MedQuAD's and
Alpaca's answers become references), or the built-in set."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import BaizeError
from ..schema import read_jsonl_where

BUILTIN = Path(__file__).parent.parent / "samples" / "eval_questions.jsonl"


@dataclass
class Question:
    id: str
    category: str
    turns: list[str]
    reference: list | None = None


def _question(obj, where: str) -> Question:
    if not isinstance(obj, dict):
        raise BaizeError(f"{where}: expected a JSON object with 'turns' (MT-bench) or 'text' (Vicuna)")
    turns = obj.get("turns", [obj["text"]] if "text" in obj else None)
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise BaizeError(f"{where}: field 'turns' must be a non-empty list of strings (MT-bench's question.jsonl)")
    qid = obj.get("question_id", obj.get("id"))
    if qid is None:
        raise BaizeError(f"{where}: field 'question_id' is missing")
    ref = obj.get("reference")
    if isinstance(ref, str):
        ref = [ref]
    if ref is not None and not (isinstance(ref, list) and all(r is None or isinstance(r, str) for r in ref)):
        raise BaizeError(f"{where}: field 'reference' must be a string or a list of strings, one per turn")
    return Question(str(qid), str(obj.get("category") or "general"), turns, ref)


def load_questions(spec: str, *, field: str | None = None, limit: int | None = None) -> list[Question]:
    path = BUILTIN if spec == "builtin" else Path(spec)
    first = None
    if path.is_file() and path.suffix.lower() in (".jsonl", ".json"):
        with path.open(encoding="utf-8-sig") as f:
            first = next((line for line in f if line.strip()), None)
    try:
        shape = first and json.loads(first)
    except json.JSONDecodeError:
        shape = None
    if isinstance(shape, dict) and ("turns" in shape or ("text" in shape and "question_id" in shape)):
        out = [_question(obj, where) for where, obj in read_jsonl_where(path)]
    else:  # any seed source: one-turn questions; MedQuAD's and Alpaca's answers are references
        from ..data.seeds import load_seeds
        out = [Question(s.id, s.source, [s.text], [s.meta.get("answer") or s.meta.get("reference")]
                        if (s.meta.get("answer") or s.meta.get("reference")) else None)
               for s in load_seeds(spec, field=field)]
    ids = [q.id for q in out]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise BaizeError(f"{spec}: question_id {dup!r} appears twice: ids must be unique")
    return out[:limit] if limit else out
