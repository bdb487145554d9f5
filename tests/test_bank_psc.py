"""Algorithm 1 (PSC selection) against a plain float64 row loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m3_core.model.memory_bank import (
    default_theta,
    features_from_grids,
    psc_reference,
    select_psc,
)


def _clustered(seed: int, n: int = 300, d: int = 16, centres: int = 12, noise: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d))
    x = c[rng.integers(0, centres, n)] + noise * rng.normal(size=(n, d))
    return x.astype(np.float32) * rng.uniform(0.5, 3.0, size=(n, 1)).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("theta", [0.5, 0.8, 0.95])
@pytest.mark.parametrize(("chunk", "block"), [(5000, 256), (7, 3), (1, 1), (64, 1)])
def test_matches_reference(seed: int, theta: float, chunk: int, block: int) -> None:
    x = _clustered(seed)
    expected = psc_reference(x, theta)
    psc, idx, stats = select_psc(torch.from_numpy(x), theta, chunk=chunk, block=block)
    np.testing.assert_array_equal(idx.numpy(), expected)
    # PSC are the raw (unnormalised) rows
    torch.testing.assert_close(psc, torch.from_numpy(x[expected]))
    assert stats.raw_features == len(x) and stats.psc_size == len(expected)
    assert 1 < stats.psc_size < len(x)  # the test data really groups something
    assert stats.reduction_ratio == pytest.approx(len(x) / len(expected))


def test_theta_one_merges_exact_duplicates_only() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(size=(20, 8)).astype(np.float32)
    # duplicates, and scaled copies (same direction), interleaved
    x = np.concatenate([base, base[::2], 2.0 * base[1::2]])[rng.permutation(40)]
    _, idx, stats = select_psc(torch.from_numpy(x), 1.0)
    np.testing.assert_array_equal(idx.numpy(), psc_reference(x, 1.0))
    assert stats.psc_size == 20
    # one kept per direction: the first occurrence
    dirs = x / np.linalg.norm(x, axis=1, keepdims=True)
    first = sorted({tuple(np.round(d, 5)): i for i, d in reversed(list(enumerate(dirs)))}.values())
    np.testing.assert_array_equal(idx.numpy(), first)


def test_ties_at_threshold_count_as_members() -> None:
    # cos(a, b) = 0.8 exactly in exact arithmetic: with theta = 0.8, b is in J_a, so b is dropped.
    x = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], np.float32)
    _, idx, _ = select_psc(torch.from_numpy(x), 0.8)
    np.testing.assert_array_equal(idx.numpy(), [0, 2])
    np.testing.assert_array_equal(psc_reference(x, 0.8), [0, 2])
    # Row 1 is not similar to row 0 (cos .6) but J_1 holds row 2, which row 0 used (cos .96):
    # Algorithm 1 drops row 1 although nothing selected stands for it.
    x = np.array([[1.0, 0.0], [0.6, 0.8], [0.96, 0.28]], np.float32)  # cos01=.6 cos02=.96 cos12=.8
    _, idx, _ = select_psc(torch.from_numpy(x), 0.8)
    np.testing.assert_array_equal(idx.numpy(), psc_reference(x, 0.8))
    np.testing.assert_array_equal(idx.numpy(), [0])


def test_memory_budget_does_not_change_result() -> None:
    x = torch.from_numpy(_clustered(5, n=200))
    _, a, _ = select_psc(x, 0.8)
    _, b, _ = select_psc(x, 0.8, memory_budget_bytes=5 * 200 * 3)  # 3 rows per chunk
    torch.testing.assert_close(a, b)


def test_grids_and_bad_input() -> None:
    g = torch.zeros(2, 3, 4, 5)
    g[0, 1, 2] = 1.0
    g[1, 0, 0, 3] = -2.0
    assert features_from_grids(g).shape == (2, 5)
    with pytest.raises(ValueError, match="zero rows"):
        select_psc(torch.zeros(3, 4), 0.8)
    with pytest.raises(ValueError, match="theta"):
        select_psc(torch.ones(3, 4), 1.5)
    with pytest.raises(ValueError, match="non-empty"):
        select_psc(torch.zeros(0, 4), 0.8)
    assert default_theta("clip") == 0.80
    with pytest.raises(ValueError, match="known"):
        default_theta("nope")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU on this machine)")
def test_cuda_matches_cpu() -> None:
    x = torch.from_numpy(_clustered(7, n=2000, d=64))
    _, a, _ = select_psc(x, 0.8)
    _, b, _ = select_psc(x.cuda(), 0.8)
    torch.testing.assert_close(a, b.cpu())


@pytest.mark.parametrize("theta", [0.5, 0.8, 1.0])
def test_repeated_rows_give_the_reference_selection(theta: float) -> None:
    """A language-mask model's features: a few vectors repeated over every grid cell (visited once
    each, module docstring), mixed with distinct rows so that J sets reach across the groups."""
    rng = np.random.default_rng(7)
    distinct = _clustered(7, n=40)
    x = np.concatenate([distinct[rng.integers(0, 40, 500)], _clustered(8, n=60)])[rng.permutation(560)]
    _, idx, stats = select_psc(torch.from_numpy(x), theta, chunk=16, block=4)
    np.testing.assert_array_equal(idx.numpy(), psc_reference(x, theta))
    assert stats.raw_features == 560 and 1 < stats.psc_size <= 100
