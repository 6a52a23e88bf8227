"""baize: seed questions in, a served chat model out (self-chat, LoRA, SDF, serving)."""
from ._version import __version__  # one place; stages read it without importing the package
from .schema import Message, read_jsonl, write_jsonl  # stdlib-only imports: `baize --help` stays instant

__all__ = ["__version__", "Message", "read_jsonl", "write_jsonl", "load_llm", "LLM", "Completion", "GenParams",
           "LLMError"]


def load_llm(spec: str, **kw):
    from .llm.models import load_llm as _load
    return _load(spec, **kw)


def __getattr__(name):  # LLM, Completion without importing backends eagerly
    if name in ("LLM", "Completion", "GenParams", "LLMError"):
        from .llm import base as llm
        return getattr(llm, name)
    raise AttributeError(name)
