"""baize: seed questions in, a served chat model out (self-chat, LoRA, SDF, serving)."""
__version__ = "0.1.0"

from .schema import Message, read_jsonl, write_jsonl  # noqa: E402  (stdlib-only imports: `baize --help` stays instant)


def load_llm(spec: str, **kw):
    from .llm import load_llm as _load
    return _load(spec, **kw)


def __getattr__(name):  # LLM, Completion without importing backends eagerly
    if name in ("LLM", "Completion", "LLMError"):
        from . import llm
        return getattr(llm, name)
    raise AttributeError(name)
