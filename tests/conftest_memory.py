"""A small closed-loop scene for the memory tests: Gaussians -> rendered RGB/depth/masks -> scene dir.

Ground truth is a set of random Gaussians (a textured floor patch and a few coloured blobs); the
real rasterizer renders RGB, depth and a one-hot object id per view; the scene is written with the
real scene writer; the "language" grids hold one caption vector per object (zeros on the floor, as
the language-mask model has outside masks) and the "clip" grids a smooth random field of the object
ids plus the colour, so a memory trained on the scene can be checked against what made it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the usual name)

from m3_core.features.cache import SceneFeatures
from m3_core.geometry.camera import PinholeCamera
from m3_core.model.gaussians import GaussianModel
from m3_core.render import rasterize, torch_backend
from m3_core.scene import (
    Frame,
    Scene,
    atomic_write_json,
    atomic_write_png,
    depth_png_from_m,
    load_scene,
    save_scene,
)
from m3_core.training.trainer import TrainConfig, train_memory


@contextmanager
def per_pixel_compositing() -> Iterator[None]:
    """The CPU rasterizer's per-pixel (reference) compositing: the synthetic scenes' images stay
    bit-identical to those the recorded training losses and query tolerances were made with (the
    tile compositor agrees to float32 rounding, which moves a few uint8 pixels)."""
    saved = torch_backend.TILE_COMPOSITE
    torch_backend.TILE_COMPOSITE = False
    try:
        yield
    finally:
        torch_backend.TILE_COMPOSITE = saved

N_OBJECTS = 3


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """world_from_camera (OpenCV axes) of a camera at eye looking at target, world z up."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m


def ground_truth_gaussians(seed: int = 0) -> GaussianModel:
    rng = np.random.default_rng(seed)
    g = np.mgrid[-0.3:0.3:0.012, -0.3:0.3:0.012].reshape(2, -1).T
    floor = np.concatenate([g, np.zeros((len(g), 1))], axis=1)
    checker = ((np.floor(g[:, 0] / 0.1) + np.floor(g[:, 1] / 0.1)) % 2)[:, None]
    floor_col = 0.25 + 0.5 * checker * np.array([[0.9, 0.8, 0.6]]) + 0.05 * rng.random((len(g), 3))
    pts, cols, ids = [floor], [floor_col], [np.zeros(len(g), int)]
    palette = np.array([[0.9, 0.2, 0.1], [0.1, 0.7, 0.2], [0.2, 0.3, 0.9]])
    for k in range(N_OBJECTS):
        centre = np.array([0.15 * np.cos(2.1 * k), 0.15 * np.sin(2.1 * k), 0.05])
        p = centre + rng.normal(scale=[0.03, 0.03, 0.03], size=(250, 3))
        p[:, 2] = np.abs(p[:, 2])
        pts.append(p)
        cols.append(np.clip(palette[k] + 0.05 * rng.normal(size=(250, 3)), 0, 1))
        ids.append(np.full(250, k + 1))
    points, colors, obj = np.concatenate(pts), np.concatenate(cols), np.concatenate(ids)
    model = GaussianModel.from_points(
        points, colors, {"id": N_OBJECTS + 1}, init_scale=0.009, init_opacity=0.9
    )
    with torch.no_grad():
        model.queries.copy_(F.one_hot(torch.as_tensor(obj), N_OBJECTS + 1).float())
    return model


def make_scene(
    root: Path, n_frames: int = 12, width: int = 64, height: int = 48, seed: int = 0, depth: bool = True
) -> tuple[Scene, dict[str, SceneFeatures]]:
    """Write the scene dir under root; return it with SceneFeatures for "language" and "clip"."""
    gt = ground_truth_gaussians(seed)
    cam = PinholeCamera(0.9 * width, 0.9 * width, (width - 1) / 2, (height - 1) / 2, width, height)
    rng = np.random.default_rng(seed + 1)
    captions = torch.nn.functional.normalize(
        torch.randn(N_OBJECTS, 24, generator=torch.Generator().manual_seed(seed)), dim=1
    )
    clip_map = torch.randn(N_OBJECTS + 1 + 3, 32, generator=torch.Generator().manual_seed(seed + 7))
    frames, lang, clip, caption_map = [], [], [], {}
    names_of = ["a red box", "a green ball", "a blue cup"]
    for i in range(n_frames):
        angle = 2 * np.pi * i / n_frames + 0.1 * rng.standard_normal()
        eye = np.array([0.55 * np.cos(angle), 0.55 * np.sin(angle), 0.35 + 0.05 * np.sin(3 * angle)])
        pose = look_at(eye, np.array([0.0, 0.0, 0.03]))
        with torch.no_grad(), per_pixel_compositing():
            out = rasterize(gt, torch.as_tensor(pose), cam, background=torch.zeros(3))
        name = f"frame_{i:06d}"
        rgb = (out.rgb.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        depth_m = torch.where(out.alpha > 0.5, out.depth, torch.zeros_like(out.depth)).numpy()
        atomic_write_png(root / "images" / f"{name}.png", rgb)
        ids = out.queries.argmax(-1)
        ids = torch.where((out.queries.max(-1).values > 0.5) & (ids > 0), ids, torch.zeros_like(ids))
        atomic_write_png(root / "masks" / f"{name}.png", ids.numpy().astype(np.uint16))
        caption_map[name] = {str(k + 1): names_of[k] for k in range(N_OBJECTS)}
        if depth:
            atomic_write_png(root / "depth" / f"{name}.png", depth_png_from_m(depth_m))
        frames.append(
            Frame(
                name=name, stamp_ns=i * 10**8, camera=cam, world_from_camera=pose,
                image_path=root / "images" / f"{name}.png",
                depth_path=(root / "depth" / f"{name}.png") if depth else None,
            )
        )  # fmt: skip
        # feature grids at half resolution, like a ViT patch grid over the image
        q = F.avg_pool2d(out.queries.permute(2, 0, 1)[None], 4)[0].permute(1, 2, 0)  # [h, w, K+1]
        c = F.avg_pool2d(out.rgb.permute(2, 0, 1)[None], 4)[0].permute(1, 2, 0)
        obj = q.argmax(-1)
        has = (q.max(-1).values > 0.5) & (obj > 0)
        lang.append(torch.where(has[..., None], captions[(obj - 1).clamp(min=0)], torch.zeros(())))
        clip.append(F.normalize(torch.cat([q, c], dim=-1) @ clip_map, dim=-1))
    atomic_write_json(root / "masks" / "captions.json", caption_map)
    scene = Scene(root=root, frames=frames, source="sim")
    save_scene(scene)
    names = [f.name for f in frames]
    features = {
        "language": SceneFeatures("language", "synthetic:captions", 24, names, torch.stack(lang), False),
        "clip": SceneFeatures("clip", "synthetic:field", 32, names, torch.stack(clip), True),
    }
    return scene, features


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread: on a busy 2-core box two threads spin against each other (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory, one_thread):
    """(scene, features) of a 12-view 48x36 synthetic scene."""
    root = tmp_path_factory.mktemp("memscene") / "scene"
    scene, features = make_scene(root, n_frames=12, width=48, height=36)
    return load_scene(root), features


@pytest.fixture(scope="module")
def small_memory(small_scene):
    """A memory trained briefly on small_scene (language + clip)."""
    scene, features = small_scene
    config = TrainConfig(iters=40, train_width=0, points_per_view=300, patch_size=16)
    return train_memory(scene, features, config)
