"""Principal scene components (PSC): Algorithm 1 of the M3 paper.

Input: all raw feature vectors R [N, d] of one foundation model over the training views. The
vectors are L2-normalised; rows are visited in order; row j (not yet used) is selected when none
of J = {i : cos(R_j, R_i) >= theta} is used yet, and then all of J are marked used. The PSC are the
selected *raw* (unnormalised) rows. The paper computes the similarities chunk by chunk
(S = C R^T for a chunk C of rows); the result does not depend on the chunk size, only memory does,
so the chunk here is also capped by a memory budget. Rows already used when their chunk comes up
need no similarities at all; with a smaller chunk (default 1024 rather than the paper's 5000) more
rows are used by then, which makes redundant features (language masks) nearly free.

Exact duplicates (a language-mask model's features are a few caption vectors repeated over every
grid cell: 7 distinct rows of 105,600 in the built-in scene) are visited once: a duplicate of a
row has the same J, so it is used as soon as its first occurrence is decided, and the selection on
the first occurrences alone is the same (3.1 s -> 0.7 s there).

Exactness: the greedy is sequential, but within one chunk it is evaluated in blocks. A candidate
row whose J already meets a used row is rejected at once (used only grows); the remaining
candidates of a block are resolved with their pairwise overlap |J_a ∩ J_b| > 0, which is exactly
what the sequential loop would see. `psc_reference` is the plain loop, for tests.

Similarities are compared as S >= theta - tol (tol = 1e-6) and row j always belongs to its own J,
so that theta = 1 merges exact duplicates despite rounding of the normalisation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

# The thresholds the M3 code uses (CLIP, SigLIP, DINOv2); the language-mask model has only a few
# distinct caption vectors per scene, so a high theta merges duplicates but keeps every caption.
DEFAULT_THETAS: dict[str, float] = {"clip": 0.80, "siglip": 0.85, "dinov2": 0.75, "language": 0.95}
SIMILARITY_TOL = 1e-6


@dataclass(frozen=True)
class PSCStats:
    """What Algorithm 1 did with one model's features."""

    raw_features: int
    """Number of feature vectors in (non-zero rows of the grids)."""
    psc_size: int
    """Number of principal scene components selected."""
    theta: float
    """Similarity threshold used."""

    @property
    def reduction_ratio(self) -> float:
        """raw_features / psc_size (how many raw vectors one component stands for on average)."""
        return self.raw_features / max(self.psc_size, 1)

    def to_dict(self) -> dict[str, float]:
        return {
            "raw_features": self.raw_features,
            "psc_size": self.psc_size,
            "theta": self.theta,
            "reduction_ratio": self.reduction_ratio,
        }


def default_theta(model: str) -> float:
    """The default threshold of a model name ("clip", "siglip", "dinov2", "language")."""
    if model not in DEFAULT_THETAS:
        raise ValueError(f"no default theta for model {model!r}; known: {sorted(DEFAULT_THETAS)}")
    return DEFAULT_THETAS[model]


def features_from_grids(grids: torch.Tensor) -> torch.Tensor:
    """Flatten [F, h, w, d] feature grids to [N, d], dropping all-zero rows (= no feature there)."""
    if grids.ndim != 4:
        raise ValueError(f"grids must be [F, h, w, d], got shape {tuple(grids.shape)}")
    flat = grids.reshape(-1, grids.shape[-1])
    return flat[flat.abs().amax(dim=1) > 0]


def _chunk_rows(n: int, chunk: int, memory_budget_bytes: int) -> int:
    # One chunk holds S [c, N] float32 + M [c, N] bool: 5 bytes per entry.
    return int(max(1, min(chunk, memory_budget_bytes // max(5 * n, 1))))


@torch.no_grad()
def select_psc(
    features: torch.Tensor,  # [N, d] raw features
    theta: float,
    chunk: int = 1024,
    block: int = 256,
    memory_budget_bytes: int = 1 << 30,
) -> tuple[torch.Tensor, torch.Tensor, PSCStats]:
    """Algorithm 1 on the tensor's device. Returns (psc [T, d] raw rows, indices [T], stats)."""
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty [N, d] tensor, got shape {tuple(features.shape)}")
    if not 0.0 < theta <= 1.0:
        raise ValueError(f"theta must be in (0, 1], got {theta}")
    rows = features.float()
    norms = rows.norm(dim=1)
    if bool((norms == 0).any()):
        raise ValueError("features contain all-zero rows; drop them first (features_from_grids does)")
    normed = rows / norms[:, None]
    distinct = _first_of_each_row(rows)
    if distinct is None:
        indices = _greedy(normed, theta, chunk, block, memory_budget_bytes)
    else:  # the same selection (module docstring), on one row per distinct vector
        indices = distinct[_greedy(normed[distinct], theta, chunk, block, memory_budget_bytes)]
    n = features.shape[0]
    stats = PSCStats(raw_features=n, psc_size=int(indices.numel()), theta=float(theta))
    log.debug("PSC: %d raw -> %d components (theta %.2f)", n, stats.psc_size, theta)
    return features[indices], indices, stats


def _first_of_each_row(x: torch.Tensor) -> torch.Tensor | None:
    """Indices (ascending) of the first occurrence of each distinct row of x [N, d]; None when the
    rows are all distinct. Rows are told apart by a random projection, then checked for equality."""
    n = x.shape[0]
    direction = torch.randn(x.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    keys = x.double() @ direction.to(x.device)
    unique, inverse = torch.unique(keys, return_inverse=True)
    if unique.numel() == n:
        return None
    rows = torch.arange(n, device=x.device)
    first = torch.full((unique.numel(),), n, device=x.device).scatter_reduce(0, inverse, rows, "amin")
    if not torch.equal(x, x[first[inverse]]):  # two distinct rows share a key: no shortcut
        return None
    return torch.sort(first).values


def _greedy(normed: torch.Tensor, theta: float, chunk: int, block: int, memory_budget_bytes: int) -> torch.Tensor:
    """Algorithm 1 on unit rows [N, d]: the selected row indices, in order."""
    device = normed.device
    n = normed.shape[0]
    used = torch.zeros(n, dtype=torch.bool, device=device)
    selected: list[torch.Tensor] = []
    c = _chunk_rows(n, chunk, memory_budget_bytes)
    for start in range(0, n, c):
        rows = torch.arange(start, min(start + c, n), device=device)
        rows = rows[~used[rows]]  # used rows are skipped by Algorithm 1: no similarities needed
        if rows.numel() == 0:
            continue
        member = (normed[rows] @ normed.T) >= (theta - SIMILARITY_TOL)  # [c, N]: i in J_j
        member[torch.arange(len(rows), device=device), rows] = True
        cand = torch.nonzero(~(member & used).any(dim=1)).flatten()  # local row ids, in order
        while cand.numel():
            blk = cand[:block]
            m_blk = member[blk]
            cols = m_blk.any(dim=0)
            sub = m_blk[:, cols].float()
            overlap = ((sub @ sub.T) > 0).cpu().numpy()  # [b, b]: J_a meets J_b
            blocked = np.zeros(len(blk), dtype=bool)
            accept = []
            for a in range(len(blk)):
                if not blocked[a]:
                    accept.append(a)
                    blocked |= overlap[a]
            acc = blk[torch.as_tensor(accept, device=device)]
            selected.append(rows[acc])
            used |= member[acc].any(dim=0)
            rest = cand[block:]
            cand = rest[~(member[rest] & used).any(dim=1)] if rest.numel() else rest
    if not selected:
        return torch.zeros(0, dtype=torch.long, device=device)
    return torch.cat(selected)


def psc_reference(features: np.ndarray, theta: float) -> np.ndarray:
    """Algorithm 1 as a plain row loop in float64 (for tests). Returns selected row indices."""
    r = np.asarray(features, np.float64)
    r = r / np.linalg.norm(r, axis=1, keepdims=True)
    sim = r @ r.T
    n = len(r)
    used = np.zeros(n, dtype=bool)
    selected = []
    for j in range(n):
        if used[j]:
            continue
        members = sim[j] >= theta - SIMILARITY_TOL
        members[j] = True
        if not used[members].any():
            selected.append(j)
            used[members] = True
    return np.asarray(selected, dtype=np.int64)
