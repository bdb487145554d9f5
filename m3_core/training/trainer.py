"""Train an M3 memory (attention head, or the linear head for comparison) from a scene directory and its features.

Per iteration one training view is rendered and the loss is
    0.8 L1 + 0.2 D-SSIM (RGB)  +  depth_weight * L1(depth on valid sensor pixels)
    + feature_weight * sum_models [cosine distance + L2 distance] on `points_per_view` points,
the feature ground truth being the model's grid sampled bilinearly at those points (losses.py).

Two render modes:
- "full" (default on CUDA): the whole (downscaled) image is rendered; RGB/depth use all pixels,
  the features the sampled points.
- "points" (default on CPU): only the sampled points plus one square patch are rendered with the
  pixel mode of the torch rasterizer. L1 and depth use all of them; SSIM needs neighbourhoods, so
  it runs on the patch (patch_size^2 pixels, a fresh random location each iteration). This is
  what keeps CPU training within minutes: a full 320x240 render costs seconds per step there.

Held-out views (every `heldout_every`-th keyframe, starting at 0 as 3DGS's LLFF hold does) are
never trained on; the PSC banks are built from the training views only.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from m3_core.config import to_dict
from m3_core.errors import M3Error
from m3_core.geometry.camera import PinholeCamera
from m3_core.model.attention import AttentionConfig, MemoryAttention
from m3_core.model.gaussians import GaussianInitConfig, GaussianModel, init_from_scene
from m3_core.model.linear import LinearDecoder, latent_dim_for_budget
from m3_core.model.memory import HEADS, M3Memory, render_memory
from m3_core.model.memory_bank import DEFAULT_THETAS, default_theta, features_from_grids, select_psc
from m3_core.scene import Scene, map_frames
from m3_core.training.densify import Densifier, DensifyConfig
from m3_core.training.losses import prepare_grid, ssim
from m3_core.training.objective import Objective, compile_available, prefetch_compiler

log = logging.getLogger(__name__)

RENDER_MODES = ("auto", "full", "points")
COMPILE_MODES = ("auto", "on", "off")
# torch.compile modes the loss may be compiled with ("reduce-overhead": replayed as CUDA graphs)
TORCH_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


class TrainError(M3Error):
    """A scene or feature set that cannot be trained on."""


class SceneFeaturesLike(Protocol):
    """What the trainer needs of m3_core.features.SceneFeatures."""

    model: str
    model_id: str
    dim: int
    names: list[str]
    grids: torch.Tensor  # [F, h, w, d], zeros = no feature
    random_weights: bool


@dataclass(frozen=True)
class OptimConfig:
    """Adam learning rates per parameter (3DGS values; means scaled by the scene size)."""

    means: float = 1.6e-4
    """Initial learning rate of the means, times the scene scale (decays exponentially)."""
    means_final_ratio: float = 0.01
    """Final / initial means learning rate."""
    quats: float = 1e-3
    """Rotations."""
    log_scales: float = 5e-3
    """Log scales."""
    opacity_logits: float = 5e-2
    """Opacity logits."""
    colors: float = 2.5e-3
    """RGB colours (SH degree 0)."""
    queries: float = 0.02
    """Principal queries (the linear head's latents too); 5e-3 sharpened the attention too slowly."""
    heads: float = 1e-3
    """Learned head parameters (W_m when learned, the linear head's decoder)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything `m3 train` can change (YAML section `train`)."""

    iters: int = 2400
    """Optimisation steps (one view each)."""
    train_width: int = 320
    """Images are resized to this width for training (0: native); the camera is scaled alike."""
    render_mode: str = "auto"
    """"full", "points" or "auto" (full on CUDA, points on CPU); see the module docstring."""
    points_per_view: int = 2000
    """Pixels sampled per view for the feature loss (the paper's 2000)."""
    patch_size: int = 24
    """Side of the rendered square patch for SSIM in points mode."""
    depth_weight: float = 0.2
    """Weight of the L1 depth loss (metres) on valid sensor depth."""
    feature_weight: float = 0.5
    """Weight of the summed per-model feature losses (M3 code: 0.5)."""
    query_dim: int = 16
    """Principal query dims per model (paper: 16); the linear head's latent dims are set by budget."""
    head: str = "attention"
    """"attention" (M3) or "linear" (F-3DGS-style linear decoder at the same parameter budget)."""
    thetas: dict[str, float] = field(default_factory=dict)
    """PSC threshold per model; models not listed use memory_bank.DEFAULT_THETAS."""
    psc_chunk: int = 1024
    """Rows per chunk of Algorithm 1 (the result does not depend on it; the paper used 5000)."""
    heldout_every: int = 8
    """Every n-th keyframe is held out for evaluation (0: train on all)."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Initial colour behind the Gaussians (the median colour of pixels without depth, if any, when
    learn_background is on)."""
    learn_background: bool = True
    """Optimise the background colour (sky or far walls have no depth, so no Gaussians)."""
    init_scale_factor: float = 0.4
    """Multiply the initial nearest-neighbour scales (dense depth init: smaller starts sharper)."""
    seed: int = 0
    """Seed of sampling, initialisation and W_m."""
    checkpoint_every: int = 0
    """Write a memory checkpoint every n iterations to OUT-checkpoints/iter_N (0: only the final one)."""
    init: GaussianInitConfig = field(
        default_factory=lambda: GaussianInitConfig(voxel_size=0.015, init_opacity=0.6, query_init_std=0.1)
    )
    """Gaussian initialisation from the scene's depth."""
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    """Adaptive density control (full mode; see densify_in_points_mode)."""
    densify_in_points_mode: bool = False
    """Also densify when training on sampled points (off: noisy statistic, see Trainer)."""
    compile_loss: str = "auto"
    """torch.compile the loss after the render in full mode: "auto" (on CUDA with Triton), "on",
    "off". Fuses ~200 small kernels of a launch-bound GPU step (objective.py); the first steps pay
    the compilation (kept in torch's on-disk cache for the next run)."""
    compile_mode: str = "reduce-overhead"
    """torch.compile mode of the compiled loss: "reduce-overhead" (its kernels replayed as CUDA
    graphs, forward and backward: the loss's shapes are fixed, only the render's vary), "default"
    or "max-autotune-no-cudagraphs"."""
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    """Memory attention (M3 head)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Learning rates."""

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.render_mode not in RENDER_MODES:
            raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {self.render_mode!r}")
        if self.compile_loss not in COMPILE_MODES:
            raise ValueError(f"compile_loss must be one of {COMPILE_MODES}, got {self.compile_loss!r}")
        if self.compile_mode not in TORCH_COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {TORCH_COMPILE_MODES}, got {self.compile_mode!r}")
        if self.iters < 0 or self.points_per_view < 1 or self.patch_size < 11:
            raise ValueError(
                "iters >= 0, points_per_view >= 1 and patch_size >= 11 (SSIM window) are required"
            )


@dataclass
class TrainView:
    """One keyframe at training resolution, on the training device."""

    index: int
    name: str
    rgb: torch.Tensor  # [H, W, 3] in [0, 1]
    depth_m: torch.Tensor  # [H, W], 0 = invalid
    camera: PinholeCamera
    world_from_camera: torch.Tensor  # [4, 4] float64


@dataclass
class TrainResult:
    memory: M3Memory
    stats: dict[str, Any]


def heldout_indices(n: int, every: int) -> list[int]:
    """Indices of held-out keyframes: 0, every, 2*every, ... (none when every == 0 or n < 2)."""
    if every <= 0 or n < 2:
        return []
    return list(range(0, n, every))


def split_indices(n: int, every: int) -> tuple[list[int], list[int]]:
    held = set(heldout_indices(n, every))
    return [i for i in range(n) if i not in held], sorted(held)


def load_view(scene: Scene, i: int, train_width: int, device: torch.device) -> TrainView:
    """Frame i resized to train_width (area for colour, nearest for depth so invalid stays 0)."""
    frame = scene.frames[i]
    rgb = scene.read_rgb(i)
    depth = scene.read_depth_m(i)
    H, W = rgb.shape[:2]
    if depth is None:
        depth = np.zeros((H, W), np.float32)
    if depth.shape != (H, W):
        raise TrainError(f"frame {frame.name}: depth {depth.shape} is not aligned to colour {(H, W)}")
    cam = frame.camera
    if (cam.width, cam.height) != (W, H):
        raise TrainError(f"frame {frame.name}: image is {W}x{H} but its camera is {cam.width}x{cam.height}")
    if train_width and train_width != W:
        w, h = int(train_width), max(1, round(H * train_width / W))
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        depth = cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST)
        cam = cam.scaled(w, h)
    return TrainView(
        index=i,
        name=frame.name,
        rgb=torch.from_numpy(rgb).to(device).float() / 255.0,
        depth_m=torch.from_numpy(np.ascontiguousarray(depth)).to(device).float(),
        camera=cam,
        world_from_camera=torch.as_tensor(frame.world_from_camera, dtype=torch.float64, device=device),
    )


def check_features(scene: Scene, features: dict[str, SceneFeaturesLike], train_idx: list[int]) -> None:
    names = [f.name for f in scene.frames]
    for model, feats in features.items():
        if list(feats.names) != names:
            missing = sorted(set(names) - set(feats.names))
            raise TrainError(
                f"{model} features do not match the scene's frames"
                + (f" (missing: {missing[:5]})" if missing else "")
                + f"; recompute them with `m3 features {scene.root} --models {model}`"
            )
        empty = [names[i] for i in train_idx if not bool(feats.grids[i].abs().amax() > 0)]
        if empty and model != "language":
            raise TrainError(
                f"{model} features of frame(s) {empty[:5]} are all zero (no features); recompute them"
            )
        if len(empty) == len(train_idx):
            raise TrainError(f"{model} has no features in any training frame (language masks missing?)")


def scene_scale(views: list[TrainView]) -> float:
    """3DGS's 'cameras extent': 1.1 x the largest camera distance from the cameras' centroid."""
    centres = torch.stack([v.world_from_camera[:3, 3] for v in views]).float()
    radius = (centres - centres.mean(0)).norm(dim=1).max().item()
    return 1.1 * max(radius, 0.1)


def _param_groups(
    gaussians: GaussianModel, heads: nn.ModuleDict, cfg: OptimConfig, scale: float
) -> list[dict]:
    groups = [{"params": [gaussians.means], "lr": cfg.means * scale, "name": "means"}]
    for name in ("quats", "log_scales", "opacity_logits", "colors", "queries"):
        groups.append({"params": [getattr(gaussians, name)], "lr": getattr(cfg, name), "name": name})
    head_params = [p for p in heads.parameters() if p.requires_grad]
    if head_params:
        groups.append({"params": head_params, "lr": cfg.heads, "name": "heads"})
    return groups


def _random_pixels(n: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """[n, 2] (row, col) on the generator's device (a CUDA generator: no host-to-device copy)."""
    rows = torch.randint(0, h, (n,), generator=gen, device=gen.device)
    cols = torch.randint(0, w, (n,), generator=gen, device=gen.device)
    return torch.stack([rows, cols], dim=1)


def _patch_pixels(size: int, h: int, w: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    size_h, size_w = min(size, h), min(size, w)
    r0 = int(torch.randint(0, h - size_h + 1, (1,), generator=gen))
    c0 = int(torch.randint(0, w - size_w + 1, (1,), generator=gen))
    rr, cc = torch.meshgrid(torch.arange(r0, r0 + size_h), torch.arange(c0, c0 + size_w), indexing="ij")
    return torch.stack([rr.reshape(-1), cc.reshape(-1)], dim=1).to(device)


class Trainer:
    """Holds the running state of one training run (see `train_memory` for the one-call form)."""

    def __init__(
        self,
        scene: Scene,
        features: dict[str, SceneFeaturesLike],
        config: TrainConfig,
        device: torch.device,
    ) -> None:
        if not features:
            raise ValueError("give at least one model's features (e.g. --models language)")
        self.config, self.device, self.scene = config, device, scene
        self.train_idx, self.heldout_idx = split_indices(len(scene), config.heldout_every)
        check_features(scene, features, self.train_idx)
        self.mode = config.render_mode
        if self.mode == "auto":
            self.mode = "full" if device.type == "cuda" else "points"
        self._compiler_import = (
            prefetch_compiler()
            if self.mode == "full" and config.compile_loss != "off" and compile_available(device)[0]
            else None
        )
        self.views = list(map_frames(lambda i: load_view(scene, i, config.train_width, device), self.train_idx))
        if not any(bool((v.depth_m > 0).any()) for v in self.views):
            raise TrainError(
                f"scene {scene.root} has no valid depth in any training frame; the trainer needs depth "
                "(init and depth loss): check depth/ PNGs (0 = invalid) and depth_scale_m in scene.json"
            )
        self.grids = {m: f.grids.to(device).float() for m, f in features.items()}
        # Per training view and model the grid in grid_sample's layout with its validity channel
        # (constant; preparing it every step was ~4 ms of a ~110 ms CPU step).
        self.prepared_grids = {
            m: {v.index: prepare_grid(grid[v.index]) for v in self.views} for m, grid in self.grids.items()
        }
        self.gen = torch.Generator().manual_seed(config.seed)
        # Pixels are drawn where they are used. On CPU that is self.gen itself (the same stream as
        # before); on CUDA a device generator, so no per-step host-to-device copy.
        self.pixel_gen = (
            self.gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(config.seed)
        )
        self.scale = scene_scale(self.views)

        pscs = self._select_pscs()
        dims = self._init_gaussians(features, pscs)
        self.heads = self._make_heads(features, pscs, dims)
        self.objective = Objective(
            self.heads, self.gaussians.query_slices, config.depth_weight, config.feature_weight
        )
        self._graph_outputs = False  # the loss's outputs live in a CUDA graph's memory (set below)
        self.full_image_loss = self._full_image_loss(config.compile_loss)
        # Fused Adam: one kernel per parameter group instead of ~7 per parameter (on the CPU too:
        # a third of the single-tensor update's time over ~50k Gaussians).
        self.optimizer = torch.optim.Adam(
            _param_groups(self.gaussians, self.heads, config.optim, self.scale),
            eps=1e-15,
            fused=device.type in ("cuda", "cpu") or None,
        )
        self.densifier = Densifier(self._densify_config(), self.scale, seed=config.seed)
        self.features_meta = {
            m: {
                "model_id": f.model_id,
                "random_weights": bool(f.random_weights),
                "preprocessing": dict(getattr(f, "preprocessing", {}) or {}),
                "theta": self.psc_stats[m]["theta"] if config.head == "attention" else None,
                "psc_stats": self.psc_stats[m],
            }
            for m, f in features.items()
        }
        self.background = nn.Parameter(self._initial_background(), requires_grad=config.learn_background)
        if config.learn_background:
            self.optimizer.add_param_group(
                {"params": [self.background], "lr": config.optim.colors, "name": "bg"}
            )
        self.iteration = 0
        self.history: list[dict[str, float]] = []

    def _full_image_loss(self, mode: str) -> Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """Objective.full_image, compiled when `mode` (TrainConfig.compile_loss) asks for it."""
        if self.mode != "full" or mode == "off":
            return self.objective.full_image
        ok, why = compile_available(self.device)
        if mode == "on" and not ok:
            # On the CPU inductor's kernels gave NaN losses when ATen ran its AVX2 kernels on an
            # AVX-512 machine (as CI's runners do): the CPU trains eagerly.
            raise TrainError(f"compile_loss='on' is not available: {why}")
        if mode == "auto" and not ok:
            log.debug("loss not compiled: %s", why)
            return self.objective.full_image
        if self._compiler_import is not None:
            self._compiler_import.join()
        log.info("compiling the step's loss with torch.compile (the first steps take longer)")
        # static shapes: one image size and point count per run; a new shape recompiles once
        mode_arg = None if self.config.compile_mode == "default" else self.config.compile_mode
        self._graph_outputs = mode_arg == "reduce-overhead"
        return torch.compile(self.objective.full_image, dynamic=False, mode=mode_arg)

    def _select_pscs(self) -> dict[str, torch.Tensor]:
        """Each model's principal scene components from its training views' features (timed)."""
        config = self.config
        t0 = time.perf_counter()
        self.psc_stats: dict[str, dict[str, float]] = {}
        pscs = {}
        for model, grid in self.grids.items():
            theta = config.thetas.get(model, default_theta(model) if model in _known_models() else 0.9)
            raw = features_from_grids(grid[self.train_idx])
            psc, _, stats = select_psc(raw, theta, chunk=config.psc_chunk)
            pscs[model] = psc
            self.psc_stats[model] = stats.to_dict()
            log.info(
                "%s: %d features -> %d PSC (theta %.2f)", model, stats.raw_features, stats.psc_size, theta
            )
        self.psc_seconds = time.perf_counter() - t0
        return pscs

    def _init_gaussians(
        self, features: dict[str, SceneFeaturesLike], pscs: dict[str, torch.Tensor]
    ) -> dict[str, int]:
        """self.gaussians from the training views' depth; returns each model's query dimension.

        The linear head's latent size depends on the Gaussian count (same memory budget as the
        attention head), which is known only after a first initialisation: it initialises twice."""
        config = self.config
        init_scene = _subset_scene(self.scene, self.train_idx)
        dims = {m: config.query_dim for m in features}
        self.gaussians = init_from_scene(init_scene, dims, config.init)
        if config.head == "linear":
            n = self.gaussians.num_gaussians
            dims = {
                m: latent_dim_for_budget(n, pscs[m].shape[0], features[m].dim, config.query_dim)
                for m in features
            }
            self.gaussians = init_from_scene(init_scene, dims, config.init)
        with torch.no_grad():
            self.gaussians.log_scales += math.log(config.init_scale_factor)
        self.gaussians = self.gaussians.to(self.device)
        return dims

    def _make_heads(
        self, features: dict[str, SceneFeaturesLike], pscs: dict[str, torch.Tensor], dims: dict[str, int]
    ) -> nn.ModuleDict:
        """One decoder per model: memory attention over its PSC, or the linear head."""
        config, device = self.config, self.device
        heads: dict[str, nn.Module] = {}
        for k, (m, f) in enumerate(features.items()):
            if config.head == "attention":
                heads[m] = MemoryAttention(
                    pscs[m].to(device), dims[m], config.attention, seed=config.seed + k
                )
            else:
                heads[m] = LinearDecoder(dims[m], f.dim, seed=config.seed + k).to(device)
        return nn.ModuleDict(heads).to(device)

    def _densify_config(self) -> DensifyConfig:
        config = self.config
        dcfg = config.densify
        if self.mode == "points" and dcfg.enabled and not config.densify_in_points_mode:
            # Measured on the built-in scene (BENCHMARKS.md): with ~3% of the pixels sending gradient the
            # statistic is noisy; scaled thresholds grew 35k -> 230k Gaussians in 400 steps, no better PSNR,
            # and CPU step time grows with N. The depth init is dense already.
            log.info("points mode: densification off (set densify_in_points_mode to force it)")
            dcfg = replace(dcfg, enabled=False)
        if dcfg.enabled and dcfg.stop > config.iters // 2:
            # As 3DGS (densify until 15k of 30k): the second half converges. Without this an opacity
            # reset could land on the last step (3000 % 3000 == 0) and leave every opacity at 0.01:
            # the GPU bench's held-out PSNR of 8.6 dB with a train L1 of 0.012.
            dcfg = replace(dcfg, stop=config.iters // 2)
        return dcfg

    def _initial_background(self) -> torch.Tensor:
        bg = torch.tensor(self.config.background, dtype=torch.float32, device=self.device)
        if not self.config.learn_background:
            return bg
        far = torch.cat([v.rgb[v.depth_m <= 0] for v in self.views])
        return far.median(dim=0).values if far.shape[0] > 100 else bg

    # -- one step ---------------------------------------------------------------------------

    def _means_lr(self) -> float:
        cfg = self.config.optim
        t = min(self.iteration / max(self.config.iters, 1), 1.0)
        return cfg.means * self.scale * math.exp(t * math.log(cfg.means_final_ratio))

    def step(self) -> dict[str, Any]:
        """One optimisation step; returns the losses (0-dim tensors) and the Gaussian count.

        Nothing here waits for the GPU (gsplat's own tile count aside): masks are weights, pixels
        are drawn on the device, and the densification statistic is kept only while it is used."""
        cfg = self.config
        view = self.views[int(torch.randint(0, len(self.views), (1,), generator=self.gen))]
        H, W = view.rgb.shape[:2]
        points = _random_pixels(cfg.points_per_view, H, W, self.pixel_gen)
        grids = tuple(self.prepared_grids[m][view.index] for m in self.heads)
        if self.mode == "points":
            loss_rgb, depth, gt_depth, queries, out = self._render_points(view, points)
            loss, logs = self.objective(loss_rgb, depth, gt_depth, queries, points, grids, (H, W))
        else:
            out = render_memory(
                self.gaussians, view.world_from_camera, view.camera, background=self.background
            )
            loss, logs = self.full_image_loss(
                out.rgb, view.rgb, out.depth, view.depth_m, out.queries, points, grids
            )
        # The screen-space gradient statistic is kept only while densification will read it (a
        # retain_grad, a clone and a norm over all Gaussians per step otherwise wasted).
        collect = self.densifier.collects(self.iteration + 1)
        means2d = out.meta.get("means2d") if collect else None
        if means2d is not None and means2d.requires_grad:
            means2d.retain_grad()
        loss.backward()
        if means2d is not None:
            self.densifier.accumulate(means2d, out.meta["radii"], W, H)
        self.optimizer.param_groups[0]["lr"] = self._means_lr()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.iteration += 1
        dens = self.densifier.step(self.iteration, self.gaussians, self.optimizer)
        if self._graph_outputs:
            # A CUDA graph replays into the same output memory at the next step: what the caller
            # keeps (a list of the steps' logs) must be copied out, in one kernel.
            names = [*logs, "loss"]
            logs = dict(zip(names, torch.stack([*logs.values(), loss.detach()]).unbind()))
        else:
            logs["loss"] = loss.detach()
        logs["n"] = self.gaussians.num_gaussians
        if any(dens.values()):
            logs.update(dens)
        return logs

    def _render_points(self, view: TrainView, points: torch.Tensor):
        """Points mode: render the sampled points plus one SSIM patch with the pixel mode of the
        torch rasterizer -> (rgb loss, depth [P], sensor depth [P], queries at the points, output)."""
        cfg = self.config
        H, W = view.rgb.shape[:2]
        patch = _patch_pixels(cfg.patch_size, H, W, self.gen, self.device)
        pixels = torch.cat([points, patch])
        out = render_memory(
            self.gaussians, view.world_from_camera, view.camera, pixels=pixels.float(), background=self.background
        )  # fmt: skip
        n_pts = points.shape[0]
        ph, pw = min(cfg.patch_size, H), min(cfg.patch_size, W)
        # flat row-major indices + index_select: the same pixels as [rows, cols], faster on CPU
        flat = pixels[:, 0] * W + pixels[:, 1]
        gt_all = view.rgb.reshape(-1, 3).index_select(0, flat)
        loss_rgb = 0.8 * (out.rgb - gt_all).abs().mean() + 0.2 * (
            1.0 - ssim(out.rgb[n_pts:].reshape(ph, pw, 3), gt_all[n_pts:].reshape(ph, pw, 3))
        )
        gt_depth = view.depth_m.reshape(-1).index_select(0, flat)
        return loss_rgb, out.depth, gt_depth, out.queries[:n_pts], out

    # -- results ----------------------------------------------------------------------------

    def memory(self, extra_stats: dict[str, Any] | None = None) -> M3Memory:
        scene = self.scene
        means = self.gaussians.means.detach()
        manifest = {
            "head": self.config.head,
            "models": self.features_meta,
            "frames": {
                "train": [scene.frames[i].name for i in self.train_idx],
                "heldout": [scene.frames[i].name for i in self.heldout_idx],
            },
            "world_frame": scene.world_frame,
            "background": self.background.detach().cpu().tolist(),
            "scene": str(scene.root),
            "scene_bounds": {"min": means.min(0).values.tolist(), "max": means.max(0).values.tolist()},
            "training": {
                "iterations": self.iteration,
                "config": to_dict(self.config),
                "render_mode": self.mode,
                "device": str(self.device),
                **(extra_stats or {}),
            },
        }
        return M3Memory(self.gaussians, dict(self.heads.items()), manifest)


def _known_models() -> set[str]:
    return set(DEFAULT_THETAS)


def _subset_scene(scene: Scene, indices: list[int]) -> Scene:
    return replace(scene, frames=[scene.frames[i] for i in indices])


def train_memory(
    scene: Scene,
    features: dict[str, SceneFeaturesLike],
    config: TrainConfig | None = None,
    device: str | torch.device = "cpu",
    out_dir=None,
    progress: bool = False,
) -> TrainResult:
    """Train a memory; write it to out_dir (atomically) when given. Returns the memory and stats."""

    config = config or TrainConfig()
    device = torch.device(device)
    torch.manual_seed(config.seed)
    t0 = time.perf_counter()
    trainer = Trainer(scene, features, config, device)
    t_setup = time.perf_counter() - t0
    bar = tqdm(range(config.iters), disable=not progress, desc="train", dynamic_ncols=True)
    logs: dict[str, Any] = {}
    t1 = time.perf_counter()
    for it in bar:
        logs = trainer.step()
        if progress and (it % 10 == 0 or it == config.iters - 1):
            bar.set_postfix({k: (f"{float(v):.4f}" if torch.is_tensor(v) else v) for k, v in logs.items()})
        if out_dir is not None and config.checkpoint_every and (it + 1) % config.checkpoint_every == 0:
            # beside OUT, not inside: the final save replaces OUT as a whole
            ckpt_root = Path(out_dir).with_name(Path(out_dir).name + "-checkpoints")
            trainer.memory({"checkpoint": it + 1}).save(ckpt_root / f"iter_{it + 1:06d}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_train = time.perf_counter() - t1
    stats = {
        "seconds_setup": round(t_setup, 3),
        "seconds_psc": round(trainer.psc_seconds, 3),
        "seconds_train": round(t_train, 3),
        "seconds_total": round(time.perf_counter() - t0, 3),
        "num_gaussians": trainer.gaussians.num_gaussians,
        "final_losses": {k: (round(float(v), 6) if torch.is_tensor(v) else v) for k, v in logs.items()},
        "psc": trainer.psc_stats,
    }
    memory = trainer.memory(stats)
    if out_dir is not None:
        memory.save(out_dir)
    return TrainResult(memory=memory, stats=stats)
