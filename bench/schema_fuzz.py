#!/usr/bin/env python
"""Schema fuzzing of `baize serve`: schemathesis generates requests from the server's own OpenAPI
schema (/openapi.json) and sends them to a real uvicorn on 127.0.0.1 for a bounded time.

Two numbers matter:
- 5xx responses: a request the server could not handle. The target is 0.
- the share of schema-valid (positive) cases that reach generation: a request the schema allows
  should be one the server takes, so a low share means the schema under-states what the API checks
  (and the generation path goes unfuzzed). Reaching generation is counted where it happens: a call
  into the model's batching engine.

Negative cases (bodies that break the schema on purpose) are sent too, for the 5xx count; they
should stop at validation. The model is a tiny random LLaMA with the embedded model's tokenizer
(as tests/conftest.py builds it) and a short context, so the longest generation the schema allows
stays short; the numbers measure the server, not the model.

    python bench/schema_fuzz.py [--seconds 120] [--context 128] [--max-tokens 16] [--out bench/results/schema_fuzz.json]

`pip install schemathesis` first (it is in the dev extras). Prints the numbers and writes them as JSON.
Before the schema stated the server's limits (commit 5d776a6, `BAIZE_SRC=DIR`), 0 of 1,325 schema-valid
POSTs reached generation in 120 s (bench/results/schema_fuzz-5d776a6.json: unknown model names, 2.0 for
an integer); with it, 66 of 79 (bench/results/schema_fuzz.json: the rest are prompts over the context,
which a schema cannot state in tokens). 0 server errors in both.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
# BAIZE_SRC: another checkout's baize (`git archive COMMIT baize | tar -x -C DIR`), for a before/after
sys.path.insert(0, os.environ.get("BAIZE_SRC", str(HERE.parent)))


def tiny_model(out: Path, context: int) -> Path:
    """tests/conftest.py's tiny random LLaMA, with `context` positions."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from baize.llm.models import default_model_dir
    tok = AutoTokenizer.from_pretrained(default_model_dir())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


class Tally:
    """Per generation mode and operation: cases, status codes, cases that reached the engine, check failures."""

    def __init__(self):
        self.cases = collections.Counter()
        self.status = collections.defaultdict(collections.Counter)
        self.generated = collections.Counter()
        self.checks = collections.defaultdict(collections.Counter)
        self.server_errors: list[dict] = []
        self.skipped: dict[str, str] = {}  # (mode, operation) that cannot be generated, and why
        self.refused = collections.defaultdict(collections.Counter)  # schema-valid cases' 4xx messages
        self.slow: list[dict] = []  # no answer within the client's timeout


def fuzz(url: str, seconds: float, engine, tally: Tally, round_size: int = 25, timeout: float = 120.0) -> None:
    """Round-robin over (mode, operation), `round_size` cases a round, until `seconds` have passed."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.core.errors import InvalidSchema as Unsatisfiable_
    from schemathesis.core.failures import FailureGroup

    submits = [0]
    real_submit = engine.submit
    lock = threading.Lock()

    def counting_submit(*a, **kw):
        with lock:
            submits[0] += 1
        return real_submit(*a, **kw)
    engine.submit = counting_submit  # every generation, chat's and completions', goes through it

    def run_round(key: str, strategy, n: int, deadline: float) -> None:
        @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def one(case):
            if time.monotonic() >= deadline:
                return
            before = submits[0]
            tally.cases[key] += 1
            try:
                response = case.call(base_url=url, timeout=timeout)
            except Exception as e:
                kind = "timeout" if "timeout" in type(e).__name__.lower() else "dropped"
                tally.status[key][kind] += 1
                if kind == "dropped":  # a dropped connection is the server failing; a slow answer is not
                    tally.server_errors.append({"case": key, "error": repr(e)[:300], "body": _body(case)})
                else:
                    tally.slow.append({"case": key, "body": _body(case)})
                return
            tally.status[key][response.status_code] += 1
            if 400 <= response.status_code < 500 and key.startswith("positive"):
                try:  # why a request the schema allows was refused, its numbers left out so alike ones group
                    why = re.sub(r"\d+", "N", response.json()["error"]["message"])[:120]
                except (ValueError, KeyError, TypeError):
                    why = response.text[:120]
                tally.refused[key][why] += 1
            if submits[0] > before:
                tally.generated[key] += 1
            if response.status_code >= 500:
                tally.server_errors.append({"case": key, "status": response.status_code,
                                            "response": response.text[:300], "body": _body(case)})
            try:
                case.validate_response(response)
            except (Exception, FailureGroup) as e:  # a check schemathesis runs (status code, content type, ...)
                for name in _failed_checks(e):
                    tally.checks[key][name] += 1
        one()

    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    deadline = time.monotonic() + seconds
    kinds = {f"{mode.value} {op.method.upper()} {op.path}": op.as_strategy(generation_mode=mode)
             for op in ops for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)}
    while kinds and time.monotonic() < deadline:
        for key, strategy in list(kinds.items()):
            if time.monotonic() >= deadline:
                break
            try:
                run_round(key, strategy, round_size, deadline)
            except (Unsatisfiable, Unsatisfiable_) as e:  # nothing to break in GET /health: no negative cases
                tally.skipped[key] = str(e).split(".")[0]
                del kinds[key]


def _body(case) -> dict | str:
    """What decides a request's cost: the sampling fields, and the size of the rest."""
    body = case.body
    if not isinstance(body, dict):
        return repr(body)[:200]
    keep = {k: body[k] for k in ("model", "n", "max_tokens", "max_completion_tokens", "logprobs", "echo", "stream")
            if k in body}
    return {**keep, "json_chars": len(json.dumps(body, default=repr))}


def _failed_checks(e: Exception) -> list[str]:
    """The titles of the failed checks in schemathesis' exception (a group, or one failure)."""
    inner = getattr(e, "exceptions", None) or [e]
    return sorted({getattr(x, "title", None) or type(x).__name__ for x in inner})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--context", type=int, default=128, help="the tiny model's context (bounds max_tokens)")
    ap.add_argument("--max-tokens", type=int, default=16, help="`baize serve --max-tokens`: a request without one")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds a case may take to answer")
    ap.add_argument("--out", default=str(HERE / "results" / "schema_fuzz.json"))
    args = ap.parse_args()

    import schemathesis

    from baize.serve.app import create_app
    from baize.serve.config import ServeConfig
    from baize.serve.loading import load_models
    from baize.testing import running

    with tempfile.TemporaryDirectory() as tmp:
        cfg = ServeConfig(max_tokens=args.max_tokens)
        models = load_models({"tiny": f"hf:{tiny_model(Path(tmp) / 'tiny', args.context)}"}, cfg)
        tally = Tally()
        t0 = time.monotonic()
        with running(create_app(models, cfg)) as url:
            fuzz(url, args.seconds, models["tiny"].engine, tally, timeout=args.timeout)
        seconds = round(time.monotonic() - t0, 1)

    def share(mode: str, route: str | None = None) -> dict:
        keys = [k for k in tally.cases if k.startswith(mode) and k.split()[1] == "POST"
                and (route is None or k.endswith(route))]
        cases, gen = sum(tally.cases[k] for k in keys), sum(tally.generated[k] for k in keys)
        return {"cases": cases, "reached_generation": gen, "share": round(gen / cases, 3) if cases else None}

    five = sum(n for k in tally.status for s, n in tally.status[k].items() if s == "dropped" or
               isinstance(s, int) and s >= 500)
    res = {
        "schemathesis": schemathesis.SCHEMATHESIS_VERSION, "python": platform.python_version(),
        "seconds": seconds, "context": args.context, "max_tokens": args.max_tokens,
        "cases": sum(tally.cases.values()), "server_errors_5xx": five,
        "positive_posts_reaching_generation": {"all": share("positive"),
                                               "/v1/chat/completions": share("positive", "/v1/chat/completions"),
                                               "/v1/completions": share("positive", "/v1/completions")},
        "negative_posts_reaching_generation": share("negative"),
        "status_by_case": {k: {str(s): n for s, n in sorted(v.items(), key=str)} for k, v in sorted(tally.status.items())},
        "failed_checks_by_case": {k: dict(v) for k, v in sorted(tally.checks.items())},
        "timeouts": len(tally.slow), "refused_schema_valid": {k: dict(v.most_common(8)) for k, v in
                                                              sorted(tally.refused.items())},
        "server_errors": tally.server_errors[:20], "slow": tally.slow[:20], "not_generated": tally.skipped,
    }
    print(f"{res['cases']} cases in {seconds} s, {five} server errors (5xx or dropped), "
          f"{res['timeouts']} without an answer within {args.timeout:.0f} s")
    for route, s in res["positive_posts_reaching_generation"].items():
        print(f"  schema-valid POSTs reaching generation ({route}): {s['reached_generation']}/{s['cases']}"
              f" = {s['share']}")
    neg = res["negative_posts_reaching_generation"]
    print(f"  schema-breaking POSTs reaching generation: {neg['reached_generation']}/{neg['cases']}")
    for k, v in res["status_by_case"].items():
        print(f"  {k}: {v}")
    for k, v in res["failed_checks_by_case"].items():
        print(f"  checks failed, {k}: {v}")
    for k, v in res["refused_schema_valid"].items():
        print(f"  why schema-valid cases were refused, {k}: {v}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 1 if five else 0


if __name__ == "__main__":
    sys.exit(main())
