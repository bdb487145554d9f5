"""A small real M3 memory with known objects, built analytically (no training) for query tests.

Real classes throughout (GaussianModel, MemoryAttention, M3Memory.save/load, the language model's
real all-MiniLM-L6-v2 text encoder): the PSC bank holds the captions' embeddings and W_m maps a
one-hot principal query k straight to caption k, as a trained memory ideally would. Objects are
Gaussians on the surfaces of a sphere (the duck, 7 cm), a closed cylinder (the mug, 8 x 10 cm: too
wide for the 8 cm gripper once clearance counts) and another sphere (the teddy, 6 cm, out of the
default view) on a flat table, so ground-truth centres are exact.

build_memory(clutter=...) adds what made real queries go wrong: a small wooden block on the table
(captioned "a small wooden block", next to "a wooden table") and a floor 0.7 m below the table,
seen behind it in the default view. clutter="untrained" gives the floor a feature near the teddy's
caption, as a memory trained without labels there may have (its features are whatever the
attention head produces); clutter="background" gives it the background caption's embedding and
records that caption in the manifest, as a memory trained on the language model's background
label has.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from m3_core.geometry import PinholeCamera, transform_from_rt

CAPTIONS = ["a yellow rubber duck", "a red coffee mug", "a brown teddy bear", "a wooden table"]
BLOCK_CAPTION, BACKGROUND_CAPTION = 4, 5  # rows of the PSC bank when clutter is on
TABLE_Z = 0.70
OBJECTS = {  # name: (caption index, centre in odom, colour)
    "duck": (0, np.array([0.05, -0.02, TABLE_Z + 0.035]), (0.95, 0.85, 0.1)),
    "mug": (1, np.array([-0.10, 0.08, TABLE_Z + 0.05]), (0.8, 0.1, 0.1)),
    "teddy": (2, np.array([0.60, 0.45, TABLE_Z + 0.04]), (0.5, 0.3, 0.15)),
}
BLOCK_CENTRE = np.array([0.17, -0.10, TABLE_Z + 0.02])  # 4 cm wooden cube (clutter only)
BRICK_CAPTION = "a blue lego brick"
BRICK_CENTRE = np.array([-0.18, -0.12, TABLE_Z + 0.0125])  # 5 x 5 x 2.5 cm (brick=True only)
BRICK_SIZE = np.array([0.05, 0.05, 0.025])
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


def _cube(centre, size, n_side):
    g = np.linspace(-size / 2, size / 2, n_side)
    a, b = [m.ravel() for m in np.meshgrid(g, g)]
    h = np.full(a.size, size / 2)
    faces = [np.stack(f, 1) for f in ((a, b, h), (a, b, -h), (a, h, b), (a, -h, b), (h, a, b), (-h, a, b))]
    return centre + np.vstack(faces)


def _clutter_parts(floor_row: int) -> list[tuple]:
    """The wooden block and the floor (0.7 m below the table, seen behind it; a 1.8 cm grid, dense
    enough to be one cluster of Gaussians) as build_memory parts."""
    fx, fy = np.meshgrid(np.arange(-1.2, 1.21, 0.018), np.arange(1.2, 2.91, 0.018))
    floor = np.stack([fx.ravel(), fy.ravel(), np.zeros(fx.size)], 1)
    return [
        (_cube(BLOCK_CENTRE, 0.04, 6), BLOCK_CAPTION, (0.7, 0.55, 0.35), 0.004),
        (floor, floor_row, (0.35, 0.35, 0.38), 0.012),
    ]


def _brick() -> np.ndarray:
    """13 Gaussian means of the brick, as sparse as a short training leaves a small object (the
    built-in scene's 5 x 5 x 2 cm lego holds 25-28 after 400 steps, its underside unseen): a 3 x 3
    grid on the top face and the 4 corners 1.85 cm below it."""
    g = np.linspace(-0.019, 0.019, 3)
    top = [[x, y, BRICK_SIZE[2] / 2] for x in g for y in g]
    corners = [[x, y, -0.006] for x in g[::2] for y in g[::2]]
    return BRICK_CENTRE + np.array(top + corners)


def _bank(language, clutter: str) -> tuple[torch.Tensor, dict]:
    """PSC bank rows (captions, then the clutter's) and the manifest's preprocessing entry."""
    rows = language.encode_text(CAPTIONS)
    if not clutter:
        return rows, {}
    block = language.encode_text(["a small wooden block"])
    if clutter == "background":
        floor = language.encode_text(["background"])
        return torch.cat([rows, block, floor]), {"background_caption": "background"}
    # untrained floor: near the teddy's caption, as some of the floor pixels were
    noise = torch.randn(1, rows.shape[1], generator=torch.Generator().manual_seed(1))
    floor = rows[2:3] + 0.35 * noise / noise.norm()
    return torch.cat([rows, block, floor / floor.norm()]), {}


def build_memory(path: Path, clutter: str = "", brick: bool = False) -> Path:
    """Write the analytic memory to `path` (a directory) and return it.

    clutter: "" (duck, mug, teddy, table), "untrained" or "background" (module docstring).
    brick: add a 5 x 5 x 2.5 cm brick ("a blue lego brick", the PSC bank's last row) made of a
    few dozen Gaussians, as sparse as a trained memory's small objects."""
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
    parts.append((_sphere(teddy[1], 0.03, 300), teddy[0], teddy[2], 0.006))
    if clutter:
        parts += _clutter_parts(BACKGROUND_CAPTION)
    if brick:
        parts.append((_brick(), len(CAPTIONS) + (2 if clutter else 0), (0.1, 0.2, 0.8), 0.007))
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
    psc, preprocessing = _bank(language, clutter)  # [T, 384]
    if brick:
        psc = torch.cat([psc, language.encode_text([BRICK_CAPTION])])
    w_m = torch.zeros(QUERY_DIM, psc.shape[1])
    w_m[: len(psc)] = psc  # one-hot query k -> PSC row k
    w_m[len(psc) :] = 1e-3 * torch.randn(
        QUERY_DIM - len(psc), psc.shape[1], generator=torch.Generator().manual_seed(0)
    )
    # one-hot queries pick their caption through a sharp softmax: cosine / 0.05 (the M3 code's form)
    head = MemoryAttention(psc, QUERY_DIM, AttentionConfig(similarity="cosine", temperature=0.05), w_m=w_m)
    manifest = {
        "world_frame": "odom",
        "models": {
            "language": {
                "random_weights": False,
                "model_id": language.model_id,
                "preprocessing": preprocessing,
            }
        },
        "frames": {"train": [], "heldout": []},
    }
    return M3Memory(gaussians, {"language": head}, manifest).save(path)
