"""Pictures of a demo run: what a person looks at to trust the answer.

relevance_overlay.png   the query node's relevance heatmap over the rendered view
render_vs_capture.png   a captured keyframe beside the memory rendered at the same pose (RGB, depth)
top_down.png            the table from above: ground-truth objects, camera path, target, truth,
                        the gripper at the best grasp (green: held in physics, red: not)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial import ConvexHull

from m3_core.geometry.se3 import transform_points
from m3_core.grasp.gripper import gripper_boxes
from m3_core.grasp.types import Grasp
from m3_core.model.memory import M3Memory
from m3_core.robot import GripperConfig, load_robot_config
from m3_core.scene import atomic_write_png, load_scene
from m3_core.sim import read_objects


def gripper_footprints(grasp: dict[str, Any], gripper: GripperConfig) -> list[np.ndarray]:
    """[K,2] x-y outlines (convex hulls of the 8 corners) of the fingers and palm at a grasp, world."""
    g = Grasp(np.array(grasp["world_from_grasp"]), float(grasp["width_m"]), np.array(grasp["world_from_pregrasp"]),
              float(grasp["quality"]))  # fmt: skip
    outlines = []
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    for world_from_box, size in gripper_boxes(g, gripper):
        corners = transform_points(world_from_box, 0.5 * signs * size)[:, :2]
        outlines.append(corners[ConvexHull(corners).vertices])
    return outlines


def _draw_gripper(axis: Any, grasp: dict[str, Any], physics: dict[str, Any]) -> None:
    import matplotlib.pyplot as plt  # local: heavy plotting library, only when pictures are drawn

    held = physics.get("success")
    verdict = "held in physics" if held else ("failed in physics" if physics else "not checked")
    for i, outline in enumerate(gripper_footprints(grasp, load_robot_config().gripper)):
        axis.add_patch(plt.Polygon(outline, closed=True, fc="tab:green" if held else "tab:red", alpha=0.5,
                                   ec="k", lw=0.8, label=f"gripper at the grasp ({verdict})" if i == 0 else None))  # fmt: skip


def write_pictures(
    out: Path,
    scene_dir: Path,
    memory_dir: Path,
    gt_dir: Path,
    report: dict[str, Any],
    overlay: np.ndarray | None,
) -> list[str]:
    import matplotlib  # local: heavy plotting library, only when pictures are drawn

    matplotlib.use("Agg")


    written = []
    if overlay is not None:
        atomic_write_png(out / "relevance_overlay.png", overlay)
        written.append("relevance_overlay.png")
    scene = load_scene(scene_dir)
    _render_vs_capture(out / "render_vs_capture.png", scene, memory_dir)
    written.append("render_vs_capture.png")
    _top_down(out / "top_down.png", scene, gt_dir, report)
    written.append("top_down.png")
    return [str(out / w) for w in written]


def _render_vs_capture(path: Path, scene: Any, memory_dir: Path) -> None:
    """The middle keyframe beside the memory rendered at its pose: RGB on top, depth below."""
    import matplotlib.pyplot as plt  # local: heavy plotting library, only when pictures are drawn


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
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _top_down(path: Path, scene: Any, gt_dir: Path, report: dict[str, Any]) -> None:
    """The table from above: objects, camera path, target vs truth, the gripper at the best grasp."""
    import matplotlib.pyplot as plt  # local: heavy plotting library, only when pictures are drawn


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
    if report.get("grasp_world"):
        _draw_gripper(axis, report["grasp_world"], report.get("physics") or {})
    axis.set_aspect("equal")
    axis.set_xlabel("x (m, odom)")
    axis.set_ylabel("y (m, odom)")
    axis.set_title(f"top-down: '{report['query']}'")
    axis.legend(loc="best", fontsize=8)
    axis.autoscale_view()
    fig.savefig(path, dpi=90)
    plt.close(fig)
