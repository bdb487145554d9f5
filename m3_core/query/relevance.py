"""LERF-style relevance of rendered (or per-Gaussian) features to a text query.

relevance = min over negatives n of softmax([cos(f, t), cos(f, n)] / temperature)[0]
          = min_n sigmoid((cos(f, t) - cos(f, n)) / temperature)

so a feature counts as relevant only when it is closer to the query than to *every* canonical
negative ("object", "things", ...). Works on any leading shape: [H,W,d] maps or [N,d] Gaussians.

A query may come in m forms (text_emb [m, d]: the text, and the text without its colour words,
see phrases.py): `relevance` is then the minimum over the forms, so a feature must match each of
them. The query engine uses that minimum only to pick regions (`keep_regions_of_every_form`): a
region relevant to the text keeps the text's own relevance when some of it matches every form
(an object's edge pixels blend into the background and match a weaker form less: the region's
outline, and so the object's size and grasps, stay those of the text), and is dropped otherwise.
"""

from __future__ import annotations

import numpy as np
import torch

_EPS = 1e-8


def _as_float_tensor(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x if x.is_floating_point() else x.float()


def form_count(text_emb: torch.Tensor) -> int:
    """How many forms of the query text_emb holds: 1 for [d], m for [m, d]."""
    return 1 if text_emb.ndim == 1 else int(text_emb.shape[0])


def text_form(text_emb: torch.Tensor) -> torch.Tensor:
    """The text's own form: text_emb itself for [d], its first row for [m, d]."""
    return text_emb if text_emb.ndim == 1 else text_emb[0]


def relevance(
    features: torch.Tensor,  # [..., d]
    text_emb: torch.Tensor,  # [d] or [m, d] (m forms of the query)
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
    text_emb = text_emb.reshape(1, -1) if text_emb.ndim == 1 else text_emb
    if text_emb.ndim != 2 or text_emb.shape[1] != d or text_emb.shape[0] < 1:
        raise ValueError(
            f"text embedding must be [{d}] or [m, {d}] like the features, got {tuple(text_emb.shape)}; "
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
    t = t / t.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    similarity = f @ t.T  # [..., m]
    if negatives_emb is None or negatives_emb.numel() == 0:
        rel = (similarity + 1.0) * 0.5
    else:
        negatives_emb = _as_float_tensor(negatives_emb, "negatives_emb")
        if negatives_emb.ndim != 2 or negatives_emb.shape[1] != d:
            raise ValueError(f"negatives must be [k, {d}], got {tuple(negatives_emb.shape)}")
        n = negatives_emb.to(device).float()
        n = n / n.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        neg_sim = f @ n.T  # [..., k]
        rel = torch.sigmoid((similarity.unsqueeze(-1) - neg_sim.unsqueeze(-2)) / temperature).amin(dim=-1)
    rel, similarity = rel.amin(dim=-1), similarity.amin(dim=-1)  # every form must match
    zero = torch.zeros((), device=device)
    return torch.where(valid, rel, zero), torch.where(valid, similarity, zero)


def text_directions(
    text_emb: torch.Tensor,  # [d] or [m, d]
    negatives_emb: torch.Tensor | None = None,  # [k, d]
) -> torch.Tensor:  # [m + k, d]
    """The query's forms and its negatives as unit rows (forms first), float32: what relevance
    compares features with. Compute once per text and memory; pass to relevance_from_products
    with forms = form_count(text_emb)."""
    t = _as_float_tensor(text_emb, "text_emb").float()
    t = t.reshape(1, -1) if t.ndim == 1 else t
    if t.ndim != 2 or t.shape[0] < 1:
        raise ValueError(f"text embedding must be [d] or [m, d], got shape {tuple(text_emb.shape)}")
    rows = [t]
    if negatives_emb is not None and negatives_emb.numel() > 0:
        n = _as_float_tensor(negatives_emb, "negatives_emb").float()
        if n.ndim != 2 or n.shape[1] != t.shape[1]:
            raise ValueError(f"negatives must be [k, {t.shape[1]}], got {tuple(negatives_emb.shape)}")
        rows.append(n.to(t.device))
    dirs = torch.cat(rows)
    return dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def relevance_from_products(
    dots: torch.Tensor,  # [..., m + k] features . text_directions (unnormalised features)
    norms: torch.Tensor,  # [...] feature norms
    temperature: float = 0.1,
    forms: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`relevance` from the products of the features with text_directions and their norms (what
    M3Memory.feature_products returns): same rules, same result up to float rounding. The first
    `forms` columns are the query's forms, the rest its negatives."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 1 <= forms <= dots.shape[-1]:
        raise ValueError(f"forms must be in [1, {dots.shape[-1]}], got {forms}")
    valid = norms > _EPS
    cos = dots / norms.clamp_min(_EPS)[..., None]
    similarity = cos[..., :forms]
    if cos.shape[-1] == forms:
        rel = (similarity + 1.0) * 0.5
    else:
        rel = torch.sigmoid((similarity.unsqueeze(-1) - cos[..., None, forms:]) / temperature).amin(dim=-1)
    rel, similarity = rel.amin(dim=-1), similarity.amin(dim=-1)  # every form must match
    zero = torch.zeros((), device=dots.device)
    return torch.where(valid, rel, zero), torch.where(valid, similarity, zero)


def text_and_every_form(
    dots: torch.Tensor,  # [..., m + k] products with text_directions
    norms: torch.Tensor,  # [...]
    temperature: float,
    forms: int,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((relevance, similarity) to the text itself (the first form), (relevance, similarity) to
    every form at once (their minimum)); the same pair twice when there is one form."""
    own = relevance_from_products(torch.cat([dots[..., :1], dots[..., forms:]], dim=-1), norms, temperature)
    if forms == 1:
        return own, own
    return own, relevance_from_products(dots, norms, temperature, forms)


def keep_regions_of_every_form(
    relevance: np.ndarray,  # [...] to the text
    similarity: np.ndarray,  # [...]
    every_relevance: np.ndarray,  # [...] to every form (text_and_every_form)
    every_similarity: np.ndarray,  # [...]
    labels: np.ndarray,  # [...] int region of each element, < 0 = none
    threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(relevance, similarity): the text's on the regions that hold an element reaching `threshold`
    for every form, the every-form values elsewhere (module docstring)."""
    seeds = np.unique(labels[(every_relevance >= threshold) & (labels >= 0)])
    kept = (labels >= 0) & np.isin(labels, seeds)
    return np.where(kept, relevance, every_relevance), np.where(kept, similarity, every_similarity)


def relevance_from_queries(
    memory,  # M3Memory (duck-typed: feature_products)
    model: str,
    queries: torch.Tensor,  # [..., Q_all] rendered queries, all models' columns
    text_emb: torch.Tensor,  # [d] or [m, d]
    negatives_emb: torch.Tensor | None = None,  # [k, d]
    temperature: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """relevance(memory.decode(model, queries), text_emb, negatives_emb, temperature) without
    decoding the [..., d] feature map (see M3Memory.feature_products)."""
    dirs = text_directions(text_emb, negatives_emb).to(queries.device)
    dots, norms = memory.feature_products(model, queries, dirs)
    return relevance_from_products(dots, norms, temperature, form_count(text_emb))
