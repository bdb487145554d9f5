"""The loss of one training step after rendering, as one module (so it can be compiled as a whole).

Trainer.step renders a view, then hands the rendered tensors to `Objective`: the RGB loss (given,
or computed here from a full image), the masked depth L1, and per model the feature loss between
the head's decoded features at the sampled pixels and the ground-truth grid sampled there.

On CUDA the step is bound by launching kernels, not by the GPU: after the render this part is some
200 small kernels forward and backward (SSIM, the attention heads, the cosine and L2 feature loss,
the grid sampling). `Trainer` can wrap `Objective.full_image` in `torch.compile`, which fuses them
into a few generated kernels; the arithmetic is the same formulas, so the losses agree with the
eager ones to float32 rounding (summation order), see tests/test_train_objective.py.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading

import torch
from torch import Tensor, nn

from m3_core.training.losses import depth_l1, feature_loss, rgb_loss, sample_prepared_grid


class Objective(nn.Module):
    """Depth and feature losses of one step on top of its RGB loss; `full_image` adds the RGB loss."""

    def __init__(
        self,
        heads: nn.ModuleDict,
        query_slices: dict[str, slice],
        depth_weight: float,
        feature_weight: float,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.query_slices = {m: query_slices[m] for m in heads}
        self.depth_weight = depth_weight
        self.feature_weight = feature_weight

    def forward(
        self,
        loss_rgb: Tensor,  # 0-dim
        depth: Tensor,  # [P'] rendered depth at the loss pixels
        gt_depth: Tensor,  # [P'] sensor depth there (0 = invalid)
        queries: Tensor,  # [P, Q] rendered principal queries at the sampled points
        points: Tensor,  # [P, 2] (row, col) of the sampled points
        grids: tuple[Tensor, ...],  # per head (in order) the view's grid from prepare_grid
        image_hw: tuple[int, int],
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(total loss, detached per-term losses: "rgb", "depth", then one per model)."""
        loss_depth = depth_l1(depth, gt_depth)
        loss = loss_rgb + self.depth_weight * loss_depth
        # detached tensors, not floats: float() would synchronise CUDA every step
        logs = {"rgb": loss_rgb.detach(), "depth": loss_depth.detach()}
        for (model, head), grid in zip(self.heads.items(), grids, strict=True):
            gt, valid = sample_prepared_grid(grid, points, image_hw)
            pred = head(queries[:, self.query_slices[model]])
            lf = feature_loss(pred, gt, valid)
            loss = loss + self.feature_weight * lf
            logs[model] = lf.detach()
        return loss, logs

    def full_image(
        self,
        rgb: Tensor,  # [H, W, 3] rendered (background blended)
        gt_rgb: Tensor,  # [H, W, 3]
        depth: Tensor,  # [H, W]
        gt_depth: Tensor,  # [H, W]
        queries: Tensor,  # [H, W, Q]
        points: Tensor,  # [P, 2] long (row, col)
        grids: tuple[Tensor, ...],
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of a full rendered image: RGB (L1 + D-SSIM) and depth on every pixel, features
        at `points`."""
        H, W = rgb.shape[:2]
        flat = points[:, 0] * W + points[:, 1]
        at_points = queries.reshape(H * W, -1).index_select(0, flat)
        return self(
            rgb_loss(rgb, gt_rgb), depth.reshape(-1), gt_depth.reshape(-1), at_points, points, grids, (H, W)
        )


# What `torch.compile` imports on its first call (dynamo, inductor and what they pull in: sympy,
# the distributed and higher-order-op registrations): 3-4 s of a GPU run's ~4 s set-up.
COMPILER_MODULES: tuple[str, ...] = ("torch._dynamo", "torch._inductor.compile_fx")


def prefetch_compiler() -> threading.Thread:
    """Import torch's compiler in a daemon thread; join it before `torch.compile`.

    Why: the trainer's set-up before the compile (reading the views, the principal scene components,
    the initial Gaussians) is mostly image decoding, numpy and host-to-device copies that release
    the GIL, so the import runs beside it instead of after it. An import error is not raised here:
    the join is followed by `torch.compile`, which imports the same modules and raises it there.
    """

    def run() -> None:
        for name in COMPILER_MODULES:
            try:
                importlib.import_module(name)
            except Exception:  # re-raised by torch.compile's own import in the main thread
                return

    thread = threading.Thread(target=run, name="m3-compiler-import", daemon=True)
    thread.start()
    return thread


def compile_available(device: torch.device) -> tuple[bool, str]:
    """(whether torch.compile can build GPU kernels here, why not). CUDA needs Triton."""
    if device.type != "cuda":
        return False, f"compiling the step's loss is for CUDA (device is {device.type})"
    # torch.compile's CUDA code generator is Triton; asking whether it is installed is enough
    if importlib.util.find_spec("triton") is None:
        return False, "torch.compile needs Triton on CUDA and it is not installed"
    return True, ""
