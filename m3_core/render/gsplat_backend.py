"""gsplat CUDA backend: one `gsplat.rasterization` pass renders RGB, queries and expected depth.

gsplat is imported lazily, only when a CUDA tensor is rendered: on a machine without a GPU its first
import tries to JIT-build the CUDA code and fails. Set M3_GSPLAT_CSRC to a prebuilt
`gsplat_cuda.so` (same torch, Python and GPU arch) to skip the ~1 min JIT build on a fresh machine.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from functools import lru_cache
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from m3_core.render.projection import EPS2D

log = logging.getLogger(__name__)

# gsplat compiles these channel counts and zero-pads any other count up to the next power of two.
NATIVE_CHANNELS = (1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129, 256, 257, 512, 513)
# Measured on an H200 (1M Gaussians, 640x480; BENCHMARKS.md, "channel_chunk sweep"): an extra
# rasterization pass costs about as much as 7 more channels in one pass for forward+backward, about
# 12 for forward only.
PASS_COST_FWD_BWD = 7
PASS_COST_FWD = 12


def _padded(n: int) -> int:
    return next(c for c in NATIVE_CHANNELS if c >= n)


def channel_chunk_for(n_channels: int, backward: bool = True) -> int:
    """The channel_chunk with the least estimated cost: one padded pass, or natively sized chunks
    (e.g. 36 channels -> 33 + 3 instead of one pass padded to 64). Ties go to fewer passes."""
    pass_cost = PASS_COST_FWD_BWD if backward else PASS_COST_FWD

    def cost(chunk: int) -> tuple[int, int]:
        full, rest = divmod(n_channels, chunk)
        passes = full + (rest > 0)
        return passes * pass_cost + full * _padded(chunk) + (_padded(rest) if rest else 0), passes

    options = [n_channels] + [c for c in NATIVE_CHANNELS if 16 <= c < n_channels]
    return min(options, key=lambda c: (*cost(c), -c))


def import_gsplat() -> ModuleType:
    """Import gsplat, registering a prebuilt extension from $M3_GSPLAT_CSRC first if given."""
    if "gsplat" in sys.modules:
        return sys.modules["gsplat"]
    prebuilt = os.environ.get("M3_GSPLAT_CSRC")
    if prebuilt and "gsplat.csrc" not in sys.modules:
        if not os.path.isfile(prebuilt):
            raise ValueError(f"M3_GSPLAT_CSRC={prebuilt!r} is not a file; unset it to JIT-build gsplat")
        spec = importlib.util.spec_from_file_location("gsplat_cuda", prebuilt)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["gsplat.csrc"] = module
        log.info("using prebuilt gsplat extension %s", prebuilt)
    try:
        import gsplat  # local: optional CUDA dependency (JIT build), only on the gsplat path
    except ImportError as err:
        raise ImportError(
            "the gsplat backend needs the gsplat package (pip install gsplat==1.5.3) and a CUDA toolkit "
            "to build it; on CPU use backend='torch'"
        ) from err
    return gsplat


@lru_cache(maxsize=64)
def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float, device: torch.device, dtype) -> Tensor:
    """[1, 3, 3] K on the device, built once per camera: torch.tensor(..., device="cuda") is a
    host-to-device copy that waits for the GPU, every render otherwise. Read-only (shared)."""
    with torch.inference_mode(False):
        K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype)
        return K.to(device)[None]


def rasterize_gsplat(
    means: Tensor,  # [N,3]
    quats: Tensor,  # [N,4] wxyz
    scales: Tensor,  # [N,3] activated
    opacities: Tensor,  # [N] activated
    features: Tensor,  # [N,C]
    camera_from_world: Tensor,  # [4,4]
    fx: float,
    fy: float,
    cx: float,  # gsplat convention (image edge at 0)
    cy: float,
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 100.0,
    channel_chunk: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
    """Full image: (features [H,W,C], expected depth [H,W], alpha [H,W], gsplat's meta dict).
    channel_chunk: channels per rasterization pass (None: `channel_chunk_for`)."""
    gsplat = import_gsplat()
    K = intrinsics_matrix(fx, fy, cx, cy, means.device, means.dtype)
    n_channels = features.shape[1] + 1  # + expected depth
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means, quats, scales, opacities, features, camera_from_world)
    )
    colors, alphas, meta = gsplat.rasterization(
        means,
        quats,
        scales,
        opacities,
        features,
        viewmats=camera_from_world[None],
        Ks=K,
        width=width,
        height=height,
        near_plane=near,
        far_plane=far,
        eps2d=EPS2D,
        packed=False,
        render_mode="RGB+ED",
        rasterize_mode="classic",
        channel_chunk=channel_chunk or channel_chunk_for(n_channels, backward=needs_grad),
    )
    return colors[0, ..., :-1], colors[0, ..., -1], alphas[0, ..., 0], meta
