"""LERF-style relevance of rendered (or per-Gaussian) features to a text query.

relevance = min over negatives n of softmax([cos(f, t), cos(f, n)] / temperature)[0]
          = min_n sigmoid((cos(f, t) - cos(f, n)) / temperature)

so a feature counts as relevant only when it is closer to the query than to *every* canonical
negative ("object", "things", ...). Works on any leading shape: [H,W,d] maps or [N,d] Gaussians.
"""

from __future__ import annotations

import torch

_EPS = 1e-8


def _as_float_tensor(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x if x.is_floating_point() else x.float()


def relevance(
    features: torch.Tensor,  # [..., d]
    text_emb: torch.Tensor,  # [d]
    negatives_emb: torch.Tensor | None = None,  # [k, d]
    temperature: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance in [0, 1] and cosine similarity to the query, both [...] (features' leading shape).

    Feature vectors of (near) zero norm (empty background, masked-out GT) get relevance 0 and
    similarity 0. Without negatives (None or k = 0) relevance is the cosine mapped to [0, 1].
    Computed in float32 on the features' device.
    """
    features = _as_float_tensor(features, "features")
    text_emb = _as_float_tensor(text_emb, "text_emb")
    if features.ndim < 2:
        raise ValueError(f"features must be [..., d] with at least 2 dims, got shape {tuple(features.shape)}")
    d = features.shape[-1]
    text_emb = text_emb.reshape(-1) if text_emb.ndim == 2 and text_emb.shape[0] == 1 else text_emb
    if text_emb.shape != (d,):
        raise ValueError(
            f"text embedding must be [{d}] like the features, got {tuple(text_emb.shape)}; "
            "is it from the same model's text encoder?"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    device = features.device
    f = features.float()
    norms = f.norm(dim=-1, keepdim=True)
    valid = norms.squeeze(-1) > _EPS
    f = f / norms.clamp_min(_EPS)
    t = text_emb.to(device).float()
    t = t / t.norm().clamp_min(_EPS)
    similarity = f @ t
    if negatives_emb is None or negatives_emb.numel() == 0:
        rel = (similarity + 1.0) * 0.5
    else:
        negatives_emb = _as_float_tensor(negatives_emb, "negatives_emb")
        if negatives_emb.ndim != 2 or negatives_emb.shape[1] != d:
            raise ValueError(f"negatives must be [k, {d}], got {tuple(negatives_emb.shape)}")
        n = negatives_emb.to(device).float()
        n = n / n.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        neg_sim = f @ n.T  # [..., k]
        rel = torch.sigmoid((similarity.unsqueeze(-1) - neg_sim) / temperature).amin(dim=-1)
    zero = torch.zeros((), device=device)
    return torch.where(valid, rel, zero), torch.where(valid, similarity, zero)
