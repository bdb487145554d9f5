"""`m3 train SCENE --models language,clip --out DIR`: features (cached) -> PSC -> memory directory."""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from m3_core.config import load_yaml
from m3_core.errors import M3Error
from m3_core.features import load_scene_features
from m3_core.features.base import resolve_device
from m3_core.model.memory import HEADS, MANIFEST_FILE
from m3_core.scene import OutputExistsError, check_replaceable, load_scene
from m3_core.training.trainer import TrainConfig, train_memory

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scene", help="scene directory (scene.json, images/, depth/, sparse/0)")
    parser.add_argument("--models", default="language", help="comma list: language, clip, siglip, dinov2")
    parser.add_argument("--out", required=True, help="memory directory to write (replaced atomically)")
    parser.add_argument("--iters", type=int, default=None, help="optimisation steps (default: config)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--config", default=None, help="YAML file with a `train` section (TrainConfig fields)"
    )
    parser.add_argument(
        "--head",
        choices=HEADS,
        default=None,
        help="feature head: attention (M3) or linear (F-3DGS-style decoder, same parameter budget); "
        "default: the config's (attention)",
    )
    # the head used to be chosen by a flag of its own: say what replaced it
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--allow-random-weights", action="store_true", help="use random model weights when none are installed"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def check_output(scene: Path, out: Path, marker: str) -> None:
    """Refuse (OutputExistsError) an --out that is the scene, holds the scene, or exists and is not a
    memory (recognised by its `marker` file): replacing it would delete someone's files."""
    scene_abs, out_abs = scene.resolve(), out.resolve()
    if out_abs == scene_abs or out_abs in scene_abs.parents:
        raise OutputExistsError(
            f"--out {out} would replace the scene {scene} it trains from; pick another path"
        )
    check_replaceable(out, marker, "memory")


def run(args: argparse.Namespace) -> int:
    if args.baseline:
        print("m3 train: --baseline is gone; use --head linear")
        return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        print("m3 train: --models is empty; e.g. --models language,clip")
        return 2
    try:  # before any work: an --out that is not a memory is never replaced
        check_output(Path(args.scene), Path(args.out), MANIFEST_FILE)
    except M3Error as err:
        print(f"m3 train: {err}")
        return 2
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        device = resolve_device(args.device)
        config = load_yaml(TrainConfig, args.config, section="train") if args.config else TrainConfig()
        if args.iters is not None:
            config = replace(config, iters=args.iters)
        if args.head is not None:
            config = replace(config, head=args.head)
        t0 = time.perf_counter()
        scene = load_scene(args.scene)
        features = {
            m: load_scene_features(
                scene,
                m,
                device=device,
                allow_random_weights=args.allow_random_weights,
                progress=not args.quiet,
            )
            for m in models
        }
        t_features = time.perf_counter() - t0
        result = train_memory(
            scene, features, config, device=device, out_dir=Path(args.out), progress=not args.quiet
        )
    except (M3Error, ValueError, OSError) as err:
        print(f"m3 train: {err}")
        return 1
    stats = dict(result.stats, seconds_features=round(t_features, 3))
    print(json.dumps({"memory": str(args.out), **stats}, indent=1, default=str))
    return 0
