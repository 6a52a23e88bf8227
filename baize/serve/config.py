"""ServeConfig: the options of `baize serve` and `baize ui`. Its own module, below everything else
in serve/, because loading, the app, the UI and the CLI all read it and cli.py imports the others."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import opt


@dataclass
class ServeConfig:
    host: str = opt("127.0.0.1", "address to bind; 0.0.0.0 exposes it to the network")
    port: int = opt(8000, "TCP port")
    api_key: str | None = opt(None, "require 'Authorization: Bearer KEY' (or set BAIZE_API_KEY)", secret=True)
    ui: bool = opt(False, "also serve the web UI at /ui")
    name: str = opt("Baize", "the assistant's name in the guardrail system prompt")
    system: str | None = opt(None, "system prompt used when a request has none ('' for none); default: the run's "
                             "recorded prompt, else the guardrail")
    max_tokens: int = opt(512, "new tokens when a request does not say")
    temperature: float = opt(1.0, "temperature when a request does not say")
    top_p: float = opt(0.95, "top-p when a request does not say (the paper's 0.95)")
    max_batch: int = opt(16, "most rows decoding at once (also the largest n)")
    batch_wait_ms: float = opt(50.0, "how long the engine gathers requests into a batch")
    format: str | None = opt(None, "chat format override for models without a run record: baize | template",
                             choices=["baize", "template"])
    device: str | None = opt(None, "cpu | cuda (default: cuda when available)")
    dtype: str | None = opt("auto", "auto: bfloat16 on a CPU with native bf16 (AVX512-BF16, AMX), else the "
                            "checkpoint's own (on CUDA: bf16 or fp16) | float32 | bfloat16 | float16",
                            choices=["auto", "float32", "bfloat16", "float16"])
    pack_weights: bool = opt(True, "run the linears on prepacked oneDNN weights (CPU: faster decode steps, "
                             "a second copy of the linear weights in memory)")
