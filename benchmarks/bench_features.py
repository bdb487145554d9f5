"""Milliseconds per 640x480 frame for each feature model (dense image features), plus text encoding.

    .venv/bin/python benchmarks/bench_features.py                      # CPU, all four models
    .venv/bin/python benchmarks/bench_features.py --device cuda --repeats 20
    .venv/bin/python benchmarks/bench_features.py --models clip --clip-arch ViT-L-14-336

Real weights are used where installed; otherwise the real architecture with random weights (the
timing is the same, the table says "random"). The language model's time includes embedding the
five captions of the frame (its caption memo is cleared each repeat: the worst case).
Prints a markdown table (for BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from m3_core.features import get_model
from m3_core.features.base import WeightsMissingError

CAPTIONS = {
    1: "a yellow rubber duck",
    2: "a brown teddy bear",
    3: "a red coffee mug",
    4: "a blue lego brick",
    5: "a shallow tray",
}
QUERIES = [
    "yellow bath duck",
    "rubber ducky",
    "cup",
    "toy bear",
    "lego",
    "tray",
    "mug",
    "duck",
    "bear",
    "brick",
]


def synthetic_frame(H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured RGB frame and an instance mask with five rectangular regions."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    ids = np.zeros((H, W), np.uint16)
    for k in CAPTIONS:
        y, x = int(rng.integers(0, H * 3 // 4)), int(rng.integers(0, W * 3 // 4))
        ids[y : y + H // 4, x : x + W // 4] = k
    return rgb, ids


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, repeats: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def build(name: str, args: argparse.Namespace):
    options = {}
    if name == "clip":
        options = {"arch": args.clip_arch, "short_side": args.short_side}
    elif name in ("siglip", "dinov2"):
        options = {"short_side": args.short_side}
    try:
        return get_model(name, device=args.device, **options)
    except WeightsMissingError:
        return get_model(name, device=args.device, allow_random_weights=True, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--models", default="clip,siglip,dinov2,language")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--clip-arch", default="ViT-B-16")
    parser.add_argument("--short-side", type=int, default=None, help="resize for the ViTs (default native)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rgb, ids = synthetic_frame(args.height, args.width)
    machine = torch.cuda.get_device_name(0) if "cuda" in args.device else f"{platform.processor() or 'CPU'}"
    print(
        f"# feature models, {args.width}x{args.height} frame, device={args.device} ({machine}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} repeats\n"
    )
    print("| model | model id | weights | grid h x w x d | ms/frame median | min | 10 texts ms |")
    print("|---|---|---|---|---|---|---|")
    for name in [n.strip() for n in args.models.split(",") if n.strip()]:
        model = build(name, args)
        device = model.device
        if name == "language":

            def dense(model=model):
                model._caption_cache.clear()
                return model.encode_image_dense(rgb, masks=ids, captions=CAPTIONS)
        else:

            def dense(model=model):
                return model.encode_image_dense(rgb)

        grid = tuple(dense().shape)
        times = time_ms(dense, args.repeats, args.warmup, device)
        text_ms = "n/a (no text encoder)"
        if name != "dinov2":
            t = time_ms(lambda model=model: model.encode_text(QUERIES), args.repeats, args.warmup, device)
            text_ms = f"{statistics.median(t):.1f}"
        weights = "random" if model.random_weights else "real"
        print(
            f"| {name} | {model.model_id} | {weights} | {grid[0]} x {grid[1]} x {grid[2]} | "
            f"{statistics.median(times):.1f} | {min(times):.1f} | {text_ms} |",
            flush=True,
        )
        del model


if __name__ == "__main__":
    main()
