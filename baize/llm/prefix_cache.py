"""Prompt reuse for a local model's reads: the KV cache of recent prompts, so a prompt that starts
with the same tokens as one read before computes only the rest (issue 30).

A judge's reads share long prefixes: the same judge system prompt on every call, the same question
in both orders of a pair and in every rotation of a ranking, the same first answer when one model's
answer is shown first in several pairs. A KV entry at position i depends only on tokens 0..i, so
the stored keys/values of the longest common token prefix are exactly what a full forward pass
would compute there, and only the remaining tokens need a forward pass.

Why a plain longest-common-prefix over a bounded set, not vLLM's block hashes or SGLang's radix
tree: the set holds tens of prompts (a few hundred MB of K/V at ~46 KB a token for the embedded
135M model in fp32), and comparing a prompt with all of them is one vectorised `!=` per entry,
tens of microseconds in all, against a forward pass of tens of milliseconds or more; `stats`
records the lookups' time so a bench can check that. Entries are whole prompts; one that a new
prompt extends is dropped (the new one serves every lookup it could), so a pair's shared part is
not held twice.

Used on the engine's thread only (HFLLM._option_logprobs runs there between decode steps), so it
takes no lock.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_MB = 512  # ~11k prompt tokens of the embedded model in fp32: a judge-check's 8 workers' pairs


@dataclass
class _Entry:
    ids: object          # torch.long tensor of the prompt's token ids (CPU)
    kv: list             # per layer (keys, values), [batch 1, heads, tokens, head_dim]
    nbytes: int


def _common(a, b) -> int:
    """Length of the common prefix of two 1-D token tensors."""
    n = min(len(a), len(b))
    diff = (a[:n] != b[:n]).nonzero()
    return int(diff[0]) if len(diff) else n


class PrefixCache:
    """Recent prompts' KV caches, at most `max_mb` of stored keys and values, least recently used
    evicted first. max_mb=0: off (every lookup misses, nothing is stored)."""

    def __init__(self, max_mb: float = DEFAULT_MB):
        if max_mb < 0:
            raise ValueError(f"prefix cache size {max_mb} MB: give 0 (off) or more")
        self.max_bytes = int(max_mb * 2 ** 20)
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.bytes = 0
        # tokens: prompt tokens read; reused: of those, taken from a stored prefix (not computed)
        self.stats = {"reads": 0, "hits": 0, "tokens": 0, "reused": 0, "stored": 0, "evicted": 0, "lookup_s": 0.0}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: list[int]):
        """(a new DynamicCache holding the stored K/V of the longest prefix ids shares with a stored
        prompt, that prefix's length), or (None, 0). At most len(ids) - 1 tokens are reused: the last
        position is always computed, as its logits are the ones read. The returned cache is a copy:
        a forward pass that extends it cannot change what is stored."""
        self.stats["reads"] += 1
        self.stats["tokens"] += len(ids)
        if not self._entries or len(ids) < 2:
            return None, 0
        import torch
        t0 = time.perf_counter()
        q = torch.tensor(ids, dtype=torch.long)
        best, n = None, 0
        for key, e in self._entries.items():
            k = _common(q, e.ids)
            if k > n:
                best, n = key, k
        n = min(n, len(ids) - 1)
        self.stats["lookup_s"] += time.perf_counter() - t0
        if best is None or n == 0:
            return None, 0
        from transformers import DynamicCache
        self._entries.move_to_end(best)
        # slicing is what DynamicCache.crop does; DynamicCache(...) concatenates each layer into new
        # tensors, so the copy owns its memory (one copy, no extra clone: tests check an in-place
        # write into the copy leaves the stored one alone)
        self.stats["hits"] += 1
        self.stats["reused"] += n
        return DynamicCache([(k[..., :n, :], v[..., :n, :]) for k, v in self._entries[best].kv]), n

    def store(self, ids: list[int], cache) -> None:
        """Keep `cache` (holding exactly the K/V of ids, batch 1) for later lookups. Layers that are not
        plain DynamicLayers (sliding windows, quantized, written in place) are not stored: their
        contents need not be the full prefix."""
        if self.max_bytes <= 0 or len(ids) < 2:
            return
        import torch
        from transformers.cache_utils import DynamicLayer
        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer or not layer.is_initialized for layer in layers):
            return
        kv = [(layer.keys, layer.values) for layer in layers]
        if any(k.shape[0] != 1 or k.shape[-2] != len(ids) for k, _ in kv):
            return
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if nbytes > self.max_bytes:
            return
        key = tuple(ids)
        q = torch.tensor(ids, dtype=torch.long)
        # a stored prompt that this one extends is redundant: any prompt shares at least as long a
        # prefix with the new one
        for old in [k for k, e in self._entries.items() if len(e.ids) <= len(q) and _common(q, e.ids) == len(e.ids)]:
            self._drop(old)
        # DynamicLayer.update concatenates into new tensors and crop slices: the caller's later use of
        # `cache` never writes into these
        self._entries[key] = _Entry(q, kv, nbytes)
        self.bytes += nbytes
        self.stats["stored"] += 1
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self.stats["evicted"] += 1

    def _drop(self, key) -> None:
        self.bytes -= self._entries.pop(key).nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def summary(self) -> dict:
        s = dict(self.stats)
        s["computed"] = s["tokens"] - s["reused"]
        s["saved"] = round(s["reused"] / s["tokens"], 4) if s["tokens"] else 0.0
        s["lookup_s"] = round(s["lookup_s"], 4)
        s["entries"], s["mb"] = len(self._entries), round(self.bytes / 2 ** 20, 1)
        return s
