"""`m3 eval MEMORY SCENE`: the command line of m3_core.training.eval (held-out views)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from m3_core.errors import M3Error
from m3_core.features import load_scene_features
from m3_core.features.base import resolve_device
from m3_core.model.memory import M3Memory
from m3_core.scene import atomic_write_json, atomic_write_png, load_scene
from m3_core.training.eval import evaluate_memory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("memory", help="memory directory written by `m3 train`")
    parser.add_argument("scene", help="scene directory the memory was trained on")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    parser.add_argument("--out", default=None, help="folder for metrics.json and PNGs (default MEMORY/eval)")
    parser.add_argument("--models", default=None, help="comma list of models to score (default: all held)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--no-images", action="store_true", help="numbers only, no PNGs")


def run(args: argparse.Namespace) -> int:
    try:
        device = resolve_device(args.device)
        memory = M3Memory.load(args.memory, device)
        scene = load_scene(args.scene)
        models = memory._check_models(args.models.split(",") if args.models else None)
        features = {}
        for model in models:
            entry = memory.manifest["models"][model]
            feats = load_scene_features(
                scene,
                model,
                device="cpu",
                allow_random_weights=bool(entry.get("random_weights")),
                progress=False,
            )
            if entry.get("model_id") and feats.model_id != entry["model_id"]:
                raise M3Error(
                    f"{model}: the memory was trained on {entry['model_id']} features, the scene's are "
                    f"{feats.model_id}; evaluate with the same feature model"
                )
            features[model] = feats
        summary, results = evaluate_memory(memory, scene, features, with_images=not args.no_images)
    except (M3Error, ValueError) as err:
        print(f"m3 eval: {err}", flush=True)
        return 1
    out = Path(args.out) if args.out else Path(args.memory) / "eval"
    summary["per_view"] = [
        {"name": r.name, "psnr": r.psnr, "ssim": r.ssim, "features": r.features} for r in results
    ]
    summary["head"] = memory.manifest["head"]
    atomic_write_json(out / "metrics.json", summary)
    for r in results:
        for name, img in r.images.items():
            atomic_write_png(out / name, img)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(
            f"held-out views: {summary['views']}  PSNR {summary['psnr']:.2f} dB  SSIM {summary['ssim']:.4f}"
        )
        for model, m in summary["features"].items():
            print(f"  {model}: cosine distance {m['cosine']:.4f}  L2 distance {m['l2']:.4f}")
        print(f"metrics and images in {out}")
    return 0

