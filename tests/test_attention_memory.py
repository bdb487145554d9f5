"""Gaussian memory attention: fast form vs the paper's formula, chunking, gradients."""

from __future__ import annotations

import pytest
import torch

from m3_core.model.attention import (
    AttentionConfig,
    MemoryAttention,
    memory_attention,
    memory_attention_reference,
)
from m3_core.model.linear import LinearDecoder


def _inputs(seed: int, p: int = 50, t: int = 40, l: int = 8, d: int = 32):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(p, l, generator=g, dtype=torch.float64),
        torch.randn(t, d, generator=g, dtype=torch.float64),
        torch.randn(l, d, generator=g, dtype=torch.float64) / l**0.5,
    )


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_form_equals_paper_formula(similarity: str, seed: int) -> None:
    q, psc, w = _inputs(seed)
    got = memory_attention(q, psc, w, similarity, 0.05)
    want = memory_attention_reference(q, psc, w, similarity, 0.05)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("learn_w_m", [False, True])
def test_chunked_equals_unchunked_with_grads(learn_w_m: bool) -> None:
    q, psc, w = (x.float() for x in _inputs(2, p=300))
    whole = MemoryAttention(psc, 8, AttentionConfig(chunk_size=1000, learn_w_m=learn_w_m), w_m=w)
    parts = MemoryAttention(psc, 8, AttentionConfig(chunk_size=37, learn_w_m=learn_w_m), w_m=w)
    qa = q.reshape(15, 20, 8).clone().requires_grad_(True)
    qb = q.reshape(15, 20, 8).clone().requires_grad_(True)
    out_a, out_b = whole(qa), parts(qb)
    assert out_a.shape == (15, 20, 32)
    torch.testing.assert_close(out_a, out_b)
    target = torch.randn(15, 20, 32, generator=torch.Generator().manual_seed(0))
    ((out_a - target) ** 2).sum().backward()
    ((out_b - target) ** 2).sum().backward()
    torch.testing.assert_close(qa.grad, qb.grad, rtol=1e-4, atol=1e-4)
    assert qa.grad.abs().sum() > 0
    if learn_w_m:
        torch.testing.assert_close(whole.w_m.grad, parts.w_m.grad, rtol=1e-4, atol=1e-4)
        assert whole.w_m.grad.abs().sum() > 0
    else:
        assert whole.w_m.grad is None
        assert not any(p.requires_grad for p in whole.parameters())


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_output_is_a_convex_combination_of_psc(similarity: str) -> None:
    q, psc, w = (x.float() for x in _inputs(3, t=10, l=16))
    att = MemoryAttention(psc, 16, AttentionConfig(similarity=similarity), w_m=w)
    out = att(q)
    # softmax weights: every output lies within the PSC's coordinate-wise bounds
    assert torch.all(out <= psc.max(0).values + 1e-5) and torch.all(out >= psc.min(0).values - 1e-5)
    # a sharp query recovers one component: queries are optimised to pick PSC rows
    target = psc[5].expand(4, -1)
    qq = (0.05 * torch.randn(4, 16, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    opt = torch.optim.Adam([qq], lr=0.1)
    for _ in range(400):
        opt.zero_grad()
        loss = 1 - torch.nn.functional.cosine_similarity(att(qq), target).mean()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_bad_input() -> None:
    psc = torch.randn(10, 6)
    with pytest.raises(ValueError, match="similarity"):
        AttentionConfig(similarity="l2")
    assert AttentionConfig().temperature == 1.0 and AttentionConfig(similarity="cosine").temperature == 0.05
    with pytest.raises(ValueError, match="psc"):
        MemoryAttention(torch.zeros(0, 6), 4)
    with pytest.raises(ValueError, match="w_m"):
        MemoryAttention(psc, 4, w_m=torch.zeros(3, 6))
    with pytest.raises(ValueError, match="expects 4"):
        MemoryAttention(psc, 4)(torch.zeros(2, 5))


def test_linear_decoder_shapes() -> None:
    dec = LinearDecoder(7, 12)
    assert dec(torch.zeros(3, 4, 7)).shape == (3, 4, 12)
    assert dec.query_dim == 7 and dec.feature_dim == 12


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU on this machine)")
def test_cuda_bf16_close_to_fp32() -> None:
    q, psc, w = (x.float() for x in _inputs(4, p=5000, t=2000, l=16, d=512))
    cpu = MemoryAttention(psc, 16, w_m=w)(q)
    gpu = MemoryAttention(psc.cuda(), 16, AttentionConfig(chunk_size=1024), w_m=w.cuda())(q.cuda())
    assert torch.nn.functional.cosine_similarity(cpu, gpu.cpu()).min() > 0.98
