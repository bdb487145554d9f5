"""gsplat (CUDA) vs the pure-PyTorch backend: images and gradients agree to a relative error <= 1e-4.

Runs only where CUDA and gsplat are present (the GPU machine); the CPU backend itself is checked
against a brute-force reference in test_render_torch.py.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from m3_core.geometry import PinholeCamera, matrix_from_pose
from m3_core.model.gaussians import GaussianModel
from m3_core.render import rasterize

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or importlib.util.find_spec("gsplat") is None,
        reason="needs CUDA + gsplat",
    ),
]

PARAMS = ["means", "quats", "log_scales", "opacity_logits", "colors", "queries"]
TOL = 1e-4


def _scene(n: int, seed: int) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([2.4, 1.8, 2.0]) + torch.tensor(
        [0.0, 0.0, 2.5]
    )
    return GaussianModel(
        means=means,
        quats=torch.randn(n, 4, generator=g),
        log_scales=torch.log(0.01 + 0.05 * torch.rand(n, 3, generator=g)),
        opacity_logits=torch.randn(n, generator=g) * 1.5,
        colors=torch.rand(n, 3, generator=g),
        queries=torch.randn(n, 32, generator=g),
        query_dims={"clip": 16, "dino": 16},
    ).cuda()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _render_and_grads(model: GaussianModel, pose, cam, backend: str, pixels=None):
    model.zero_grad(set_to_none=True)
    out = rasterize(
        model, pose, cam, backend=backend, pixels=pixels, background=torch.tensor([0.2, 0.3, 0.4]).cuda()
    )
    g = torch.Generator(device="cuda").manual_seed(1)
    loss = sum(
        (x * torch.randn(x.shape, generator=g, device="cuda")).sum()
        for x in (out.rgb, out.depth, out.queries, out.alpha)
    )
    loss.backward()
    return out, {name: getattr(model, name).grad.clone() for name in PARAMS}


@pytest.mark.parametrize("seed", [0, 1])
def test_gsplat_matches_torch_backend_images_and_gradients(seed: int) -> None:
    model = _scene(3000, seed)
    cam = PinholeCamera(fx=180.0, fy=190.0, cx=95.3, cy=71.8, width=192, height=144)
    rng = np.random.default_rng(seed)
    quat = rng.normal(size=4) * np.array([0.05, 0.05, 0.05, 1.0])
    pose = matrix_from_pose(rng.normal(size=3) * 0.05, quat / np.linalg.norm(quat))
    ref, ref_grads = _render_and_grads(model, pose, cam, "torch")
    out, grads = _render_and_grads(model, pose, cam, "gsplat")
    assert out.meta["backend"] == "gsplat" and ref.meta["backend"] == "torch"
    assert float(ref.alpha.mean()) > 0.3, "the test scene should cover the image"
    report = {
        name: _rel(getattr(out, name), getattr(ref, name)) for name in ["rgb", "depth", "queries", "alpha"]
    }
    report.update({f"d_{name}": _rel(grads[name], ref_grads[name]) for name in PARAMS})
    print(
        f"\nparity seed {seed} (relative L2 error gsplat vs torch): "
        + ", ".join(f"{k} {v:.2e}" for k, v in report.items())
    )
    for name, err in report.items():
        assert err <= TOL, f"{name}: relative error {err:.2e} > {TOL}"

    # pixel mode: gsplat samples its full image, torch renders only these pixels
    pix = torch.stack([torch.randint(0, 144, (500,)), torch.randint(0, 192, (500,))], 1).cuda()
    sub_ref, sub_ref_grads = _render_and_grads(model, pose, cam, "torch", pixels=pix)
    sub, sub_grads = _render_and_grads(model, pose, cam, "gsplat", pixels=pix)
    for name in ["rgb", "depth", "queries", "alpha"]:
        assert _rel(getattr(sub, name), getattr(sub_ref, name)) <= TOL, name
    for name in PARAMS:
        assert _rel(sub_grads[name], sub_ref_grads[name]) <= TOL, name


def test_auto_backend_on_cuda_is_gsplat_and_meta_has_densification_stats() -> None:
    model = _scene(500, 2)
    cam = PinholeCamera(fx=100.0, fy=100.0, cx=63.5, cy=47.5, width=128, height=96)
    out = rasterize(model, np.eye(4), cam)
    assert out.meta["backend"] == "gsplat"
    assert out.meta["means2d"].shape == (1, 500, 2) and out.meta["radii"].shape == (1, 500, 2)
    ref = rasterize(model, np.eye(4), cam, backend="torch")
    # same culling and bounding boxes (ceil of float32 math: allow a rare off-by-one at integers)
    same = (out.meta["radii"].int() == ref.meta["radii"].int()).all(-1).float().mean()
    assert float(same) > 0.99
