"""Text -> grasp target: latency (p50/p95) and accuracy against the simulator's ground truth.

    # latency on this CPU at 320x240, accuracy on the built-in scene (language-mask model)
    python benchmarks/bench_query.py MEMORY --scene SCENE --gt BAG_gt
    # GPU latency at 640x480
    python benchmarks/bench_query.py MEMORY --scene SCENE --device cuda --width 640 --repeats 100
    # no memory at hand: the analytic test memory (tests/conftest_query.py; latency only)
    python benchmarks/bench_query.py --analytic

Latency: `QueryEngine.query` from text to grasp pose (text encoding, render, relevance, mask, 3D,
grasp), queries cycling over the objects' names, from one training view; p50/p95 over --repeats
after --warmup. Accuracy (--gt, the `m3 sim` sidecar with objects.json): every object asked by name
and by each synonym from the --views training frames that see it best (GT masks of the scene when
present, else the projection of the GT centre); a hit is a target within --tol-m of the GT box
centre whose nearest GT object is the one asked. The absent queries (--absent, default "banana")
must answer "not found" from every view and in 3D.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m3_core.geometry import invert, transform_points  # noqa: E402
from m3_core.query import NotFoundError, QueryConfig, QueryEngine, View  # noqa: E402


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("memory", nargs="?", type=Path, help="memory directory")
    ap.add_argument("--analytic", action="store_true", help="use the analytic test memory (latency only)")
    ap.add_argument("--scene", type=Path, help="scene directory (views); default: the manifest's")
    ap.add_argument("--gt", type=Path, help="simulator ground-truth dir with objects.json (accuracy)")
    ap.add_argument("--model", default="language")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=int, default=320, help="render width (height keeps the aspect)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--views", type=int, default=3, help="views per object for accuracy")
    ap.add_argument("--tol-m", type=float, default=0.03)
    ap.add_argument("--absent", nargs="*", default=["banana"])
    ap.add_argument("--live-depth", action="store_true", help="use the scene's recorded depth as live depth")
    ap.add_argument("--centre-mode", choices=("fused", "surface"), default="fused")
    ap.add_argument("--json", type=Path, help="also write all numbers here")
    return ap.parse_args()


def load(args):
    from m3_core.model.memory import M3Memory

    if args.analytic:
        from tests.conftest_query import CAMERA, WORLD_FROM_CAMERA, build_memory

        path = build_memory(Path(tempfile.mkdtemp(prefix="m3_bench_query_")) / "memory")
        return (
            M3Memory.load(path, device=args.device).eval(),
            None,
            [(WORLD_FROM_CAMERA, CAMERA, None, "analytic")],
        )
    if args.memory is None:
        sys.exit("give a memory directory or --analytic")
    memory = M3Memory.load(args.memory, device=args.device).eval()
    scene_path = (
        args.scene or memory.manifest.get("scene") or (memory.manifest.get("training") or {}).get("scene")
    )
    if not scene_path:
        sys.exit("the manifest names no scene: pass --scene")
    from m3_core.scene import load_scene

    scene = load_scene(scene_path)
    return memory, scene, None


def percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)), "n": len(arr)}


def view_of(scene, i: int, live_depth: bool):
    f = scene.frames[i]
    depth = scene.read_depth_m(i) if live_depth else None
    return f.world_from_camera, f.camera, depth, f.name


def best_views(scene, obj: dict, k: int, masks: list) -> list[int]:
    """Frames that see the object best: largest GT mask area, else GT centre nearest the image centre."""
    scores = []
    for i, f in enumerate(scene.frames):
        if masks[i] is not None:
            ids, captions = masks[i]
            area = sum(int((ids == j).sum()) for j, c in captions.items() if c == obj["caption"])
            scores.append(-area if area > 0 else np.inf)
            continue
        p = transform_points(invert(f.world_from_camera), np.asarray([obj["box_center_world"]]))[0]
        uv, _ = f.camera.project(p[None])
        inside = p[2] > 0 and 0 <= uv[0, 0] < f.camera.width and 0 <= uv[0, 1] < f.camera.height
        scores.append(float(np.hypot(uv[0, 0] - f.camera.cx, uv[0, 1] - f.camera.cy)) if inside else np.inf)
    return [int(i) for i in np.argsort(scores)[:k] if np.isfinite(scores[i])]


def latency(memory, cache, config, args, views) -> dict:
    texts = ["yellow bath duck", "cup", "toy bear", "blue lego brick", "tray", "banana"]
    totals, parts = [], {"encode": [], "render": [], "locate": []}
    world_from_camera, camera, depth, _ = views[0]
    for r in range(args.warmup + args.repeats):
        text = texts[r % len(texts)]
        t0 = time.perf_counter()
        try:
            result = cache.query(
                text,
                model=args.model,
                view=View(world_from_camera, camera, depth),
                search_3d="never",
                config=config,
            ).require_found()
            timings = result.timings_ms
        except NotFoundError:
            timings = None
        wall_ms = (time.perf_counter() - t0) * 1e3
        if r >= args.warmup:
            totals.append(wall_ms)
            if timings:
                for key in parts:
                    parts[key].append(timings[key])
    out = {"total": percentiles(totals)}
    out.update({k: percentiles(v) for k, v in parts.items() if v})
    return out


def accuracy(memory, cache, config, args, scene) -> dict:
    gt = json.loads((args.gt / "objects.json").read_text())
    objects = [o for o in gt["objects"] if not o.get("support")]
    centres = np.array([o["box_center_world"] for o in objects])
    masks = [scene.read_mask(i) for i in range(len(scene.frames))]
    rows = []
    for obj in objects:
        views = best_views(scene, obj, args.views, masks)
        for text in [obj["name"], *obj.get("synonyms", [])]:
            for i in views:
                world_from_camera, camera, depth, name = view_of(scene, i, args.live_depth)
                row = {"object": obj["name"], "text": text, "view": name}
                try:
                    res = cache.query(
                        text,
                        model=args.model,
                        view=View(world_from_camera, camera, depth),
                        search_3d="never",
                        config=config,
                    ).require_found()
                    err = float(np.linalg.norm(res.position - obj["box_center_world"]))
                    nearest = objects[int(np.argmin(np.linalg.norm(centres - res.position, axis=1)))]["name"]
                    row.update(
                        found=True, error_m=err, nearest=nearest, score=res.score, centre=res.centre_source
                    )
                    row["hit"] = err <= args.tol_m and nearest == obj["name"]
                except NotFoundError as e:
                    row.update(found=False, hit=False, message=str(e)[:120])
                rows.append(row)
            try:
                res3d = cache.query(text, model=args.model, config=config).require_found()
                err3d = float(np.linalg.norm(res3d.position - obj["box_center_world"]))
                rows.append(
                    {
                        "object": obj["name"],
                        "text": text,
                        "view": "3d",
                        "found": True,
                        "error_m": err3d,
                        "hit": err3d <= args.tol_m,
                    }
                )
            except NotFoundError:
                rows.append({"object": obj["name"], "text": text, "view": "3d", "found": False, "hit": False})
    absent = []
    spread = np.linspace(0, len(scene.frames) - 1, min(5, len(scene.frames))).astype(int)
    for text in args.absent:
        for i in spread:
            world_from_camera, camera, depth, name = view_of(scene, int(i), args.live_depth)
            try:
                res = cache.query(
                    text,
                    model=args.model,
                    view=View(world_from_camera, camera, depth),
                    search_3d="fallback",
                    config=config,
                ).require_found()
                absent.append(
                    {"text": text, "view": name, "rejected": False, "position": res.position.tolist()}
                )
            except NotFoundError:
                absent.append({"text": text, "view": name, "rejected": True})
    return {"rows": rows, "absent": absent}


def main() -> int:
    args = parse_args()
    memory, scene, views = load(args)
    config = QueryConfig(render_width=args.width, centre_mode=args.centre_mode)
    cache = QueryEngine(memory, config)
    if views is None:
        views = [view_of(scene, len(scene.frames) // 2, args.live_depth)]
    import torch

    report = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "render_width": args.width,
        "num_gaussians": int(memory.gaussians.means.shape[0]),
        "model": args.model,
    }
    report["latency_ms"] = latency(memory, cache, config, args, views)
    lat = report["latency_ms"]
    print(
        f"latency text -> grasp target ({args.device}, render width {args.width}, "
        f"{report['num_gaussians']} Gaussians, view {views[0][3]}):"
    )
    for key, val in lat.items():
        print(f"  {key:7s} p50 {val['p50']:8.1f} ms   p95 {val['p95']:8.1f} ms   (n={val['n']})")
    if args.gt:
        if scene is None:
            sys.exit("--gt needs a scene (not --analytic)")
        acc = accuracy(memory, cache, config, args, scene)
        report["accuracy"] = acc
        print(
            f"\naccuracy (tolerance {args.tol_m * 100:.0f} cm, views per object {args.views}, "
            f"depth {'recorded (live)' if args.live_depth else 'memory'}, centre {args.centre_mode}):"
        )
        print(f"  {'object':8s} {'query':20s} {'view':14s} {'found':5s} {'err cm':>7s} {'nearest':8s} hit")
        for r in acc["rows"]:
            err = f"{r['error_m'] * 100:7.1f}" if r.get("found") else "      -"
            print(
                f"  {r['object']:8s} {r['text'][:20]:20s} {r['view'][:14]:14s} {str(r['found']):5s} {err} "
                f"{r.get('nearest', '-'):8s} {'yes' if r['hit'] else 'NO'}"
            )
        view_rows = [r for r in acc["rows"] if r["view"] != "3d"]
        wrong = [r for r in view_rows if r.get("found") and r.get("nearest") != r["object"]]
        by_object = {}
        for r in view_rows:
            by_object.setdefault(r["object"], {}).setdefault(r["text"], []).append(r["hit"])
        print("\n  per object: name hit in all views / synonyms hit in all views")
        for obj, texts in by_object.items():
            name_ok = all(next(iter(texts.values())))
            syn_ok = [t for t, hits in list(texts.items())[1:] if all(hits)]
            print(
                f"  {obj:8s} name {'yes' if name_ok else 'NO '}  synonyms {len(syn_ok)}/{len(texts) - 1}: {syn_ok}"
            )
        hits = sum(r["hit"] for r in view_rows)
        hits3d = [r for r in acc["rows"] if r["view"] == "3d"]
        print(f"  view queries: {hits}/{len(view_rows)} hits, {len(wrong)} wrong-object answers")
        print(f"  3D queries:   {sum(r['hit'] for r in hits3d)}/{len(hits3d)} hits")
        rejected = sum(a["rejected"] for a in acc["absent"])
        print(f"  absent {args.absent}: {rejected}/{len(acc['absent'])} answered 'not found'")
        errs = [r["error_m"] for r in view_rows if r.get("found") and r["hit"]]
        if errs:
            print(f"  error of hits: median {np.median(errs) * 100:.1f} cm, max {np.max(errs) * 100:.1f} cm")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
