"""The linear head (F-3DGS style): what the M3 memory's attention head is measured against.

Feature 3DGS / Feature Splatting distil a foundation model into a latent vector per Gaussian,
rendered like colour and decoded per pixel by a learned 1x1 convolution (a linear map). Here the
latent takes the place of the principal queries in the same GaussianModel and the same trainer
(`TrainConfig.head = "linear"`, `m3 train --head linear`), and its size is chosen so the parameter
count matches the M3 memory's: N*L + (L*d + d) ~ N*Q + T*d + Q*d (queries + PSC + W_m).
"""

from __future__ import annotations

import torch
from torch import nn


def latent_dim_for_budget(n_gaussians: int, psc_size: int, feature_dim: int, query_dim: int) -> int:
    """Linear-head latent dims L with N*L + L*d + d ~ the M3 budget N*Q + T*d + Q*d (at least Q)."""
    budget = n_gaussians * query_dim + psc_size * feature_dim + query_dim * feature_dim
    return max(query_dim, int(round((budget - feature_dim) / (n_gaussians + feature_dim))))


class LinearDecoder(nn.Module):
    """Linear head (F-3DGS style): rendered latent [.., L] -> feature [.., d]."""

    def __init__(self, latent_dim: int, feature_dim: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.linear = nn.Linear(latent_dim, feature_dim)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(feature_dim, latent_dim, generator=gen) / latent_dim**0.5)
            self.linear.bias.zero_()

    @property
    def query_dim(self) -> int:
        return self.linear.in_features

    @property
    def feature_dim(self) -> int:
        return self.linear.out_features

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.linear(latents.float())
