"""Relevance from the attention's PSC products equals decode-then-relevance."""

from __future__ import annotations

import pytest
import torch

from m3_core.model import attention
from m3_core.model.attention import AttentionConfig, MemoryAttention
from m3_core.model.gaussians import GaussianModel
from m3_core.model.linear import LinearDecoder
from m3_core.model.memory import M3Memory
from m3_core.query.relevance import (
    relevance,
    relevance_from_products,
    relevance_from_queries,
    text_directions,
)


def _psc(t: int, d: int, rank: int | None, gen: torch.Generator) -> torch.Tensor:
    psc = torch.randn(t, rank or d, generator=gen)
    if rank is not None:  # rank-deficient bank: the basis has fewer columns than min(T, d)
        psc = psc @ torch.randn(rank, d, generator=gen)
    return psc / psc.norm(dim=1, keepdim=True)


def _queries(shape: tuple[int, ...], l: int, gen: torch.Generator) -> torch.Tensor:
    q = torch.randn(*shape, l, generator=gen) * 2.0
    q.reshape(-1, l)[:3] = 0.0  # empty pixels render zero queries (uniform attention)
    return q


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize(("t", "d", "rank"), [(40, 64, None), (100, 32, None), (60, 48, 5)])
@pytest.mark.parametrize("k", [0, 4])
def test_products_relevance_equals_decode_then_relevance(similarity, t, d, rank, k, monkeypatch) -> None:
    monkeypatch.setattr(attention, "PRODUCT_BLOCK_ELEMENTS", 7 * t)  # several chunks of 7 rows...
    gen = torch.Generator().manual_seed(t + d + k)
    head = MemoryAttention(_psc(t, d, rank, gen), 8, AttentionConfig(similarity=similarity, chunk_size=5))
    queries = _queries((9, 11), 8, gen)
    text = torch.randn(d, generator=gen)
    negatives = torch.randn(k, d, generator=gen) if k else None

    want_rel, want_sim = relevance(head(queries), text, negatives, temperature=0.1)
    dots, norms = head.feature_products(queries, text_directions(text, negatives))
    got_rel, got_sim = relevance_from_products(dots, norms, temperature=0.1)

    assert got_rel.shape == (9, 11) and dots.shape == (9, 11, 1 + k)
    torch.testing.assert_close(norms, head(queries).norm(dim=-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_sim, want_sim, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_rel, want_rel, rtol=1e-5, atol=1e-5)


def test_basis_rank_and_cache() -> None:
    gen = torch.Generator().manual_seed(0)
    head = MemoryAttention(_psc(60, 48, 5, gen), 8)
    basis = head.psc_basis()
    assert basis.shape == (60, 5)
    assert head.psc_basis() is basis  # cached
    with torch.no_grad():
        head.psc.copy_(_psc(60, 48, None, gen))
    assert head.psc_basis().shape == (60, 48)  # the bank changed: recomputed


def _memory(gen: torch.Generator) -> M3Memory:
    n = 20
    gaussians = GaussianModel.from_points(
        torch.rand(n, 3, generator=gen), torch.rand(n, 3, generator=gen), {"a": 8, "b": 6}, init_scale=0.01
    )
    heads = {"a": MemoryAttention(_psc(30, 24, None, gen), 8), "b": LinearDecoder(6, 24, seed=1)}
    return M3Memory(gaussians, heads, {"models": {}})


@pytest.mark.parametrize("model", ["a", "b"])
def test_memory_relevance_from_queries(model: str) -> None:
    gen = torch.Generator().manual_seed(3)
    memory = _memory(gen)
    queries = _queries((7, 5), 14, gen)  # both models' columns
    text, negatives = torch.randn(24, generator=gen), torch.randn(3, 24, generator=gen)
    with torch.no_grad():
        want = relevance(memory.decode(model, queries), text, negatives, temperature=0.1)
    got = relevance_from_queries(memory, model, queries, text, negatives, temperature=0.1)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_bad_directions_and_empty_queries() -> None:
    gen = torch.Generator().manual_seed(4)
    head = MemoryAttention(_psc(10, 16, None, gen), 4)
    with pytest.raises(ValueError, match=r"directions must be \[m, 16\]"):
        head.feature_products(torch.zeros(3, 4), torch.zeros(2, 15))
    with pytest.raises(ValueError, match="negatives must be"):
        text_directions(torch.ones(16), torch.ones(2, 15))
    dots, norms = head.feature_products(torch.zeros(0, 4), text_directions(torch.ones(16)))
    assert dots.shape == (0, 1) and norms.shape == (0,)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU on this machine)")
def test_cuda_products_match_decode() -> None:
    """On CUDA both paths use the bf16 product; they agree to its resolution."""
    gen = torch.Generator().manual_seed(5)
    head = MemoryAttention(_psc(227, 512, None, gen), 16).cuda()
    queries = _queries((120, 160), 16, gen).cuda()
    text, negatives = torch.randn(512, generator=gen).cuda(), torch.randn(4, 512, generator=gen).cuda()
    with torch.no_grad():
        want_rel, want_sim = relevance(head(queries), text, negatives, temperature=0.1)
    got_rel, got_sim = relevance_from_products(
        *head.feature_products(queries, text_directions(text, negatives))
    )
    torch.testing.assert_close(got_sim, want_sim, rtol=0, atol=5e-3)
    torch.testing.assert_close(got_rel, want_rel, rtol=0, atol=1.5e-2)
