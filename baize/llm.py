"""The one interface every stage talks to models through, and its backends.

    llm = load_llm("openai:gpt-4o-mini" | "default" | "hf:PATH[+ADAPTER]" | RUN_DIR | "gguf:PATH")
    llm.chat(messages, n=1, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None)
        -> list[Completion]
    for piece in llm.stream(messages, ...): ...

Concurrency comes from the caller's threads: the HTTP backend is thread-safe, the local backends
batch concurrent calls together. Retries (429, 5xx, timeouts, Retry-After) live in the HTTP
backend alone.
"""
from __future__ import annotations

import json
import os
import threading
from typing import Iterator, Protocol

from .config import BaizeError
from .engine import Completion, GenParams

__all__ = ["LLM", "Completion", "LLMError", "TransientLLMError", "load_llm", "OpenAILLM", "HFLLM"]


class LLMError(BaizeError):
    """Not worth retrying: bad key, unknown model, bad request."""


class TransientLLMError(LLMError):
    """Retries ran out (rate limits, server errors, timeouts, malformed replies): the item failed."""


class LLM(Protocol):
    name: str

    def chat(self, messages: list[dict], *, n: int = 1, temperature: float = 1.0, top_p: float = 0.95,
             max_tokens: int = 512, stop: list[str] | None = None, seed: int | None = None) -> list[Completion]: ...

    def stream(self, messages: list[dict], **kw) -> Iterator[str]: ...


class OpenAILLM:
    """Any OpenAI-compatible endpoint through the official client (OpenAI, vLLM, llama.cpp, Ollama)."""

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 max_retries: int = 6, timeout: float = 120.0, malformed_retries: int = 3):
        import openai
        self.name = model
        self.model = model
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            if not base_url:
                raise LLMError(f"openai:{model}: no API key: set OPENAI_API_KEY, or --base-url for a local server")
            api_key = "EMPTY"  # local servers (vLLM, llama.cpp, Ollama) accept any key
        self.base_url = base_url or "https://api.openai.com/v1"
        # the client's own retry loop: exponential backoff with jitter on 408/409/429/5xx and
        # connection errors/timeouts, honouring Retry-After
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=timeout)
        self.malformed_retries = malformed_retries

    def check(self) -> None:
        """Fail fast, in one line, when the endpoint is unreachable or the key is refused."""
        import openai
        where = f"openai:{self.model} at {self.base_url}"
        try:
            self.client.with_options(max_retries=1, timeout=15).models.list()
        except openai.AuthenticationError:
            raise LLMError(f"{where}: 401, the API key was refused: set OPENAI_API_KEY or --api-key") from None
        except openai.APIConnectionError:
            raise LLMError(f"{where}: cannot connect: is the server running? (set --base-url or OPENAI_BASE_URL)") from None
        except openai.APIError:
            pass  # some servers have no /models; the first real call will tell

    def _call(self, **kw):
        import openai
        where = f"openai:{self.model} at {self.base_url}"
        for attempt in range(self.malformed_retries + 1):
            try:
                resp = self.client.chat.completions.create(model=self.model, **kw)
                if kw.get("stream"):
                    return resp
                if not resp.choices or resp.choices[0].message is None:
                    raise ValueError("reply has no choices")
                return resp
            except openai.AuthenticationError:
                raise LLMError(f"{where}: 401, the API key was refused: set OPENAI_API_KEY or --api-key") from None
            except openai.PermissionDeniedError as e:
                raise LLMError(f"{where}: 403, not allowed: {e.message}") from None
            except openai.NotFoundError:
                raise LLMError(f"{where}: 404, unknown model or wrong base URL: check the model name and "
                               f"--base-url (it usually ends in /v1)") from None
            except openai.BadRequestError as e:
                raise LLMError(f"{where}: 400, request refused: {e.message}") from None
            except openai.APITimeoutError:
                raise TransientLLMError(f"{where}: timed out after retries") from None
            except openai.APIConnectionError:
                raise TransientLLMError(f"{where}: cannot connect: is the server running? "
                                        f"(set --base-url or OPENAI_BASE_URL)") from None
            except openai.APIStatusError as e:
                raise TransientLLMError(f"{where}: HTTP {e.status_code} after retries") from None
            except (ValueError, TypeError, AttributeError, KeyError, openai.APIResponseValidationError) as e:
                # a 200 with a body that is not a chat completion: retry a few times, then fail the item
                if attempt == self.malformed_retries:
                    raise TransientLLMError(f"{where}: malformed reply ({type(e).__name__}) after retries") from None

    @staticmethod
    def _request(messages, temperature, top_p, max_tokens, stop, seed, **extra) -> dict:
        kw = dict(messages=messages, temperature=temperature, top_p=top_p, max_tokens=max_tokens, **extra)
        if stop:
            kw["stop"] = stop[:4]  # OpenAI allows at most four
        if seed is not None:
            kw["seed"] = seed
        return kw

    def chat(self, messages, *, n=1, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None):
        resp = self._call(**self._request(messages, temperature, top_p, max_tokens, stop, seed, n=n))
        usage = resp.usage
        pt = usage.prompt_tokens if usage else 0
        ct = usage.completion_tokens if usage else 0
        out = []
        for i, c in enumerate(resp.choices):
            # the request's usage is split over its choices so that summing completions counts it once
            out.append(Completion(c.message.content or "", pt if i == 0 else 0,
                                  ct if i == 0 else 0, c.finish_reason or "stop"))
        return out

    def stream(self, messages, *, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None):
        resp = self._call(**self._request(messages, temperature, top_p, max_tokens, stop, seed, stream=True))
        try:
            for chunk in resp:
                if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        finally:
            resp.close()


class HFLLM:
    """A local transformers model (+ peft adapters); concurrent calls are batched by BatchEngine."""

    def __init__(self, spec: str, *, format: str | None = None, system: str | None = None,
                 device: str | None = None, dtype: str | None = None, quantize: str | None = None,
                 max_batch: int = 16, model=None, tokenizer=None):
        from . import models
        from .chat_format import get_format
        self.name = spec
        self.ref = models.resolve(spec) if model is None else models.ModelRef(spec)
        if model is None:
            model, tokenizer = models.load_model(self.ref, device=device, dtype=dtype, quantize=quantize)
        self.model, self.tokenizer = model, tokenizer
        fmt = format or self.ref.format or ("template" if getattr(tokenizer, "chat_template", None) else "baize")
        self.format = get_format(fmt, tokenizer)
        self.system = system if system is not None else self.ref.system
        eos = {tokenizer.eos_token_id}
        gc_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos.update(gc_eos if isinstance(gc_eos, list) else [gc_eos])
        for s in self.format.stop:
            tid = tokenizer.convert_tokens_to_ids(s)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id:
                eos.add(tid)
        from .engine import BatchEngine
        self.engine = BatchEngine(model, tokenizer, max_batch=max_batch, eos_ids=eos)
        self.context_length = getattr(model.config, "max_position_embeddings", None) or 2048

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.format.encode(self.format.render(self._with_system(messages), add_generation_prompt=True))

    def submit(self, messages, *, n=1, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None):
        ids = self.prompt_ids(messages)
        params = GenParams(temperature, top_p, max_tokens, list(self.format.stop) + list(stop or []), seed)
        return [self.engine.submit(ids, params, None if seed is None else seed + i) for i in range(n)]

    def option_logprobs(self, messages: list[dict], prefix: str, options: list[str]) -> list[float]:
        """log P(option | prompt + the start of the reply `prefix`), summed over the option's tokens.

        Lets a judge choose its verdict among fixed options ("A"/"B"/"C", labels, 1-10) instead of
        writing it: a small local model that cannot follow a verdict format still gives a parseable,
        comparable answer. transformers has no such call (generate() scores only what it sampled):
        one forward pass over the prompt gives every one-token option; a longer option continues
        from the prompt's KV cache, which is cropped back afterwards. It runs on the engine's thread,
        between decode steps (judge workers call it concurrently)."""
        return self.engine.call(lambda: self._option_logprobs(messages, prefix, options))

    def _option_logprobs(self, messages, prefix, options):
        import torch
        from transformers import DynamicCache

        from .engine import cache_kwarg
        prompt = self.format.render(self._with_system(messages), add_generation_prompt=True) + prefix
        ctx = self.format.encode(prompt)
        dev = self.model.device
        with torch.inference_mode():
            cache, kw = DynamicCache(), cache_kwarg(self.model)
            out = self.model(input_ids=torch.tensor([ctx], device=dev), use_cache=True, logits_to_keep=1, **{kw: cache})
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            scores = []
            for opt in options:
                full = self.format.encode(prompt + opt)
                if full[:len(ctx)] != ctx or len(full) == len(ctx):
                    # the option merged with the prompt's last token: score that row on its own
                    k = next((i for i, (a, b) in enumerate(zip(ctx, full)) if a != b), len(full) - 1)
                    logits = self.model(input_ids=torch.tensor([full], device=dev)).logits[0].float()
                    lp = torch.log_softmax(logits, dim=-1)
                    scores.append(sum(float(lp[t - 1, full[t]]) for t in range(max(k, 1), len(full))))
                    continue
                toks = full[len(ctx):]
                total = float(first[toks[0]])
                if len(toks) > 1:
                    more = self.model(input_ids=torch.tensor([toks[:-1]], device=dev), use_cache=True,
                                      **{kw: cache}).logits[0].float()
                    lp = torch.log_softmax(more, dim=-1)
                    total += sum(float(lp[j, toks[j + 1]]) for j in range(len(toks) - 1))
                    cache.crop(-(len(toks) - 1))  # back to the prompt alone
                scores.append(total)
        return scores

    def _with_system(self, messages):
        if self.system and not (messages and messages[0]["role"] == "system"):
            return [{"role": "system", "content": self.system}] + list(messages)
        return messages

    def chat(self, messages, **kw):
        out = []
        for r in self.submit(messages, **kw):
            c = r.result()
            c.text = c.text.strip()
            out.append(c)
        return out

    def stream(self, messages, **kw):
        (req,) = self.submit(messages, n=1, **kw)
        started = False
        for piece in req.deltas():
            if not started:  # the baize format puts a space after the marker
                piece = piece.lstrip()
                started = bool(piece)
            if piece:
                yield piece


def gguf_prompting(meta: dict) -> tuple[list[str], str | None]:
    """(stop strings, system prompt) that `baize export` recorded in a GGUF's metadata, else ([], None).
    Values come as the gguf package reads them, or as llama.cpp renders them to strings."""
    stop = meta.get("baize.stop")
    if isinstance(stop, str):  # llama.cpp's rendering of a string array: ["a", "b"]
        try:
            stop = json.loads(stop, strict=False)
        except ValueError:
            stop = None
    stop = [s for s in stop if isinstance(s, str) and s] if isinstance(stop, list) else []
    system = meta.get("baize.system")
    return stop, system if isinstance(system, str) and system else None


def gguf_string_arrays(path: str, keys) -> dict:
    """String-array metadata values of a GGUF file, by the gguf package (a few seconds on a large
    vocabulary, so only for the keys llama.cpp does not hand over); {} when unreadable."""
    try:
        from gguf import GGUFReader
        reader = GGUFReader(path)
        fields = {k: reader.get_field(k) for k in keys}
        return {k: [bytes(f.parts[i]).decode("utf-8") for i in f.data] for k, f in fields.items() if f is not None}
    except Exception:  # no gguf package, an odd file: the defaults are a convenience, not a requirement
        return {}


class LlamaCppLLM:
    """A GGUF file through llama.cpp (pip install 'baize[llamacpp]'); one request at a time."""

    def __init__(self, path: str, *, n_ctx: int = 4096):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise LLMError("gguf: specs need llama.cpp: pip install llama-cpp-python") from None
        if not os.path.isfile(path):
            raise LLMError(f"gguf:{path}: no such file: give the path of a .gguf model file (or gguf:default)")
        self.name = f"gguf:{path}"
        self.llama = Llama(model_path=path, n_ctx=n_ctx, verbose=False)
        meta = getattr(self.llama, "metadata", None)
        meta = dict(meta) if isinstance(meta, dict) else {}
        if "baize.format" in meta and "baize.stop" not in meta:
            meta.update(gguf_string_arrays(path, ("baize.stop",)))  # llama.cpp drops array values
        self.stop, self.system = gguf_prompting(meta)
        self._lock = threading.Lock()  # a llama.cpp context is not thread-safe

    def _args(self, messages, stop):
        """The file's system prompt when the dialogue has none; its stop strings besides the caller's."""
        if self.system and not (messages and messages[0]["role"] == "system"):
            messages = [{"role": "system", "content": self.system}] + list(messages)
        return messages, list(dict.fromkeys(list(stop or []) + self.stop)) or None

    def chat(self, messages, *, n=1, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None):
        messages, stop = self._args(messages, stop)
        out = []
        for i in range(n):
            with self._lock:
                self.llama.reset()  # no reuse of the last prompt's cache: the same request gives the same text
                r = self.llama.create_chat_completion(messages=messages, temperature=temperature, top_p=top_p,
                                                      max_tokens=max_tokens, stop=stop,
                                                      seed=None if seed is None else seed + i)
            u = r.get("usage", {})
            out.append(Completion(r["choices"][0]["message"]["content"] or "", u.get("prompt_tokens", 0),
                                  u.get("completion_tokens", 0), r["choices"][0].get("finish_reason") or "stop"))
        return out

    def stream(self, messages, *, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None):
        messages, stop = self._args(messages, stop)
        with self._lock:
            self.llama.reset()
            for chunk in self.llama.create_chat_completion(messages=messages, temperature=temperature, top_p=top_p,
                                                           max_tokens=max_tokens, stop=stop, seed=seed,
                                                           stream=True):
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    yield piece


def load_llm(spec: str, *, base_url: str | None = None, api_key: str | None = None, **kw) -> LLM:
    """The only place a model spec string becomes a model."""
    if spec.startswith("openai:"):
        return OpenAILLM(spec[len("openai:"):], base_url=base_url, api_key=api_key,
                         **{k: v for k, v in kw.items() if k in ("max_retries", "timeout")})
    if spec.startswith("gguf:"):
        if spec == "gguf:default":
            from .models import default_gguf_path
            return LlamaCppLLM(str(default_gguf_path()))
        return LlamaCppLLM(spec[len("gguf:"):])
    return HFLLM(spec, **{k: v for k, v in kw.items() if k in ("format", "system", "device", "dtype",
                                                                "quantize", "max_batch")})
