"""Relevance of a rendered view: decode-then-relevance vs. relevance from the PSC products.

Renders a memory at a keyframe of its scene (or at its first training pose) and times, on the
rendered queries, (a) `memory.decode` to the [H, W, d] feature map + `relevance`, and (b)
`relevance_from_queries` (M3Memory.feature_products: no feature map). Prints the median ms of
each (CUDA-synchronised), the render for scale, and the largest difference between the two.
The text vectors are random unit vectors (the cost does not depend on them), so this times the
relevance stage only, not a found or not-found query.

    python benchmarks/bench_relevance.py MEMORY --scene SCENE --model clip --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _median_ms(fn, repeats: int, cuda: bool) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("memory", help="memory directory")
    parser.add_argument("--scene", required=True, help="the scene the memory was trained on")
    parser.add_argument("--model", default="clip", help="feature model of the memory")
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--width", type=int, default=640, help="render width (camera scaled)")
    parser.add_argument("--negatives", type=int, default=4, help="negative text vectors")
    parser.add_argument("--repeats", type=int, default=50, help="timed repeats (median)")
    args = parser.parse_args()

    from m3_core.model.memory import M3Memory
    from m3_core.query.relevance import relevance, relevance_from_queries
    from m3_core.render import rasterize
    from m3_core.scene import load_scene

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    memory = M3Memory.load(args.memory, device=device)
    scene = load_scene(args.scene)
    frame = scene.frames[0]
    cam = frame.camera.scaled(args.width, round(frame.camera.height * args.width / frame.camera.width))
    pose = torch.as_tensor(frame.world_from_camera, dtype=torch.float64, device=device)
    head = memory.heads[args.model]
    d = head.feature_dim
    gen = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0).to(device)
    negatives = torch.nn.functional.normalize(torch.randn(args.negatives, d, generator=gen), dim=1).to(device)
    if hasattr(head, "psc_basis"):
        head.psc_basis()  # once per memory (an SVD), at load time in a query engine

    def render():
        with torch.no_grad():
            return rasterize(memory.gaussians, pose, cam, background=memory.background)

    queries = render().queries

    def decode_then_relevance():
        with torch.no_grad():
            return relevance(memory.decode(args.model, queries), text, negatives, 0.1)

    def from_products():
        return relevance_from_queries(memory, args.model, queries, text, negatives, 0.1)

    t_render = _median_ms(render, args.repeats, cuda)
    t_decode = _median_ms(decode_then_relevance, args.repeats, cuda)
    t_fast = _median_ms(from_products, args.repeats, cuda)
    (rel_a, sim_a), (rel_b, sim_b) = decode_then_relevance(), from_products()
    psc = getattr(head, "psc", None)
    print(
        f"device {torch.cuda.get_device_name(device) if cuda else 'cpu'}, {cam.width}x{cam.height}, "
        f"{memory.gaussians.num_gaussians} Gaussians, model {args.model} d={d}"
        + (f", T={psc.shape[0]} PSC, basis rank {head.psc_basis().shape[1]}" if psc is not None else "")
    )
    print(f"render (all channels)          {t_render:8.2f} ms")
    print(f"decode [H,W,d] + relevance     {t_decode:8.2f} ms")
    print(f"relevance from PSC products    {t_fast:8.2f} ms   ({t_decode / t_fast:.2f}x)")
    print(
        f"max |difference|: relevance {float((rel_a - rel_b).abs().max()):.2e}, "
        f"similarity {float((sim_a - sim_b).abs().max()):.2e}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
