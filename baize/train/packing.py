"""Dialogues into training samples for `baize train`: the labels, and padding-free packing that keeps
attention inside each dialogue.

The labels come from chat_format's assistant character spans through the tokenizer's offsets, so both
formats mask exactly (evaluate.py's NLL reads the same ones). transformers' collators do the packing
(DataCollatorWithFlattening) and the padded modes; what is ours is a per-dialogue attention for packed
rows on CPU (no varlen kernel there) and a check, on the real model, that packing does not leak
attention across dialogues before we rely on it.
"""
from __future__ import annotations

import contextlib

IGNORE = -100


def assistant_mask(offsets, spans) -> list[bool]:
    """Tokens whose characters overlap an assistant span; special tokens have empty offsets."""
    return [e > s and any(s < se and e > ss for ss, se in spans) for s, e in offsets]


def tokenize(records: list[dict], fmt, tokenizer, *, max_length: int, loss: str = "assistant",
             system: str | None = None) -> list[dict]:
    """input_ids + labels (-100 outside the loss) per dialogue, truncated to max_length.

    Each sample also reports `truncated` and `assistant_tokens` (left after truncation)."""
    texts, spans = [], []
    for rec in records:
        msgs = rec["messages"]
        if system and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": system}] + list(msgs)
        t, s = fmt.render_spans(msgs)
        texts.append(t)
        spans.append(s)
    enc = tokenizer(texts, return_offsets_mapping=True, add_special_tokens=fmt.add_special_tokens)
    out = []
    for ids, offs, sp in zip(enc["input_ids"], enc["offset_mapping"], spans):
        mask = assistant_mask(offs, sp)
        labels = [t if (m or loss == "all") else IGNORE for t, m in zip(ids, mask)]
        out.append({"input_ids": ids[:max_length], "labels": labels[:max_length], "truncated": len(ids) > max_length,
                    "full_length": len(ids), "assistant_tokens": sum(mask[:max_length])})
    return out


class Collator:
    """The batching modes, each one of transformers' own collators; drops our bookkeeping columns.

    With `trim`, a packed batch also carries `logits_to_keep` (the positions that predict a label) and
    their `shift_labels`: the LM head and cross-entropy over a 49K vocabulary then run on the
    assistant's tokens only, the same loss at a fraction of the cost (transformers' own hooks)."""

    def __init__(self, tokenizer, batching: str, max_length: int, trim: bool = False):
        from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening
        self.batching = batching
        self.trim = trim and batching == "packed"
        if batching == "packed":
            # one row, position_ids restarting per dialogue: the model's mask code turns that into a
            # block-diagonal causal mask, and the first token of each dialogue gets no label
            self.inner = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE)
        else:
            self.inner = DataCollatorForSeq2Seq(tokenizer, padding="max_length" if batching == "padded" else "longest",
                                                max_length=max_length, label_pad_token_id=IGNORE, return_tensors="pt")

    def __call__(self, features):
        batch = self.inner([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        return trim(batch) if self.trim else batch


def trim(batch: dict) -> dict:
    """A packed row's `logits_to_keep` (the positions that predict a label) and their `shift_labels`."""
    import torch
    shift = torch.cat([batch["labels"][0, 1:], torch.tensor([IGNORE])])
    keep = (shift != IGNORE).nonzero().squeeze(1)
    if 0 < len(keep) < len(shift):
        batch["logits_to_keep"] = keep
        batch["shift_labels"] = shift[keep][None]
    return batch


def split_packed(batch: dict) -> list[dict]:
    """The dialogues of a packed row as batches of their own (cut where position_ids restart at 0), each
    as the Collator would have made it alone; [] for any other batch."""
    keys = set(batch)
    if (not {"input_ids", "labels", "position_ids"} <= keys or keys - {"input_ids", "labels", "position_ids",
                                                                        "logits_to_keep", "shift_labels"}
            or batch["input_ids"].shape[0] != 1):
        return []
    cuts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    if cuts[0] != 0:
        return []
    parts = [{k: batch[k][:, a:b] for k in ("input_ids", "labels", "position_ids")} for a, b in zip(cuts, cuts[1:])]
    return [trim(part) for part in parts] if "logits_to_keep" in batch else parts


def accepts_logits_to_keep(model) -> bool:
    import inspect
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


PACKED_ATTN = "baize_packed_sdpa"


def packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, position_ids=None, **kw):
    """sdpa run dialogue by dialogue inside a packed row (cut where position_ids restart at 0).

    CPUs have no varlen attention kernel: sdpa with transformers' block-diagonal mask computes the
    whole (sum of lengths)^2 square, most of it masked; per-dialogue causal calls skip it and the
    mask building. Registered through transformers' AttentionInterface; anything else falls back."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    if (attention_mask is not None or position_ids is None or query.shape[0] != 1
            or key.shape[2] != query.shape[2] or kw.get("softcap") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kw)
    cuts = (position_ids[0] == 0).nonzero().flatten().tolist()
    cuts = ([0] if not cuts or cuts[0] != 0 else []) + cuts + [query.shape[2]]
    # torch's CPU flash kernel is slower in bf16 than in fp32 (forward + backward: 9.4 vs 6.9 ms for 265
    # tokens of the default model): under CPU autocast, attend in fp32 (no less exact; o_proj casts back)
    fp32 = query.device.type == "cpu" and torch.is_autocast_enabled("cpu")
    with torch.autocast("cpu", enabled=False) if fp32 else contextlib.nullcontext():
        if fp32:
            query, key, value = query.float(), key.float(), value.float()
        outs = [torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout, scale=scaling, is_causal=True,
            enable_gqa=query.shape[1] != key.shape[1]) for a, b in zip(cuts, cuts[1:]) if b > a]
    return torch.cat(outs, 2).transpose(1, 2).contiguous(), None


def packing_leaks(model, vocab_size: int, attn: str | None = None) -> float:
    """Largest logit difference between two short sequences run packed and alone (0 when isolated).

    Packing relies on the architecture's mask code reading position_ids; older or remote-code models
    ignore them and would attend across dialogues, so we check the real model once before training.
    With `attn`, the packed run uses that attention implementation and is compared with the model's own."""
    import torch
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(3, vocab_size, (1, n), generator=g) for n in (7, 5))
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        alone = torch.cat([model(input_ids=x.to(dev), use_cache=False).logits.float() for x in (a, b)], 1)
        if attn:
            model.set_attn_implementation(attn)
        packed = model(input_ids=torch.cat([a, b], 1).to(dev), use_cache=False,
                       position_ids=torch.cat([torch.arange(7), torch.arange(5)])[None].to(dev)).logits.float()
    model.train(was_training)
    return ((packed - alone).abs().max() / alone.abs().max().clamp(min=1)).item()


def choose_packing(model, vocab_size: int, max_length: int, log) -> str:
    """'packed' (with per-dialogue sdpa where the model allows it) or 'grouped' when packing would leak."""
    import torch
    tol = 1e-4 if next(model.parameters()).dtype == torch.float32 else 3e-2
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg, impl = base.config, base.config._attn_implementation
    window = getattr(cfg, "sliding_window", None)
    if impl == "sdpa" and not getattr(cfg, "attn_logit_softcapping", None) and (not window or window >= max_length):
        from transformers import AttentionInterface
        AttentionInterface.register(PACKED_ATTN, packed_sdpa)
        if packing_leaks(base, vocab_size, PACKED_ATTN) <= tol:
            return "packed"
        base.set_attn_implementation(impl)
    leak = packing_leaks(base, vocab_size)
    if leak <= tol:
        return "packed"
    log(f"this architecture attends across packed dialogues (difference {leak:.2g}): using --batching grouped")
    return "grouped"
