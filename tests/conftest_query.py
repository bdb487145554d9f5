"""A small real M3 memory with known objects, built analytically (no training) for query tests.

Real classes throughout (GaussianModel, MemoryAttention, M3Memory.save/load, the language model's
real all-MiniLM-L6-v2 text encoder): the PSC bank holds the captions' embeddings and W_m maps a
one-hot principal query k straight to caption k, as a trained memory ideally would. Objects are
Gaussians on the surfaces of a sphere (the duck), a cylinder (the mug), another sphere (the teddy,
placed out of the default view) on a flat table, so ground-truth centres are exact.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from m3_core.geometry import PinholeCamera, transform_from_rt

CAPTIONS = ["a yellow rubber duck", "a red coffee mug", "a brown teddy bear", "a wooden table"]
TABLE_Z = 0.70
OBJECTS = {  # name: (caption index, centre in odom, colour)
    "duck": (0, np.array([0.05, -0.02, TABLE_Z + 0.035]), (0.95, 0.85, 0.1)),
    "mug": (1, np.array([-0.10, 0.08, TABLE_Z + 0.05]), (0.8, 0.1, 0.1)),
    "teddy": (2, np.array([0.60, 0.45, TABLE_Z + 0.04]), (0.5, 0.3, 0.15)),
}
QUERY_DIM = 16
CAMERA = PinholeCamera(fx=150.0, fy=150.0, cx=79.5, cy=59.5, width=160, height=120)


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """world_from_camera (OpenCV optical axes) of a camera at eye looking at target, world z up."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return transform_from_rt(np.stack([x, y, z], axis=1), eye)


WORLD_FROM_CAMERA = look_at(np.array([0.0, -0.40, 1.05]), np.array([0.0, 0.02, TABLE_Z]))


def _sphere(centre, radius, n):
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i
    return centre + radius * np.stack(
        [np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1
    )


def _cylinder(centre, radius, height, n_ring, n_levels):
    angles = np.linspace(0, 2 * math.pi, n_ring, endpoint=False)
    zs = np.linspace(-height / 2, height / 2, n_levels)
    side = np.array([[radius * np.cos(a), radius * np.sin(a), z] for z in zs for a in angles])
    rr = np.linspace(0, radius, 5)[1:]
    top = np.array([[r * np.cos(a), r * np.sin(a), height / 2] for r in rr for a in angles])
    return centre + np.vstack([side, top, [[0, 0, height / 2]]])


def build_memory(path: Path) -> Path:
    """Write the analytic memory to `path` (a directory) and return it."""
    from m3_core.features import get_model
    from m3_core.model.attention import AttentionConfig, MemoryAttention
    from m3_core.model.gaussians import GaussianModel
    from m3_core.model.memory import M3Memory

    xs, ys = np.meshgrid(np.arange(-0.30, 0.301, 0.015), np.arange(-0.24, 0.241, 0.015))
    parts = [(np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, TABLE_Z)], 1), 3, (0.6, 0.45, 0.3), 0.01)]
    duck = OBJECTS["duck"]
    parts.append((_sphere(duck[1], 0.035, 300), duck[0], duck[2], 0.005))
    mug = OBJECTS["mug"]
    parts.append((_cylinder(mug[1], 0.04, 0.1, 36, 10), mug[0], mug[2], 0.006))
    teddy = OBJECTS["teddy"]
    parts.append((_sphere(teddy[1], 0.04, 300), teddy[0], teddy[2], 0.006))
    means = np.vstack([p[0] for p in parts])
    colors = np.vstack([np.tile(p[2], (len(p[0]), 1)) for p in parts])
    queries = np.vstack([np.tile(np.eye(QUERY_DIM)[p[1]], (len(p[0]), 1)) for p in parts])
    scales = np.concatenate([np.full(len(p[0]), p[3]) for p in parts])
    n = len(means)
    gaussians = GaussianModel(
        means=torch.tensor(means, dtype=torch.float32),
        quats=torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1),
        log_scales=torch.tensor(np.log(scales), dtype=torch.float32)[:, None].repeat(1, 3),
        opacity_logits=torch.full((n,), 4.0),  # opacity 0.98
        colors=torch.tensor(colors, dtype=torch.float32),
        queries=torch.tensor(queries, dtype=torch.float32),
        query_dims={"language": QUERY_DIM},
    )
    language = get_model("language")
    psc = language.encode_text(CAPTIONS)  # [T, 384]
    w_m = torch.zeros(QUERY_DIM, psc.shape[1])
    w_m[: len(CAPTIONS)] = psc  # one-hot query k -> caption k
    w_m[len(CAPTIONS) :] = 1e-3 * torch.randn(
        QUERY_DIM - len(CAPTIONS), psc.shape[1], generator=torch.Generator().manual_seed(0)
    )
    # one-hot queries pick their caption through a sharp softmax: cosine / 0.05 (the M3 code's form)
    head = MemoryAttention(psc, QUERY_DIM, AttentionConfig(similarity="cosine", temperature=0.05), w_m=w_m)
    manifest = {
        "world_frame": "odom",
        "models": {"language": {"random_weights": False, "model_id": language.model_id}},
        "frames": {"train": [], "heldout": []},
    }
    return M3Memory(gaussians, {"language": head}, manifest).save(path)
