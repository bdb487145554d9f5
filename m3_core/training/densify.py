"""Adaptive density control of 3DGS (the rules of gsplat's DefaultStrategy, on GaussianModel).

gsplat's DefaultStrategy edits a dict of gsplat-named parameters (log scales under "scales",
logits under "opacities") with one optimizer per name; our GaussianModel keeps one optimizer and
carries its Adam state through `prune/clone/split` itself. So the *rules* are reproduced here and
the *ops* are GaussianModel's, which also makes them run with the CPU rasterizer:

- statistic: the norm of d loss / d means2d, in gsplat's normalised screen units
  (grad * [W/2, H/2]), averaged over the views in which a Gaussian was visible (radii > 0);
- every `every` iterations in [start, stop): Gaussians with mean gradient > grad_threshold are
  cloned when small (max scale <= grow_scale3d * scene_scale) and split in two when large;
  Gaussians with opacity < prune_opacity (and, after the first reset, too large ones) are pruned;
- every `reset_every` iterations opacities are clamped to 2 * prune_opacity.

With point-sampled rendering (CPU training) only the sampled pixels send gradient, so the
statistic is smaller than on full images by roughly the sampled fraction; `grad_threshold` is
therefore a config field, and the CPU default scales it (train.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from m3_core.model.gaussians import GaussianModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DensifyConfig:
    """When and how Gaussians are cloned, split and pruned (gsplat DefaultStrategy defaults)."""

    enabled: bool = True
    """Run adaptive density control at all."""
    start: int = 500
    """First iteration at which Gaussians are densified."""
    stop: int = 15_000
    """Iteration after which no more densification happens (pruning too)."""
    every: int = 100
    """Densify every this many iterations."""
    reset_every: int = 3000
    """Reset opacities every this many iterations (0: never)."""
    grad_threshold: float = 2e-4
    """Mean normalised screen-space gradient above which a Gaussian is cloned or split."""
    grow_scale3d: float = 0.01
    """Clone when max scale <= this * scene_scale, else split."""
    prune_opacity: float = 0.005
    """Prune Gaussians whose opacity falls below this."""
    prune_scale3d: float = 0.1
    """After the first opacity reset, prune Gaussians larger than this * scene_scale."""
    max_gaussians: int = 2_000_000
    """Never grow beyond this many Gaussians."""


class Densifier:
    """Running statistics + the periodic densify/prune/reset step (call after backward)."""

    def __init__(self, config: DensifyConfig, scene_scale: float, seed: int = 0) -> None:
        self.config = config
        self.scene_scale = float(scene_scale)
        self.grad_sum: torch.Tensor | None = None
        self.count: torch.Tensor | None = None
        self.generator = torch.Generator().manual_seed(seed)

    def collects(self, it: int) -> bool:
        """Whether the statistic of step `it` (1-based) will be read by a densification step: not
        after the last one, so a finished densification costs nothing per step."""
        cfg = self.config
        last = (cfg.stop // max(cfg.every, 1)) * max(cfg.every, 1)
        return cfg.enabled and last >= cfg.start and it <= last

    def accumulate(self, means2d: torch.Tensor, radii: torch.Tensor, width: int, height: int) -> None:
        """Add one view's d loss / d means2d (means2d must have had retain_grad())."""
        if means2d.grad is None:
            return
        grad = means2d.grad.reshape(-1, 2).clone()
        grad[:, 0] *= width / 2.0
        grad[:, 1] *= height / 2.0
        norm = grad.norm(dim=-1)
        visible = (radii.reshape(-1, 2) > 0).all(dim=-1)
        if self.grad_sum is None or self.grad_sum.shape != norm.shape:
            self.grad_sum = torch.zeros_like(norm)
            self.count = torch.zeros_like(norm)
        self.grad_sum += torch.where(visible, norm, torch.zeros_like(norm))
        self.count += visible.to(norm.dtype)

    @torch.no_grad()
    def step(self, it: int, gaussians: GaussianModel, optimizer: torch.optim.Optimizer) -> dict[str, int]:
        """Densify/prune/reset at iteration `it` (1-based count of finished steps)."""
        cfg = self.config
        done = {"cloned": 0, "split": 0, "pruned": 0}
        if not cfg.enabled or it > cfg.stop:
            return done
        if it >= cfg.start and it % cfg.every == 0 and self.grad_sum is not None:
            self._grow(gaussians, optimizer, done)
            self._prune(it, gaussians, optimizer, done)
            self.grad_sum = self.count = None
            log.debug("densify @%d: %s -> %d Gaussians", it, done, gaussians.num_gaussians)
        if cfg.reset_every and it % cfg.reset_every == 0 and it < cfg.stop:
            self._reset_opacities(gaussians, optimizer)
        return done

    def _grow(self, gaussians: GaussianModel, optimizer: torch.optim.Optimizer, done: dict[str, int]) -> None:
        """Clone small and split large Gaussians whose mean view-space gradient passed the threshold."""
        cfg = self.config
        mean_grad = self.grad_sum / self.count.clamp_min(1)
        grow = mean_grad > cfg.grad_threshold
        room = cfg.max_gaussians - gaussians.num_gaussians
        if room <= 0:
            grow[:] = False
        elif int(grow.sum()) > room:
            grow &= mean_grad >= torch.topk(mean_grad, room).values.min()
        small = gaussians.scales.max(dim=-1).values <= cfg.grow_scale3d * self.scene_scale
        to_clone, to_split = grow & small, grow & ~small
        done["cloned"], done["split"] = int(to_clone.sum()), int(to_split.sum())
        if done["cloned"]:
            gaussians.clone(to_clone, optimizer)
            to_split = torch.cat(
                [to_split, torch.zeros(done["cloned"], dtype=torch.bool, device=to_split.device)]
            )
        if done["split"]:
            gaussians.split(to_split, 2, optimizer, generator=self.generator)

    def _prune(
        self, it: int, gaussians: GaussianModel, optimizer: torch.optim.Optimizer, done: dict[str, int]
    ) -> None:
        """Drop transparent Gaussians (and, after the first opacity reset, oversized ones)."""
        cfg = self.config
        prune = gaussians.opacities < cfg.prune_opacity
        if cfg.reset_every and it > cfg.reset_every:
            prune |= gaussians.scales.max(dim=-1).values > cfg.prune_scale3d * self.scene_scale
        if bool(prune.all()):
            prune[:] = False  # never prune a memory down to nothing
        done["pruned"] = int(prune.sum())
        if done["pruned"]:
            gaussians.prune(prune, optimizer)

    def _reset_opacities(self, gaussians: GaussianModel, optimizer: torch.optim.Optimizer) -> None:
        """Clamp every opacity to 2 x prune_opacity and forget Adam's moments of the opacities."""
        limit = torch.logit(torch.tensor(2 * self.config.prune_opacity)).item()
        gaussians.opacity_logits.data.clamp_(max=limit)
        state = optimizer.state.get(gaussians.opacity_logits, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key].zero_()
