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
            # mass, only they need sorting (~10x cheaper); rows with flatter distributions are sorted
            # whole, on their own
            sp, si = probs[rest].topk(min(256, probs.shape[-1]), dim=-1)
            short = (sp.sum(-1, keepdim=True) < top_ps[rest]).squeeze(1)
            part = _draw(sp, si, u[rest], top_ps[rest])
            if bool(short.any()):
                rows = rest.nonzero().squeeze(1)[short]
                fp, fi = probs[rows].sort(dim=-1, descending=True)
                part[short] = _draw(fp, fi, u[rows], top_ps[rows])
            sampled[rest] = part
        return torch.where(self.greedy, choice, sampled)
