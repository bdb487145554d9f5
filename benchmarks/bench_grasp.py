"""Text -> grasp -> physics: does the answer to a query hold in pybullet on the simulated scene?

    # 1. the gripper model alone: ground-truth grasps on every object of the built-in scene
    python benchmarks/bench_grasp.py --ground-truth
    # 2. the query path: every object by name and two synonyms, from --views training views and
    #    the 3D query, each answer executed in physics (m3_core.sim.grasp_check)
    python benchmarks/bench_grasp.py MEMORY --gt BAG_gt [--scene SCENE] [--label clean] [--json out.json]

Building a memory of the built-in scene (minutes on a CPU; build once, reuse):
    m3 sim --out /tmp/g/bag --frames 90 --size 320x240      # add --depth-noise --odometry-drift
    m3 bag2scene /tmp/g/bag /tmp/g/scene
    m3 sim masks /tmp/g/scene /tmp/g/bag_gt
    m3 train /tmp/g/scene --models language --iters 400 --out /tmp/g/memory --device cpu

`answer(...)` is the query under test: text + view -> ranked grasps. Each answer is classified by
where its best grasp lands (the asked object, another object, the table, the floor) and executed
in physics from the ground-truth scene; success = the asked object lifted >= 5 cm and held.
Absent objects (--absent) must answer "not found" from every view and in 3D.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# Absent objects: plain names, and ones that share a colour with a built-in object (the sentence
# model's similarity of a short caption is dominated by its colour: "a yellow ball" once answered
# with the duck, "a grey box" with the tray).
ABSENT = (
    "banana", "laptop", "a yellow ball", "a yellow sponge", "a red apple", "a red can", "a grey box",
    "a brown dog", "a blue pen",
)  # fmt: skip
sys.path.insert(0, str(REPO))

from m3_core.grasp.types import Grasp  # noqa: E402
from m3_core.query import NotFoundError, QueryConfig  # noqa: E402

try:  # the query engine (instances + 6-DoF planner), when this checkout has it
    from m3_core.query import QueryEngine
    from m3_core.query import View as EngineView
except ImportError:  # the older region-centre path
    QueryEngine = None
    from m3_core.query import QueryCache, find_target, locate_3d
from m3_core.robot import GripperConfig  # noqa: E402
from m3_core.sim.grasp_check import GraspOutcome, GraspSim  # noqa: E402
from m3_core.sim.grasp_cli import check_against_ground_truth, robot_for, scene_spec  # noqa: E402
from m3_core.sim.grasp_json import WIDTH_MARGIN_M, width_from_extent  # noqa: E402
from m3_core.sim.grasp_truth import grasp_from_pose, search_top_down, top_down_grasp  # noqa: E402

NEAR_OBJECT_M = 0.03
"""A grasp point within this distance of an object's box counts as aimed at that object."""


@dataclass(frozen=True)
class QueryView:
    """A camera to query from (None pose = the 3D query over the Gaussians)."""

    name: str
    world_from_camera: np.ndarray | None
    camera: object | None


class NoAnswerError(Exception):
    """The query answered "not found" (or found nothing graspable)."""


def make_context(memory, config: QueryConfig, search_3d: str = "fallback") -> dict:
    """What `answer` reuses across queries (the engine, or the older path's cache)."""
    if QueryEngine is not None:
        return {"engine": QueryEngine(memory, config), "config": config, "path": "engine", "search_3d": search_3d}
    return {"cache": QueryCache(memory), "config": config, "path": "region centre"}


def answer(memory, text: str, view: QueryView, ctx: dict, gripper: GripperConfig) -> list[Grasp]:
    """The query under test: ranked grasps for `text` seen from `view` (raises NoAnswerError).

    With the query engine: its ranked grasps (planner or its top-down fallback); view queries as
    the query node and `m3 query` answer them by default ("fallback": the memory's Gaussians when
    the view finds nothing graspable) or from the view only (--search-3d never); 3D queries among
    the Gaussians.
    Without it (older checkouts): the centre of the located region with the top-down approach,
    opening = the region's points' spread along the closing axis + 1.5 cm, at most the gripper's.
    """
    if QueryEngine is not None:
        engine_view = (
            None if view.world_from_camera is None else EngineView(view.world_from_camera, view.camera)
        )
        search_3d = ctx.get("search_3d", "fallback") if engine_view else "always"
        result = ctx["engine"].query(text, view=engine_view, search_3d=search_3d)
        if not result.found or not result.grasps:
            raise NoAnswerError(result.message)
        return list(result.grasps)
    try:
        result = _older_locate(memory, text, view, ctx)
    except NotFoundError as err:
        raise NoAnswerError(str(err)) from err
    pose = result.world_from_grasp
    if len(result.points) >= 10:  # the region's spread along the closing axis, robust to outliers
        across = result.points @ pose[:3, 0]
        width = float(np.percentile(across, 98) - np.percentile(across, 2)) + WIDTH_MARGIN_M
    else:
        width = width_from_extent(pose, result.extent)
    # the older answer carries no opening: the robot would open as wide as it can
    width = min(width, gripper.max_opening_m)
    return [grasp_from_pose(pose, width, gripper.approach_distance_m)]


def _older_locate(memory, text: str, view: QueryView, ctx: dict):
    if view.world_from_camera is None:
        return locate_3d(memory, text, model="language", config=ctx["config"], cache=ctx["cache"])
    return find_target(
        memory,
        text,
        model="language",
        world_from_camera=view.world_from_camera,
        camera=view.camera,
        config=ctx["config"],
        cache=ctx["cache"],
        search_3d="never",
    )


def aimed_at(point: np.ndarray, objects: list[dict], table: dict) -> str:
    """What a grasp point is on: the nearest object's name (within NEAR_OBJECT_M of its box),
    'table' (over the table top, below 5 cm above it) or 'floor' (anywhere else)."""
    best, best_d = "", np.inf
    for o in objects:
        lo, hi = np.asarray(o["box_min_world"]), np.asarray(o["box_max_world"])
        d = float(np.linalg.norm(np.maximum(0, np.maximum(lo - point, point - hi))))
        if d < best_d:
            best, best_d = o["name"], d
    if best_d <= NEAR_OBJECT_M:
        return best
    lo, hi = np.asarray(table["box_min_world"]), np.asarray(table["box_max_world"])
    if np.all(point[:2] >= lo[:2]) and np.all(point[:2] <= hi[:2]) and point[2] <= hi[2] + 0.05:
        return "table"
    return "floor"


def best_views(scene, obj: dict, k: int) -> list[int]:
    """The k frames whose ground-truth masks show the object largest."""
    areas = []
    for i in range(len(scene.frames)):
        m = scene.read_mask(i)
        area = 0 if m is None else sum(int((m[0] == j).sum()) for j, c in m[1].items() if c == obj["caption"])
        areas.append(area)
    order = np.argsort(areas)[::-1][:k]
    return [int(i) for i in order if areas[i] > 0]


def texts_for(obj: dict, synonyms: int) -> list[str]:
    """The name and the first `synonyms` synonyms that differ from it."""
    others = [s for s in obj.get("synonyms", []) if s != obj["name"]]
    return [obj["name"], *others[:synonyms]]


def run_query(
    memory, sim: GraspSim, gt: dict, obj: dict | None, text: str, view: QueryView, ctx: dict
) -> dict:
    row = {"object": obj["name"] if obj else None, "text": text, "view": view.name}
    t0 = time.perf_counter()
    try:
        grasps = answer(memory, text, view, ctx, sim.gripper)
    except NoAnswerError as err:
        row.update(
            answer="not_found", success=False, query_s=time.perf_counter() - t0, message=str(err)[:200]
        )
        return row
    row["query_s"] = time.perf_counter() - t0
    grasp = grasps[0]
    point = grasp.world_from_grasp[:3, 3]
    row["answer"] = aimed_at(point, gt["objects"], gt["table"])
    row["grasp_position"] = point.round(4).tolist()
    row["width_m"] = round(grasp.width_m, 4)
    if obj is None:  # an absent object: any answer is wrong; no need to execute it
        row["success"] = False
        return row
    t1 = time.perf_counter()
    outcome: GraspOutcome = sim.check(grasp, target=obj["name"])
    row.update(
        physics_s=time.perf_counter() - t1,
        success=outcome.success,
        held=outcome.held,
        reason=outcome.reason,
        lift_m=round(outcome.lift_m, 4),
        message=outcome.message,
    )
    return row


def query_benchmark(args) -> dict:
    from m3_core.model.memory import M3Memory
    from m3_core.scene import load_scene

    memory = M3Memory.load(args.memory, device=args.device).eval()
    scene_path = (
        args.scene or memory.manifest.get("scene") or (memory.manifest.get("training") or {}).get("scene")
    )
    if not scene_path:
        sys.exit("the memory's manifest names no scene: pass --scene")
    scene = load_scene(scene_path)
    records = json.loads((args.gt / "objects.json").read_text())["objects"]
    gt = {
        "objects": [o for o in records if not o["support"]],
        "table": next(o for o in records if o["support"]),
    }
    ctx = make_context(memory, QueryConfig(render_width=args.width), args.search_3d)
    print(f"query path: {ctx['path']}, view queries search_3d={args.search_3d}")
    spec, folder = scene_spec(None, args.gt, None)
    rows, absent = [], []
    with GraspSim(spec, robot_for(spec, folder, None).gripper) as sim:
        check_against_ground_truth(sim, args.gt)
        for obj in gt["objects"]:
            views = [
                QueryView(scene.frames[i].name, scene.frames[i].world_from_camera, scene.frames[i].camera)
                for i in best_views(scene, obj, args.views)
            ]
            for text in texts_for(obj, args.synonyms):
                for view in [*views, QueryView("3d", None, None)]:
                    row = run_query(memory, sim, gt, obj, text, view, ctx)
                    rows.append(row)
                    print_row(row)
        spread = np.linspace(0, len(scene.frames) - 1, min(args.views, len(scene.frames))).astype(int)
        for text in args.absent:
            for view in [
                QueryView(scene.frames[i].name, scene.frames[i].world_from_camera, scene.frames[i].camera)
                for i in spread
            ] + [QueryView("3d", None, None)]:
                row = run_query(memory, sim, gt, None, text, view, ctx)
                absent.append(row)
                print_row(row)
    return {"rows": rows, "absent": absent, "summary": {**summarise(rows, absent), "search_3d": args.search_3d}}


def print_row(row: dict) -> None:
    verdict = "HELD" if row.get("success") else (row.get("reason") or row["answer"])
    print(
        f"  {str(row['object']):7s} {row['text'][:18]:18s} {row['view'][:14]:14s} "
        f"answer {row['answer']:10s} held {str(row.get('held')):7s} {verdict:14s} "
        f"{row.get('message', '')[:60]}",
        flush=True,
    )


def summarise(rows: list[dict], absent: list[dict]) -> dict:
    n = len(rows)
    wrong = sum(
        r["answer"] not in (r["object"], "table", "floor", "not_found")
        or (r.get("held") not in (None, r["object"]))
        for r in rows
    )
    out = {
        "queries": n,
        "success": sum(r["success"] for r in rows),
        "wrong_object": wrong,
        "table": sum(r["answer"] == "table" for r in rows),
        "floor": sum(r["answer"] == "floor" for r in rows),
        "not_found": sum(r["answer"] == "not_found" for r in rows),
        "absent_queries": len(absent),
        "absent_not_found": sum(r["answer"] == "not_found" for r in absent),
        "per_object": {},
    }
    for name in dict.fromkeys(r["object"] for r in rows):
        mine = [r for r in rows if r["object"] == name]
        aimed = sum(r["answer"] == name for r in mine)
        out["per_object"][name] = {
            "queries": len(mine),
            "aimed_right": aimed,
            "held": sum(r["success"] for r in mine),
        }
    reasons: dict[str, int] = {}
    for r in rows:
        if not r["success"] and r["answer"] != "not_found":
            reasons[r.get("reason", "?")] = reasons.get(r.get("reason", "?"), 0) + 1
    out["failure_reasons"] = reasons
    return out


def print_summary(s: dict, label: str) -> None:
    n = max(s["queries"], 1)
    print(
        f"\n{label}: {s['success']}/{s['queries']} held ({100 * s['success'] / n:.0f} %), "
        f"wrong object {s['wrong_object']}, table {s['table']}, floor {s['floor']}, "
        f"not found {s['not_found']}; absent answered 'not found' {s['absent_not_found']}/{s['absent_queries']}"
    )
    print(f"  {'object':8s} {'queries':>7s} {'aimed at it':>11s} {'held':>5s}")
    for name, o in s["per_object"].items():
        print(f"  {name:8s} {o['queries']:7d} {o['aimed_right']:11d} {o['held']:5d}")
    print(f"  failures by reason (answered queries): {s['failure_reasons']}")


def ground_truth_benchmark(args) -> dict:
    """Ground-truth grasps per object: the centre grasp, else up to --tries searched part grasps."""
    spec, folder = scene_spec(args.spec, args.gt, None)
    gripper = robot_for(spec, folder, None).gripper
    rows = []
    with GraspSim(spec, gripper) as sim:
        table_z = sim.world.table_top_z
        for body in sim.world.bodies:
            centre = top_down_grasp(sim.rest_vertices[body.name], table_z, gripper)
            t0 = time.perf_counter()
            outcome = sim.check(centre, target=body.name)
            row = {
                "object": body.name,
                "centre": outcome.to_json(),
                "centre_width_m": round(centre.width_m, 4),
                "check_s": round(time.perf_counter() - t0, 2),
                "tried": 0,
                "held_by": None,
            }
            if not outcome.success:
                candidates = search_top_down(sim.rest_vertices[body.name], table_z, gripper)
                row["candidates"] = len(candidates)
                step = max(1, len(candidates) // args.tries)
                for grasp in candidates[::step][: args.tries]:
                    row["tried"] += 1
                    part = sim.check(grasp, target=body.name)
                    if part.success:
                        row["held_by"] = _grasp_summary(grasp)
                        break
            rows.append(row)
            held = (
                "centre"
                if outcome.success
                else (f"part grasp ({row['held_by']})" if row["held_by"] else "NONE")
            )
            print(
                f"  {body.name:7s} centre grasp width {centre.width_m * 100:5.1f} cm: "
                f"{'HELD' if outcome.success else outcome.reason:14s} {outcome.message[:55]:55s} "
                f"| tried {row['tried']:2d} part grasps | holds with: {held}",
                flush=True,
            )
    return {"ground_truth": rows}


def _grasp_summary(grasp: Grasp) -> str:
    p = grasp.world_from_grasp[:3, 3]
    x = grasp.world_from_grasp[:3, 0]
    return f"at ({p[0]:.3f}, {p[1]:.3f}, {p[2]:.3f}) closing ({x[0]:.2f}, {x[1]:.2f}), width {grasp.width_m * 100:.1f} cm"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("memory", nargs="?", type=Path, help="memory directory (query benchmark)")
    ap.add_argument(
        "--ground-truth", action="store_true", help="ground-truth grasps only (gripper model check)"
    )
    ap.add_argument(
        "--spec", type=Path, default=None, help="scene spec YAML for --ground-truth (default: built-in)"
    )
    ap.add_argument(
        "--gt", type=Path, default=None, help="the memory's simulator ground-truth dir (<bag>_gt)"
    )
    ap.add_argument("--scene", type=Path, default=None, help="scene directory (default: the manifest's)")
    ap.add_argument("--views", type=int, default=3, help="views per object (best GT mask area)")
    ap.add_argument("--synonyms", type=int, default=2, help="synonyms per object besides the name")
    ap.add_argument(
        "--absent", nargs="*", default=list(ABSENT), help="objects not in the scene (default: %(default)s)"
    )
    ap.add_argument("--tries", type=int, default=12, help="part grasps tried per object (--ground-truth)")
    ap.add_argument("--width", type=int, default=320, help="query render width")
    ap.add_argument(
        "--search-3d", choices=("fallback", "never"), default="fallback",
        help="view queries: 'fallback' (the query node's and m3 query's default: the memory's Gaussians "
        "when the view finds nothing graspable) or 'never' (the view alone)",
    )  # fmt: skip
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--label", default="", help="name of this run in the summary (e.g. clean, noisy)")
    ap.add_argument("--json", type=Path, help="also write all rows and the summary here")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    t0 = time.perf_counter()
    if args.ground_truth:
        report = ground_truth_benchmark(args)
    else:
        if args.memory is None or args.gt is None:
            sys.exit("give MEMORY and --gt BAG_gt (or --ground-truth)")
        report = query_benchmark(args)
        print_summary(report["summary"], args.label or str(args.memory))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"\n{report['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
