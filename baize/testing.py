"""Test doubles shared by tests and benchmarks: a FakeLLM that replays canned replies, and a real
OpenAI-compatible HTTP server with scripted latency and injected faults.

    python -m baize.testing --port 8123 --latency 0.3     # a fake teacher for benchmarks
"""

import argparse
import itertools
import re
import string
import threading
import time

from .llm import LLM, Completion

_TOPIC = re.compile(r"topic: '(.*?)'\.", re.DOTALL)


def canned_transcript(topic: str) -> str:
    """What a well-behaved teacher writes for the self-chat template (greeting already given)."""
    return (f"[Human] Can you explain {topic}?\n"
            f"[AI] Sure. Here is a detailed explanation of {topic}, with the main facts and a worked example.\n"
            f"[Human] What should I read next about {topic}?\n"
            f"[AI] Start with an introductory text on {topic}, then practise with small exercises.\n")


def template_regex(template: str, *, whole: bool = True) -> re.Pattern:
    """A regex matching what `template.format(...)` produced, each field a named group: the fakes
    read judge prompts through judge.py's own templates, so editing a prompt cannot silently stop
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
    from . import judge as J
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
