"""`m3 features SCENE --models clip,language`: extract and cache dense features of a scene.

Features land in SCENE/features/<model>.safetensors; frames whose inputs did not change since the
last run are taken from there. Prints one line per model (grid, frames extracted / cached, time).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from m3_core.errors import M3Error
from m3_core.features import MODELS, get_model, load_scene_features
from m3_core.features.preview import preview_image, similarity_map
from m3_core.scene import atomic_write_png, load_scene

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scene", help="scene directory (scene.json, images/, sparse/0, masks/ for language)")
    parser.add_argument(
        "--models",
        default="clip,language",
        help="comma-separated: clip, siglip, dinov2, language (default: %(default)s)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    parser.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="use randomly initialised models when weights are missing (tests/benchmarks only: meaningless features)",
    )
    parser.add_argument("--clip-arch", default=None, help="open_clip architecture (default ViT-B-16)")
    parser.add_argument("--clip-pretrained", default=None, help="open_clip pretrained tag (default openai)")
    parser.add_argument("--clip-weights", default=None, help="open_clip checkpoint file for CLIP")
    parser.add_argument(
        "--siglip-weights", default=None, help="directory with SigLIP config/weights/tokenizer"
    )
    parser.add_argument("--dinov2-weights", default=None, help="directory with DINOv2 config.json + weights")
    parser.add_argument(
        "--short-side", type=int, default=None, help="resize images to this short side for ViTs"
    )
    parser.add_argument(
        "--language-stride", type=int, default=None, help="language grid stride in pixels (8)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--preview",
        action="store_true",
        help="write features/preview_<model>.png (frame | PCA colours | query)",
    )
    parser.add_argument("--preview-frame", type=int, default=0, help="frame index for --preview (default 0)")
    parser.add_argument(
        "--query", default=None, help="text query whose heatmap --preview draws (text models)"
    )


def model_options(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Per-model options from the command line (only those given)."""
    table = {
        "clip": {
            "arch": args.clip_arch,
            "pretrained": args.clip_pretrained,
            "weights_path": args.clip_weights,
            "short_side": args.short_side,
        },
        "siglip": {"weights_path": args.siglip_weights, "short_side": args.short_side},
        "dinov2": {"weights_path": args.dinov2_weights, "short_side": args.short_side},
        "language": {"stride": args.language_stride},
    }
    return {k: v for k, v in table.get(name, {}).items() if v is not None}


def write_preview(scene: Any, feats: Any, model: Any, args: argparse.Namespace) -> str:
    """frame | PCA colours | query heatmap, as SCENE/features/preview_<model>.png."""

    i = min(max(args.preview_frame, 0), len(feats.names) - 1)
    similarity = None
    if args.query and model.name != "dinov2":
        similarity = similarity_map(feats.grids[i], model.encode_text([args.query])[0])
    path = scene.root / "features" / f"preview_{model.name}.png"
    atomic_write_png(path, preview_image(scene.read_rgb(i), feats.grids[i], similarity))
    return str(path)


def run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if not names or unknown:
        print(f"m3 features: unknown model(s) {unknown or names}; choose from {', '.join(MODELS)}")
        return 2
    try:
        scene = load_scene(args.scene)
    except M3Error as err:
        print(f"m3 features: {err}")
        return 1
    status = 0
    for name in names:
        start = time.perf_counter()
        try:
            model = get_model(
                name,
                device=args.device,
                allow_random_weights=args.allow_random_weights,
                **model_options(args, name),
            )
            feats = load_scene_features(scene, model, progress=not args.no_progress)
        except (M3Error, ValueError) as err:
            print(f"m3 features: {name}: {err}")
            status = 1
            continue
        seconds = time.perf_counter() - start
        if args.preview:
            path = write_preview(scene, feats, model, args)
            print(f"{name:9s} preview: {path}")
        F, h, w, d = feats.grids.shape
        warning = "  RANDOM WEIGHTS: meaningless features" if feats.random_weights else ""
        print(
            f"{name:9s} {feats.model_id}: {F} frames, grid {h}x{w}x{d}, {feats.num_extracted} extracted, "
            f"{F - feats.num_extracted} cached, {seconds:.1f} s{warning}"
        )
    return status
