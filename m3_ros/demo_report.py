"""Pictures of a demo run: what a person looks at to trust the answer.

relevance_overlay.png   the query node's relevance heatmap over the rendered view
render_vs_capture.png   a captured keyframe beside the memory rendered at the same pose (RGB, depth)
top_down.png            the table from above: ground-truth objects, camera path, target, truth
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def write_pictures(
    out: Path,
    scene_dir: Path,
    memory_dir: Path,
    gt_dir: Path,
    report: dict[str, Any],
    overlay: np.ndarray | None,
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from m3_core.model.memory import M3Memory
    from m3_core.scene import atomic_write_png, load_scene
    from m3_core.sim import read_objects

    written = []
    if overlay is not None:
        atomic_write_png(out / "relevance_overlay.png", overlay)
        written.append("relevance_overlay.png")

    scene = load_scene(scene_dir)
    memory = M3Memory.load(memory_dir, device="cpu")
    i = len(scene) // 2
    frame = scene.frames[i]
    cam = frame.camera.scaled(min(frame.camera.width, 320), min(frame.camera.height, 240))
    with torch.no_grad():
        rgb, depth, _features, _alpha = memory.render(
            torch.as_tensor(frame.world_from_camera, dtype=torch.float32), cam, models=[]
        )
    captured = scene.read_rgb(i)
    captured_depth = scene.read_depth_m(i)
    fig, ax = plt.subplots(2, 2, figsize=(9, 7))
    ax[0, 0].imshow(captured)
    ax[0, 0].set_title(f"captured {frame.name}")
    ax[0, 1].imshow(rgb.clamp(0, 1).numpy())
    ax[0, 1].set_title("M3 memory, rendered at the same pose")
    vmax = (
        float(np.percentile(captured_depth[captured_depth > 0], 98)) if captured_depth is not None else None
    )
    if captured_depth is not None:
        ax[1, 0].imshow(captured_depth, cmap="turbo", vmin=0, vmax=vmax)
        ax[1, 0].set_title("captured depth (m)")
    im = ax[1, 1].imshow(depth.numpy(), cmap="turbo", vmin=0, vmax=vmax)
    ax[1, 1].set_title("rendered depth (m)")
    fig.colorbar(im, ax=ax[1, :], shrink=0.8)
    for a in ax.flat:
        a.axis("off")
    fig.savefig(out / "render_vs_capture.png", dpi=90)
    plt.close(fig)
    written.append("render_vs_capture.png")

    fig, axis = plt.subplots(figsize=(7, 7))
    for obj in read_objects(gt_dir):
        lo, hi = np.array(obj["box_min_world"]), np.array(obj["box_max_world"])
        style = (
            {"fill": False, "ls": ":", "ec": "0.5"} if obj.get("support") else {"fill": True, "alpha": 0.35}
        )
        axis.add_patch(plt.Rectangle(lo[:2], *(hi - lo)[:2], **style))
        if not obj.get("support"):
            axis.annotate(obj["name"], lo[:2] + (hi - lo)[:2] / 2, ha="center", fontsize=9)
    centres = np.array([f.world_from_camera[:3, 3] for f in scene.frames])
    axis.plot(centres[:, 0], centres[:, 1], ".-", color="tab:gray", ms=3, lw=0.7, label="camera keyframes")
    if report.get("success"):
        t, g = np.array(report["target_world"]), np.array(report["truth_world"])
        axis.plot(*g[:2], "g+", ms=16, mew=2, label="ground truth")
        axis.plot(*t[:2], "rx", ms=12, mew=2, label=f"target ({report['error_m'] * 100:.1f} cm off)")
    axis.set_aspect("equal")
    axis.set_xlabel("x (m, odom)")
    axis.set_ylabel("y (m, odom)")
    axis.set_title(f"top-down: '{report['query']}'")
    axis.legend(loc="best", fontsize=8)
    axis.autoscale_view()
    fig.savefig(out / "top_down.png", dpi=90)
    plt.close(fig)
    written.append("top_down.png")
    return [str(out / w) for w in written]
