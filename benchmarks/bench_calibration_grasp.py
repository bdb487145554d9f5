"""Does `m3 calibrate` give back the query/grasp accuracy that a wrong hand-eye costs?

    .venv/bin/python benchmarks/bench_calibration_grasp.py --out /tmp/cg [--frames 90] [--size 320x240]
        [--source poses|sfm] [--iters 400] [--views 2] [--rerecord] [--json FILE]

One simulated scan (config/sim_default.yaml), rendered with the true extrinsics of
config/robot_b1z1.yaml, is recorded with the true robot YAML on /tf_static and with a YAML whose hand-eye is 10 mm and
2 deg off (spec field published_robot_config; what a robot with an uncalibrated camera records).
The scenes, each by `m3 bag2scene` and `m3 sim masks` (ground-truth masks):

  A  the bag with the true YAML                      (the calibration-free reference)
  B  the bag with the off YAML                       (what the user gets before calibrating)
  C  B after `m3 calibrate --config OFF.yaml --apply` (poses recomputed with the corrected YAML)
  D  (--rerecord) the scan recorded again with the corrected YAML on /tf_static

Each gets a language memory (`m3 train SCENE --models language --iters N --device cpu --threads 1`)
and every object is asked by its name ("duck") and its caption ("yellow rubber duck") through
`QueryEngine.query` (the path of `m3 query` and the query node): from the --views keyframes whose
GT masks show it largest (memory depth) and in 3D over the Gaussians. Printed per scene: object-centre error against the simulator's box centre
(mean / median / max over the found answers), how many were found and aimed at the right object,
and where a grasp is answered the grasp point's distance from the object's true box (0 = inside).
--source poses calibrates from the simulator's exact camera poses (<bag>_gt/cameras.json);
--source sfm runs pycolmap SfM on C's images. Existing bags, scenes and memories under OUT are
reused (delete them to redo a step).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_calibrate import ROBOT_YAML, object_error_mm, write_off_yaml  # noqa: E402
from bench_grasp import aimed_at  # noqa: E402
from bench_query import best_views  # noqa: E402

from m3_core.capture.handeye import correction  # noqa: E402
from m3_core.robot import load_robot_config  # noqa: E402

M3 = [sys.executable, "-m", "m3_ros.cli"]


def run_m3(args: list[str], log: list[str]) -> float:
    """Run one `m3` command (a real subprocess, as a user would); returns its wall time."""
    cmd = [*M3, *map(str, args)]
    log.append("m3 " + " ".join(map(str, args)))
    print("$", log[-1], flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    return time.perf_counter() - t0


def off_yaml(out: Path) -> Path:
    """The robot YAML with the hand-eye 10 mm ([+6, -8, 0] mm, camera frame) and 2 deg off."""
    return write_off_yaml(out / "robot_off.yaml")


def record(out: Path, name: str, frames: int, size: tuple[int, int], published: Path | None) -> Path:
    """Render the scan (true extrinsics) into OUT/NAME, its /tf_static from `published`."""
    from m3_core.sim import config_dir, generate, load_spec, with_overrides

    bag = out / name
    if not bag.exists():
        spec, spec_dir = load_spec(config_dir() / "sim_default.yaml")
        spec = with_overrides(spec, frames=frames, size=size)
        if published is not None:
            spec = replace(spec, published_robot_config=str(published))
        generate(spec, spec_dir, bag)
    return bag


def query_scene(memory_dir: Path, scene_dir: Path, gt_dir: Path, views: int, width: int) -> list[dict]:
    """Every object by name from its best `views` keyframes and in 3D; one row per query."""
    from m3_core.model.memory import M3Memory
    from m3_core.query import QueryConfig, QueryEngine, View
    from m3_core.scene import load_scene

    gt = json.loads((gt_dir / "objects.json").read_text())
    objects = [o for o in gt["objects"] if not o.get("support")]
    table = next(o for o in gt["objects"] if o.get("support"))
    centres = np.array([o["box_center_world"] for o in objects])
    memory = M3Memory.load(memory_dir, device="cpu").eval()
    config = QueryConfig(render_width=width)
    engine = QueryEngine(memory, config)
    scene = load_scene(scene_dir)
    masks = [scene.read_mask(i) for i in range(len(scene.frames))]
    rows = []
    for obj in objects:
        where = [(scene.frames[i].name, scene.frames[i]) for i in best_views(scene, obj, views, masks)]
        caption = obj["caption"].removeprefix("a ").removeprefix("an ")  # "a yellow rubber duck"
        asks = [(text, v) for text in dict.fromkeys([obj["name"], caption]) for v in [*where, ("3d", None)]]
        for text, (view_name, frame) in asks:
            view = None if frame is None else View(frame.world_from_camera, frame.camera, None)
            t0 = time.perf_counter()
            res = engine.query(text, model="language", view=view, search_3d="never" if view else "fallback")
            row = {
                "object": obj["name"],
                "text": text,
                "view": view_name,
                "found": bool(res.found),
                "s": time.perf_counter() - t0,
            }
            if res.found:
                pos = np.asarray(res.position)
                nearest = objects[int(np.argmin(np.linalg.norm(centres - pos, axis=1)))]["name"]
                row.update(
                    centre_error_mm=float(np.linalg.norm(pos - obj["box_center_world"])) * 1e3,
                    nearest=nearest,
                )
                if res.grasps:  # the planner's best grasp: how far its point is from the object's true box
                    g = res.world_from_grasp[:3, 3]
                    lo, hi = np.asarray(obj["box_min_world"]), np.asarray(obj["box_max_world"])
                    row["grasp_box_mm"] = (
                        float(np.linalg.norm(np.maximum(0, np.maximum(lo - g, g - hi)))) * 1e3
                    )
                    row["grasp_on"] = aimed_at(g, objects, table)
            else:
                row["message"] = res.message[:100]
            rows.append(row)
            err = f"{row['centre_error_mm']:6.1f} mm" if res.found else "not found"
            print(f"  {text[:20]:20s} {view_name:14s} {err}", flush=True)
    return rows


def stats(rows: list[dict]) -> dict:
    found = [r for r in rows if r["found"]]
    right = [r for r in found if r["nearest"] == r["object"]]
    e = np.array([r["centre_error_mm"] for r in right]) if right else np.array([np.nan])
    g = [r for r in found if "grasp_box_mm" in r]
    gb = np.array([r["grasp_box_mm"] for r in g]) if g else np.array([np.nan])
    return {
        "queries": len(rows), "found": len(found), "right_object": len(right),
        "centre_mean_mm": float(e.mean()), "centre_median_mm": float(np.median(e)), "centre_max_mm": float(e.max()),
        "grasps": len(g), "grasp_on_object": sum(r["grasp_on"] == r["object"] for r in g),
        "grasp_box_mean_mm": float(gb.mean()), "grasp_box_max_mm": float(gb.max()),
    }  # fmt: skip


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="work folder (bags, scenes, memories)")
    ap.add_argument("--frames", type=int, default=90, help="camera frames of the scan")
    ap.add_argument("--size", default="320x240")
    ap.add_argument(
        "--source", choices=("poses", "sfm"), default="poses", help="what m3 calibrate compares with"
    )
    ap.add_argument("--iters", type=int, default=400, help="m3 train --iters")
    ap.add_argument("--views", type=int, default=2, help="keyframes per object to query from")
    ap.add_argument("--width", type=int, default=320, help="query render width")
    ap.add_argument(
        "--rerecord", action="store_true", help="also D: the scan recorded with the corrected YAML"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write all numbers here")
    a = ap.parse_args()
    a.out = a.out.absolute()
    return a


def scene_from_bag(bag: Path, scene: Path, log: list[str], extra: tuple = ()) -> None:
    """`m3 bag2scene` then `m3 sim masks` (the simulator's ground-truth masks and captions)."""
    if not (scene / "scene.json").exists():
        run_m3(["bag2scene", bag, scene, *extra, "--overwrite"], log)
        run_m3(["sim", "masks", scene, f"{bag}_gt"], log)


def make_scenes(a: argparse.Namespace, log: list[str], times: dict) -> tuple[dict, dict, Path, Path]:
    """Scenes A (true YAML), B (hand-eye off), C (B calibrated) and, with --rerecord, D (recorded
    again with the corrected YAML). Returns bags, scenes, the off YAML and the corrected YAML."""
    w, h = (int(v) for v in a.size.split("x"))
    t0 = time.perf_counter()
    off = off_yaml(a.out)
    bags = {
        "A": record(a.out, "bag_true", a.frames, (w, h), None),
        "B": record(a.out, "bag_off", a.frames, (w, h), off),
    }
    gt = Path(f"{bags['B']}_gt")
    times["record_s"] = time.perf_counter() - t0
    scenes = {k: a.out / f"scene_{k}" for k in "ABC"}
    for k in "AB":
        scene_from_bag(bags[k], scenes[k], log)
    calibrated = a.out / "robot_calibrated.yaml"
    if not (scenes["C"] / "scene.json").exists():
        shutil.rmtree(scenes["C"], ignore_errors=True)
        shutil.copytree(scenes["B"], scenes["C"])
        source = ["--poses", gt] if a.source == "poses" else ["--sfm", a.out / "sfm"]
        times["calibrate_s"] = run_m3(
            ["calibrate", scenes["C"], *source, "--config", off, "--out", calibrated, "--apply"], log
        )
    if a.rerecord:  # D: the robot publishes the corrected YAML and the scan is recorded again
        bags["D"] = record(a.out, "bag_calibrated", a.frames, (w, h), calibrated)
        scenes["D"] = a.out / "scene_D"
        scene_from_bag(bags["D"], scenes["D"], log, ("--config", calibrated))
    return bags, scenes, off, calibrated


def measure_scene(a: argparse.Namespace, k: str, bags: dict, scenes: dict, log: list[str], times: dict) -> dict:
    """Train scene k's memory (once) and query it; its numbers and rows."""
    memory = a.out / f"memory_{k}"
    if not (memory / "manifest.json").exists():
        times[f"train_{k}_s"] = run_m3(
            ["train", scenes[k], "--out", memory, "--models", "language", "--iters", a.iters,
             "--device", "cpu", "--threads", "1", "--quiet"], log,
        )  # fmt: skip
    print(f"scene {k}: queries", flush=True)
    truth = Path(f"{bags['B' if k == 'C' else k]}_gt")  # the same scan; stamps match their bag
    rows = query_scene(memory, scenes[k], truth, a.views, a.width)
    placement = object_error_mm(scenes[k], truth)
    return {
        "keyframes": len(json.loads((scenes[k] / "scene.json").read_text())["frames"]),
        "pose_placement_mm": {"mean": placement[0], "max": placement[1]},
        **stats(rows), "rows": rows,
    }  # fmt: skip


SCENE_NAMES = {
    "A": "A true YAML",
    "B": "B hand-eye 1 cm, 2 deg off",
    "C": "C = B calibrated (--apply)",
    "D": "D recorded again, new YAML",
}


def print_result(a: argparse.Namespace, result: dict) -> None:
    src = "simulator's exact poses (--poses <bag>_gt)" if a.source == "poses" else "pycolmap SfM (--sfm)"
    print(f"\n{a.frames} frames @ {a.size}, calibrated from {src}: hand-eye after "
          f"{result['hand_eye_error_after']['mm']:.2f} mm, {result['hand_eye_error_after']['deg']:.3f} deg")  # fmt: skip
    print("scene                        keyframes  poses place objects (mean/max)  found  right  centre error mean / median / max   grasps on object  grasp-box mean / max")  # fmt: skip
    for k, s in result["scenes"].items():
        print(
            f"{SCENE_NAMES[k]:28s} {s['keyframes']:9d}  {s['pose_placement_mm']['mean']:8.2f} / {s['pose_placement_mm']['max']:6.2f} mm"
            f"          {s['found']:2d}/{s['queries']:2d}  {s['right_object']:2d}     "
            f"{s['centre_mean_mm']:6.1f} / {s['centre_median_mm']:6.1f} / {s['centre_max_mm']:6.1f} mm"
            f"      {s['grasp_on_object']:2d}/{s['grasps']:2d}           "
            f"{s['grasp_box_mean_mm']:5.1f} / {s['grasp_box_max_mm']:5.1f} mm"
        )  # fmt: skip
    objects = list(dict.fromkeys(r["object"] for r in result["scenes"]["A"]["rows"]))
    print("\nper object, mean centre error of the right-object answers (mm; found/asked):")
    print("scene " + "".join(f"{o:>16s}" for o in objects))
    for k, s in result["scenes"].items():
        cells = []
        for o in objects:
            rows = [r for r in s["rows"] if r["object"] == o]
            right = [r["centre_error_mm"] for r in rows if r["found"] and r["nearest"] == o]
            mean = f"{np.mean(right):6.1f}" if right else "     -"
            cells.append(f"{mean} ({sum(r['found'] for r in rows)}/{len(rows)})".rjust(16))
        print(f"{k:5s} " + "".join(cells))


def main() -> int:
    a = parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    times: dict[str, float] = {}
    bags, scenes, _off, calibrated = make_scenes(a, log, times)
    x_true = load_robot_config(ROBOT_YAML).extrinsics.ee_from_camera.matrix()
    dx, ax = correction(x_true, load_robot_config(calibrated).extrinsics.ee_from_camera.matrix())
    result: dict = {
        "frames": a.frames, "size": a.size, "source": a.source, "iters": a.iters, "views": a.views,
        "hand_eye_error_after": {"mm": float(np.linalg.norm(dx)) * 1e3, "deg": float(ax)}, "scenes": {},
    }  # fmt: skip
    for k in scenes:
        result["scenes"][k] = measure_scene(a, k, bags, scenes, log, times)
    result.update(
        commands=log, times_s={k: round(v, 1) for k, v in times.items()}, load_average=os.getloadavg()
    )
    print_result(a, result)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
