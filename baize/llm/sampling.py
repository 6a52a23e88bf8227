"""Per-row sampling for the engine: each row of a batch is sampled with its own temperature, top-p and
random generator, so a seeded request gives the same text whatever else shares its batch."""
from __future__ import annotations


def _draw(sp, si, u, top_ps=None):
    """Inverse-CDF sampling per row: sp are probabilities (sorted descending when top_ps is given, and
    then cut to the nucleus), si their token ids (None: sp is the whole vocabulary in order), u one
    uniform number per row from the row's own generator."""
    import torch
    if top_ps is not None:
        keep = sp.cumsum(-1) - sp < top_ps
        keep[:, 0] = True  # top_p=0 means the single most likely token, not none
        sp = sp * keep
    cum = sp.cumsum(-1)
    idx = torch.searchsorted(cum, (u * cum[:, -1])[:, None], right=True).clamp_max(cum.shape[-1] - 1)
    return (idx if si is None else si.gather(1, idx)).squeeze(1)


class RowSampler:
    """Samples each row with its own temperature/top-p/generator. Batched, not one row at a time: with
    a 49k vocabulary a per-row softmax+sort loop was most of the step time on CPU. Each row draws its
    uniform number from its own generator, so a seed gives the same text in any batch.

    params: one GenParams per row; gens: one torch.Generator per row."""

    def __init__(self, params, gens, device):
        import torch
        temps = torch.tensor([p.temperature for p in params], dtype=torch.float32)
        top_ps = torch.tensor([p.top_p for p in params], dtype=torch.float32)
        self.greedy = (temps <= 0).to(device)
        self.all_greedy = bool(self.greedy.all())
        top_ps = torch.where(self.greedy.cpu(), 0.0, top_ps)  # a greedy row must not force the slow full sort
        self.temps = temps.clamp_min(1e-5).to(device)[:, None]
        self.top_ps = top_ps.to(device)[:, None]
        self.gens = gens

    def __call__(self, scores):
        """scores: (rows, vocab) logits of the next token; returns the chosen token per row."""
        import torch
        scores = scores.float()
        choice = scores.argmax(-1)
        if self.all_greedy:
            return choice
        temps, top_ps = self.temps, self.top_ps
        probs = torch.softmax(scores / temps, dim=-1)
        u = torch.stack([torch.rand((), generator=g) for g in self.gens]).to(probs.device)
        sampled = torch.empty_like(choice)
        whole = (top_ps >= 1.0).squeeze(1)  # no nucleus: sample from the whole distribution
        if bool(whole.any()):
            sampled[whole] = _draw(probs[whole], None, u[whole])
        rest = ~whole
        if bool(rest.any()):
            # the nucleus is a prefix of the sorted probabilities: when the top k hold top_p of the
            # mass, only they need sorting. A cascade, k = 256, then 2048 for the rows whose nucleus
            # is wider, then a full sort for what is left: a small model at temperature 1 is often
            # flat enough to miss 256 (measured on SmolLM2-135M: 11 of 64 rows; past 2048, 1 of 64),
            # and a full sort of a 49k vocabulary costs ~20 top-256s
            rows = rest.nonzero().squeeze(1)
            for k in (256, 2048, None):
                full_sort = k is None or k >= probs.shape[-1]
                sp, si = probs[rows].sort(dim=-1, descending=True) if full_sort else probs[rows].topk(k, dim=-1)
                sampled[rows] = _draw(sp, si, u[rows], top_ps[rows])
                if full_sort:
                    break
                rows = rows[(sp.sum(-1) < top_ps[rows].squeeze(1))]  # nucleus wider than k: next stage
                if not len(rows):
                    break
        return torch.where(self.greedy, choice, sampled)
