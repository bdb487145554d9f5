"""Found-path latency: text -> grasp target for queries that find their object, p50/p95/max, per stage.

    # make the view list and the text embeddings once, where the sentence model is (CPU is fine)
    python benchmarks/bench_query_found.py MEMORY --make SCENE --gt BAG_gt \\
        --views benchmarks/data/found_views.json --text-embeddings benchmarks/data/found_texts.safetensors
    # measure (no sentence model, no network, no scene needed: poses and intrinsics are in the list)
    python benchmarks/bench_query_found.py MEMORY --device cuda --widths 320 640 \\
        --views benchmarks/data/found_views.json --text-embeddings benchmarks/data/found_texts.safetensors
    # this change against the engine before it, same run, alternating
    python benchmarks/bench_query_found.py MEMORY --device cpu --threads 2 --engines new reference ...

Every query of the list is asked from its view (`QueryEngine.query`, search_3d "never", memory
depth) --warmup times untimed, then --repeats times. Each query's line says FOUND or NOT FOUND (with
the engine's message); only found answers count in the found-path statistics; a query that is not
found at some repetition is reported under "not-found path" and never as found. Stages are the
engine's timings: encode (text embeddings, cached), render (rasterize + relevance + the one
device-to-host copy), locate (instances, fusion with the Gaussians, checks, grasp planning), of
which grasp (the planner); cpu is the process's CPU time (all threads) for the whole query, which
on a loaded machine says more than the wall time. Engines: "new" is the default config (relevance
from the attention's principal components, fusion near the visible points, CPU images composited by
tile); "reference" is relevance_method "decode", fuse_search_m 0 and the per-pixel CPU compositing,
i.e. the engine before issue 14.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m3_core.geometry import PinholeCamera  # noqa: E402
from m3_core.query import QueryConfig, QueryEngine, TextEmbeddingTable, View, background_caption  # noqa: E402
from m3_core.query.phrases import query_forms  # noqa: E402
from m3_core.render import torch_backend  # noqa: E402

ENGINES = {
    "new": {},
    "reference": {"relevance_method": "decode", "fuse_search_m": 0.0},
    "planner-1-thread": {"planner_workers": 1},  # the planner's batches one after another
    "planner-host": {"planner_device": "host"},  # candidates checked with numpy on the host CPU
}
STAGES = ("encode", "render", "locate", "grasp")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("memory", type=Path, help="memory directory (a language memory, CLIP not needed)")
    ap.add_argument("--views", type=Path, required=True, help="JSON list of views + texts that are found")
    ap.add_argument("--text-embeddings", type=Path, help="precomputed text embeddings (no text encoder)")
    ap.add_argument("--widths", type=int, nargs="+", default=[320, 640], help="render widths")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--engines", nargs="+", choices=tuple(ENGINES), default=["new"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--model", default="language")
    ap.add_argument("--json", type=Path, help="also write every number here")
    make = ap.add_argument_group("making the view list (needs the sentence model and the scene)")
    make.add_argument("--make", type=Path, metavar="SCENE", help="write --views and --text-embeddings")
    make.add_argument("--gt", type=Path, help="simulator ground truth (objects.json) for --make")
    make.add_argument("--per-object", type=int, default=2, help="views per object for --make")
    make.add_argument("--texts-per-object", type=int, default=2, help="name + synonyms per object")
    make.add_argument("--tol-m", type=float, default=0.03, help="a found answer this close to GT is kept")
    return ap.parse_args()


# -- the view list ---------------------------------------------------------------------------------
def view_of(entry: dict) -> View:
    c = entry["camera"]
    camera = PinholeCamera(c["fx"], c["fy"], c["cx"], c["cy"], int(c["width"]), int(c["height"]))
    return View(np.asarray(entry["world_from_camera"], dtype=np.float64), camera)


def make_views(args, memory) -> None:
    """Keep the (view, text) pairs the reference engine finds within --tol-m of the right object."""
    from m3_core.scene import load_scene

    scene = load_scene(args.make)
    objects = [
        o for o in json.loads((args.gt / "objects.json").read_text())["objects"] if not o.get("support")
    ]
    masks = [scene.read_mask(i) for i in range(len(scene.frames))]
    engine = QueryEngine(memory, QueryConfig(render_width=min(args.widths), **ENGINES["reference"]))
    entries = []
    for obj in objects:
        areas = []
        for ids_captions in masks:
            ids, captions = ids_captions if ids_captions is not None else (None, {})
            areas.append(sum(int((ids == j).sum()) for j, c in captions.items() if c == obj["caption"]))
        frames = [int(i) for i in np.argsort(areas)[::-1][: args.per_object] if areas[i] > 0]
        kept = 0
        for text in dict.fromkeys([obj["name"], *obj.get("synonyms", [])]):
            if kept >= args.texts_per_object:
                break
            hits = []
            for i in frames:
                f = scene.frames[i]
                entry = {
                    "object": obj["name"], "text": text, "frame": f.name,
                    "world_from_camera": np.asarray(f.world_from_camera).tolist(),
                    "camera": {k: getattr(f.camera, k) for k in ("fx", "fy", "cx", "cy", "width", "height")},
                    "gt_centre": obj["box_center_world"],
                }  # fmt: skip
                res = engine.query(text, model=args.model, view=view_of(entry), search_3d="never")
                ok = res.found and np.linalg.norm(res.position - obj["box_center_world"]) <= args.tol_m
                print(
                    f"  {obj['name']:6s} {text!r:20s} {f.name}: {'kept' if ok else 'dropped'} {res.message[:80]}"
                )
                hits.append(entry if ok else None)
            entries += [e for e in hits if e]
            kept += any(hits)
    args.views.parent.mkdir(parents=True, exist_ok=True)
    args.views.write_text(json.dumps({"memory_scene": str(args.make), "views": entries}, indent=1) + "\n")
    forms = {f for e in entries for f in query_forms(e["text"], engine.config.attribute_words)}
    texts = sorted(forms | set(engine.config.negatives))
    background = background_caption(memory, args.model)
    engine.embed(args.model, texts + ([background] if background else []))
    table = TextEmbeddingTable()
    for text in texts + ([background] if background else []):
        table.put(args.model, [text], engine.text_table[(args.model, text)][None])
    table.model_ids[args.model] = engine.text_table.model_ids.get(args.model, "")
    table.save(args.text_embeddings)
    print(f"wrote {len(entries)} found queries to {args.views}, {len(texts)} texts to {args.text_embeddings}")


# -- measuring -------------------------------------------------------------------------------------
def check_table(
    table: TextEmbeddingTable, memory, model: str, entries: list[dict], config: QueryConfig
) -> None:
    """Exit when a text the queries need is missing: the encoder must not be loaded silently."""
    background = background_caption(memory, model)
    needed = {e["text"] for e in entries} | set(config.negatives) | ({background} if background else set())
    missing = sorted(t for t in needed if (model, t) not in table)
    if missing:
        sys.exit(f"{table.source} lacks embeddings for {missing}; make the file again with --make")


def stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
        "n": len(a),
    }


def run_width(args, memory, table, entries: list[dict], width: int) -> dict:
    cuda = args.device.startswith("cuda")
    engines = {
        name: QueryEngine(memory, QueryConfig(render_width=width, **ENGINES[name]), text_table=table)
        for name in args.engines
    }
    rows = {name: [] for name in engines}
    for entry in entries:
        view = view_of(entry)
        runs = {name: [] for name in engines}
        for r in range(args.warmup + args.repeats):
            for name, engine in engines.items():  # alternating: load changes hit every engine alike
                if cuda:
                    torch.cuda.synchronize()
                torch_backend.TILE_COMPOSITE = name != "reference"
                t0, c0 = time.perf_counter(), time.process_time()
                res = engine.query(entry["text"], model=args.model, view=view, search_3d="never")
                wall, cpu = (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3
                if r >= args.warmup:
                    runs[name].append((res, wall, cpu))
        for name, got in runs.items():
            err = [float(np.linalg.norm(res.position - entry["gt_centre"])) for res, _, _ in got if res.found]
            rows[name].append({
                "text": entry["text"], "object": entry["object"], "frame": entry["frame"],
                "found": len(err), "runs": len(got), "total_ms": [w for _, w, _ in got],
                "cpu_ms": [c for _, _, c in got],
                "stages_ms": [{k: res.timings_ms.get(k, 0.0) for k in STAGES} for res, _, _ in got],
                "found_flags": [res.found for res, _, _ in got],
                "error_m": float(np.median(err)) if err else None,
                "message": next((res.message for res, _, _ in got if not res.found), ""),
                "centre": got[0][0].centre_source,
            })  # fmt: skip
    return rows


def summarise(rows: list[dict]) -> dict:
    found_tot, found_cpu, found_stage, missed = [], [], {k: [] for k in STAGES}, []
    for row in rows:
        for ok, total, cpu, stages in zip(
            row["found_flags"], row["total_ms"], row["cpu_ms"], row["stages_ms"]
        ):
            if ok:
                found_tot.append(total)
                found_cpu.append(cpu)
                for k in STAGES:
                    found_stage[k].append(stages[k])
            else:
                missed.append(total)
    out = {"found_queries": sum(r["found"] == r["runs"] for r in rows), "queries": len(rows)}
    if found_tot:
        out["found_path_ms"] = {
            "total": stats(found_tot),
            **{k: stats(v) for k, v in found_stage.items()},
            "cpu": stats(found_cpu),
        }
    if missed:
        out["not_found_path_ms"] = stats(missed)
    return out


def print_width(width: int, height: int, name: str, rows: list[dict], summary: dict) -> None:
    print(f"\n[{name}] {width}x{height}: per query (p50 of the found runs)")
    for row in rows:
        if row["found"] == row["runs"]:
            p50 = np.percentile(row["total_ms"], 50)
            state = (
                f"FOUND     p50 {p50:8.1f} ms  error {row['error_m'] * 100:4.1f} cm  centre {row['centre']}"
            )
        elif row["found"]:
            state = f"FOUND {row['found']}/{row['runs']} only: not counted as found ({row['message'][:60]})"
        else:
            state = f"NOT FOUND ({row['message'][:90]})"
        print(f"  {row['object']:6s} {row['text'][:18]:18s} {row['frame'][:14]:14s} {state}")
    print(f"  found: {summary['found_queries']}/{summary['queries']} queries")
    for key, val in summary.get("found_path_ms", {}).items():
        print(
            f"  found path {key:7s} p50 {val['p50']:8.1f}  p95 {val['p95']:8.1f}  max {val['max']:8.1f} ms (n={val['n']})"
        )
    if "not_found_path_ms" in summary:
        val = summary["not_found_path_ms"]
        print(f"  NOT-FOUND path (not a found latency): p50 {val['p50']:.1f} ms (n={val['n']})")


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from m3_core.model.memory import M3Memory

    memory = M3Memory.load(args.memory, device=args.device).eval()
    if args.make:
        if not (args.gt and args.text_embeddings):
            sys.exit("--make needs --gt and --text-embeddings")
        make_views(args, memory)
        return 0
    entries = json.loads(args.views.read_text())["views"]
    table = TextEmbeddingTable.load(args.text_embeddings) if args.text_embeddings else None
    if table is not None:
        check_table(table, memory, args.model, entries, QueryConfig())
    head = memory.heads[args.model]
    device = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else f"cpu, {torch.get_num_threads()} threads"
    )
    print(
        f"{device}; memory {args.memory} ({memory.gaussians.num_gaussians} Gaussians, {args.model} "
        f"d={head.feature_dim}, T={getattr(head, 'psc', torch.empty(0)).shape[0]} PSC); {len(entries)} queries; "
        f"repeats {args.repeats} after {args.warmup} warm-up; text embeddings "
        f"{'from ' + str(args.text_embeddings) if table else 'encoded here'}"
    )
    report = {"device": device, "num_gaussians": memory.gaussians.num_gaussians, "widths": {}}
    for width in args.widths:
        rows = run_width(args, memory, table, entries, width)
        height = round(width * entries[0]["camera"]["height"] / entries[0]["camera"]["width"])
        report["widths"][width] = {}
        for name, engine_rows in rows.items():
            summary = summarise(engine_rows)
            print_width(width, height, name, engine_rows, summary)
            report["widths"][width][name] = {"summary": summary, "rows": engine_rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
