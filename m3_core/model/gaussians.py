"""3D Gaussians of an M3 memory: geometry, colour and one principal query per Gaussian and model.

Parameters (gsplat names; the activations are applied by the properties):
    means [N,3] world metres, quats [N,4] (w, x, y, z; any norm, normalised when rendered),
    log_scales [N,3] (scales = exp), opacity_logits [N] (opacities = sigmoid),
    colors [N,3] RGB in [0,1] used as-is (SH degree 0, no activation: clamp when displaying),
    queries [N,Q]: every model's principal query, concatenated; `query_slices[name]` gives the columns.

Densification: `prune`, `clone` and `split` edit the parameters in place (new nn.Parameter objects)
and, given the optimizer, carry its per-parameter state (Adam moments) along, as gsplat's strategy
ops do. Deciding *when* to densify (gradient statistics, schedules) belongs to the trainer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor, nn

from m3_core.geometry.camera import points_from_depth
from m3_core.geometry.quaternion import rotmat_from_quat_wxyz
from m3_core.scene import SceneError, map_frames

if TYPE_CHECKING:
    from m3_core.scene import Scene

log = logging.getLogger(__name__)

DEFAULT_QUERY_DIM = 16
PARAM_NAMES = ("means", "quats", "log_scales", "opacity_logits", "colors", "queries")


@dataclass(frozen=True)
class GaussianInitConfig:
    """How Gaussians are seeded from a scene directory (depth back-projection and/or COLMAP points)."""

    voxel_size: float = 0.005
    """Voxel edge in metres for downsampling the back-projected points (one Gaussian per voxel)."""
    max_points: int = 300_000
    """Upper bound on the number of initial Gaussians (random subset, seeded, beyond it)."""
    stride: int = 2
    """Pixel stride when back-projecting each depth image."""
    frame_stride: int = 1
    """Use every n-th frame of the scene."""
    max_depth_m: float = 5.0
    """Depth beyond this is ignored (stereo depth noise grows with z^2); 0 keeps all."""
    use_colmap_points: bool = False
    """Also seed from sparse/0/points3D when the scene has a COLMAP model with points."""
    init_opacity: float = 0.1
    """Initial opacity of every Gaussian (3DGS uses 0.1)."""
    init_scale: float | None = None
    """Initial isotropic scale in metres; None: RMS distance to the 3 nearest neighbours (3DGS)."""
    min_scale: float = 1e-4
    """Lower clamp on the nearest-neighbour scale, metres."""
    max_scale: float = 0.1
    """Upper clamp on the nearest-neighbour scale, metres (isolated points)."""
    query_init_std: float = 0.0
    """Standard deviation of the random initial principal queries (0: zeros)."""
    seed: int = 0
    """Seed for subsampling and query initialisation."""


def _query_slices(query_dims: Mapping[str, int]) -> dict[str, slice]:
    slices, start = {}, 0
    for name, dim in query_dims.items():
        if int(dim) <= 0:
            raise ValueError(f"query dims must be positive, got {name}={dim}")
        slices[name] = slice(start, start + int(dim))
        start += int(dim)
    return slices


def _as_query_dims(query_dims: Mapping[str, int] | Iterable[str] | None) -> dict[str, int]:
    if query_dims is None:
        return {}
    if isinstance(query_dims, Mapping):
        return {str(k): int(v) for k, v in query_dims.items()}
    if isinstance(query_dims, str):
        raise TypeError(
            f"query_dims must be a dict name->dims or a list of names, got the string {query_dims!r}"
        )
    return {str(name): DEFAULT_QUERY_DIM for name in query_dims}


class GaussianModel(nn.Module):
    """A set of N 3D Gaussians with colours and principal queries (see the module docstring)."""

    def __init__(
        self,
        means: Tensor,  # [N,3]
        quats: Tensor,  # [N,4] wxyz
        log_scales: Tensor,  # [N,3]
        opacity_logits: Tensor,  # [N]
        colors: Tensor,  # [N,3]
        queries: Tensor,  # [N,Q]
        query_dims: Mapping[str, int] | Iterable[str] | None = None,
    ) -> None:
        super().__init__()
        dims = _as_query_dims(query_dims)
        n = means.shape[0]
        expected = {
            "means": (n, 3),
            "quats": (n, 4),
            "log_scales": (n, 3),
            "opacity_logits": (n,),
            "colors": (n, 3),
            "queries": (n, sum(dims.values())),
        }
        given = dict(
            means=means,
            quats=quats,
            log_scales=log_scales,
            opacity_logits=opacity_logits,
            colors=colors,
            queries=queries,
        )
        for name, shape in expected.items():
            if tuple(given[name].shape) != shape:
                raise ValueError(
                    f"{name} must have shape {list(shape)} (N={n}, query dims {dims}), got {list(given[name].shape)}"
                )
            setattr(self, name, nn.Parameter(torch.as_tensor(given[name]).detach().clone()))
        self.query_dims: dict[str, int] = dims
        self.query_slices: dict[str, slice] = _query_slices(dims)

    # -- activated views -------------------------------------------------------------------
    @property
    def scales(self) -> Tensor:  # [N,3] metres
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> Tensor:  # [N] in (0,1)
        return torch.sigmoid(self.opacity_logits)

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[0])

    def __len__(self) -> int:
        return self.num_gaussians

    def query(self, name: str) -> Tensor:
        """[N,q] principal queries of one model."""
        if name not in self.query_slices:
            raise KeyError(f"no model {name!r} in this memory; models: {list(self.query_slices)}")
        return self.queries[:, self.query_slices[name]]

    def extra_repr(self) -> str:
        return f"N={self.num_gaussians}, query_dims={self.query_dims}"

    # -- constructors ----------------------------------------------------------------------
    @classmethod
    def from_points(
        cls,
        points: Tensor | np.ndarray,  # [N,3] world metres
        colors: Tensor | np.ndarray,  # [N,3] RGB in [0,1]
        query_dims: Mapping[str, int] | Iterable[str] | None = None,
        init_scale: float | None = None,
        init_opacity: float = 0.1,
        query_init_std: float = 0.0,
        min_scale: float = 1e-4,
        max_scale: float = 0.1,
        seed: int = 0,
    ) -> GaussianModel:
        """Isotropic Gaussians at points; scale = init_scale or the RMS distance to the 3 nearest
        neighbours (3DGS), clamped to [min_scale, max_scale]; identity rotations; float32 on CPU."""
        pts = np.asarray(torch.as_tensor(points).detach().cpu(), dtype=np.float64)
        cols = np.asarray(torch.as_tensor(colors).detach().cpu(), dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3 or cols.shape != pts.shape:
            raise ValueError(f"points and colors must both be [N,3], got {pts.shape} and {cols.shape}")
        if not 0.0 < init_opacity < 1.0:
            raise ValueError(f"init_opacity must be in (0,1), got {init_opacity}")
        n = len(pts)
        dims = _as_query_dims(query_dims)
        if init_scale is not None:
            scale = np.full(n, float(init_scale))
        elif n >= 2:
            k = min(4, n)
            dist, _ = cKDTree(pts).query(pts, k=k)
            scale = np.sqrt(np.mean(dist[:, 1:] ** 2, axis=1))
        else:
            scale = np.full(n, 0.01)
        scale = np.clip(scale, min_scale, max_scale)
        gen = torch.Generator().manual_seed(seed)
        queries = torch.randn(n, sum(dims.values()), generator=gen) * query_init_std
        f32 = torch.float32
        return cls(
            means=torch.as_tensor(pts, dtype=f32),
            quats=torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1),
            log_scales=torch.as_tensor(np.log(scale), dtype=f32)[:, None].repeat(1, 3),
            opacity_logits=torch.full((n,), math.log(init_opacity / (1.0 - init_opacity))),
            colors=torch.as_tensor(np.clip(cols, 0.0, 1.0), dtype=f32),
            queries=queries,
            query_dims=dims,
        )

    @classmethod
    def from_scene(
        cls, scene: Scene, query_dims: Mapping[str, int] | Iterable[str] | None = None, **kwargs: Any
    ) -> GaussianModel:
        """Same as `init_from_scene`."""
        return init_from_scene(scene, query_dims, **kwargs)

    # -- densification helpers -------------------------------------------------------------
    @torch.no_grad()
    def prune(self, remove: Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Remove the Gaussians where `remove` [N] bool is True."""
        keep = ~self._mask(remove)
        self._edit(lambda name, p: p[keep], lambda v: v[keep], optimizer)

    @torch.no_grad()
    def clone(self, selected: Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Append a copy of each selected Gaussian (3DGS clone); new optimizer state is zero."""
        sel = self._mask(selected)
        self._edit(
            lambda name, p: torch.cat([p, p[sel]]),
            lambda v: torch.cat([v, torch.zeros_like(v[sel])]),
            optimizer,
        )

    @torch.no_grad()
    def split(
        self,
        selected: Tensor,
        n: int = 2,
        optimizer: torch.optim.Optimizer | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Replace each selected Gaussian by n samples drawn from it with scales / (0.8 n) (3DGS split).
        The new Gaussians are appended at the end; the originals are removed."""

        sel = self._mask(selected)
        rest = ~sel
        R = rotmat_from_quat_wxyz(self.quats[sel])
        noise = torch.randn((n, int(sel.sum()), 3), generator=generator).to(self.means)
        offsets = torch.einsum("kij,nkj->nki", R, noise * self.scales[sel])  # [n,k,3]

        def param_fn(name: str, p: Tensor) -> Tensor:
            if name == "means":
                new = (p[sel][None] + offsets).reshape(-1, 3)
            elif name == "log_scales":
                new = (p[sel] - math.log(0.8 * n)).repeat(n, 1)
            else:
                new = p[sel].repeat((n,) + (1,) * (p.ndim - 1))
            return torch.cat([p[rest], new])

        self._edit(
            param_fn,
            lambda v: torch.cat([v[rest], torch.zeros((n * int(sel.sum()),) + v.shape[1:]).to(v)]),
            optimizer,
        )

    def _mask(self, mask: Tensor) -> Tensor:
        mask = torch.as_tensor(mask, device=self.means.device)
        if mask.dtype != torch.bool or mask.shape != (self.num_gaussians,):
            raise ValueError(
                f"mask must be a bool tensor of shape [{self.num_gaussians}], got {mask.dtype} {list(mask.shape)}"
            )
        return mask

    def _edit(self, param_fn, state_fn, optimizer: torch.optim.Optimizer | None) -> None:
        for name in PARAM_NAMES:
            old = getattr(self, name)
            new = nn.Parameter(param_fn(name, old.detach()), requires_grad=old.requires_grad)
            if optimizer is not None:
                for group in optimizer.param_groups:
                    for i, p in enumerate(group["params"]):
                        if p is old:
                            group["params"][i] = new
                            state = optimizer.state.pop(old, None)
                            if state:
                                optimizer.state[new] = {
                                    k: state_fn(v) if torch.is_tensor(v) and v.shape == old.shape else v
                                    for k, v in state.items()
                                }
            setattr(self, name, new)


def voxel_downsample(
    points: np.ndarray, colors: np.ndarray, voxel_size: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average points [N,3] and colors [N,3] per voxel -> (points [M,3], colors [M,3], counts [M])."""
    if voxel_size <= 0:
        raise ValueError(f"voxel_size must be positive metres, got {voxel_size}")
    if len(points) == 0:
        return points.reshape(0, 3), colors.reshape(0, 3), np.zeros(0, dtype=np.int64)
    keys = np.floor(points / voxel_size).astype(np.int64)
    keys -= keys.min(axis=0)
    extent = keys.max(axis=0) + 1
    # one int64 per voxel (1-D unique and bincount are far faster than unique(axis=0) and add.at)
    linear = (keys[:, 0] * extent[1] + keys[:, 1]) * extent[2] + keys[:, 2]
    _, inverse, counts = np.unique(linear, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    m = len(counts)
    sums_p = np.stack([np.bincount(inverse, points[:, i], minlength=m) for i in range(3)], axis=1)
    sums_c = np.stack([np.bincount(inverse, colors[:, i], minlength=m) for i in range(3)], axis=1)
    return sums_p / counts[:, None], sums_c / counts[:, None], counts


def init_from_scene(
    scene: Scene,
    query_dims: Mapping[str, int] | Iterable[str] | None = None,
    config: GaussianInitConfig | None = None,
    **overrides: Any,
) -> GaussianModel:
    """Gaussians from a scene directory: each frame's valid depth back-projected to world with its
    pixel colours, voxel-downsampled (and/or the COLMAP points3D), then `GaussianModel.from_points`.

    Keyword overrides replace config fields, e.g. init_from_scene(scene, dims, voxel_size=0.01).
    """
    cfg = replace(config or GaussianInitConfig(), **overrides)
    if cfg.stride < 1 or cfg.frame_stride < 1 or cfg.max_points < 1:
        raise ValueError(f"stride, frame_stride and max_points must be >= 1, got {cfg}")
    all_p, all_c = [], []
    def read(i: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        depth_m = scene.read_depth_m(i)
        return depth_m, (scene.read_rgb(i) if depth_m is not None else None)

    indices = range(0, len(scene), cfg.frame_stride)
    for i, (depth_m, rgb) in zip(indices, map_frames(read, indices)):
        if depth_m is None or rgb is None:
            continue
        if cfg.max_depth_m > 0:
            depth_m = np.where(depth_m > cfg.max_depth_m, 0.0, depth_m)
        frame = scene.frames[i]
        if rgb.shape[:2] != depth_m.shape:
            raise ValueError(
                f"frame {frame.name}: color {rgb.shape[:2]} and depth {depth_m.shape} differ; "
                "depth must be aligned to color"
            )
        pts, pix = points_from_depth(depth_m, frame.camera, frame.world_from_camera, stride=cfg.stride)
        cols = rgb[pix[:, 0], pix[:, 1]].astype(np.float64) / 255.0
        if len(pts):
            # per-frame downsampling bounds memory over long captures
            pts, cols, _ = voxel_downsample(pts, cols, cfg.voxel_size)
            all_p.append(pts)
            all_c.append(cols)
    if cfg.use_colmap_points:
        colmap = _colmap_points(scene)
        if colmap is not None:
            all_p.append(colmap[0])
            all_c.append(colmap[1])
    if not all_p:
        raise SceneError(
            f"no points to initialise Gaussians in {scene.root}: no valid depth"
            + (
                " and no COLMAP points3D"
                if cfg.use_colmap_points
                else " (set use_colmap_points to use sparse/0)"
            )
        )
    points, colors, _ = voxel_downsample(np.concatenate(all_p), np.concatenate(all_c), cfg.voxel_size)
    if len(points) > cfg.max_points:
        keep = np.random.default_rng(cfg.seed).choice(len(points), cfg.max_points, replace=False)
        points, colors = points[np.sort(keep)], colors[np.sort(keep)]
    log.info("initialised %d Gaussians from %d frames of %s", len(points), len(scene), scene.root)
    return GaussianModel.from_points(
        points,
        colors,
        query_dims,
        init_scale=cfg.init_scale,
        init_opacity=cfg.init_opacity,
        query_init_std=cfg.query_init_std,
        min_scale=cfg.min_scale,
        max_scale=cfg.max_scale,
        seed=cfg.seed,
    )


def _colmap_points(scene: Scene) -> tuple[np.ndarray, np.ndarray] | None:
    sparse = scene.root / "sparse" / "0"
    if not (sparse / "points3D.bin").exists() and not (sparse / "points3D.txt").exists():
        return None
    import pycolmap  # local: heavy import

    rec = pycolmap.Reconstruction(str(sparse))
    if not len(rec.points3D):
        return None
    pts = np.array([p.xyz for p in rec.points3D.values()], dtype=np.float64)
    cols = np.array([p.color for p in rec.points3D.values()], dtype=np.float64) / 255.0
    return pts, cols
