"""`baize serve SPEC [NAME=SPEC ...]`: an OpenAI-compatible HTTP server (FastAPI + uvicorn).

    GET  /health                 liveness, no key needed
    GET  /v1/models              the served names
    POST /v1/chat/completions    stream (SSE) or not; n, temperature, top_p, max_tokens, stop, seed
    /ui                          the web UI (--ui, or `baize ui`)

Local models go through the continuous-batching engine (baize/engine.py): a request joins the
running batch at the next decode step and leaves it when done, and a client that disconnects cancels
its row. Several run directories on the same base (base, v1, v2)
share one copy of the base weights: their adapters are loaded side by side in one peft model and the
engine switches the active set per batch, never mixing adapters within a batch.
"""
import asyncio
import contextlib
import json
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .chat_format import BaizeFormat
from .config import BaizeError, add_dataclass_args, dataclass_from_args
from .llm import Completion, GenParams
from .models import HFLLM


@dataclass
class ServeConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; 0.0.0.0 exposes it to the network"})
    port: int = field(default=8000, metadata={"help": "TCP port"})
    api_key: str | None = field(default=None, metadata={"help": "require 'Authorization: Bearer KEY' "
                                                        "(or set BAIZE_API_KEY)"})
    ui: bool = field(default=False, metadata={"help": "also serve the web UI at /ui"})
    name: str = field(default="Baize", metadata={"help": "the assistant's name in the guardrail system prompt"})
    system: str | None = field(default=None, metadata={"help": "system prompt used when a request has none ('' for "
                                                       "none); default: the run's recorded prompt, else the guardrail"})
    max_tokens: int = field(default=512, metadata={"help": "new tokens when a request does not say"})
    temperature: float = field(default=1.0, metadata={"help": "temperature when a request does not say"})
    top_p: float = field(default=0.95, metadata={"help": "top-p when a request does not say (the paper's 0.95)"})
    max_batch: int = field(default=16, metadata={"help": "most rows decoding at once (also the largest n)"})
    batch_wait_ms: float = field(default=50.0, metadata={"help": "how long the engine gathers requests into a batch"})
    format: str | None = field(default=None, metadata={"help": "chat format override for models without a run "
                                                       "record: baize | template", "choices": ["baize", "template"]})
    device: str | None = field(default=None, metadata={"help": "cpu | cuda (default: cuda when available)"})
    dtype: str | None = field(default=None, metadata={"help": "float32 | bfloat16 | float16"})


# -- loading -------------------------------------------------------------------------------------

class ServedLLM(HFLLM):
    """A local model as served: it may share its base weights and engine with other adapters, so each
    request carries the adapter set it runs under."""
    adapter: tuple[str, ...] | None = None

    def submit(self, messages, *, n=1, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None,
               prompt_ids=None):
        ids = prompt_ids if prompt_ids is not None else self.prompt_ids(messages)
        # the guardrail prompt describes [|Human|]/[|AI|] turns even under a template format, and
        # small models copy them: stop there too, whatever the format
        stops = list(dict.fromkeys([*self.format.stop, *BaizeFormat.stop, *(stop or [])]))
        params = GenParams(temperature, top_p, max_tokens, stops, seed)
        return [self.engine.submit(ids, params, None if seed is None else seed + i, adapter=self.adapter)
                for i in range(n)]


def default_name(spec: str) -> str:
    if spec.startswith(("openai:", "gguf:")):
        spec = spec.split(":", 1)[1]
        return spec if spec == "default" or "/" not in spec else Path(spec).stem
    spec = spec[3:] if spec.startswith("hf:") else spec
    last = spec.split("+")[-1].rstrip("/")
    return Path(last).name or last


def parse_model_args(items: list[str]) -> dict[str, str]:
    """['runs/v2', 'base=default'] -> {'v2': 'runs/v2', 'base': 'default'}; names must be unique."""
    out: dict[str, str] = {}
    for item in items:
        m = re.match(r"^([\w.\-]+)=(.+)$", item)
        name, spec = (m.group(1), m.group(2)) if m and not item.startswith(("hf:", "openai:", "gguf:")) \
            else (default_name(item), item)
        if name in out:
            raise BaizeError(f"two models are named {name!r}: name them, e.g. {name}2={spec}")
        out[name] = spec
    return out


def _adapter_tokenizer(path: str) -> str | None:
    return path if (Path(path) / "tokenizer_config.json").exists() else None


def load_models(specs: dict[str, str], cfg: ServeConfig | None = None) -> dict[str, object]:
    """Load every served model; local specs on the same base share one model object and one engine."""
    from . import models
    from .chat_format import guardrail_prompt
    from .models import load_llm
    cfg = cfg or ServeConfig()
    out: dict[str, object] = {}
    groups: dict[str, list] = {}
    for name, spec in specs.items():
        if spec.startswith(("openai:", "gguf:")):
            out[name] = load_llm(spec)
        else:
            ref = models.resolve(spec)
            groups.setdefault(ref.base, []).append((name, spec, ref))
    for base, entries in groups.items():
        _load_group(base, entries, cfg, out, guardrail_prompt(cfg.name))
    return {name: out[name] for name in specs}


def _load_group(base, entries, cfg, out, guardrail):
    from transformers import AutoTokenizer

    from . import models
    from .engine import BatchEngine
    model, tok = models.load_model(models.ModelRef(base), device=cfg.device, dtype=cfg.dtype)
    shared, keys, peft_model = [], {}, None
    for name, spec, ref in entries:
        tok_dir = _adapter_tokenizer(ref.adapters[-1]) if ref.adapters else None
        etok = AutoTokenizer.from_pretrained(tok_dir) if tok_dir else tok
        if etok.pad_token is None:
            etok.pad_token = etok.eos_token
        if len(etok) != len(tok):  # resized embeddings: this run needs its own copy of the base
            m, t = models.load_model(ref, device=cfg.device, dtype=cfg.dtype)
            out[name] = _view(spec, m, t, ref, cfg, guardrail)
            out[name].engine.wait_s = cfg.batch_wait_ms / 1000
            continue
        for a in ref.adapters:
            if a not in keys:
                from peft import PeftModel
                keys[a] = f"adapter{len(keys)}"
                if peft_model is None:
                    peft_model = PeftModel.from_pretrained(model, a, adapter_name=keys[a])
                else:
                    peft_model.load_adapter(a, adapter_name=keys[a])
        shared.append((name, spec, ref, etok))
    if not shared:
        return
    served = peft_model if peft_model is not None else model
    served.eval()

    @contextlib.contextmanager
    def select(adapter):
        if peft_model is None:
            yield
        elif not adapter:
            with peft_model.disable_adapter():
                yield
        else:  # several names at once: a v2 trained on top of v1 runs with both, as when merged
            peft_model.base_model.set_adapter(list(adapter), inference_mode=True)
            yield

    views = []
    for name, spec, ref, etok in shared:
        v = _view(spec, served, etok, ref, cfg, guardrail)
        v.adapter = tuple(keys[a] for a in ref.adapters) or None
        out[name] = v
        views.append(v)
    eos = set().union(*(v.engine.eos_ids for v in views))
    engine = BatchEngine(served, tok, max_batch=cfg.max_batch, wait_s=cfg.batch_wait_ms / 1000,
                         eos_ids=eos, select_adapter=select)
    for v in views:
        v.engine = engine


def _view(spec, model, tok, ref, cfg, guardrail) -> ServedLLM:
    system = cfg.system if cfg.system is not None else (ref.system if ref.system is not None else guardrail)
    return ServedLLM(spec, model=model, tokenizer=tok, format=ref.format or cfg.format, system=system,
                     max_batch=cfg.max_batch)


# -- generation, shared by the API and the web UI --------------------------------------------------

class ThreadJob:
    """A backend without the batching engine (OpenAI proxy, llama.cpp, test stubs) run in a thread,
    with the engine Request's events/cancel interface. Streaming uses llm.stream (cancelled between
    pieces); otherwise llm.chat, whose Completion carries the backend's real token usage."""

    def __init__(self, llm, messages, kw, stream: bool = True):
        import queue
        self.events: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        threading.Thread(target=self._stream if stream else self._chat, args=(llm, messages, kw), daemon=True).start()

    def cancel(self):
        self.cancelled.set()

    def _chat(self, llm, messages, kw):
        try:
            (c,) = llm.chat(messages, n=1, **kw)
            self.events.put(("delta", c.text))
            self.events.put(("done", c))
        except Exception as e:
            self.events.put(("error", e))

    def _stream(self, llm, messages, kw):
        text, pieces, gen = "", 0, None
        try:
            gen = llm.stream(messages, **kw)
            for piece in gen:
                if self.cancelled.is_set():
                    break
                text += piece
                pieces += 1
                self.events.put(("delta", piece))
            # the backend does not say how many tokens it streamed: count pieces
            self.events.put(("done", Completion(text, 0, pieces, "cancelled" if self.cancelled.is_set() else "stop")))
        except Exception as e:
            self.events.put(("error", e))
        finally:
            if gen is not None and hasattr(gen, "close"):
                gen.close()


def start(llm, messages, *, n=1, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None,
          prompt_ids=None, stream=True) -> list:
    """Start n generations; each returned job has .events (("delta", str)..., ("done", Completion)) and .cancel()."""
    kw = dict(temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=stop, seed=seed)
    if isinstance(llm, ServedLLM):
        return llm.submit(messages, n=n, prompt_ids=prompt_ids, **kw)
    if hasattr(llm, "submit"):
        return llm.submit(messages, n=n, **kw)
    return [ThreadJob(llm, messages, dict(kw, seed=None if seed is None else seed + i), stream) for i in range(n)]


async def events(jobs):
    """Merge the jobs' events into (index, kind, value) on the event loop, with the text tidied so that
    streamed pieces add up to exactly the final text (no leading space after the role marker, no
    trailing whitespace before a stop string). Leaving early cancels every job."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()

    def pump(i, job):  # one thread per job: the engine's queues are blocking
        import queue
        while True:
            items = [job.events.get()]
            while items[-1][0] == "delta":  # coalesce what is already waiting: one wake-up, one chunk
                try:
                    kind, value = job.events.get_nowait()
                except queue.Empty:
                    break
                if kind == "delta":
                    items[-1] = ("delta", items[-1][1] + value)
                else:
                    items.append((kind, value))
            try:
                loop.call_soon_threadsafe(lambda items=items: [q.put_nowait((i, *it)) for it in items])
            except RuntimeError:  # the loop is gone
                job.cancel()
                return
            if items[-1][0] != "delta":
                return

    for i, job in enumerate(jobs):
        threading.Thread(target=pump, args=(i, job), daemon=True).start()
    started, pending, open_ = [False] * len(jobs), [""] * len(jobs), len(jobs)
    try:
        while open_:
            i, kind, value = await q.get()
            if kind == "delta":
                piece = value if started[i] else value.lstrip()
                started[i] = started[i] or bool(piece)
                piece = pending[i] + piece
                body = piece.rstrip()
                pending[i] = piece[len(body):]
                if body:
                    yield i, "delta", body
            else:
                open_ -= 1
                if kind == "done":
                    value.text = value.text.strip()
                yield i, kind, value
    finally:
        for job in jobs:
            job.cancel()


# -- the HTTP app ----------------------------------------------------------------------------------

def _pydantic_models():
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field

    class TextPart(BaseModel):
        model_config = ConfigDict(strict=True, extra="ignore")
        type: Literal["text"]
        text: str

    class Msg(BaseModel):
        model_config = ConfigDict(strict=True, extra="ignore")
        role: Literal["system", "developer", "user", "assistant"]
        content: str | list[TextPart] | None = None

        def text(self) -> str:
            if isinstance(self.content, list):
                return "".join(p.text for p in self.content)
            return self.content or ""

    class StreamOptions(BaseModel):
        model_config = ConfigDict(strict=True, extra="ignore")
        include_usage: bool = False

    class ChatRequest(BaseModel):
        # unknown fields (user, presence_penalty, ...) are ignored, as most compatible servers do
        model_config = ConfigDict(strict=True, extra="ignore")
        model: str
        messages: list[Msg] = Field(min_length=1)
        stream: bool = False
        stream_options: StreamOptions | None = None
        n: int = Field(1, ge=1, le=128)
        temperature: float | None = Field(None, ge=0, le=2)
        top_p: float | None = Field(None, ge=0, le=1)
        max_tokens: int | None = Field(None, ge=1)
        max_completion_tokens: int | None = Field(None, ge=1)
        stop: str | list[str] | None = None
        seed: int | None = Field(None, ge=-(2 ** 62), le=2 ** 62)
        logprobs: bool | None = None

    return ChatRequest


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def _error_body(message, type="invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def create_app(models: dict[str, object], cfg: ServeConfig | None = None, *, ui: bool | None = None):
    """The FastAPI app over already-loaded models ({served name: LLM})."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    cfg = cfg or ServeConfig()
    ChatRequest = _pydantic_models()
    created = int(time.time())
    app = FastAPI(title="baize", description="OpenAI-compatible chat completions for baize models",
                  docs_url="/docs", redoc_url=None)
    app.state.models = models

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return JSONResponse(_error_body(e.message, e.type, e.param, e.code), status_code=e.status,
                            headers={"WWW-Authenticate": "Bearer"} if e.status == 401 else None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request", "type": ""}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            return JSONResponse(_error_body(f"The request body is not valid JSON: {first.get('msg')}",
                                            code="invalid_json"), status_code=400)
        where = ".".join(loc)
        msg = f"{where}: {first['msg']}" if where else first["msg"]
        more = f" (and {len(errs) - 1} more problem(s))" if len(errs) > 1 else ""
        return JSONResponse(_error_body(f"Invalid request: {msg}{more}", param=where or None,
                                        code="invalid_value"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        return JSONResponse(_error_body(str(e.detail), code=str(e.status_code)), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _internal(request, e: Exception):
        return JSONResponse(_error_body(f"internal error: {type(e).__name__}: {e}", "server_error"), status_code=500)

    app.add_middleware(_Guard, api_key=cfg.api_key)

    def model_card(name):
        return {"id": name, "object": "model", "created": created, "owned_by": "baize"}

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(models)}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card(n) for n in models]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        if name not in models:
            raise APIError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
        return model_card(name)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        llm = models.get(body.model)
        if llm is None:
            raise APIError(404, f"The model '{body.model}' does not exist; served: {', '.join(models)}",
                           param="model", code="model_not_found")
        if body.logprobs:
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")
        max_batch = getattr(getattr(llm, "engine", None), "max_batch", cfg.max_batch)
        if body.n > max_batch:
            raise APIError(400, f"n={body.n} is over this server's limit of {max_batch}", param="n")
        stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise APIError(400, "stop: at most 4 non-empty strings", param="stop")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        max_tokens = body.max_completion_tokens or body.max_tokens
        ids = None
        ctx = getattr(llm, "context_length", None)
        if hasattr(llm, "prompt_ids"):
            ids = await run_in_threadpool(llm.prompt_ids, messages)
        if ctx and ids is not None:
            if max_tokens is not None and len(ids) + max_tokens > ctx:
                raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, you requested "
                                    f"{len(ids) + max_tokens} tokens ({len(ids)} in the messages, {max_tokens} in "
                                    f"the completion). Please reduce the length of the messages or completion.",
                               param="messages", code="context_length_exceeded")
            if len(ids) >= ctx:
                raise APIError(400, f"This model's maximum context length is {ctx} tokens, and the messages take "
                                    f"{len(ids)}. Please reduce the length of the messages.",
                               param="messages", code="context_length_exceeded")
            max_tokens = max_tokens or min(cfg.max_tokens, ctx - len(ids))
        max_tokens = max_tokens or cfg.max_tokens
        jobs = start(llm, messages, n=body.n,
                     temperature=cfg.temperature if body.temperature is None else body.temperature,
                     top_p=cfg.top_p if body.top_p is None else body.top_p, max_tokens=max_tokens, stop=stop,
                     seed=body.seed, prompt_ids=ids, stream=body.stream)
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        now = int(time.time())
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_sse(jobs, cid, now, body.model, usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _complete(request, jobs, cid, now, body.model)

    async def _complete(request, jobs, cid, now, name):
        texts, done = [""] * len(jobs), [None] * len(jobs)

        async def collect():
            async for i, kind, value in events(jobs):
                if kind == "error":
                    raise value
                if kind == "done":
                    done[i] = value

        task = asyncio.ensure_future(collect())
        try:
            while not task.done():  # watch for the client going away: it cancels the generation
                await asyncio.wait([task], timeout=0.5)
                if not task.done() and await request.is_disconnected():
                    task.cancel()
                    return JSONResponse(_error_body("client disconnected"), status_code=499)
            task.result()
        except APIError:
            raise
        except Exception as e:
            raise APIError(500, f"generation failed: {type(e).__name__}: {e}", type="server_error") from None
        finally:
            task.cancel()
        for i, c in enumerate(done):
            texts[i] = c.text
        usage = _usage(done)
        return {"id": cid, "object": "chat.completion", "created": now, "model": name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": t},
                             "logprobs": None, "finish_reason": _finish(c)} for i, (t, c) in enumerate(zip(texts, done))],
                "usage": usage}

    async def _sse(jobs, cid, now, name, include_usage):
        def chunk(choices, **extra):
            return "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": now,
                                          "model": name, "choices": choices, **extra}, ensure_ascii=False) + "\n\n"

        done = [None] * len(jobs)
        for i in range(len(jobs)):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}])
        async for i, kind, value in events(jobs):
            if kind == "delta":
                yield chunk([{"index": i, "delta": {"content": value}, "logprobs": None, "finish_reason": None}])
            elif kind == "done":
                done[i] = value
                yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": _finish(value)}])
            else:
                yield "data: " + json.dumps(_error_body(f"generation failed: {type(value).__name__}: {value}",
                                                        "server_error")) + "\n\n"
                return
        if include_usage:
            yield chunk([], usage=_usage(done))
        yield "data: [DONE]\n\n"

    if ui if ui is not None else cfg.ui:
        from .ui import mount_ui
        mount_ui(app, models, cfg)

        @app.get("/", include_in_schema=False)
        async def root():
            return RedirectResponse("/ui/")
    return app


class _Guard:
    """API key and body size, checked before anything reads the request (so a request without the key
    gets 401 whatever its body). Plain ASGI: BaseHTTPMiddleware would get between a streaming response
    and the client's disconnect. /health stays open for probes; the UI has its own login."""
    limit = 16 * 2 ** 20

    def __init__(self, app, api_key: str | None = None):
        self.app, self.key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            from fastapi.responses import JSONResponse
            headers = dict(scope["headers"])
            path = scope["path"]
            if self.key and path != "/health" and not (path == "/ui" or path.startswith("/ui/")):
                scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
                if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), self.key.encode()):
                    resp = JSONResponse(_error_body("Incorrect or missing API key: send 'Authorization: Bearer KEY'",
                                                    code="invalid_api_key"),
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                    return await resp(scope, receive, send)
            size = headers.get(b"content-length", b"0")
            if not size.isdigit() or int(size) > self.limit:
                big = size.isdigit()
                resp = JSONResponse(_error_body("request body over 16 MiB" if big else "bad Content-Length header",
                                                code="request_too_large" if big else None),
                                    status_code=413 if big else 400)
                return await resp(scope, receive, send)
        await self.app(scope, receive, send)


def _finish(c: Completion) -> str:
    return "length" if c.finish_reason == "length" else "stop"


def _usage(done: list[Completion]) -> dict:
    # every choice saw the same prompt: count it once, as OpenAI does
    pt = max((c.prompt_tokens for c in done), default=0)
    ct = sum(c.completion_tokens for c in done)
    return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}


@contextlib.contextmanager
def running(app, host: str = "127.0.0.1"):
    """Run an app with uvicorn in a background thread on a free port; yields its base URL. For tests
    and benchmarks: the socket is bound before the server starts, so there is no port race."""
    import socket

    import uvicorn
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


# -- the command -------------------------------------------------------------------------------------

def serve(specs: dict[str, str], cfg: ServeConfig) -> None:
    import os

    import uvicorn
    cfg.api_key = cfg.api_key or os.environ.get("BAIZE_API_KEY") or None
    if cfg.max_tokens < 1 or cfg.max_batch < 1:
        raise BaizeError("--max-tokens and --max-batch must be positive")
    loaded = load_models(specs, cfg)
    app = create_app(loaded, cfg)
    where = f"http://{cfg.host}:{cfg.port}"
    print(f"serving {', '.join(loaded)} at {where}/v1" + (f"  (web UI: {where}/ui)" if cfg.ui else "")
          + ("  (API key required)" if cfg.api_key else ""), flush=True)
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        print(f"warning: listening on {cfg.host} without --api-key: anyone who can reach it can use it", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", timeout_graceful_shutdown=3)


def add_serve_args(p) -> None:
    p.add_argument("models", nargs="*", default=["default"], metavar="[NAME=]SPEC",
                   help="models to serve (default: the embedded default); NAME=SPEC sets the served name, "
                        "e.g. base=default v1=runs/v1 v2=runs/v2 share one base in memory")
    add_dataclass_args(p, ServeConfig)


def add_cli(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible API server (+ web UI with --ui)")
    add_serve_args(p)
    p.set_defaults(func=_main)


def _main(args) -> int:
    cfg = dataclass_from_args(ServeConfig, args)
    serve(parse_model_args(args.models or ["default"]), cfg)
    return 0
