"""EWA projection of 3D Gaussians to the image plane, the same math as gsplat 1.5 (pinhole, classic).

Everything here is plain differentiable PyTorch. Coordinates are gsplat's pixel coordinates: the
left/top edge of the image is 0, so pixel (row, col) has its centre at (col + 0.5, row + 0.5). The
callers turn m3's OpenCV intrinsics (pixel centres at integers) into these by adding 0.5 to cx, cy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from m3_core.geometry.quaternion import rotmat_from_quat_wxyz
from m3_core.render import cpu_kernels

ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat: contributions below this alpha are skipped
EPS2D = 0.3  # gsplat's screen-space low-pass filter (pixels^2 added to the 2D covariance diagonal)
MAX_EXTEND = 3.33  # gsplat: the opacity-aware box reaches at most this many standard deviations


def view_direction_limits(
    fx: float, fy: float, cx: float, cy: float, width: int, height: int
) -> tuple[float, float, float, float]:
    """(x negative, x positive, y negative, y positive) limits of x/z and y/z at which gsplat clamps
    the view direction for the projection's Jacobian: 1.3x the field of view on each side."""
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    return (cx / fx + 0.3 * tan_fovx, (width - cx) / fx + 0.3 * tan_fovx,
            cy / fy + 0.3 * tan_fovy, (height - cy) / fy + 0.3 * tan_fovy)  # fmt: skip


@dataclass
class Projected:
    """Per-Gaussian screen-space quantities for one camera; culled Gaussians have radii == 0."""

    means2d: Tensor  # [N,2] gsplat pixel coordinates (x right, y down)
    conics: Tensor  # [N,3] inverse 2D covariance (a, b, c) = [[a, b], [b, c]]
    depths: Tensor  # [N] camera z, metres
    radii: Tensor  # [N,2] int32 half-extent of the opacity-aware bounding box in x and y (0 = culled)


def covars_from_quats_scales(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariance R S S^T R^T: [N,4] wxyz quats, [N,3] scales (metres) -> [N,3,3]."""
    M = rotmat_from_quat_wxyz(quats) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: Tensor,  # [N,3] world
    quats: Tensor,  # [N,4] wxyz
    scales: Tensor,  # [N,3] metres (activated)
    opacities: Tensor,  # [N] in (0,1) (activated), used for the opacity-aware bounding box as gsplat
    camera_from_world: Tensor,  # [4,4] OpenCV camera axes
    fx: float,
    fy: float,
    cx: float,  # gsplat convention: principal point with the image's left edge at 0
    cy: float,
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 100.0,
    eps2d: float = EPS2D,
) -> Projected:
    """Project Gaussians like gsplat's fully_fused_projection (packed=False, classic mode).

    Differentiable in means, quats and scales. On the CPU (numba installed, camera constant) the
    compiled per-Gaussian loops of cpu_kernels.ProjectCPU with gsplat's hand-written backward;
    otherwise autograd through projection_terms, the reference those loops are tested against."""
    R = camera_from_world[:3, :3]
    t = camera_from_world[:3, 3]
    lims = view_direction_limits(fx, fy, cx, cy, width, height)
    compiled = cpu_kernels.runs_on(means) and not (camera_from_world.requires_grad and torch.is_grad_enabled())
    if compiled:
        means2d, conics, z, a, c, det = cpu_kernels.ProjectCPU.apply(
            means, quats, scales, R.detach(), t.detach(), (fx, fy, cx, cy), lims, eps2d
        )
    else:
        means2d, conics, z, a, c, det = projection_terms(means, quats, scales, R, t, fx, fy, cx, cy, lims, eps2d)
    with torch.no_grad():
        op = opacities.detach()
        # opacity-aware bounding box (gsplat 1.5, arXiv 2402.00525 B.2): alpha < 1/255 outside it
        extend = torch.clamp(
            torch.sqrt(2.0 * torch.log(op.clamp(min=ALPHA_THRESHOLD) / ALPHA_THRESHOLD)), max=MAX_EXTEND
        )
        radius_x = torch.ceil(extend * torch.sqrt(a.detach().clamp(min=0)))
        radius_y = torch.ceil(extend * torch.sqrt(c.detach().clamp(min=0)))
        m2 = means2d.detach()
        valid = (z.detach() >= near) & (z.detach() <= far) & (det.detach() > 0) & (op >= ALPHA_THRESHOLD)
        valid &= (radius_x > 0) | (radius_y > 0)
        valid &= (m2[:, 0] + radius_x > 0) & (m2[:, 0] - radius_x < width)
        valid &= (m2[:, 1] + radius_y > 0) & (m2[:, 1] - radius_y < height)
        radii = torch.stack([radius_x, radius_y], dim=-1).to(torch.int32) * valid[:, None]
    return Projected(means2d=means2d, conics=conics, depths=z, radii=radii)


def projection_terms(
    means: Tensor, quats: Tensor, scales: Tensor, R: Tensor, t: Tensor,
    fx: float, fy: float, cx: float, cy: float,
    lims: tuple[float, float, float, float], eps2d: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """The projection in plain differentiable PyTorch -> (means2d [N,2], conics [N,3], depth [N], and
    the 2D covariance's a, c and determinant [N] for the bounding box)."""
    means_c = means @ R.T + t
    # Camera-frame covariance as (R M)(R M)^T with M = R_q S; R M in one [3,3] x [3,3N] product
    # (batched 3x3 matmuls are slow on CPU).
    M = rotmat_from_quat_wxyz(quats) * scales[:, None, :]  # [N,3,3]
    n = M.shape[0]
    Mc = (R @ M.permute(1, 0, 2).reshape(3, 3 * n)).reshape(3, n, 3).permute(1, 0, 2)  # [N,3,3]
    x, y, z = means_c.unbind(-1)
    # Gaussians at z ~ 0 are culled below; a safe z keeps their (zero) gradients finite.
    z = torch.where(z.abs() > 1e-8, z, torch.full_like(z, 1e-8))

    # Jacobian of the pinhole projection at a clamped point (gsplat clamps the view direction to
    # 1.3x the field of view so off-screen Gaussians do not explode); the clamp also cuts gradients.
    lim_x_neg, lim_x_pos, lim_y_neg, lim_y_pos = lims
    rz = 1.0 / z
    tx = z * torch.clamp(x * rz, min=-lim_x_neg, max=lim_x_pos)
    ty = z * torch.clamp(y * rz, min=-lim_y_neg, max=lim_y_pos)
    # J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]]; cov2d = (J Mc)(J Mc)^T
    JM0 = (fx * rz)[:, None] * Mc[:, 0] - (fx * tx * rz * rz)[:, None] * Mc[:, 2]  # [N,3]
    JM1 = (fy * rz)[:, None] * Mc[:, 1] - (fy * ty * rz * rz)[:, None] * Mc[:, 2]
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)

    a = (JM0 * JM0).sum(-1) + eps2d
    b = (JM0 * JM1).sum(-1)
    c = (JM1 * JM1).sum(-1) + eps2d
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))  # culled below; keeps grads finite
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    return means2d, conics, z, a, c, det
