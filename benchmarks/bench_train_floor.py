"""The GPU training step against its floor: a bare gsplat loop on the same scene, in the same run.

Every row trains the same Gaussians (the trainer's initial ones, so the same count) on the same
training views at the same resolution, on the GPU, and prints ms/step (median of `--repeats`
blocks of `--steps` steps, after `--warmup` steps):

- floor RGB: gsplat.rasterization in RGB mode, L1 loss, fused Adam (what 3DGS minimally does);
- floor same channels: RGB + the principal queries + expected depth (the channels our step renders,
  split into the same passes), L1 on RGB, masked L1 on depth, L1 on the queries at the sampled
  points (so every channel gets gradient), fused Adam;
- ours: `Trainer.step` (SSIM, depth, attention head, feature loss, background, densification
  statistic), once while the densification statistic is collected (steps before densify start)
  and once with densification over.

Ratios are ours / floor from this one run. `--profile` adds kernel launches per step and the
share of the step during which the GPU runs kernels (torch.profiler). Needs CUDA and gsplat.

    python benchmarks/bench_train_floor.py --scene /tmp/b1z1_scene --models clip --allow-random-weights
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import replace

import torch


def _views(trainer) -> list[dict]:
    """Per training view the gsplat inputs, built once (as a tuned loop would)."""
    views = []
    for v in trainer.views:
        cam = v.camera
        K = torch.tensor(
            [[cam.fx, 0.0, cam.cx + 0.5], [0.0, cam.fy, cam.cy + 0.5], [0.0, 0.0, 1.0]], dtype=torch.float32
        )
        viewmat = torch.linalg.inv(v.world_from_camera.double()).float()
        views.append(
            {"K": K[None].to(v.rgb.device), "viewmat": viewmat[None], "rgb": v.rgb, "depth": v.depth_m}
        )
    return views


class Floor:
    """A bare gsplat training loop on a copy of the trainer's Gaussians."""

    def __init__(self, trainer, with_queries: bool, seed: int = 0) -> None:
        from m3_core.render.gsplat_backend import channel_chunk_for, import_gsplat
        from m3_core.render.projection import EPS2D

        self.gsplat = import_gsplat()
        self.eps2d = EPS2D
        g = trainer.gaussians
        colors = torch.cat([g.colors, g.queries], dim=1) if with_queries else g.colors
        self.params = {
            "means": g.means.detach().clone(),
            "quats": g.quats.detach().clone(),
            "log_scales": g.log_scales.detach().clone(),
            "opacity_logits": g.opacity_logits.detach().clone(),
            "colors": colors.detach().clone(),
        }
        for p in self.params.values():
            p.requires_grad_(True)
        lrs = {"means": 1.6e-4 * trainer.scale, "quats": 1e-3, "log_scales": 5e-3,
               "opacity_logits": 5e-2, "colors": 2.5e-3}  # fmt: skip
        self.optimizer = torch.optim.Adam(
            [{"params": [p], "lr": lrs[k]} for k, p in self.params.items()], eps=1e-15, fused=True
        )
        self.with_queries = with_queries
        self.mode = "RGB+ED" if with_queries else "RGB"
        n_channels = colors.shape[1] + (1 if with_queries else 0)
        self.chunk = channel_chunk_for(n_channels, backward=True)
        self.views = _views(trainer)
        self.points = trainer.config.points_per_view
        self.depth_weight = trainer.config.depth_weight
        self.gen = torch.Generator().manual_seed(seed)
        self.pixel_gen = torch.Generator(device=trainer.device).manual_seed(seed)

    def step(self) -> None:
        p = self.params
        view = self.views[int(torch.randint(0, len(self.views), (1,), generator=self.gen))]
        H, W = view["rgb"].shape[:2]
        out, _, _ = self.gsplat.rasterization(
            p["means"], p["quats"], torch.exp(p["log_scales"]), torch.sigmoid(p["opacity_logits"]),
            p["colors"], viewmats=view["viewmat"], Ks=view["K"], width=W, height=H,
            eps2d=self.eps2d, packed=False, render_mode=self.mode, channel_chunk=self.chunk,
        )  # fmt: skip
        out = out[0]
        loss = (out[..., :3] - view["rgb"]).abs().mean()
        if self.with_queries:
            depth, gt = out[..., -1], view["depth"]
            valid = gt > 0
            loss = loss + self.depth_weight * torch.where(
                valid, (depth - gt).abs(), 0.0
            ).sum() / valid.sum().clamp_min(1)
            dev = self.pixel_gen.device
            rows = torch.randint(0, H, (self.points,), generator=self.pixel_gen, device=dev)
            cols = torch.randint(0, W, (self.points,), generator=self.pixel_gen, device=dev)
            queries = out[..., 3:-1].reshape(H * W, -1).index_select(0, rows * W + cols)
            loss = loss + queries.abs().mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def time_steps(step, warmup: int, steps: int, repeats: int) -> list[float]:
    """ms/step of `repeats` blocks of `steps` calls, after `warmup` calls (CUDA synchronised)."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    blocks = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        blocks.append((time.perf_counter() - t0) * 1e3 / steps)
    return blocks


def profile_steps(step, steps: int = 20) -> dict[str, float]:
    """GPU ops (kernels, copies) and host synchronisations per step, and the share of wall time
    the GPU spends running them."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        wall_us = (time.perf_counter() - t0) * 1e6
    events = prof.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_us = sum(e.time_range.elapsed_us() for e in kernels)
    sync_names = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
    syncs = sum(1 for e in events if e.name in sync_names)
    try:
        table = prof.key_averages().table(sort_by="device_time_total", row_limit=12)
    except (KeyError, AttributeError, ValueError):
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=12)
    return {
        "gpu_ops_per_step": len(kernels) / steps,
        "gpu_busy": busy_us / wall_us,
        "syncs_per_step": syncs / steps,
        "top": table,
    }


def time_ours(trainer, tag: str, args: argparse.Namespace, rows: dict, profiles: dict) -> None:
    """Rows "ours{tag}, densification statistic on / over" for `trainer` (the first step, which
    compiles the loss when the trainer is asked to, is reported and not timed)."""
    from m3_core.training.densify import Densifier

    t0 = time.perf_counter()
    trainer.step()
    torch.cuda.synchronize()
    print(f"[ours{tag}] first step (compiles the loss when asked): {time.perf_counter() - t0:.1f} s, untimed")
    for row in ("densification statistic on", "densification over"):
        if row == "densification over":
            trainer.densifier = Densifier(replace(trainer.densifier.config, enabled=False), trainer.scale)
        name = f"ours{tag}, {row}"
        rows[name] = time_steps(trainer.step, args.warmup, args.steps, args.repeats)
        if args.profile:
            profiles[name] = profile_steps(trainer.step)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scene", required=True, help="scene directory (the built-in scene: see bench_train.py)"
    )
    parser.add_argument("--models", default="clip", help="comma list of feature models")
    parser.add_argument(
        "--allow-random-weights", action="store_true", help="random model weights (timing only)"
    )
    parser.add_argument("--train-width", type=int, default=640, help="training image width")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps before each row")
    parser.add_argument("--steps", type=int, default=60, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per row (median reported)")
    parser.add_argument("--profile", action="store_true", help="kernel launches and GPU busy share per row")
    parser.add_argument(
        "--compile-mode",
        default="default",
        help="comma list of TrainConfig.compile_mode values: one compiled trainer (rows) for each",
    )
    parser.add_argument("--label", default="", help="printed with the results (e.g. the commit)")
    parser.add_argument(
        "--compile", choices=("auto", "on", "off", "both"), default="both",
        help="TrainConfig.compile_loss of our step; both: an eager and a compiled trainer, rows for each",
    )  # fmt: skip
    return parser.parse_args()


def main() -> int:
    args = _parse_args()

    from m3_core.features import load_scene_features
    from m3_core.scene import load_scene
    from m3_core.training.trainer import TrainConfig, Trainer

    if not torch.cuda.is_available():
        raise SystemExit("bench_train_floor needs CUDA (gsplat); none is available here")
    device = torch.device("cuda")
    config = TrainConfig(iters=3000, train_width=args.train_width)
    # the first "ours" row must end before densification would change the Gaussian count
    used = 1 + args.warmup + args.steps * args.repeats + (20 if args.profile else 0)
    if used >= config.densify.start:
        raise SystemExit(f"{used} steps would reach densify start {config.densify.start}: fewer --steps")
    scene = load_scene(args.scene)
    features = {
        m: load_scene_features(scene, m, device=device, allow_random_weights=args.allow_random_weights, progress=False)
        for m in args.models.split(",")
    }  # fmt: skip
    compiled = [("on", m.strip()) for m in args.compile_mode.split(",") if m.strip()]
    variants = {"off": [("off", "default")], "both": [("off", "default"), *compiled]}.get(
        args.compile, [(args.compile, m) for _o, m in compiled]
    )
    trainers = {}
    for loss_mode, compile_mode in variants:
        torch.manual_seed(0)
        tag = (
            "eager"
            if loss_mode == "off"
            else "compiled" + ("" if compile_mode == "default" else f" {compile_mode}")
        )
        cfg = replace(config, compile_loss=loss_mode, compile_mode=compile_mode)
        trainers[tag] = Trainer(scene, features, cfg, device)
    trainer = next(iter(trainers.values()))
    n = trainer.gaussians.num_gaussians
    q = trainer.gaussians.queries.shape[1]
    H, W = trainer.views[0].rgb.shape[:2]
    print(f"machine: {platform.node()}, GPU {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs {args.label}")  # fmt: skip
    print(f"scene: {len(trainer.views)} training views at {W}x{H}, {n} Gaussians, {q} query channels, "
          f"PSC { {m: s['psc_size'] for m, s in trainer.psc_stats.items()} }")  # fmt: skip

    rows: dict[str, list[float]] = {}
    profiles: dict[str, dict] = {}
    floors = {
        "floor RGB": Floor(trainer, with_queries=False),
        "floor same channels": Floor(trainer, with_queries=True),
    }
    for name, floor in floors.items():
        rows[name] = time_steps(floor.step, args.warmup, args.steps, args.repeats)
        if args.profile:
            profiles[name] = profile_steps(floor.step)
    del floors
    for name, ours in trainers.items():
        tag = "" if len(trainers) == 1 else f", {name}"
        time_ours(ours, tag, args, rows, profiles)
        assert ours.gaussians.num_gaussians == n, "the Gaussian count changed while timing"

    med = {k: statistics.median(v) for k, v in rows.items()}
    rgb, same = med["floor RGB"], med["floor same channels"]
    print(f"\n{'row':36s} {'ms/step':>8s} {'/ RGB floor':>12s} {'/ same-ch floor':>16s}   blocks")
    for k, v in med.items():
        blocks = ", ".join(f"{b:.2f}" for b in rows[k])
        print(f"{k:36s} {v:8.2f} {v / rgb:12.2f} {v / same:16.2f}   [{blocks}]")
    for k, p in profiles.items():
        print(f"\n[{k}] GPU ops/step {p['gpu_ops_per_step']:.0f}, GPU busy {100 * p['gpu_busy']:.0f} %, "
              f"host syncs/step {p['syncs_per_step']:.2f}\n{p['top']}")  # fmt: skip
    result = {"gaussians": n, "width": W, "height": H, "ms_per_step": med,
              "profile": {k: {kk: vv for kk, vv in p.items() if kk != "top"} for k, p in profiles.items()}}  # fmt: skip
    print("\nJSON " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
