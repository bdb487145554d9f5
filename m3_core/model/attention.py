"""Gaussian memory attention: rendered principal queries -> foundation-model features.

Paper: R_hat = Softmax(Q W_m PSC^T) PSC, with Q [P, l] rendered queries, W_m [l, d] the memory
projection and PSC [T, d] the principal scene components of one model (memory_bank).

Computed as Q (PSC W_m^T)^T: the keys K = PSC W_m^T [T, l] are formed once per call, so the
logits cost P*T*l instead of P*T*d. Two similarities, both found in the M3 code:
- "dot": logits = Q W_m PSC^T / temperature (the paper's formula; the temperature is a scale of W_m);
- "cosine": logits = cos(Q W_m, PSC) / temperature (the M3 code, temperature 0.05). |Q W_m| comes
  from the Gram matrix W_m W_m^T [l, l], so the [P, d] product is never formed.
W_m is fixed (as the M3 code effectively has it: random init, not optimised) or learned.

Full images are chunked over pixels (an unchunked [P, T] logit matrix is 4*P*T bytes in fp32:
123 GB at 640x480 and T = 50k); with gradients each chunk is checkpointed, so the backward pass
recomputes one chunk's softmax instead of keeping all of them. On CUDA the weighted sum over the
PSC (the [P, T] x [T, d] product, nearly all the work) runs in bf16; logits stay fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

SIMILARITIES = ("cosine", "dot")
PRODUCT_BLOCK_ELEMENTS = 1 << 26
"""feature_products works on [rows, T] logit blocks of at most this many elements (256 MB fp32)."""


@dataclass(frozen=True)
class AttentionConfig:
    """How the memory attention reads the PSC bank."""

    similarity: str = "dot"
    """"dot" (the paper's Q W_m PSC^T) or "cosine" (the M3 code: cosine / temperature). Dot is the
    default: on the built-in scene it reached the PSC floor where cosine / 0.05 stayed 4x above it
    (BENCHMARKS.md)."""
    temperature: float | None = None
    """Softmax temperature (logits are divided by it); None: 0.05 for "cosine" (M3 code), 1.0 for
    "dot". For "dot" it only rescales W_m; 0.05 there saturated the softmax early and queries got
    stuck on the wrong component (tests/test_attention_memory.py)."""
    learn_w_m: bool = True
    """Optimise W_m (False: keep the random projection fixed, as the M3 code does; measured worse
    on the built-in scene, BENCHMARKS.md)."""
    chunk_size: int = 32768
    """Pixels per chunk for full images (bounds the [chunk, T] logit matrix)."""
    checkpoint: bool = True
    """Recompute each chunk in backward instead of storing its softmax (full images only)."""
    bf16_on_cuda: bool = True
    """Run the matmuls in bfloat16 on CUDA (float32 on CPU always)."""

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.temperature is None:
            object.__setattr__(self, "temperature", 0.05 if self.similarity == "cosine" else 1.0)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")


def attention_logits(
    queries: torch.Tensor,  # [P, l]
    psc: torch.Tensor,  # [T, d]
    w_m: torch.Tensor,  # [l, d]
    similarity: str = "cosine",
    temperature: float = 0.05,
) -> torch.Tensor:  # [P, T]
    """Logits of the memory attention, via the [T, l] keys PSC W_m^T."""
    if similarity == "dot":
        return queries @ (psc @ w_m.T).T / temperature
    psc_unit = psc / psc.norm(dim=1, keepdim=True).clamp_min(1e-12)
    keys = psc_unit @ w_m.T  # [T, l]
    gram = w_m @ w_m.T  # [l, l]
    proj_norm = ((queries @ gram) * queries).sum(dim=1).clamp_min(1e-12).sqrt()  # |q W_m|
    return (queries @ keys.T) / (proj_norm[:, None] * temperature)


def memory_attention(
    queries: torch.Tensor,  # [P, l]
    psc: torch.Tensor,  # [T, d]
    w_m: torch.Tensor,  # [l, d]
    similarity: str = "cosine",
    temperature: float = 0.05,
) -> torch.Tensor:  # [P, d]
    """Softmax(logits) PSC for one chunk of queries (no chunking, no dtype changes)."""
    logits = attention_logits(queries, psc, w_m, similarity, temperature)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # softmax of bf16 logits at temperature 0.05 is too coarse
    return torch.softmax(logits, dim=1).to(psc.dtype) @ psc


def memory_attention_reference(
    queries: torch.Tensor, psc: torch.Tensor, w_m: torch.Tensor, similarity: str, temperature: float
) -> torch.Tensor:
    """The paper's formula written out with the [P, d] product (for tests)."""
    projected = queries @ w_m  # [P, d]
    if similarity == "dot":
        logits = projected @ psc.T / temperature
    else:
        logits = nn.functional.cosine_similarity(projected[:, None], psc[None], dim=2) / temperature
    return torch.softmax(logits, dim=1) @ psc


class MemoryAttention(nn.Module):
    """One model's memory: PSC bank (buffer) + W_m; maps rendered queries to features."""

    def __init__(
        self,
        psc: torch.Tensor,  # [T, d] raw principal scene components
        query_dim: int,
        config: AttentionConfig | None = None,
        w_m: torch.Tensor | None = None,  # [l, d]; random (seeded) when None
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.config = config or AttentionConfig()
        if psc.ndim != 2 or psc.shape[0] == 0:
            raise ValueError(f"psc must be a non-empty [T, d] tensor, got shape {tuple(psc.shape)}")
        self.register_buffer("psc", psc.detach().float().clone())
        if w_m is None:
            gen = torch.Generator().manual_seed(seed)
            w_m = torch.randn(query_dim, psc.shape[1], generator=gen) / query_dim**0.5
        if tuple(w_m.shape) != (query_dim, psc.shape[1]):
            raise ValueError(f"w_m must be [{query_dim}, {psc.shape[1]}], got {tuple(w_m.shape)}")
        self.w_m = nn.Parameter(
            w_m.detach().float().clone().to(psc.device), requires_grad=self.config.learn_w_m
        )

    @property
    def query_dim(self) -> int:
        return self.w_m.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.psc.shape[1]

    def _chunk(self, queries: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if not (cfg.bf16_on_cuda and queries.is_cuda):
            return memory_attention(queries, self.psc, self.w_m, cfg.similarity, cfg.temperature)
        # Logits in float32: they contract only l (~16) dims, so they are cheap, and dot-product
        # logits reach ~100 where bf16 keeps 2-3 digits (errors of whole units move the softmax;
        # measured min cosine to fp32 0.94 on an H100). The [P, T] x [T, d] product is the cost: bf16.
        logits = attention_logits(queries.float(), self.psc, self.w_m, cfg.similarity, cfg.temperature)
        weights = torch.softmax(logits, dim=1)
        return (weights.bfloat16() @ self.psc.bfloat16()).float()

    def psc_basis(self) -> torch.Tensor:
        """[T, r] coordinates of the PSC in an orthonormal basis of their row space (U S of the SVD,
        r = numerical rank <= min(T, d)); cached until the bank changes. One SVD: call it when a
        memory is loaded to keep it out of the first query."""
        key = (self.psc.data_ptr(), self.psc._version, self.psc.device)
        cached = getattr(self, "_basis_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            u, s, _ = torch.linalg.svd(self.psc.double(), full_matrices=False)
            # directions below float32 resolution of the largest one add nothing a float32 decode keeps
            tol = s[0] * max(self.psc.shape) * torch.finfo(torch.float32).eps
            rank = max(int((s > tol).sum()), 1)
            basis = (u[:, :rank] * s[:rank]).float()
        self._basis_cache = (key, basis)
        return basis

    @torch.no_grad()
    def feature_products(
        self,
        queries: torch.Tensor,  # [..., l] rendered principal queries of this model
        directions: torch.Tensor,  # [m, d] e.g. unit text and negative embeddings
    ) -> tuple[torch.Tensor, torch.Tensor]:  # [..., m], [...]
        """(f . directions, |f|) of the features f = forward(queries), without forming f [..., d].

        f = a PSC with a = softmax(logits) [T], so f . u = a . (PSC u) and, with PSC = U S V^T,
        |f| = |a U S| (V^T has orthonormal rows). One [P, T] x [T, r + m] product replaces the
        [P, T] x [T, d] decode (r <= min(T, d)) and no [P, d] map is materialised. Same numerics
        as forward otherwise (fp32 logits; bf16 product on CUDA when the config says so)."""
        if queries.shape[-1] != self.query_dim:
            raise ValueError(f"queries have {queries.shape[-1]} dims, this memory expects {self.query_dim}")
        if directions.ndim != 2 or directions.shape[1] != self.feature_dim:
            raise ValueError(f"directions must be [m, {self.feature_dim}], got {tuple(directions.shape)}")
        cfg = self.config
        basis = self.psc_basis()
        rank = basis.shape[1]
        # [T, r + m]: basis coordinates for the norm, then the PSC's products with each direction
        table = torch.cat([basis, self.psc @ directions.to(self.psc).T], dim=1)
        low = cfg.bf16_on_cuda and queries.is_cuda
        if low:
            table = table.bfloat16()
        lead = queries.shape[:-1]
        flat = queries.reshape(-1, self.query_dim).float()
        if flat.shape[0] == 0:
            return flat.new_zeros(*lead, directions.shape[0]), flat.new_zeros(lead)
        # rows per chunk: at least chunk_size, and a [rows, T] float32 logit block of up to 256 MB
        step = max(cfg.chunk_size, PRODUCT_BLOCK_ELEMENTS // self.psc.shape[0])
        parts = []
        for s in range(0, flat.shape[0], step):
            logits = attention_logits(flat[s : s + step], self.psc, self.w_m, cfg.similarity, cfg.temperature)
            weights = torch.softmax(logits, dim=1)
            parts.append((weights.to(table.dtype) @ table).float())
        out = torch.cat(parts) if len(parts) > 1 else parts[0]
        norms = out[:, :rank].norm(dim=1)
        return out[:, rank:].reshape(*lead, -1), norms.reshape(lead)

    def forward(self, queries: torch.Tensor) -> torch.Tensor:  # [..., l] -> [..., d]
        if queries.shape[-1] != self.query_dim:
            raise ValueError(f"queries have {queries.shape[-1]} dims, this memory expects {self.query_dim}")
        lead = queries.shape[:-1]
        flat = queries.reshape(-1, self.query_dim).float()
        step = self.config.chunk_size
        if flat.shape[0] <= step:
            out = self._chunk(flat)
        else:
            grad = torch.is_grad_enabled() and (flat.requires_grad or self.w_m.requires_grad)
            parts = []
            for s in range(0, flat.shape[0], step):
                q = flat[s : s + step]
                if grad and self.config.checkpoint:
                    parts.append(checkpoint(self._chunk, q, use_reentrant=False))
                else:
                    parts.append(self._chunk(q))
            out = torch.cat(parts)
        return out.reshape(*lead, self.feature_dim)
