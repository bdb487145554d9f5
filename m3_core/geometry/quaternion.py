"""Quaternion conventions, in one place.

- ROS messages and the robot YAML use (x, y, z, w) (geometry_msgs/Quaternion order); the numpy
  helpers in `se3` (matrix_from_quat_xyzw, quat_xyzw_from_matrix) convert those.
- Gaussians store (w, x, y, z) as gsplat does (`quats [N,4]`); `rotmat_from_quat_wxyz` is the
  batched torch conversion that the renderer and the Gaussian model share.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rotmat_from_quat_wxyz(quats: Tensor) -> Tensor:
    """[N,4] (w, x, y, z), any norm -> [N,3,3] rotation matrices (normalised as gsplat does)."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))  # fmt: skip
