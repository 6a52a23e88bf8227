"""Seed loaders: every way seeds come, to one deduplicated, shardable list.

--seeds takes a JSONL file (field `seed`, or --seed-field), a CSV/TSV column, a TXT file (one per
line), MedQuAD's original XML folder, `hf:DATASET[:SPLIT]:FIELD` (through `datasets`, online), or
a sample set shipped in the package: quora, stackoverflow, medquad, alpaca.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import BaizeError

SAMPLES = ("quora", "stackoverflow", "medquad", "alpaca")
SAMPLES_DIR = Path(__file__).parent.parent / "samples"
# tried in order when --seed-field is not given and the file has no `seed`
FIELD_GUESSES = ("seed", "question", "instruction", "prompt", "topic", "title", "text", "Questions")


@dataclass
class Seed:
    id: str
    text: str
    source: str
    meta: dict = field(default_factory=dict)


def norm_key(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def seed_id(source: str, text: str) -> str:
    """Stable across runs, limits and shards, so resume and merging need no bookkeeping."""
    return f"{source}-{hashlib.sha1(norm_key(text).encode()).hexdigest()[:12]}"


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    if not spec:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not (0 <= int(m.group(1)) < int(m.group(2))):
        raise BaizeError(f"--shard {spec!r}: use I/N with 0 <= I < N, e.g. --shard 0/4")
    return int(m.group(1)), int(m.group(2))


def in_shard(text: str, shard: tuple[int, int] | None) -> bool:
    if shard is None:
        return True
    i, n = shard
    return int(hashlib.sha1(norm_key(text).encode()).hexdigest(), 16) % n == i


def _pick_field(row: dict, wanted: str | None, where: str) -> str:
    if wanted:
        if wanted not in row:
            raise BaizeError(f"{where}: no field {wanted!r}; this row has {sorted(row)}: pass one with --seed-field")
        return wanted
    for f in FIELD_GUESSES:
        if f in row:
            return f
    raise BaizeError(f"{where}: no 'seed' field; this row has {sorted(row)}: pass one with --seed-field")


def _rows_jsonl(path: Path, wanted: str | None, source: str):
    with path.open(encoding="utf-8-sig") as f:  # -sig: a byte-order mark (Windows editors) is not data
        first = f.read(4096).lstrip()[:1]
        f.seek(0)
        if first == "[":  # a JSON array (the paper's released files are arrays)
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise BaizeError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); fix the file") from None
            items = enumerate(data, 1)
        else:
            items = ((n, line) for n, line in enumerate(f, 1) if line.strip())
        for n, raw in items:
            where = f"{path}:{n}"
            if first != "[":  # a JSONL line (an array's items are already parsed, strings included)
                try:
                    raw = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise BaizeError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); fix or delete that line") from None
            if isinstance(raw, str):
                yield raw, {"source": source}
                continue
            if not isinstance(raw, dict):
                raise BaizeError(f"{where}: expected a JSON object with a seed field, got {type(raw).__name__}")
            key = _pick_field(raw, wanted, where)
            wanted = key  # the first row decides; a later row without it is an error
            if not isinstance(raw[key], str):
                raise BaizeError(f"{where}: field {key!r} must be a string, got {type(raw[key]).__name__}")
            yield raw[key], raw


def _rows_csv(path: Path, wanted: str | None, source: str):
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if not reader.fieldnames:
            return
        key = _pick_field(dict.fromkeys(reader.fieldnames), wanted, f"{path}:1")
        for row in reader:
            yield row[key] or "", {k: v for k, v in row.items() if k != key}


def _rows_txt(path: Path, source: str):
    with path.open(encoding="utf-8-sig") as f:
        for line in f:
            yield line.rstrip("\n"), {"source": source}


def _rows_medquad(folder: Path):
    """MedQuAD's original layout: <Document><Focus/><QAPairs><QAPair><Question qid qtype/><Answer/>."""
    import xml.etree.ElementTree as ET
    files = sorted(folder.rglob("*.xml"))
    if not files:
        raise BaizeError(f"{folder}: a folder of seeds must be MedQuAD's XML folder, and it has no *.xml files")
    for p in files:
        try:
            doc = ET.parse(p).getroot()
        except ET.ParseError as e:
            raise BaizeError(f"{p}:{e.position[0]}: malformed XML ({e}); fix or remove the file") from None
        focus = (doc.findtext("Focus") or "").strip()
        for qa in doc.iter("QAPair"):
            q = qa.find("Question")
            if q is None or not (q.text or "").strip():
                continue
            yield q.text, {"source": "medquad", "focus": focus, "qtype": q.get("qtype", ""), "qid": q.get("qid", ""),
                           "answer": (qa.findtext("Answer") or "").strip(), "url": doc.get("url", ""),
                           "subset": p.parent.name}


def _rows_hf(spec: str):
    parts = spec[3:].split(":")
    if len(parts) == 2:
        name, split, key = parts[0], "train", parts[1]
    elif len(parts) == 3:
        name, split, key = parts
    else:
        raise BaizeError(f"--seeds {spec!r}: use hf:DATASET[:SPLIT]:FIELD, e.g. hf:quora:train:questions")
    import datasets
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # datasets raises many types (offline, missing split, bad name)
        raise BaizeError(f"--seeds {spec}: cannot load dataset {name!r} split {split!r}: {str(e).splitlines()[0]}") from None
    if key not in ds.column_names:
        raise BaizeError(f"--seeds {spec}: dataset has no field {key!r}; fields: {ds.column_names}")
    source = name.rstrip("/").split("/")[-1]
    for row in ds:
        val = row[key]
        # Quora pairs: {"questions": {"text": [q1, q2]}}; Baize used the first question
        if isinstance(val, dict) and "text" in val:
            val = val["text"]
        if isinstance(val, list):
            val = val[0] if val else ""
        yield str(val), {"source": source}


def load_seeds(spec: str, *, field: str | None = None, limit: int | None = None,
               shard: str | tuple[int, int] | None = None) -> list[Seed]:
    """Deduplicated seeds; --shard picks a deterministic disjoint part, --limit the first N of it."""
    shard = parse_shard(shard) if isinstance(shard, str) or shard is None else shard
    if spec in SAMPLES:
        path, source = SAMPLES_DIR / f"{spec}.jsonl", spec
    elif spec.startswith("hf:"):
        path, source = None, None
    else:
        path = Path(spec)
        source = path.stem if path.is_file() else path.name
        if not path.exists():
            raise BaizeError(f"--seeds {spec}: no such file or folder; give a JSONL/CSV/TXT file, MedQuAD's XML "
                             f"folder, hf:DATASET[:SPLIT]:FIELD, or one of {', '.join(SAMPLES)}")
    if path is None:
        rows = _rows_hf(spec)
    elif path.is_dir():
        rows = _rows_medquad(path)
    elif path.suffix.lower() in (".csv", ".tsv"):
        rows = _rows_csv(path, field, source)
    elif path.suffix.lower() == ".txt":
        rows = _rows_txt(path, source)
    else:
        rows = _rows_jsonl(path, field, source)
    seen: set[str] = set()
    out: list[Seed] = []
    total = 0
    for text, row in rows:
        text = text.strip()
        if not text:
            continue
        total += 1
        key = norm_key(text)
        if key in seen or not in_shard(text, shard):
            continue
        seen.add(key)
        src = str(row.get("source") or source)
        meta = {k: v for k, v in row.items() if k not in ("seed", "source") and isinstance(v, (str, int, float, bool))}
        out.append(Seed(seed_id(src, text), text, src, meta))
        if limit and len(out) >= limit:
            break
    if total == 0:
        raise BaizeError(f"--seeds {spec}: no seeds found (the file is empty or every seed is blank)")
    return out
