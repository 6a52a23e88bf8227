"""The HTTP app: `create_app(models, cfg)` over already-loaded models ({served name: LLM}).

As in vLLM's OpenAI server, the route handlers are thin (module-level, on an APIRouter, finding
their state on `request.app.state`); the chat-completion logic is the ChatCompletions class; the
wire format is protocol.py. Local models go through the continuous-batching engine (engine.py): a
request joins the running batch at the next decode step and leaves it when done, and a client that
disconnects cancels its rows. Only imported when serving: fastapi stays out of `baize --help`.
"""
import asyncio
import secrets
import time
import uuid

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import protocol
from .completions import Completions
from .config import ServeConfig
from .jobs import events, start
from .protocol import APIError, ChatRequest, CompletionRequest, error_body

router = APIRouter()


def create_app(models: dict[str, object], cfg: ServeConfig | None = None, *, ui: bool | None = None):
    """The FastAPI app; `ui` (default: cfg.ui) also mounts the web UI at /ui."""
    cfg = cfg or ServeConfig()
    app = FastAPI(title="baize", description="OpenAI-compatible chat completions for baize models",
                  docs_url="/docs", redoc_url=None)
    app.state.models = models
    app.state.created = int(time.time())
    app.state.chat = ChatCompletions(models, cfg)
    app.state.completions = Completions(models, cfg)
    _add_error_handlers(app)
    app.openapi = lambda: _openapi(app, models, cfg)
    app.add_middleware(Guard, api_key=cfg.api_key)
    app.include_router(router)
    if ui if ui is not None else cfg.ui:
        from .ui import mount_ui
        mount_ui(app, models, cfg)

        @app.get("/", include_in_schema=False)
        async def root():
            return RedirectResponse("/ui/")
    return app


def _openapi(app: FastAPI, models: dict, cfg: ServeConfig) -> dict:
    """The published schema, with the limits that depend on the models served stated too (the names, n
    up to the batch, max_tokens and token ids within the context and the vocabulary), so that a request
    the schema allows is one the server takes."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    local = [m for m in models.values() if m.is_local]
    batch = min([m.engine.max_batch for m in local] + [cfg.max_batch])
    ctx = min((m.context_length for m in models.values() if m.context_length), default=None)
    vocab = min((len(m.tokenizer) for m in local), default=None)
    for param in schema["paths"]["/v1/models/{name}"]["get"]["parameters"]:
        param["schema"]["enum"] = list(models)
    for name in ("ChatRequest", "CompletionRequest"):
        props = schema["components"]["schemas"][name]["properties"]
        props["model"]["enum"] = list(models)
        props["n"]["maximum"] = batch
        for key in ("max_tokens", "max_completion_tokens"):
            for branch in props.get(key, {}).get("anyOf", []):
                if ctx and branch.get("type") == "integer":
                    branch["maximum"] = ctx - 1  # the prompt takes one token at least
        for node in _nodes(props.get("prompt", {})):
            if vocab and node.get("type") == "integer":
                node["maximum"] = vocab - 1
    # the statuses the server answers, each with OpenAI's {"error": {...}} body; a validation error is a
    # 400 there (openai clients raise BadRequestError on it), never FastAPI's 422
    error = {"content": {"application/json": {"schema": {"type": "object", "required": ["error"]}}}}
    for path, item in schema["paths"].items():
        for op in item.values():
            op["responses"].pop("422", None)
            if path.startswith("/v1/"):
                op["responses"].update({"400": {"description": "invalid request", **error},
                                        "401": {"description": "the API key is missing or wrong", **error},
                                        "404": {"description": "unknown model", **error}})
                if "requestBody" in op:
                    op["responses"]["413"] = {"description": "request body over 16 MiB", **error}
    # with "stream": true the answer is server-sent events: chat.completion.chunk objects, then "[DONE]"
    ok = schema["paths"]["/v1/chat/completions"]["post"]["responses"]["200"].setdefault("content", {})
    ok["text/event-stream"] = {"schema": {}}
    schema["components"]["schemas"].pop("HTTPValidationError", None)
    schema["components"]["schemas"].pop("ValidationError", None)
    app.openapi_schema = schema
    return schema


def _nodes(node):
    """Every dict inside a JSON schema node, itself included."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _nodes(v)
    elif isinstance(node, list):
        for v in node:
            yield from _nodes(v)


# -- routes ------------------------------------------------------------------------------------------

@router.get("/health")
async def health(request: Request):
    return {"status": "ok", "models": list(request.app.state.models)}


@router.get("/v1/models")
async def list_models(request: Request):
    state = request.app.state
    return {"object": "list", "data": [protocol.model_card(n, state.created) for n in state.models]}


@router.get("/v1/models/{name:path}")
async def get_model(name: str, request: Request):
    if name not in request.app.state.models:
        raise APIError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
    return protocol.model_card(name, request.app.state.created)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    return await request.app.state.chat.create(body, request)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    return await request.app.state.completions.create(body, request)


# -- the chat-completion logic -------------------------------------------------------------------------

class ChatCompletions:
    """POST /v1/chat/completions: check the request against its model, fit it in the context, start
    the generations and answer whole or as server-sent events."""

    def __init__(self, models: dict[str, object], cfg: ServeConfig):
        self.models, self.cfg = models, cfg

    async def create(self, body: ChatRequest, request: Request):
        llm = self.models.get(body.model)
        if llm is None:
            raise APIError(404, f"The model '{body.model}' does not exist; served: {', '.join(self.models)}",
                           param="model", code="model_not_found")
        stop = self._check(llm, body)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        ids, max_tokens = await self._fit(llm, messages, body.max_completion_tokens or body.max_tokens)
        cfg = self.cfg
        jobs = start(llm, messages, n=body.n,
                     temperature=cfg.temperature if body.temperature is None else body.temperature,
                     top_p=cfg.top_p if body.top_p is None else body.top_p, max_tokens=max_tokens, stop=stop,
                     seed=body.seed, prompt_ids=ids, stream=body.stream)
        cid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(self._stream(jobs, cid, now, body.model, usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await self._complete(request, jobs, cid, now, body.model)

    def _check(self, llm, body: ChatRequest) -> list[str]:
        """What pydantic cannot check alone; returns the stop strings as a list."""
        protocol.refuse_unsupported(body)
        if body.logprobs:
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")
        return protocol.n_and_stops(body, llm.engine.max_batch if llm.is_local else self.cfg.max_batch)

    async def _fit(self, llm, messages, max_tokens: int | None) -> tuple[list[int] | None, int]:
        """The prompt's ids (when the model can count them) and the completion's token budget: refused
        as OpenAI does when prompt + completion are over the context, else capped to fit it."""
        ids = await run_in_threadpool(llm.prompt_ids, messages) if llm.can_count_tokens else None
        ctx = llm.context_length
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
            max_tokens = max_tokens or min(self.cfg.max_tokens, ctx - len(ids))
        return ids, max_tokens or self.cfg.max_tokens

    async def _complete(self, request: Request, jobs, cid, now, name):
        done = [None] * len(jobs)

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
                    return JSONResponse(error_body("client disconnected"), status_code=499)
            task.result()
        except APIError:
            raise
        except Exception as e:
            raise APIError(500, f"generation failed: {type(e).__name__}: {e}", type="server_error") from None
        finally:
            task.cancel()
        return protocol.completion(cid, now, name, done)

    async def _stream(self, jobs, cid, now, name, include_usage):
        done = [None] * len(jobs)
        for i in range(len(jobs)):
            yield protocol.chunk(cid, now, name, [protocol.choice_delta(i, {"role": "assistant", "content": ""})])
        async for i, kind, value in events(jobs):
            if kind == "delta":
                yield protocol.chunk(cid, now, name, [protocol.choice_delta(i, {"content": value})])
            elif kind == "done":
                done[i] = value
                yield protocol.chunk(cid, now, name, [protocol.choice_delta(i, {}, protocol.finish_reason(value))])
            else:  # the status line is sent: the error can only be an event
                yield protocol.sse(error_body(f"generation failed: {type(value).__name__}: {value}", "server_error"),
                                   ensure_ascii=True)
                return
        if include_usage:
            yield protocol.chunk(cid, now, name, [], usage=protocol.usage(done))
        yield protocol.sse("[DONE]")


# -- errors and the API key ------------------------------------------------------------------------------

def _add_error_handlers(app: FastAPI) -> None:
    """Every error as OpenAI's {"error": {...}} body, which clients parse into their exceptions."""

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status,
                            headers={"WWW-Authenticate": "Bearer"} if e.status == 401 else None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        errs = e.errors()
        # a validator's own error (a lone surrogate) says more than the union's other branches failing
        first = next((x for x in errs if x.get("type") == "value_error"), errs[0] if errs else
                     {"loc": (), "msg": "invalid request", "type": ""})
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body(f"The request body is not valid JSON: {first.get('msg')}",
                                           code="invalid_json"), status_code=400)
        where = _where(first.get("loc", ()))
        text = first["msg"].removeprefix("Value error, ")
        msg = f"{where}: {text}" if where else text
        others = {_where(x.get("loc", ())) for x in errs} - {where}
        more = f" (and {len(others)} more problem(s))" if others else ""
        return JSONResponse(error_body(f"Invalid request: {msg}{more}", param=where or None,
                                       code="invalid_value"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        return JSONResponse(error_body(str(e.detail), code=str(e.status_code)), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _internal(request, e: Exception):
        return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}", "server_error"), status_code=500)


def _where(loc) -> str:
    """A pydantic error location as the request's own path (messages.0.content), without the names
    pydantic gives a union's branches and validators (str, function-after[...]) and a message's role
    (the tag of its discriminated union: messages.0.user.content)."""
    loc = [x for i, x in enumerate(loc) if not (i and isinstance(loc[i - 1], int) and x in ROLES)]
    return ".".join(str(x) for x in loc if x != "body" and not any(c in str(x) for c in "[(")
                    and x not in ("str", "int", "float", "bool", "list", "dict"))


ROLES = ("system", "developer", "user", "assistant")


class Guard:
    """API key and body size, checked before anything reads the request (so a request without the key
    gets 401 whatever its body). Plain ASGI: BaseHTTPMiddleware would get between a streaming response
    and the client's disconnect. /health stays open for probes; the UI has its own login."""
    limit = 16 * 2 ** 20

    def __init__(self, app, api_key: str | None = None):
        self.app, self.key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refused = self._refuse(dict(scope["headers"]), scope["path"])
            if refused is not None:
                return await refused(scope, receive, send)
        await self.app(scope, receive, send)

    def _refuse(self, headers: dict, path: str) -> JSONResponse | None:
        if self.key and path != "/health" and not (path == "/ui" or path.startswith("/ui/")):
            scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), self.key.encode()):
                return JSONResponse(error_body("Incorrect or missing API key: send 'Authorization: Bearer KEY'",
                                               code="invalid_api_key"),
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        size = headers.get(b"content-length", b"0")
        if not size.isdigit() or int(size) > self.limit:
            big = size.isdigit()
            return JSONResponse(error_body("request body over 16 MiB" if big else "bad Content-Length header",
                                           code="request_too_large" if big else None),
                                status_code=413 if big else 400)
        return None
