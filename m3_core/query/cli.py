"""`m3 query MEMORY "text"`: text -> grasp target without ROS, with overlay pictures.

    m3 query runs/memory "yellow bath duck" --scene runs/scene --frame frame_000012 --out /tmp/q
    m3 query runs/memory "cup" --pose 0.4 0 1.1 0.92 -0.38 0 0 --intrinsics 600 600 319.5 239.5 640 480
    m3 query runs/memory "toy bear" --3d --json

The view is a training frame's pose (--frame; default: the scene's first frame) or --pose. The
scene (for --frame and intrinsics) is --scene, else the one the memory was trained from when its
manifest names it. With --depth the frame's recorded depth stands in for the live depth camera.
Writes overlay.png (relevance over the rendered colour, mask outline, grasp axes), relevance.png,
mask.png and result.json to --out. --json prints the answer's instance (centre, size, points), its
grasps (pose, pre-grasp, width, quality) and every candidate with why it was refused.
Exit codes: 0 found, 1 not found, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from m3_core.config import from_dict, read_yaml
from m3_core.errors import M3Error
from m3_core.geometry import PinholeCamera, matrix_from_pose
from m3_core.model.memory import M3Memory
from m3_core.query.config import QueryConfig
from m3_core.query.engine import SEARCH_3D_MODES, QueryEngine
from m3_core.query.overlay import draw_target, heatmap, mask_image, overlay_relevance
from m3_core.query.result import QueryResult
from m3_core.query.view import View, render_camera_for
from m3_core.robot import load_robot_config
from m3_core.scene import atomic_write_bytes, atomic_write_png, load_scene

log = logging.getLogger(__name__)

# 1920 x 1200 (2.3 MP): above the robot's cameras; a render of CLIP features at this size takes ~5 GB
MAX_RENDER_PIXELS = 1920 * 1200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("memory", type=Path, help="memory directory (manifest.json + memory.safetensors)")
    parser.add_argument("text", help='object to find, e.g. "yellow bath duck"')
    view = parser.add_mutually_exclusive_group()
    view.add_argument("--frame", help="render from this training frame's pose (needs the scene)")
    view.add_argument(
        "--pose",
        type=float,
        nargs=7,
        metavar=("X", "Y", "Z", "QX", "QY", "QZ", "QW"),
        help="camera (optical frame, OpenCV axes) pose in the memory's world frame",
    )
    view.add_argument(
        "--3d", dest="only_3d", action="store_true", help="3D query over the Gaussians, no view"
    )
    parser.add_argument(
        "--scene", type=Path, help="scene directory for --frame / intrinsics (default: manifest's)"
    )
    parser.add_argument(
        "--intrinsics",
        type=float,
        nargs=6,
        metavar=("FX", "FY", "CX", "CY", "W", "H"),
        help="camera for --pose (default: the scene's first frame camera)",
    )
    parser.add_argument("--depth", action="store_true", help="use the frame's recorded depth as live depth")
    parser.add_argument("--model", default="", help='feature model ("" = language if held, else the first)')
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--width", type=int, default=0, help="render width (0 = camera size)")
    parser.add_argument("--threshold", type=float, help="relevance threshold (default from QueryConfig)")
    parser.add_argument("--min-similarity", type=float, help="cosine the match must reach")
    parser.add_argument("--grasp-mode", choices=("top_down", "view_ray"), help="approach direction")
    parser.add_argument(
        "--search-3d", choices=SEARCH_3D_MODES, default="fallback", help="Gaussian 3D query use"
    )
    parser.add_argument(
        "--armbase",
        type=float,
        nargs=7,
        metavar=("X", "Y", "Z", "QX", "QY", "QZ", "QW"),
        help="arm base pose in the memory's world frame (enables the reach check)",
    )
    parser.add_argument(
        "--robot", type=Path, help="robot YAML (gripper, arm; default config/robot_b1z1.yaml)"
    )
    parser.add_argument(
        "--config", type=Path, help="YAML with QueryConfig fields (section 'query' if present)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", type=Path, help="write overlay PNGs and result.json here")


def query_config_from_args(args: argparse.Namespace) -> QueryConfig:
    data: dict[str, Any] = {}
    if args.config:
        raw = read_yaml(args.config)
        data = dict(raw.get("query", raw))
    overrides = {
        "relevance_threshold": args.threshold,
        "min_similarity": args.min_similarity,
        "grasp_mode": args.grasp_mode,
        "render_width": args.width or None,
    }
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(QueryConfig, data, where="query config")


def _scene_path(args: argparse.Namespace, manifest: dict[str, Any]) -> Path | None:
    if args.scene:
        return args.scene
    scene = (manifest.get("training") or {}).get("scene") or manifest.get("scene")
    return Path(scene) if scene and Path(scene).exists() else None


def camera_from_intrinsics(values: list[float]) -> PinholeCamera:
    """The --intrinsics camera; W and H must be whole pixel counts."""
    fx, fy, cx, cy, w, h = values
    if not (w >= 1 and h >= 1 and w == int(w) and h == int(h)):
        raise ValueError(f"--intrinsics W H must be positive whole pixel counts, got {w:g} x {h:g}")
    return PinholeCamera(fx, fy, cx, cy, int(w), int(h))


def check_render_size(camera: PinholeCamera, config: QueryConfig) -> None:
    """Refuse (ValueError) a render past MAX_RENDER_PIXELS: each pixel holds colour, depth, the
    queries and a feature vector, so a typo such as 64000 for 640 would ask for tens of GB."""
    render = render_camera_for(camera, config)
    if render.width * render.height > MAX_RENDER_PIXELS:
        raise ValueError(
            f"the view would be rendered at {render.width} x {render.height} pixels; at most "
            f"{MAX_RENDER_PIXELS / 1e6:.1f} megapixels are rendered (check --intrinsics W H, or "
            "render smaller with --width)"
        )


def check_out_dir(out: Path | None) -> None:
    """--out must be a directory or a path that can become one (checked before the query runs)."""
    if out is None:
        return
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory; give a directory for the outputs")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out {out} lies under {parent}, which is a file, not a directory")
            break


def resolve_view(args: argparse.Namespace, manifest: dict[str, Any]):
    """(world_from_camera, camera, depth_m or None, description) for the requested view."""

    scene_path = _scene_path(args, manifest)
    scene = load_scene(scene_path) if scene_path else None
    if args.pose is not None:
        world_from_camera = matrix_from_pose(np.array(args.pose[:3]), np.array(args.pose[3:]))
        if args.intrinsics:
            camera = camera_from_intrinsics(args.intrinsics)
        elif scene is not None:
            camera = scene.frames[0].camera
        else:
            raise ValueError("--pose needs --intrinsics or a scene (--scene) to take the camera from")
        if args.depth:
            raise ValueError("--depth needs --frame (a recorded depth image belongs to a frame's pose)")
        return world_from_camera, camera, None, "given pose"
    if scene is None:
        raise ValueError("no view: give --frame/--pose with --scene (the manifest names no scene), or --3d")
    index = 0
    if args.frame:
        names = [f.name for f in scene.frames]
        if args.frame not in names:
            raise ValueError(f"no frame {args.frame!r} in {scene.root}; frames: {names[0]} .. {names[-1]}")
        index = names.index(args.frame)
    frame = scene.frames[index]
    depth = scene.read_depth_m(index) if args.depth else None
    if args.depth and depth is None:
        raise ValueError(f"frame {frame.name} has no depth image")
    return frame.world_from_camera, frame.camera, depth, f"frame {frame.name}"


def write_outputs(out: Path, result: QueryResult, summary: dict) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if result.relevance is not None and result.rgb is not None:
        image = overlay_relevance(result.rgb, result.relevance, result.mask)
        if result.found and result.render_camera is not None:
            image = draw_target(
                image, result.render_camera, result.world_from_camera, result.world_from_grasp
            )
        atomic_write_png(out / "overlay.png", image)
        atomic_write_png(out / "relevance.png", heatmap(result.relevance))
        atomic_write_png(out / "render.png", result.rgb)
        written += [out / "overlay.png", out / "relevance.png", out / "render.png"]
        if result.mask is not None:
            atomic_write_png(out / "mask.png", mask_image(result.mask))
            written.append(out / "mask.png")
    atomic_write_bytes(out / "result.json", (json.dumps(summary, indent=1) + "\n").encode())
    return written + [out / "result.json"]


def _armbase(args: argparse.Namespace) -> np.ndarray | None:
    if args.armbase is None:
        return None
    return matrix_from_pose(np.array(args.armbase[:3]), np.array(args.armbase[3:]))


def run(args: argparse.Namespace) -> int:
    try:
        check_out_dir(args.out)
        config = query_config_from_args(args)
        robot = load_robot_config(args.robot)
        memory = M3Memory.load(args.memory, device=args.device)
        memory.eval()
        engine = QueryEngine(memory, config, robot)
        view, where = None, "3D (Gaussians)"
        if not args.only_3d:
            world_from_camera, camera, depth, where = resolve_view(args, memory.manifest)
            check_render_size(camera, config)
            view = View(world_from_camera, camera, depth)
        result = engine.query(
            args.text,
            model=args.model,
            view=view,
            world_from_armbase=_armbase(args),
            search_3d=args.search_3d,
        )
    except (ValueError, TypeError, M3Error) as err:
        print(f"m3 query: {err}", file=sys.stderr)
        return 2
    summary = {"view": where, **result.summary(config.world_up)}
    if args.out:
        try:
            for path in write_outputs(args.out, result, summary):
                log.info("wrote %s", path)
        except (OSError, M3Error) as err:
            print(f"m3 query: cannot write the outputs to {args.out}: {err}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(summary, indent=1))
    elif result.found:
        print(_describe(result, where))
    else:
        print(result.message)
    return 0 if result.found else 1


def _describe(result: QueryResult, where: str) -> str:
    p = result.position
    line = (
        f"{result.text!r} ({result.model}, {where}): centre ({p[0]:.3f}, {p[1]:.3f}, {p[2]:.3f}) m in the "
        f"world, score {result.score:.2f}, extent {np.round(result.extent, 3).tolist()} m, "
        f"{result.num_points} points, {result.timings_ms['total']:.0f} ms"
    )
    if result.grasps:
        g = result.grasps[0]
        line += f"; best of {len(result.grasps)} grasps: width {g.width_m:.3f} m, quality {g.quality:.2f} ({result.grasp_planner})"
    return line
