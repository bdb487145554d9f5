"""Render timings: the pure-PyTorch backend on CPU and the gsplat backend on CUDA.

    python benchmarks/bench_render.py                 # CPU: N=20k, 2000 pixels and a full 320x240 image
    python benchmarks/bench_render.py --device cuda   # gsplat: 640x480, 1M Gaussians, 16/32/48 queries

The CPU scene is what init_from_scene makes of a tabletop seen from 0.6-1.0 m: points on a table
plane and a few boxes, one per 5 mm voxel, scaled by the nearest-neighbour distance. The CUDA scene
is 1M random Gaussians filling the view (the load gsplat benchmarks use). Prints milliseconds
(median of the repeats) for forward and forward+backward; all channels (RGB + queries + ED) render.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from m3_core.geometry import PinholeCamera, matrix_from_pose
from m3_core.model.gaussians import GaussianModel
from m3_core.render import rasterize


def tabletop_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n surface points: a 1.2 x 0.8 m table at z = 0 and boxes on it (world z up)."""
    rng = np.random.default_rng(seed)
    n_table = n // 2
    table = np.c_[rng.uniform(-0.6, 0.6, n_table), rng.uniform(-0.4, 0.4, n_table), np.zeros(n_table)]
    boxes = []
    for _ in range(n - n_table):
        cx, cy, s = rng.choice([(-0.25, 0.1, 0.12), (0.1, -0.1, 0.08), (0.3, 0.15, 0.15)])
        p = rng.uniform(-s / 2, s / 2, 3)
        p[rng.integers(3)] = rng.choice([-s / 2, s / 2])  # on a face
        boxes.append([cx + p[0], cy + p[1], s / 2 + p[2]])
    pts = np.concatenate([table, np.array(boxes)])
    return pts, rng.uniform(0, 1, (n, 3))


def random_cloud(n: int, query_dim: int, device: str, seed: int = 0) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([3.0, 2.2, 3.0]) + torch.tensor(
        [0.0, 0.0, 3.0]
    )
    return GaussianModel(
        means=means,
        quats=torch.randn(n, 4, generator=g),
        log_scales=torch.log(0.002 + 0.008 * torch.rand(n, 3, generator=g)),
        opacity_logits=torch.randn(n, generator=g),
        colors=torch.rand(n, 3, generator=g),
        queries=torch.randn(n, query_dim, generator=g),
        query_dims={f"m{i}": 16 for i in range(query_dim // 16)},
    ).to(device)


def timed(fn, repeats: int, sync, cpu_times: list | None = None) -> float:
    """Median wall ms; with cpu_times, also appends the median process CPU ms (all threads)."""
    fn()  # warm-up
    sync()
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    if cpu_times is not None:
        cpu_times.append(statistics.median(cpu))
    return statistics.median(times)


def bench(
    model, pose, cam, repeats, sync, pixels=None, backend="auto", cpu_times=None
) -> tuple[float, float]:
    def fwd():
        with torch.no_grad():
            rasterize(model, pose, cam, pixels=pixels, backend=backend)

    def fwd_bwd():
        out = rasterize(model, pose, cam, pixels=pixels, backend=backend)
        (out.rgb.sum() + out.depth.sum() + out.queries.sum()).backward()

    return timed(fwd, repeats, sync, cpu_times), timed(fwd_bwd, repeats, sync, cpu_times)


def channel_sweep(cam: PinholeCamera, repeats: int) -> None:
    """gsplat compiles 1,2,3,4,5,8,9,16,17,32,33,64,65,... channels and zero-pads the rest: time
    one padded pass against splitting into natively supported chunks."""
    from m3_core.render.gsplat_backend import rasterize_gsplat

    camera_from_world = torch.eye(4, device="cuda")
    intr = (cam.fx, cam.fy, cam.cx + 0.5, cam.cy + 0.5, cam.width, cam.height)
    model = random_cloud(1_000_000, 16, "cuda")
    for feats in (12, 13, 16, 19, 28, 29, 32, 35, 48):
        features = torch.rand(1_000_000, feats, device="cuda", requires_grad=True)
        for chunk in (None, 16, 17, 32, 33):
            if chunk is not None and chunk >= feats + 1:
                continue

            def run(grad: bool, chunk=chunk, features=features):
                with torch.set_grad_enabled(grad):
                    args = (
                        model.means,
                        model.quats,
                        model.scales,
                        model.opacities,
                        features,
                        camera_from_world,
                    )
                    f, d, a, _ = rasterize_gsplat(*args, *intr, channel_chunk=chunk)
                    if grad:
                        (f.sum() + d.sum()).backward()

            f = timed(lambda: run(False), repeats, torch.cuda.synchronize)
            fb = timed(lambda: run(True), repeats, torch.cuda.synchronize)
            print(f"  {feats + 1:2d} channels, channel_chunk {chunk}: fwd {f:6.2f} ms  fwd+bwd {fb:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--channel-sweep", action="store_true", help="cuda: time gsplat channel_chunk choices"
    )
    args = parser.parse_args()

    if args.device == "cpu":
        print(f"CPU torch backend, {torch.get_num_threads()} threads, torch {torch.__version__}")
        pts, cols = tabletop_points(20_000)
        model = GaussianModel.from_points(pts, cols, {"clip": 16, "dino": 16}, init_opacity=0.5)
        cam = PinholeCamera(fx=290.0, fy=290.0, cx=159.5, cy=119.5, width=320, height=240)
        # camera 0.8 m away and 0.5 m up, looking at the table (OpenCV axes: z forward, y down)
        eye, target = np.array([0.0, -0.7, 0.5]), np.zeros(3)
        z = (target - eye) / np.linalg.norm(target - eye)
        x = np.cross(z, np.array([0.0, 0.0, 1.0]))
        x /= np.linalg.norm(x)
        pose = np.eye(4)
        pose[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
        pose[:3, 3] = eye
        rng = torch.Generator().manual_seed(0)
        pix = torch.stack(
            [torch.randint(0, 240, (2000,), generator=rng), torch.randint(0, 320, (2000,), generator=rng)], 1
        )
        with torch.no_grad():
            cover = rasterize(model, pose, cam, render_queries=False).alpha
        print(f"scene: 20000 Gaussians, 32 query channels, mean alpha {float(cover.mean()):.2f}")
        for name, pixels, repeats in [("2000 pixels ", pix, args.repeats), ("full 320x240", None, 2)]:
            cpu: list[float] = []
            f, fb = bench(model, pose, cam, repeats, lambda: None, pixels=pixels, cpu_times=cpu)
            print(f"  {name}  fwd {f:8.1f} ms (CPU {cpu[0]:7.1f})   fwd+bwd {fb:8.1f} ms (CPU {cpu[1]:7.1f})")
        return

    print(f"gsplat backend on {torch.cuda.get_device_name()}, torch {torch.__version__}")
    cam = PinholeCamera(fx=525.0, fy=525.0, cx=319.5, cy=239.5, width=640, height=480)
    pose = matrix_from_pose(np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]))
    if args.channel_sweep:
        channel_sweep(cam, args.repeats * 4)
        return
    for q in (16, 32, 48):
        model = random_cloud(1_000_000, q, "cuda")
        f, fb = bench(model, pose, cam, args.repeats * 4, torch.cuda.synchronize)
        print(
            f"  640x480 1M Gaussians, RGB+ED+{q} queries ({q + 4} ch): fwd {f:6.2f} ms ({1e3 / f:5.0f} FPS)  fwd+bwd {fb:6.2f} ms"
        )
    model = random_cloud(1_000_000, 32, "cuda")
    pix = torch.stack([torch.randint(0, 480, (2000,)), torch.randint(0, 640, (2000,))], 1).cuda()
    for backend in ("gsplat", "torch"):
        f, fb = bench(model, pose, cam, args.repeats * 4, torch.cuda.synchronize, pixels=pix, backend=backend)
        print(
            f"  2000 pixels, 1M Gaussians, 32 queries, backend {backend}: fwd {f:6.2f} ms  fwd+bwd {fb:6.2f} ms"
        )


if __name__ == "__main__":
    main()
