"""The one on-disk dialogue format: JSONL, one record per line, OpenAI-style messages.

{"id": "...", "messages": [{"role": "user"|"assistant"|"system", "content": "..."}], "meta": {...}}

Writers append and flush per record; readers skip ids already written, so a killed run resumes
with nothing lost and nothing duplicated. Also: import/export of the paper's released format and
ShareGPT.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, Iterator, TypedDict

from .config import BaizeError

ROLES = ("system", "user", "assistant")


class Message(TypedDict):
    role: str
    content: str


class DataError(BaizeError):
    pass


def validate_record(obj, where: str) -> dict:
    """Check one dialogue record; `where` is 'file:line' so the error names the place to fix."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with 'id' and 'messages', got {type(obj).__name__}")
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects "
                        f"(convert the paper's format with `baize data import`)")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: messages[{i}] must be {{\"role\": one of {list(ROLES)}, \"content\": string}}, "
                            f"got {json.dumps(m, ensure_ascii=False)[:80]}")
    if "id" not in obj:
        raise DataError(f"{where}: field 'id' is missing (every record needs a unique id)")
    return obj


def read_jsonl_where(path: str | Path) -> Iterator[tuple[str, object]]:
    """Yield ('file:line', object) from a JSONL file, so later checks can name the line to fix."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with path.open(encoding="utf-8-sig") as f:  # -sig: a byte-order mark (Windows editors) is not data
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); fix or delete that line") from None
            yield f"{path}:{n}", obj


def read_jsonl(path: str | Path, *, validate: bool = False) -> Iterator[dict]:
    """Yield objects from a JSONL file; a bad line raises an error naming file and line."""
    for where, obj in read_jsonl_where(path):
        yield validate_record(obj, where) if validate else obj


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def repair_torn_tail(path: str | Path) -> int:
    """Cut a last line that a killed writer left half-written; returns the bytes dropped."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    data = path.read_bytes()
    keep = len(data)
    if not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
    else:  # a complete-looking last line can still be garbage (a torn write followed by a newline)
        start = data.rfind(b"\n", 0, len(data) - 1) + 1
        try:
            json.loads(data[start:])
        except ValueError:
            keep = start
    if keep < len(data):
        with path.open("r+b") as f:
            f.truncate(keep)
    return len(data) - keep


class JsonlAppender:
    """Append-only JSONL writer that flushes every record and knows which ids are already there."""

    def __init__(self, path: str | Path, *, key: str = "id"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired = repair_torn_tail(self.path)
        self.ids: set[str] = set()
        if self.path.exists():
            for obj in read_jsonl(self.path):
                self.ids.add(obj.get(key))
        self._f = self.path.open("a", encoding="utf-8")

    def append(self, record: dict) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()  # a kill -9 loses nothing written: the page cache survives the process
        self.ids.add(record.get("id"))

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def sidecar(path: str | Path, kind: str) -> Path:
    """runs/d.jsonl -> runs/d.<kind>.jsonl (rejected, failed) or runs/d.<kind> (config.json)."""
    path = Path(path)
    stem = path.name[:-len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    return path.with_name(f"{stem}.{kind}" if "." in kind else f"{stem}.{kind}.jsonl")


# --- the paper's released format -------------------------------------------------------------

BAIZE_HEADER = "The conversation between human and AI assistant."
_BAIZE_MARK = re.compile(r"\[\|(Human|AI)\|\]")


def to_baize(record: dict) -> dict:
    parts = [BAIZE_HEADER]
    for m in record["messages"]:
        if m["role"] == "system":
            continue
        parts.append(("[|Human|] " if m["role"] == "user" else "[|AI|] ") + m["content"].strip())
    return {"topic": record.get("meta", {}).get("seed", ""), "input": "\n".join(parts) + "\n[|Human|] "}


def from_baize(obj: dict, where: str, idx: int, source: str = "baize") -> dict:
    text = obj.get("input") if isinstance(obj, dict) else None
    if not isinstance(text, str):
        raise DataError(f"{where}: expected the paper's format {{\"topic\", \"input\"}}; field 'input' is missing")
    pieces = _BAIZE_MARK.split(text)
    messages = []
    for role, content in zip(pieces[1::2], pieces[2::2]):
        content = content.strip()
        if content:
            messages.append({"role": "user" if role == "Human" else "assistant", "content": content})
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()
    if not messages:
        raise DataError(f"{where}: no [|Human|]/[|AI|] exchange found in 'input'")
    topic = obj.get("topic", "")
    return {"id": f"{source}-{idx:06d}", "messages": messages,
            "meta": {"seed": topic, "source": source, "mode": "import"}}


def to_sharegpt(record: dict) -> dict:
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    return {"id": record["id"], "conversations": [{"from": names[m["role"]], "value": m["content"]}
                                                  for m in record["messages"]]}


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
