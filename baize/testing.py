"""Test doubles shared by tests and benchmarks: a FakeLLM that replays canned replies, and a real
OpenAI-compatible HTTP server with scripted latency and injected faults.

    python -m baize.testing --port 8123 --latency 0.3     # a fake teacher for benchmarks
"""

import argparse
import itertools
import json
import re
import string
import threading
import time

from .llm.base import LLM, Completion

_TOPIC = re.compile(r"topic: '(.*?)'\.", re.DOTALL)


def canned_transcript(topic: str) -> str:
    """What a well-behaved teacher writes for the self-chat template (greeting already given)."""
    return (f"[Human] Can you explain {topic}?\n"
            f"[AI] Sure. Here is a detailed explanation of {topic}, with the main facts and a worked example.\n"
            f"[Human] What should I read next about {topic}?\n"
            f"[AI] Start with an introductory text on {topic}, then practise with small exercises.\n")


def template_regex(template: str, *, whole: bool = True) -> re.Pattern:
    """A regex matching what `template.format(...)` produced, each field a named group: the fakes
    read judge prompts through judge/prompts.py's own templates, so editing a prompt cannot silently stop
    them from judging (a regex on the wording would)."""
    parts, seen = [], set()
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is not None:
            parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>.*?)")
            seen.add(name)
    return re.compile("".join(parts) + (r"\Z" if whole else ""), re.DOTALL)


def judge_reply(messages: list[dict]) -> str | None:
    """A judge that prefers longer answers, whatever their position (None: not a judge prompt).
    Consistent under swapped orders, so tests see real verdicts; and biased to length, as real
    judges are, which `baize data stats` must make visible."""
    from .judge import prompts as J
    if len(messages) < 2 or messages[0]["role"] != "system":
        return None
    system, user = messages[0]["content"], messages[1]["content"]
    if system == J.RANK_SYSTEM and (m := template_regex(J.RANK_USER).match(user)):
        found = [(a["label"], a["answer"]) for a in template_regex(J.RANK_ANSWER, whole=False).finditer(
            m["answers"])]
        best = sorted(found, key=lambda x: (-len(x[1]), x[1]))
        return "The longer responses cover more.\nRanking: " + " > ".join(f"[[{label}]]" for label, _ in best)
    if system == J.PAIR_SYSTEM and (m := template_regex(J.PAIR_USER).match(user)):
        a, b = len(m["a"]), len(m["b"])
        return "Comparing both.\n" + ("[[A]]" if a > b else "[[B]]" if b > a else "[[C]]")
    for sys_prompt, template in ((J.SCORE_SYSTEM, J.SCORE_USER), (J.SCORE_REF_SYSTEM, J.SCORE_REF_USER)):
        if system == sys_prompt and (m := template_regex(template).match(user)):
            return f"Judged by its detail.\nRating: [[{min(10, 1 + len(m['answer'].split()) // 8)}]]"
    return None


def default_reply(messages: list[dict]) -> str:
    """Deterministic replies for both collection modes and for judge prompts, keyed on the prompt."""
    if (verdict := judge_reply(messages)) is not None:
        return verdict
    text = "\n".join(m["content"] for m in messages)
    m = _TOPIC.search(text)
    topic = m.group(1) if m else "this"
    if "Complete the transcript" in messages[-1]["content"]:
        return canned_transcript(topic)
    if messages[0]["role"] == "system" and "playing a curious human" in messages[0]["content"]:
        if text.count("[AI]") >= 2:
            return "[END]"
        return f"Tell me more about {topic} (part {text.count('[AI]') + 1})?"
    if (n := sum(m["role"] == "assistant" for m in messages)):
        # a later answer says something new, as a real teacher's does: collect rejects a repeated answer
        return f"More on {topic}, point {n + 1}: other details, with an example and a practical tip."
    return f"Here is a thorough answer about {topic}: it has several parts, each explained in turn."


class FakeLLM(LLM):
    """Replays canned replies: a list (cycled), or a function of the messages."""

    def __init__(self, replies=None, *, name="fake", prompt_tokens=10, completion_tokens=20, delay=0.0):
        self.name = name
        self._fn = replies if callable(replies) else None
        self._cycle = itertools.cycle(replies) if isinstance(replies, (list, tuple)) else None
        self.prompt_tokens, self.completion_tokens, self.delay = prompt_tokens, completion_tokens, delay
        self.calls: list[list[dict]] = []
        self.sampling: list[dict] = []  # each call's n, temperature, top_p, max_tokens, seed
        self._lock = threading.Lock()

    def _reply(self, messages):
        if self._fn:
            return self._fn(messages)
        if self._cycle:
            with self._lock:
                return next(self._cycle)
        return default_reply(messages)

    def chat(self, messages, *, n=1, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None):
        with self._lock:
            self.calls.append(messages)
            self.sampling.append({"n": n, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens,
                                  "seed": seed})
        if self.delay:
            time.sleep(self.delay)
        out = []
        for _ in range(n):
            r = self._reply(messages)
            if isinstance(r, Completion):
                out.append(r)
                continue
            if isinstance(r, Exception):
                raise r
            out.append(Completion(r, self.prompt_tokens, self.completion_tokens))
        return out

    def stream(self, messages, **kw):
        text = self.chat(messages, **kw)[0].text
        yield from re.findall(r"\S+\s*|\s+", text)


def make_app(*, latency: float = 0.0, reply=default_reply, faults: dict[str, list[str]] | None = None,
             model: str = "fake-teacher", models: list[str] | None = None):
    """A FastAPI app speaking the OpenAI chat API. `faults` maps a substring of the prompt to the
    faults its next requests get, in order: "429" (with Retry-After), "500", "timeout",
    "malformed" (a 200 that is not JSON), "401". `models`, when given, is the allow-list of model
    names: any other gets OpenAI's 404 (model_not_found); /v1/models lists them."""
    import asyncio

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    app = FastAPI()
    app.state.faults = {k: list(v) for k, v in (faults or {}).items()}
    app.state.requests = 0
    lock = threading.Lock()

    def next_fault(text: str) -> str | None:
        with lock:
            for key, queue in app.state.faults.items():
                if key in text and queue:
                    return queue.pop(0)
        return None

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "baize"}
                                           for m in (models or [model])]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.requests += 1
        if models is not None and body.get("model") not in models:
            return JSONResponse({"error": {"message": f"The model `{body.get('model')}` does not exist",
                                           "type": "invalid_request_error", "code": "model_not_found"}}, 404)
        msgs = body["messages"]
        fault = next_fault("\n".join(m["content"] for m in msgs))
        if fault == "401":
            return JSONResponse({"error": {"message": "bad key", "type": "invalid_request_error"}}, 401)
        if fault == "429":
            return JSONResponse({"error": {"message": "slow down", "type": "rate_limit"}}, 429,
                                headers={"retry-after": "0.2"})
        if fault == "500":
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, 500)
        if fault == "timeout":  # never answer in time; stop as soon as the client gives up
            for _ in range(50):
                if await request.is_disconnected():
                    return PlainTextResponse("", 504)
                await asyncio.sleep(0.1)
        if fault == "malformed":
            return PlainTextResponse("{not json", media_type="application/json")
        if latency:
            await asyncio.sleep(latency)
        n = int(body.get("n") or 1)
        texts = [reply(msgs) for _ in range(n)]  # a stateful reply can give each choice its own text
        pt, ct = sum(len(m["content"].split()) for m in msgs), sum(len(t.split()) for t in texts)
        return {
            "id": f"chatcmpl-{app.state.requests}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", model),
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                        for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}}

    return app


# --- fakes of real runtimes ------------------------------------------------------------------------
# One server, several models, each behaving like a runtime users point baize at, with that runtime's
# own error bodies (`make_endpoint_app`). The model name picks the runtime, so one pipeline run can
# have a reasoning teacher, an n-ignoring policy and a usage-less judge at once.

# the hidden tokens the fake reasoning model spends per choice before it writes, by reasoning_effort:
# hundreds at the default (medium), as OpenAI's reasoning models do (their reasoning guide: medium can
# spend hundreds to thousands on one reply); minimal often spends none
REASONING_TOKENS = {"minimal": 0, "low": 192, "medium": 768, "high": 3072}


def _openai_error(status: int, message: str, param: str | None, code: str | None, type_="invalid_request_error",
                  headers: dict | None = None):
    from fastapi.responses import JSONResponse
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status,
                        headers=headers)


def _reasoning_refusal(body: dict):
    """OpenAI's gpt-5 family and o-series, as their 400s read:
    - max_tokens: {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use
      'max_completion_tokens' instead.", "type": "invalid_request_error", "param": "max_tokens", "code":
      "unsupported_parameter"} (quoted in griptape-ai/ComfyUI-Griptape#312, fish2018/YPrompt#26);
    - temperature/top_p other than 1: "Unsupported value: 'temperature' does not support 0.7 with this model.
      Only the default (1) value is supported.", code "unsupported_value", param "temperature"
      (johny-b/llmcomp#69, gabrii/Cursor-Azure-GPT-5#33). One error per request, the first refused."""
    if "max_tokens" in body:
        return "max_tokens", _openai_error(400, "Unsupported parameter: 'max_tokens' is not supported with this "
                                                "model. Use 'max_completion_tokens' instead.", "max_tokens",
                                           "unsupported_parameter")
    for p in ("temperature", "top_p"):
        if p in body and body[p] != 1:
            return p, _openai_error(400, f"Unsupported value: '{p}' does not support {body[p]} with this model. "
                                         f"Only the default (1) value is supported.", p, "unsupported_value")
    return None


_IGNORING = ("llama-cpp-python", "llama-server", "no-usage", "rate-limited")  # unknown fields pass unread


def _effort_refusal(model: str, body: dict):
    """reasoning_effort, as OpenAI's models refuse it: a reasoning model any value it does not take,
    "Unsupported value: 'reasoning_effort' does not support 'none' with this model. Supported values are:
    'minimal', 'low', 'medium', and 'high'." (Kilo-Org/cloud#3807); any other OpenAI model the parameter
    itself, "Unsupported parameter: 'reasoning.effort' is not supported with this model.", param and code
    unsupported_parameter (BoundaryML/baml#2708, gpt-4.1 on the Responses API, where it is spelled so).
    llama.cpp's servers and the others here ignore fields they do not know."""
    if "reasoning_effort" not in body:
        return None
    effort = body["reasoning_effort"]
    if model == "gpt-5-mini" and effort not in REASONING_TOKENS:
        return _openai_error(400, f"Unsupported value: 'reasoning_effort' does not support '{effort}' with this "
                                  f"model. Supported values are: 'minimal', 'low', 'medium', and 'high'.",
                             "reasoning_effort", "unsupported_value")
    if model not in ("gpt-5-mini", *_IGNORING):
        return _openai_error(400, "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
                             "reasoning_effort", "unsupported_parameter")
    return None


def _vary(text: str, messages: list[dict], seed, i: int) -> str:
    """A sampled answer differs by seed and choice, as a real one does; verdicts stay deterministic."""
    if seed is None or judge_reply(messages) is not None:
        return text
    return f"{text} (Draw {(int(seed) * 7919 + i * 104729) % 100003}.)"


def make_endpoint_app(*, reply=default_reply, latency: float = 0.02, capacity: int = 3, retry_after: float = 0.1,
                      reasoning: dict | None = None):
    """A FastAPI app speaking the OpenAI chat API, whose model names behave like real runtimes:

    - `gpt-5-mini`: an OpenAI reasoning model: refuses `max_tokens` and non-1 `temperature`/`top_p`
      (`_reasoning_refusal`); spends `reasoning` (default REASONING_TOKENS) hidden tokens per choice
      at the `reasoning_effort` asked (medium when none is), reported as
      usage.completion_tokens_details.reasoning_tokens and counted inside completion_tokens and inside
      max_completion_tokens (OpenAI's CompletionTokensDetails: reasoning tokens "are still counted in
      the total completion tokens for purposes of billing"; its reasoning guide: a reply whose cap runs
      out in the reasoning comes back empty, billed all the same). A cap at or under the reasoning, or
      a prompt with "think forever", gives finish_reason "length" with empty content; a cap between
      cuts the answer. Other models refuse reasoning_effort as OpenAI's do (`_effort_refusal`).
    - `llama-cpp-python`: ignores `n`, one choice per request (abetlen/llama-cpp-python#1906).
    - `llama-server`: llama.cpp's own server refuses any n other than 1: its oaicompat parser throws
      "Only one completion choice is allowed" (tools/server/utils.hpp), answered as
      500 {"error": {"code": 500, "message": "...", "type": "server_error"}} (the server's error JSON,
      ggml-org/llama.cpp#5961).
    - `no-usage`: sends no `usage` (optional in OpenAI's own schema: the openai client types it
      Optional[CompletionUsage]).
    - `rate-limited`: at most `capacity` requests in flight; the others get OpenAI's 429
      {"error": {"message": "Rate limit reached for ... on requests per min (RPM) ...", "type": "requests",
      "code": "rate_limit_exceeded"}} with a Retry-After header (which the openai client honours too:
      _base_client._calculate_retry_timeout).
    - any other name: a well-behaved endpoint.
    `app.state.stats[model]` counts requests, refusals ("400:param", "500:n") and 429s;
    `app.state.sent[model]` lists each answered request's (completion cap, reasoning_effort)."""
    import asyncio
    from collections import Counter, defaultdict

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI()
    app.state.stats = defaultdict(Counter)
    app.state.sent = defaultdict(list)
    app.state.in_flight = Counter()
    spend = {**REASONING_TOKENS, **(reasoning or {})}
    lock = threading.Lock()

    @app.get("/v1/models")
    async def list_models():
        names = ["gpt-5-mini", "llama-cpp-python", "llama-server", "no-usage", "rate-limited"]
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"}
                                           for m in names]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        model, msgs = body.get("model", ""), body["messages"]
        stats = app.state.stats[model]
        stats["requests"] += 1
        if model == "gpt-5-mini" and (refused := _reasoning_refusal(body)) is not None:
            stats[f"400:{refused[0]}"] += 1
            return refused[1]
        if (refused := _effort_refusal(model, body)) is not None:
            stats["400:reasoning_effort"] += 1
            return refused
        if model == "llama-server" and int(body.get("n") or 1) != 1:
            stats["500:n"] += 1
            return JSONResponse({"error": {"code": 500, "message": "Only one completion choice is allowed",
                                           "type": "server_error"}}, 500)
        with lock:
            busy = model == "rate-limited" and app.state.in_flight[model] >= capacity
            if not busy:
                app.state.in_flight[model] += 1
        if busy:
            stats["429"] += 1
            return _openai_error(429, f"Rate limit reached for {model} in organization org-fake on requests per "
                                      f"min (RPM): Limit {capacity}, Used {capacity}, Requested 1. Please try again "
                                      f"in {retry_after}s.", None, "rate_limit_exceeded", type_="requests",
                                 headers={"retry-after": str(retry_after)})
        try:
            if latency:
                await asyncio.sleep(latency)
            app.state.sent[model].append((body.get("max_completion_tokens") or body.get("max_tokens"),
                                          body.get("reasoning_effort")))
            return _completion(body, model, msgs, reply, spend)
        finally:
            with lock:
                app.state.in_flight[model] -= 1

    return app


def _completion(body: dict, model: str, msgs: list[dict], reply, spend: dict) -> dict:
    n = 1 if model == "llama-cpp-python" else int(body.get("n") or 1)
    texts = [_vary(reply(msgs), msgs, body.get("seed"), i) for i in range(n)]
    pt = sum(len(str(m["content"]).split()) for m in msgs)
    choices, ct, rt = [], 0, 0
    for i, t in enumerate(texts):
        finish = "stop"
        if model == "gpt-5-mini":  # a word a token; the reasoning first, the answer in what is left of the cap
            cap = body.get("max_completion_tokens") or 10 ** 5
            effort = body.get("reasoning_effort") or "medium"
            thought = cap if "think forever" in msgs[-1]["content"] else min(cap, spend[effort])
            words = t.split()
            if thought + len(words) > cap:
                t, finish = " ".join(words[:cap - thought]), "length"
            ct, rt = ct + thought + min(len(words), cap - thought), rt + thought
        else:
            ct += len(t.split())
        choices.append({"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish})
    out = {"id": f"chatcmpl-{model}", "object": "chat.completion", "created": int(time.time()), "model": model,
           "choices": choices}
    if model != "no-usage":
        out["usage"] = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
        if model == "gpt-5-mini":
            out["usage"]["completion_tokens_details"] = {"reasoning_tokens": rt}
    return out


def add_batch_api(app, *, reply=default_reply, expire_every: int | None = None, seed: int = 0):
    """OpenAI's Files and Batch API on a fake's app (OpenAI's Batch guide and API reference, "Batch" and
    "Files"; facts in /work/shared/REFERENCE.md): upload with purpose "batch", `batches.create` with
    only a "24h" window, each retrieve moving a batch one status on: validating -> in_progress (or
    failed, with errors.data [{code, message, param, line}] for a duplicate_custom_id or a
    mismatched_model, one model per file) -> finalizing -> completed, or expired when lines ran out
    of time; cancel -> cancelling -> cancelled. Output and error files in shuffled order (the guide:
    match on custom_id), `request_counts`, and every `expire_every`-th line answered so far expiring
    into the error file as `batch_expired`. `app.state.batch` counts files, batches and each
    custom_id answered; a chat completion is shaped and counted as make_app's is."""
    import random
    from collections import Counter

    from fastapi import Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    st = app.state.batch = type("BatchState", (), {})()
    st.files, st.batches, st.answered, st.lines, st.rng = {}, {}, Counter(), 0, random.Random(seed)
    st.hold = False  # True: batches stay in_progress (the 24 hours a real one may take), for a kill while waiting

    def error(status, message, param=None, code=None):
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                       "code": code}}, status)

    @app.post("/v1/files")
    async def upload(request: Request):
        form = await request.form()
        up = form["file"]
        return _new_file(st, (await up.read()).decode(), up.filename, form.get("purpose", ""))

    @app.get("/v1/files/{file_id}/content")
    async def content(file_id: str):
        if file_id not in st.files:
            return error(404, f"No such File object: {file_id}", "id")
        return PlainTextResponse(st.files[file_id][1])

    @app.post("/v1/batches")
    async def create(request: Request):
        body = await request.json()
        if body.get("completion_window") != "24h":
            return error(400, "Invalid value for 'completion_window': only '24h' is supported.",
                         "completion_window", "invalid_value")
        f = st.files.get(body.get("input_file_id"))
        if f is None or f[0]["purpose"] != "batch":
            return error(400, "The input file must be uploaded with purpose 'batch'.", "input_file_id")
        b = {"id": f"batch_{len(st.batches) + 1}", "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
             "input_file_id": f[0]["id"], "completion_window": "24h", "status": "validating",
             "output_file_id": None, "error_file_id": None, "created_at": int(time.time()),
             "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata")}
        st.batches[b["id"]] = b
        return b

    @app.get("/v1/batches/{batch_id}")
    async def retrieve(batch_id: str):
        b = st.batches.get(batch_id)
        if b is None:
            return error(404, f"No batch found with id '{batch_id}'.", "batch_id")
        lines = [json.loads(x) for x in st.files[b["input_file_id"]][1].splitlines() if x.strip()]
        if b["status"] == "validating":
            errors = _validate(lines)
            b["status"] = "failed" if errors else "in_progress"
            b["errors"] = {"object": "list", "data": errors} if errors else None
            b["request_counts"]["total"] = len(lines)
        elif b["status"] == "in_progress" and not st.hold:
            _run_batch(st, b, lines, reply, expire_every)  # ends "expired" at once when lines ran out of time, else "finalizing"
        elif b["status"] == "finalizing":
            b["status"] = "completed"
        elif b["status"] == "cancelling":
            b["status"] = "cancelled"
        return b

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel(batch_id: str):
        b = st.batches.get(batch_id)
        if b is None:
            return error(404, f"No batch found with id '{batch_id}'.", "batch_id")
        if b["status"] in ("validating", "in_progress", "finalizing"):
            b["status"] = "cancelling"
        return b

    @app.get("/v1/batches")
    async def list_batches():
        data = list(reversed(st.batches.values()))
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": False}

    return app


def _new_file(st, content: str, name: str, purpose: str) -> dict:
    f = {"id": f"file-{len(st.files) + 1}", "object": "file", "bytes": len(content.encode()),
         "created_at": int(time.time()), "filename": name, "purpose": purpose, "status": "processed"}
    st.files[f["id"]] = (f, content)
    return f



def _validate(lines: list[dict]) -> list[dict]:
    """The Batch guide's per-line checks, as errors.data items: unique custom_ids, one model per file."""
    errors, seen, model = [], set(), lines[0]["body"].get("model") if lines else None
    for i, line in enumerate(lines, 1):
        if line["custom_id"] in seen:
            errors.append({"code": "duplicate_custom_id", "line": i, "param": "custom_id", "message":
                           "The custom_id for this request is a duplicate of another request. The custom_id "
                           "parameter must be unique for each request in a batch."})
        elif line["body"].get("model") != model:
            errors.append({"code": "mismatched_model", "line": i, "param": "body.model", "message":
                           "The provided model in this request does not match the model of the other "
                           "requests in the batch. Each batch may only use a single model."})
        seen.add(line["custom_id"])
    return errors

def _run_batch(st, b: dict, lines: list[dict], reply, expire_every: int | None) -> None:
    """Answer a batch's lines; every `expire_every`-th line so far expires instead."""
    out, err = [], []
    for line in lines:
        st.lines += 1
        if expire_every and st.lines % expire_every == 0:
            err.append({"id": f"batch_req_{st.lines}", "custom_id": line["custom_id"], "response": None,
                        "error": {"code": "batch_expired", "message": "This request could not be executed "
                                  "before the completion window expired."}})
            continue
        st.answered[line["custom_id"]] += 1
        out.append({"id": f"batch_req_{st.lines}", "custom_id": line["custom_id"], "error": None,
                    "response": {"status_code": 200, "request_id": f"req_{st.lines}",
                                 "body": chat_completion(line["body"], reply, st.lines)}})
    for rows, key in ((out, "output_file_id"), (err, "error_file_id")):
        st.rng.shuffle(rows)
        if rows:
            b[key] = _new_file(st, "".join(json.dumps(r) + "\n" for r in rows), f"{b['id']}_{key}.jsonl",
                              "batch_output")["id"]
    b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
    b["status"] = "expired" if err else "finalizing"


def chat_completion(body: dict, reply, n: int) -> dict:
    """The chat completion make_app answers (a word a token), for a batch line's response body, each
    of n choices its own draw by seed (`_vary`); `reply` may be a dict of them by model name."""
    if isinstance(reply, dict):
        reply = reply.get(body.get("model"), default_reply)
    texts = [_vary(reply(body["messages"]), body["messages"], body.get("seed"), i) for i in range(int(body.get("n") or 1))]
    pt, ct = sum(len(m["content"].split()) for m in body["messages"]), sum(len(t.split()) for t in texts)
    return {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                        for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}}


class ServerThread:
    """A real uvicorn in a background thread on a free port, for tests and benchmarks:
    `with ServerThread(app) as url` gives the OpenAI base URL (.../v1); `with running(app) as url`
    the server's root (for /health and /ui too). The socket is bound before the server starts, so
    there is no port race; the app's lifespan runs (a mounted Gradio UI starts its queue there)."""

    def __init__(self, app, port: int = 0, *, host: str = "127.0.0.1", suffix: str = "/v1"):
        import uvicorn
        self.host, self.port, self.suffix = host, port, suffix
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self.sock = None

    def __enter__(self) -> str:
        import socket
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.host, self.port))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return f"http://{self.host}:{self.sock.getsockname()[1]}{self.suffix}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def running(app, host: str = "127.0.0.1") -> ServerThread:
    """`with running(app) as url`: ServerThread, giving the server's root URL."""
    return ServerThread(app, host=host, suffix="")


def main():
    p = argparse.ArgumentParser(description="a fake OpenAI-compatible teacher for tests and benchmarks")
    p.add_argument("--port", type=int, default=8123)
    p.add_argument("--latency", type=float, default=0.3)
    a = p.parse_args()
    import uvicorn
    uvicorn.run(make_app(latency=a.latency), host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
