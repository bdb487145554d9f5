"""Pinhole camera in OpenCV convention and depth back-projection.

Pixel (u, v) has its centre at integer coordinates: (0, 0) is the centre of the top-left pixel,
as in OpenCV and ROS CameraInfo. Camera axes: x right, y down, z forward (optical frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m3_core.geometry.se3 import transform_points


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics of an undistorted (or rectified) pinhole camera, in pixels."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera size must be positive, got {self.width}x{self.height}")
        if not (self.fx > 0 and self.fy > 0):
            raise ValueError(f"focal lengths must be positive, got fx={self.fx} fy={self.fy}")

    @classmethod
    def from_matrix(cls, K: np.ndarray, width: int, height: int) -> PinholeCamera:
        """From a 3x3 intrinsic matrix K."""
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"K must be 3x3, got {K.shape}")
        return cls(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), int(width), int(height))

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the usual name
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def scaled(self, width: int, height: int) -> PinholeCamera:
        """The same camera resampled to another image size (pixel-centre convention kept)."""
        sx, sy = width / self.width, height / self.height
        return PinholeCamera(
            self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5, width, height
        )

    def project(self, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project camera-frame points [N,3] to pixels; returns (uv [N,2], depth_m [N])."""
        p = np.asarray(points_cam, dtype=np.float64)
        z = p[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.fx * p[:, 0] / z + self.cx
            v = self.fy * p[:, 1] / z + self.cy
        return np.stack([u, v], axis=1), z

    def rays(self, uv: np.ndarray) -> np.ndarray:
        """Camera-frame directions [N,3] with z = 1 through pixels uv [N,2]."""
        uv = np.asarray(uv, dtype=np.float64)
        return np.stack(
            [(uv[:, 0] - self.cx) / self.fx, (uv[:, 1] - self.cy) / self.fy, np.ones(len(uv))], axis=1
        )


def points_from_depth(
    depth_m: np.ndarray,
    camera: PinholeCamera,
    world_from_camera: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    stride: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Back-project a z-depth image to 3D points.

    depth_m: [H,W] metric z-depth (metres); 0, NaN and inf are invalid and skipped.
    mask: optional [H,W] bool, only these pixels are used.
    world_from_camera: if given, points are returned in that world frame, else in the camera frame.
    Returns (points [N,3] float64, pixels [N,2] int (row, col)).
    """
    depth_m = np.asarray(depth_m)
    if depth_m.ndim != 2:
        raise ValueError(f"depth must be a 2D image [H,W], got shape {depth_m.shape}")
    if depth_m.shape != (camera.height, camera.width):
        raise ValueError(
            f"depth is {depth_m.shape[1]}x{depth_m.shape[0]} but the camera is "
            f"{camera.width}x{camera.height}; is the depth aligned to the color camera?"
        )
    valid = np.isfinite(depth_m) & (depth_m > 0)
    if mask is not None:
        if mask.shape != depth_m.shape:
            raise ValueError(f"mask shape {mask.shape} != depth shape {depth_m.shape}")
        valid &= mask.astype(bool)
    if stride > 1:
        sub = np.zeros_like(valid)
        sub[::stride, ::stride] = True
        valid &= sub
    rows, cols = np.nonzero(valid)
    z = depth_m[rows, cols].astype(np.float64)
    x = (cols - camera.cx) / camera.fx * z
    y = (rows - camera.cy) / camera.fy * z
    points = np.stack([x, y, z], axis=1)
    if world_from_camera is not None:
        points = transform_points(world_from_camera, points)
    return points, np.stack([rows, cols], axis=1)
