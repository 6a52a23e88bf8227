"""`baize data stats | filter | export | import`: look at a dialogue file, clean it, move it between formats.

The paper's released files ({"topic", "input"} with [|Human|]/[|AI|], JSON arrays of 50K+ items)
import into our JSONL, so its 158K dialogues train directly; ShareGPT export feeds other trainers.
"""
from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..config import BaizeError, EndpointFields, RunFields, opt
from ..schema import from_baize, read_jsonl, sidecar, to_baize, to_sharegpt, write_jsonl
from .filters import FilterConfig


def _words(text: str) -> int:
    return len(text.split())


def _first(path: Path) -> dict | None:
    return next(iter(read_jsonl(path)), None)


def prefs_stats(path: Path) -> dict:
    """Preference pairs: how many, and whether the judge simply preferred the longer answer."""
    rows = list(read_jsonl(path))
    if not rows:
        raise BaizeError(f"{path}: no preference pairs in the file")
    ch = [sum(_words(m["content"]) for m in r["chosen"]) for r in rows]
    rej = [sum(_words(m["content"]) for m in r["rejected"]) for r in rows]
    margins = Counter(r.get("meta", {}).get("margin") for r in rows)
    agree = [r["meta"]["agreement"] for r in rows if r.get("meta", {}).get("agreement") is not None]
    return {"file": str(path), "kind": "preferences", "pairs": len(rows),
            "prompts": len({json.dumps(r["prompt"], sort_keys=True) for r in rows}),
            "chosen_words": {"mean": round(statistics.mean(ch), 1), "median": statistics.median(ch)},
            "rejected_words": {"mean": round(statistics.mean(rej), 1), "median": statistics.median(rej)},
            "chosen_longer": round(sum(c > r for c, r in zip(ch, rej)) / len(rows), 3),
            "rank_margin": {str(k): v for k, v in sorted(margins.items(), key=lambda kv: str(kv[0]))},
            "mean_agreement": round(statistics.mean(agree), 3) if agree else None}


def sdf_stats(records: list[dict]) -> dict:
    """SDF records: candidates per prompt, the judge's order agreement, and length bias of the best."""
    cands = [r["meta"].get("candidates", []) for r in records]
    agree = [r["meta"]["agreement"] for r in records if r["meta"].get("agreement") is not None]
    longest = [max(c, key=lambda x: _words(x["text"]))["text"] == r["messages"][-1]["content"]
               for c, r in zip(cands, records) if len(c) > 1]
    dropped = Counter()
    for r in records:
        dropped.update(r["meta"].get("dropped", {}))
    return {"candidates_per_prompt": {"mean": round(statistics.mean(len(c) for c in cands), 2),
                                      "histogram": dict(sorted(Counter(len(c) for c in cands).items()))},
            "dropped": dict(dropped),
            "agreement": {"mean": round(statistics.mean(agree), 3), "min": min(agree),
                          "below_0.5": sum(a < 0.5 for a in agree)} if agree else None,
            "best_is_longest": round(sum(longest) / len(longest), 3) if longest else None,
            "best_words": round(statistics.mean(_words(r["messages"][-1]["content"]) for r in records), 1),
            "candidate_words": round(statistics.mean(_words(x["text"]) for c in cands for x in c), 1)
            if any(cands) else None}


def _excerpt(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 3] + "..."


def reject_example(r: dict) -> dict:
    """A rejected record as a short example: its id, the turn at fault and an excerpt of it."""
    meta, msgs = r.get("meta", {}), r.get("messages") or []
    turn = meta.get("reject_turn")
    if not isinstance(turn, int) or not 0 <= turn < len(msgs):
        # older files (and reasons about the whole dialogue) name no turn: show its last one
        turn = len(msgs) - 1 if msgs else None
    text = msgs[turn]["content"] if turn is not None else meta.get("raw", "")
    return {"id": r.get("id"), "turn": turn, "role": msgs[turn]["role"] if turn is not None else None,
            "excerpt": _excerpt(text), "detail": meta.get("reject_detail", "")}


def stats(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise BaizeError(f"{path}: no such file")
    head = _first(path)
    if isinstance(head, dict) and {"prompt", "chosen", "rejected"} <= set(head):
        return prefs_stats(path)
    turns, words, sources, modes, reasons = [], [], Counter(), Counter(), Counter()
    examples: dict[str, dict] = {}
    pt = ct = 0
    n = 0
    for r in read_jsonl(path, validate=True):
        n += 1
        meta = r.get("meta", {})
        turns.append(sum(m["role"] == "assistant" for m in r["messages"]))
        words.append(sum(len(m["content"].split()) for m in r["messages"]))
        sources[meta.get("source", "?")] += 1
        modes[meta.get("mode", "?")] += 1
        if meta.get("reject_reason"):
            reasons[meta["reject_reason"]] += 1
            examples.setdefault(meta["reject_reason"], reject_example(r))
        u = meta.get("usage") or {}
        for part in ([v for v in u.values() if isinstance(v, dict)] or [u]):  # SDF: per role
            pt += part.get("prompt_tokens", 0)
            ct += part.get("completion_tokens", 0)
    rej = sidecar(path, "rejected")
    if rej.exists() and rej != path:
        for r in read_jsonl(rej):
            reason = r.get("meta", {}).get("reject_reason", "?")
            reasons[reason] += 1
            examples.setdefault(reason, reject_example(r))
    if n == 0:
        raise BaizeError(f"{path}: no dialogues in the file")
    sdf = None
    if isinstance(head, dict) and head.get("meta", {}).get("mode") == "sdf":
        sdf = sdf_stats(list(read_jsonl(path)))
    return {"sdf": sdf,
        "file": str(path), "dialogues": n,
        "turns_per_dialogue": {"mean": round(statistics.mean(turns), 2), "min": min(turns), "max": max(turns),
                               "histogram": dict(sorted(Counter(turns).items()))},
        "words_per_dialogue": {"mean": round(statistics.mean(words), 1), "median": statistics.median(words)},
        "teacher_tokens": {"prompt": pt, "completion": ct},
        "sources": dict(sources.most_common()), "modes": dict(modes), "reject_reasons": dict(reasons.most_common()),
        "reject_examples": {k: examples[k] for k, _ in reasons.most_common()},
    }


def print_stats(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"data stats: {s['file']}", show_header=False)
    if s.get("kind") == "preferences":
        t.add_row("preference pairs", f"{s['pairs']} over {s['prompts']} prompts")
        t.add_row("words: chosen / rejected", f"mean {s['chosen_words']['mean']} / {s['rejected_words']['mean']}, "
                                                f"median {s['chosen_words']['median']} / {s['rejected_words']['median']}")
        t.add_row("chosen is the longer one", f"{s['chosen_longer']:.0%} of pairs"
                  + ("  (a judge that prefers length?)" if s["chosen_longer"] >= 0.8 else ""))
        t.add_row("rank margin", ", ".join(f"{k}: {v}" for k, v in s["rank_margin"].items()))
        t.add_row("judge order agreement", "n/a" if s["mean_agreement"] is None else f"mean {s['mean_agreement']}")
        Console().print(t)
        return
    t.add_row("dialogues", str(s["dialogues"]))
    tp = s["turns_per_dialogue"]
    t.add_row("exchanges per dialogue", f"mean {tp['mean']}, min {tp['min']}, max {tp['max']}; {tp['histogram']}")
    t.add_row("words per dialogue", f"mean {s['words_per_dialogue']['mean']}, median {s['words_per_dialogue']['median']}")
    t.add_row("model tokens in / out", f"{s['teacher_tokens']['prompt']} / {s['teacher_tokens']['completion']}")
    t.add_row("sources", ", ".join(f"{k} {v}" for k, v in s["sources"].items()))
    t.add_row("modes", ", ".join(f"{k} {v}" for k, v in s["modes"].items()))
    t.add_row("rejected", ", ".join(f"{k} {v}" for k, v in s["reject_reasons"].items()) or "0")
    for reason, ex in s.get("reject_examples", {}).items():
        where = f"{ex['id']}, turn {ex['turn']} ({ex['role']})" if ex["turn"] is not None else str(ex["id"])
        t.add_row(f"  e.g. {reason}", f"{where}{': ' + ex['detail'] if ex['detail'] else ''}\n{ex['excerpt']!r}")
    if s.get("sdf"):
        d = s["sdf"]
        t.add_row("SDF candidates per prompt", f"mean {d['candidates_per_prompt']['mean']}; "
                                               f"{d['candidates_per_prompt']['histogram']}; dropped {d['dropped'] or 0}")
        a = d["agreement"]
        t.add_row("judge order agreement", "n/a" if not a else f"mean {a['mean']}, min {a['min']}, {a['below_0.5']} below 0.5")
        if d["best_is_longest"] is not None:
            t.add_row("best is the longest candidate", f"{d['best_is_longest']:.0%} of prompts (words: best "
                                                       f"{d['best_words']}, all candidates {d['candidate_words']})")
    Console().print(t)


def export(path: str | Path, out: str | Path, fmt: str) -> int:
    records = read_jsonl(path, validate=True)
    if fmt == "baize":  # the paper's released files are one JSON array
        items = [to_baize(r) for r in records]
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(items, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return len(items)
    if fmt == "sharegpt":
        return write_jsonl(out, (to_sharegpt(r) for r in records))
    raise BaizeError(f"unknown export format {fmt!r}: use baize or sharegpt")


def import_baize(path: str | Path, out: str | Path, source: str | None = None) -> int:
    """The paper's JSON array (or JSONL) of {"topic", "input"} -> our dialogue JSONL."""
    path = Path(path)
    if not path.exists():
        raise BaizeError(f"{path}: no such file")
    source = source or path.stem.replace("_chat_data", "")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            items = [(f"{path}: item {i}", o) for i, o in enumerate(json.loads(text), 1)]
        except json.JSONDecodeError as e:
            raise BaizeError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    else:
        items = [(f"{path}:{n}", o) for n, o in enumerate(read_jsonl(path), 1)]
    return write_jsonl(out, (from_baize(o, where, i, source) for i, (where, o) in enumerate(items)))


# --- `baize data filter`: collect's filters over a file already collected or imported -------------

@dataclass
class _DataFilterFields:
    input: str = opt("", "the dialogue JSONL to filter", cli=False)
    out: str = opt("", "output JSONL of the kept dialogues; OUT.rejected.jsonl (with reasons), .failed.jsonl, "
                       ".config.json, .summary.json beside it")


@dataclass
class DataFilterConfig(RunFields, FilterConfig, EndpointFields, _DataFilterFields):
    """Its own fields, then the endpoint's (the judge's), the filters' and the run's."""


@dataclass
class _Item:
    id: str
    rec: dict


def filter_file(cfg: DataFilterConfig, *, judge_llm=None, console=None):
    """Filter (or resume filtering) a dialogue file into cfg.out; returns the run's Summary. No
    teacher call: the text filters are free, the judge (optional) is cached."""
    from ..runner import Ledger, run_items
    from ..schema import read_jsonl_where, validate_record
    from .filters import DialogueFilter
    src, out = Path(cfg.input), Path(cfg.out or "")
    if not cfg.out:
        raise BaizeError("data filter: give --out OUT for the kept dialogues (the input file is never rewritten)")
    if out.resolve() == src.resolve():
        raise BaizeError(f"data filter: --out {out} is the input file; write the kept dialogues to another file")
    items = []
    for where, r in read_jsonl_where(src):
        # a collection's own .rejected.jsonl holds unparseable records with no messages: unparseable again
        if not (isinstance(r, dict) and r.get("messages") == [] and "id" in r):
            validate_record(r, where)
        items.append(_Item(str(r["id"]), r))
    ledger = Ledger(cfg.max_tokens_total, {"judge": (cfg.judge_price_in, cfg.judge_price_out)}, max_cost=cfg.max_cost)
    filt = DialogueFilter(cfg, out, ledger, judge_llm=judge_llm)

    def work(item: _Item) -> dict:
        rec = {**item.rec, "meta": dict(item.rec.get("meta") or {})}
        for k in ("reject_reason", "reject_turn", "reject_detail"):
            rec["meta"].pop(k, None)  # a rejected file filtered again is judged afresh
        return filt(rec, rec["meta"].get("seed"))

    try:
        return run_items(items, work, out=out, ledger=ledger, concurrency=cfg.concurrency, label="filter",
                         noun="dialogues", config=cfg, retry_failed=cfg.retry_failed,
                         accept=lambda item, rec: filt.accept(item.id, rec),
                         meta_of=lambda it: it.rec.get("meta", {}), progress=cfg.progress, console=console)
    finally:
        filt.close()


def add_cli(sub) -> None:
    from ..config import add_dataclass_args
    p = sub.add_parser("data", help="dialogue files: stats, filter, export, import")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = dsub.add_parser("stats", help="dialogues, turns, tokens, sources, reject reasons")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=_stats)
    f = dsub.add_parser("filter", help="apply collect's filters (and --judge) to a dialogue file: kept to --out, "
                                       "the rejected with reasons to OUT.rejected.jsonl")
    f.add_argument("file", help="dialogue JSONL (collected, imported, or a .rejected.jsonl to re-check)")
    add_dataclass_args(f, DataFilterConfig)
    f.set_defaults(func=_filter)
    e = dsub.add_parser("export", help="write the paper's format (baize) or ShareGPT")
    e.add_argument("file")
    e.add_argument("--format", choices=["baize", "sharegpt"], default="baize")
    e.add_argument("--out", required=True)
    e.set_defaults(func=lambda a: print(f"wrote {export(a.file, a.out, a.format)} dialogues to {a.out}"))
    i = dsub.add_parser("import", help="read the paper's released format into dialogue JSONL")
    i.add_argument("file")
    i.add_argument("--out", required=True)
    i.add_argument("--source", default=None, help="meta.source for the records (default: from the file name)")
    i.set_defaults(func=lambda a: print(f"imported {import_baize(a.file, a.out, a.source)} dialogues to {a.out}"))


def _stats(a) -> None:
    s = stats(a.file)
    print(json.dumps(s, indent=2)) if a.json else print_stats(s)


def _filter(a) -> int:
    from ..config import dataclass_from_args
    from ..runner import print_summary
    cfg = dataclass_from_args(DataFilterConfig, a, input=a.file)
    s = filter_file(cfg)
    print_summary(s, f"data filter {a.file} -> {cfg.out}")
    return 130 if s.stopped == "interrupted" else 0
