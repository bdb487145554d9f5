"""Time and score memory training on a scene (the built-in one by default); prints numbers.

CPU target (2 cores): language-mask + RGB memory of the built-in scene in <= 5 min (features,
PSC, init and training all counted). GPU target (one H100/H200): CLIP-only memory in <= 60 s
(random CLIP weights are fine for timing). Quality: held-out RGB PSNR >= 28 dB, language cosine
distance <= 0.10, CLIP cosine distance of the attention head below the linear head's
(--heads attention,linear: the same run with the F-3DGS-style linear head at the same budget).

Build the built-in scene first:
    m3 sim --out /tmp/b1z1_bag                       (the simulated B1+Z1 scan, a ROS 2 bag)
    m3 bag2scene /tmp/b1z1_bag /tmp/b1z1_scene
    m3 sim masks /tmp/b1z1_scene /tmp/b1z1_bag_gt    (instance masks + captions; see `m3 sim --help`)

Examples:
    python benchmarks/bench_train.py --scene /tmp/b1z1_scene --device cpu --models language
    python benchmarks/bench_train.py --scene /tmp/b1z1_scene --device cuda --models clip \
        --allow-random-weights --heads attention,linear
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scene", required=True, help="scene directory (the built-in scene: see above)")
    parser.add_argument("--models", default=None, help="comma list (default: language on CPU, clip on CUDA)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--iters", type=int, default=None, help="steps (default: TrainConfig's on CPU, 3000 on CUDA)"
    )
    parser.add_argument(
        "--train-width", type=int, default=None, help="training image width (default: config)"
    )
    parser.add_argument("--config", default=None, help="YAML with a `train` section")
    parser.add_argument(
        "--allow-random-weights", action="store_true", help="random model weights (timing only)"
    )
    parser.add_argument(
        "--heads", default="attention", help="comma list of heads to train and compare: attention, linear"
    )
    # earlier runs (BENCHMARKS.md) said --baseline for "--heads attention,linear"
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--thetas", default=None, help="PSC thresholds, e.g. clip=0.9,language=0.95")
    parser.add_argument("--out", default=None, help="write the memory here (default: not written)")
    parser.add_argument(
        "--compile", choices=("auto", "on", "off"), default=None,
        help="TrainConfig.compile_loss (default: the config's, auto = compiled on CUDA with Triton)",
    )  # fmt: skip
    parser.add_argument(
        "--compile-mode", default=None, help="TrainConfig.compile_mode (torch.compile mode of the loss)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.baseline:
        parser.exit(2, "bench_train.py: --baseline is gone; use --heads attention,linear\n")
    args.heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    return args


def _train_config(args: argparse.Namespace, cuda: bool):
    """TrainConfig from --config and the flags (CUDA: 3000 steps at width 640 unless told)."""
    from m3_core.config import load_yaml
    from m3_core.training.trainer import TrainConfig

    config = load_yaml(TrainConfig, args.config, "train") if args.config else TrainConfig()
    if cuda and args.iters is None and not args.config:
        config = replace(config, iters=3000, train_width=640)
    if args.iters is not None:
        config = replace(config, iters=args.iters)
    if args.train_width is not None:
        config = replace(config, train_width=args.train_width)
    if args.compile is not None:
        config = replace(config, compile_loss=args.compile)
    if args.compile_mode is not None:
        config = replace(config, compile_mode=args.compile_mode)
    if args.thetas:
        pairs = dict(kv.split("=") for kv in args.thetas.split(","))
        config = replace(config, thetas={**config.thetas, **{k: float(v) for k, v in pairs.items()}})
    return config


def main() -> int:
    args = _parse_args()

    import torch

    from m3_core.features import load_scene_features
    from m3_core.scene import load_scene
    from m3_core.training.eval import evaluate_memory
    from m3_core.training.trainer import train_memory

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    models = (args.models or ("clip" if cuda else "language")).split(",")
    config = _train_config(args, cuda)

    print(f"machine: {platform.node()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, torch threads "
          f"{torch.get_num_threads()}" + (f", GPU {torch.cuda.get_device_name(device)}" if cuda else ""))  # fmt: skip
    t0 = time.perf_counter()
    scene = load_scene(args.scene)
    features = {
        m: load_scene_features(
            scene, m, device=device, allow_random_weights=args.allow_random_weights, progress=False
        )
        for m in models
    }
    if cuda:
        torch.cuda.synchronize()
    t_features = time.perf_counter() - t0
    extracted = {m: f.num_extracted for m, f in features.items()}
    print(f"scene: {len(scene)} keyframes, {scene.frames[0].camera.width}x{scene.frames[0].camera.height}; "
          f"features {t_features:.1f} s (frames extracted {extracted}, rest cached)")  # fmt: skip

    results = {}
    for head in args.heads:
        cfg = replace(config, head=head)
        t1 = time.perf_counter()
        res = train_memory(
            scene, features, cfg, device=device, out_dir=args.out if head == "attention" else None
        )
        t_train = time.perf_counter() - t1
        summary, _ = evaluate_memory(res.memory, scene, features)
        s = res.stats
        total = t_features + t_train
        print(
            f"\n[{head} head] iters {cfg.iters} at width {cfg.train_width or 'native'} ({res.memory.manifest['training']['render_mode']} mode, "
            f"compile_loss {cfg.compile_loss}, mode {cfg.compile_mode})"
        )
        print(f"  setup {s['seconds_setup']:.1f} s (PSC {s['seconds_psc']:.1f} s), train {s['seconds_train']:.1f} s "
              f"({cfg.iters / max(s['seconds_train'], 1e-9):.1f} it/s), features+setup+train {total:.1f} s")  # fmt: skip
        print(f"  Gaussians {s['num_gaussians']}, PSC { ({m: v['psc_size'] for m, v in s['psc'].items()}) }")
        print(
            f"  held-out ({summary['views']} views): PSNR {summary['psnr']:.2f} dB, SSIM {summary['ssim']:.4f}"
        )
        for m, v in summary["features"].items():
            print(f"  {m}: cosine distance {v['cosine']:.4f}, L2 distance {v['l2']:.4f}")
        results[head] = {"seconds_total_with_features": round(total, 2), **summary, "train_stats": s}
    if {"attention", "linear"} <= set(results):
        _compare(results, models)
    print("\nJSON " + json.dumps(results, default=str))
    return 0


def _compare(results: dict, models: list[str]) -> None:
    for m in models:
        a = results["attention"]["features"].get(m, {}).get("cosine")
        b = results["linear"]["features"].get(m, {}).get("cosine")
        if a is not None and b is not None:
            verdict = "attention better" if a < b else "linear better"
            print(f"\n{m} cosine distance: attention {a:.4f} vs linear {b:.4f} -> {verdict}")


if __name__ == "__main__":
    raise SystemExit(main())
