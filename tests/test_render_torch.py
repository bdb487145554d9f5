"""CPU (pure PyTorch) rasterizer: against a brute-force per-pixel reference, pixel subsets, geometry."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from m3_core.geometry import PinholeCamera, matrix_from_pose
from m3_core.model.gaussians import GaussianModel
from m3_core.render import rasterize

CAM = PinholeCamera(fx=20.0, fy=22.0, cx=11.3, cy=8.7, width=24, height=18)


def _random_model(
    n: int, seed: int, dtype=torch.float64, query_dims=None, opaque: bool = False
) -> GaussianModel:
    """opaque: a tight stack of near-opaque Gaussians, so that alphas clamp at 0.999 and pixels
    stop early (T <= 1e-4)."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.tensor([0.2, 0.2, 1.0] if opaque else [1.2, 1.0, 1.0], dtype=dtype)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * spread + torch.tensor(
        [0.0, 0.0, 2.0], dtype=dtype
    )
    logits = (
        4.0 + 4.0 * torch.rand(n, generator=g, dtype=dtype)
        if opaque
        else torch.randn(n, generator=g, dtype=dtype) * 2
    )
    model = GaussianModel(
        means=means,
        quats=torch.randn(n, 4, generator=g, dtype=dtype),
        log_scales=torch.log(0.03 + 0.1 * torch.rand(n, 3, generator=g, dtype=dtype)),
        opacity_logits=logits,
        colors=torch.rand(n, 3, generator=g, dtype=dtype),
        queries=torch.randn(n, 5, generator=g, dtype=dtype),
        query_dims=query_dims or {"clip": 3, "dino": 2},
    )
    return model


def _reference(
    model: GaussianModel, camera_from_world: torch.Tensor, cam: PinholeCamera, near=0.01, far=100.0
):
    """Brute force: every pixel, every Gaussian, gsplat's rules written out once more, loop by loop."""
    R, t = camera_from_world[:3, :3], camera_from_world[:3, 3]
    q = model.quats / model.quats.norm(dim=1, keepdim=True)
    feats = torch.cat([model.colors, model.queries], 1)
    fx, fy, cx, cy = cam.fx, cam.fy, cam.cx + 0.5, cam.cy + 0.5
    splats = []
    for i in range(len(model)):
        w, x, y, z = q[i]
        rot = torch.stack(
            [
                torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)]),
                torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)]),
                torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]),
            ]
        )
        S = torch.diag(model.scales[i])
        cov_c = R @ rot @ S @ S @ rot.T @ R.T
        p = R @ model.means[i] + t
        if not (near <= p[2] <= far):
            continue
        lx = (cam.width - cx) / fx + 0.3 * 0.5 * cam.width / fx, cx / fx + 0.3 * 0.5 * cam.width / fx
        ly = (cam.height - cy) / fy + 0.3 * 0.5 * cam.height / fy, cy / fy + 0.3 * 0.5 * cam.height / fy
        tx = p[2] * torch.clamp(p[0] / p[2], -lx[1], lx[0])
        ty = p[2] * torch.clamp(p[1] / p[2], -ly[1], ly[0])
        zero = torch.zeros((), dtype=p.dtype)
        J = torch.stack(
            [
                torch.stack([fx / p[2], zero, -fx * tx / p[2] ** 2]),
                torch.stack([zero, fy / p[2], -fy * ty / p[2] ** 2]),
            ]
        )
        cov2 = J @ cov_c @ J.T + 0.3 * torch.eye(2, dtype=p.dtype)
        if torch.det(cov2) <= 0:
            continue
        mean2 = torch.stack([fx * p[0] / p[2] + cx, fy * p[1] / p[2] + cy])
        splats.append(
            (p[2], mean2, torch.linalg.inv(cov2), model.opacities[i], torch.cat([feats[i], p[2:3]]))
        )
    splats.sort(key=lambda s: float(s[0].detach()))
    out = torch.zeros(cam.height, cam.width, feats.shape[1] + 1, dtype=feats.dtype)
    alpha_img = torch.zeros(cam.height, cam.width, dtype=feats.dtype)
    _reference.stopped = 0  # pixels that hit the T <= 1e-4 stop (for the tests' own check)
    for row in range(cam.height):
        for col in range(cam.width):
            px = torch.tensor([col + 0.5, row + 0.5], dtype=feats.dtype)
            T = torch.ones((), dtype=feats.dtype)
            acc = torch.zeros(feats.shape[1] + 1, dtype=feats.dtype)
            for _, mean2, conic, opacity, f in splats:
                d = mean2 - px
                sigma = 0.5 * d @ conic @ d
                alpha = torch.clamp(opacity * torch.exp(-sigma), max=0.999)
                if sigma < 0 or alpha < 1.0 / 255.0:
                    continue
                if T * (1 - alpha) <= 1e-4:
                    _reference.stopped += 1
                    break
                acc = acc + alpha * T * f
                T = T * (1 - alpha)
            out[row, col] = acc
            alpha_img[row, col] = 1 - T
    C = feats.shape[1]
    depth = out[..., C] / alpha_img.clamp(min=1e-10)
    return out[..., :3], depth, out[..., 3:C], alpha_img


def _pose(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    quat = rng.normal(size=4) * np.array([0.1, 0.1, 0.1, 1.0])
    return matrix_from_pose(rng.normal(size=3) * 0.05, quat / np.linalg.norm(quat))


@pytest.mark.parametrize(("seed", "opaque"), [(0, False), (1, False), (2, True)])
def test_matches_brute_force_reference_images_and_gradients(seed: int, opaque: bool) -> None:
    model = _random_model(16 if opaque else 7, seed, opaque=opaque)
    pose = _pose(seed)
    out = rasterize(model, pose, CAM, backend="torch")
    camera_from_world = torch.linalg.inv(torch.as_tensor(pose))
    rgb, depth, queries, alpha = _reference(model, camera_from_world, CAM)
    assert float(alpha.detach().max()) > 0.3, "test scene should cover part of the image"
    if opaque:  # the case exercises the 0.999 clamp and the early stop
        assert _reference.stopped > 0 and bool((model.opacities > 0.999).any())
    for got, want in [(out.rgb, rgb), (out.depth, depth), (out.queries, queries), (out.alpha, alpha)]:
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)

    weights = [
        torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=x.dtype) for x in (rgb, depth)
    ]

    def loss(r):
        return (r[0] * weights[0]).sum() + (r[1] * weights[1]).sum() + r[2].square().sum() + r[3].sum()

    names = ["means", "quats", "log_scales", "opacity_logits", "colors", "queries"]
    params = [getattr(model, n) for n in names]
    got = torch.autograd.grad(loss((out.rgb, out.depth, out.queries, out.alpha)), params)
    want = torch.autograd.grad(loss((rgb, depth, queries, alpha)), params)
    for name, g, w in zip(names, got, want):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-9, msg=lambda m, name=name: f"{name}: {m}")


def test_pixel_subset_equals_full_render_at_those_pixels() -> None:
    model = _random_model(40, 3, dtype=torch.float32)
    cam = PinholeCamera(fx=60.0, fy=60.0, cx=39.5, cy=29.5, width=80, height=60)
    pose = _pose(3)
    full = rasterize(model, pose, cam)
    g = torch.Generator().manual_seed(0)
    pixels = torch.stack(
        [torch.randint(0, 60, (300,), generator=g), torch.randint(0, 80, (300,), generator=g)], 1
    )
    sub = rasterize(model, pose, cam, pixels=pixels)
    assert sub.rgb.shape == (300, 3) and sub.queries.shape == (300, 5) and sub.depth.shape == (300,)
    r, c = pixels[:, 0], pixels[:, 1]
    torch.testing.assert_close(sub.rgb, full.rgb[r, c], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sub.depth, full.depth[r, c], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sub.queries, full.queries[r, c], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sub.alpha, full.alpha[r, c], rtol=1e-5, atol=1e-6)
    (sub.rgb.sum() + sub.queries.sum() + sub.depth.sum()).backward()
    for name in ["means", "quats", "log_scales", "opacity_logits", "colors", "queries"]:
        grad = getattr(model, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def _single(mean, scale=(0.01, 0.01, 0.01), opacity=0.99) -> GaussianModel:
    return GaussianModel(
        means=torch.tensor(np.asarray([mean], dtype=np.float64)),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64),
        log_scales=torch.log(torch.tensor([scale], dtype=torch.float64)),
        opacity_logits=torch.tensor([math.log(opacity / (1 - opacity))], dtype=torch.float64),
        colors=torch.tensor([[1.0, 0.5, 0.25]], dtype=torch.float64),
        queries=torch.zeros(1, 16, dtype=torch.float64),
        query_dims=["clip"],
    )


def test_single_gaussian_lands_where_the_pinhole_camera_projects_it() -> None:
    cam = PinholeCamera(fx=100.0, fy=110.0, cx=31.5, cy=23.5, width=64, height=48)
    pose = _pose(5)
    world_point = pose[:3, :3] @ np.array([0.07, -0.04, 1.3]) + pose[:3, 3]
    uv, _ = cam.project((np.linalg.inv(pose)[:3, :3] @ world_point + np.linalg.inv(pose)[:3, 3])[None])
    out = rasterize(_single(world_point, scale=(0.004, 0.004, 0.004)), pose, cam)
    w = out.alpha
    rows, cols = torch.meshgrid(
        torch.arange(48.0, dtype=w.dtype), torch.arange(64.0, dtype=w.dtype), indexing="ij"
    )
    centroid = np.array([float((w * cols).sum() / w.sum()), float((w * rows).sum() / w.sum())])
    np.testing.assert_allclose(centroid, uv[0], atol=0.02)
    peak = np.unravel_index(int(w.argmax()), w.shape)
    assert (peak[1], peak[0]) == tuple(np.round(uv[0]).astype(int))


def test_depth_of_fronto_parallel_splat_is_its_z() -> None:
    cam = PinholeCamera(fx=50.0, fy=50.0, cx=15.5, cy=11.5, width=32, height=24)
    out = rasterize(_single([0.02, -0.01, 1.7], scale=(0.1, 0.1, 1e-6)), np.eye(4), cam)
    covered = out.alpha > 0.01
    assert covered.sum() > 50
    torch.testing.assert_close(
        out.depth[covered], torch.full_like(out.depth[covered], 1.7), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(
        out.rgb[covered] / out.alpha[covered, None],
        torch.tensor([1.0, 0.5, 0.25]).expand(int(covered.sum()), 3).to(out.rgb),
        rtol=1e-9,
        atol=1e-9,
    )


def test_behind_camera_and_beyond_far_are_culled_and_background_blends() -> None:
    cam = PinholeCamera(fx=50.0, fy=50.0, cx=15.5, cy=11.5, width=32, height=24)
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    for z, far in [(-1.0, 100.0), (5.0, 4.0)]:
        out = rasterize(_single([0.0, 0.0, z], scale=(0.2, 0.2, 0.2)), np.eye(4), cam, far=far, background=bg)
        assert float(out.alpha.abs().max()) == 0.0
        torch.testing.assert_close(out.rgb, bg.expand(24, 32, 3))


def test_render_queries_false_and_bad_inputs() -> None:
    model = _random_model(5, 0, dtype=torch.float32)
    out = rasterize(model, np.eye(4), CAM, render_queries=False)
    assert out.queries.shape == (CAM.height, CAM.width, 0)
    with pytest.raises(ValueError, match="CUDA"):
        rasterize(model, np.eye(4), CAM, backend="gsplat")
    with pytest.raises(ValueError, match="backend"):
        rasterize(model, np.eye(4), CAM, backend="vulkan")
    with pytest.raises(ValueError, match="inside"):
        rasterize(model, np.eye(4), CAM, pixels=torch.tensor([[0, CAM.width]]))
    with pytest.raises(ValueError, match=r"\[4,4\]"):
        rasterize(model, np.eye(3), CAM)


def test_fractional_pixels_evaluate_between_integer_ones() -> None:
    model = _random_model(30, 4, dtype=torch.float64)
    cam = PinholeCamera(fx=60.0, fy=60.0, cx=39.5, cy=29.5, width=80, height=60)
    pix = torch.tensor([[30.0, 40.0], [30.25, 40.5], [31.0, 41.0], [59.0, 79.0]], dtype=torch.float64)
    sub = rasterize(model, np.eye(4), cam, pixels=pix)
    full = rasterize(model, np.eye(4), cam)
    assert float(full.alpha[30, 40]) > 0.1
    torch.testing.assert_close(sub.rgb[0], full.rgb[30, 40])
    torch.testing.assert_close(sub.rgb[2], full.rgb[31, 41])
    torch.testing.assert_close(sub.rgb[3], full.rgb[59, 79])
    assert not torch.equal(sub.rgb[1], sub.rgb[0]) and not torch.equal(sub.rgb[1], sub.rgb[2])


def test_gsplat_channel_chunk_choice_avoids_padding() -> None:
    from m3_core.render.gsplat_backend import NATIVE_CHANNELS, channel_chunk_for

    assert channel_chunk_for(33) == 33 and channel_chunk_for(17) == 17  # native: one pass
    assert channel_chunk_for(20) in (16, 17)  # 16 queries + RGB + ED: split rather than pad to 32
    assert channel_chunk_for(36) in (32, 33)  # 32 queries + RGB + ED: split rather than pad to 64
    for n in range(1, 200):
        chunk = channel_chunk_for(n)
        assert chunk == n or (chunk in NATIVE_CHANNELS and chunk < n)


def test_cpu_rendering_never_imports_gsplat() -> None:
    """On a machine with nvcc but no GPU, importing gsplat JIT-builds CUDA code and fails."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, torch\n"
        "from m3_core.model.gaussians import GaussianModel\n"
        "from m3_core.geometry import PinholeCamera\n"
        "from m3_core.render import rasterize\n"
        "g = GaussianModel.from_points(np.array([[0.0, 0.0, 1.0]]), np.ones((1, 3)), ['clip'])\n"
        "rasterize(g, np.eye(4), PinholeCamera(50.0, 50.0, 15.5, 11.5, 32, 24)).rgb.sum().backward()\n"
        "assert 'gsplat' not in sys.modules, 'gsplat was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def test_meta_means2d_collects_screen_space_gradients_for_densification() -> None:
    model = _random_model(20, 5, dtype=torch.float32)
    pixels = torch.stack(
        torch.meshgrid(torch.arange(0, 18, 2), torch.arange(0, 24, 2), indexing="ij"), -1
    ).reshape(-1, 2)
    out = rasterize(model, np.eye(4), CAM, pixels=pixels)
    means2d = out.meta["means2d"]
    means2d.retain_grad()
    out.rgb.sum().backward()
    assert means2d.shape == (1, 20, 2) and out.meta["radii"].shape == (1, 20, 2)
    visible = (out.meta["radii"][0] > 0).all(-1)
    assert visible.any() and means2d.grad is not None
    assert float(means2d.grad[0, ~visible].abs().sum()) == 0.0
    assert float(means2d.grad[0, visible].abs().sum()) > 0.0


@pytest.mark.parametrize(("seed", "opaque", "n"), [(0, False, 7), (2, True, 16), (4, False, 300)])
def test_full_image_without_gradients_composites_by_tile_like_the_per_pixel_path(seed, opaque, n) -> None:
    """No-grad full images take the tile path (_composite_tiles); it must give what the per-pixel
    path (taken with gradients) and the brute-force reference give, early stop and clamp included.
    CAM is 24x18: the last tile row is cut by the image edge."""
    model = _random_model(n, seed, opaque=opaque)
    pose = _pose(seed)
    with torch.no_grad():
        tiles = rasterize(model, pose, CAM, backend="torch")
    per_pixel = rasterize(model, pose, CAM, backend="torch")  # parameters require grad: per-pixel path
    assert per_pixel.rgb.requires_grad and not tiles.rgb.requires_grad
    for got, want in [
        (tiles.rgb, per_pixel.rgb),
        (tiles.depth, per_pixel.depth),
        (tiles.queries, per_pixel.queries),
        (tiles.alpha, per_pixel.alpha),
    ]:
        torch.testing.assert_close(got, want.detach(), rtol=1e-9, atol=1e-9)
    if n <= 16:
        rgb, depth, queries, alpha = _reference(model, torch.linalg.inv(torch.as_tensor(pose)), CAM)
        torch.testing.assert_close(tiles.rgb, rgb.detach(), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(tiles.alpha, alpha.detach(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("pixels", [None, "subset"])
def test_frustum_pre_cull_changes_neither_image_nor_gradients(pixels) -> None:
    """The CPU backend leaves out Gaussians that cannot reach the image before the differentiable
    projection. Gaussians around, behind and beside the camera, and large ones whose centre is off
    screen but whose footprint reaches in, must render and differentiate exactly as without it."""
    from m3_core.render.torch_backend import _frustum_superset, rasterize_torch

    g = torch.Generator().manual_seed(11)
    n = 600
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([8.0, 8.0, 8.0], dtype=torch.float64)
    means[:40, 2] = 2.0  # a band at the image's depth that straddles its edges
    means[:40, 0] = torch.linspace(-3.0, 3.0, 40, dtype=torch.float64)
    log_scales = torch.log(0.02 + 0.2 * torch.rand(n, 3, generator=g, dtype=torch.float64))
    log_scales[:40] = math.log(0.4)  # large: centres off screen, footprints on it
    leaves = [
        means.requires_grad_(),
        torch.randn(n, 4, generator=g, dtype=torch.float64).requires_grad_(),
        log_scales.requires_grad_(),
        torch.randn(n, generator=g, dtype=torch.float64).requires_grad_(),
        torch.rand(n, 6, generator=g, dtype=torch.float64).requires_grad_(),
    ]
    cfw = torch.linalg.inv(torch.as_tensor(_pose(3)))
    args = (cfw, CAM.fx, CAM.fy, CAM.cx + 0.5, CAM.cy + 0.5, CAM.width, CAM.height)
    xy = None
    if pixels == "subset":
        xy = torch.rand(50, 2, generator=g, dtype=torch.float64) * torch.tensor([CAM.width, CAM.height], dtype=torch.float64)

    def run(cull: bool):
        m, q, ls, ol, f = leaves
        scene = (m, q, ls.exp(), torch.sigmoid(ol), f)
        feat, depth, alpha, proj = rasterize_torch(*scene, *args, pixels_xy=xy, cull=cull)
        proj.means2d.retain_grad()
        w = torch.randn(feat.shape, generator=torch.Generator().manual_seed(5), dtype=feat.dtype)
        loss = (feat * w).sum() + depth.sum() + alpha.square().sum()
        grads = torch.autograd.grad(loss, leaves + [proj.means2d], allow_unused=True)
        return (feat, depth, alpha, proj.radii, proj.means2d.detach()[0]), grads

    kept = _frustum_superset(leaves[0], leaves[2].exp(), torch.sigmoid(leaves[3]), *args, 0.01, 100.0)
    assert kept is not None and 0 < kept.numel() < n // 2, "the scene should be mostly out of view"
    (out_c, grads_c), (out_f, grads_f) = run(True), run(False)
    assert float(out_f[2].max()) > 0.3, "the camera should see part of the scene"
    seen, uv = (out_f[3] > 0).all(-1), out_f[4]
    off_screen = (uv[:, 0] < 0) | (uv[:, 0] > CAM.width) | (uv[:, 1] < 0) | (uv[:, 1] > CAM.height)
    assert bool((seen & off_screen).any()), "some footprint should reach in from an off-screen centre"
    assert torch.equal(out_c[3], out_f[3]), "radii"
    for got, want in zip(out_c[:3] + (out_c[4][seen],), out_f[:3] + (out_f[4][seen],)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads_c, grads_f):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_cpu_kernels_match_the_tensor_forms(monkeypatch, dtype) -> None:
    """The CPU training path runs compiled loops (m3_core/render/cpu_kernels.py: projection and its
    backward, tile table, per-pixel compositing and its backward). The same pixels rendered and
    differentiated with the kernels switched off (the tensor forms, themselves checked against the
    brute-force reference above) must agree: to 1e-9 in float64, to float32 rounding in float32.
    The scene has Gaussians behind the camera, beyond the view-direction clamp, near-opaque ones
    that clamp alpha at 0.999 and stacks that stop pixels early."""
    cpu_kernels = pytest.importorskip("m3_core.render.cpu_kernels")
    if not cpu_kernels.available():
        pytest.skip("numba is not installed: the compiled CPU kernels are off (tensor forms only)")
    from m3_core.render.torch_backend import rasterize_torch

    g = torch.Generator().manual_seed(21)
    n = 800
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * torch.tensor([3.0, 3.0, 2.0], dtype=dtype)
    means[:, 2] += 2.0
    means[:20, 2] = torch.linspace(-0.5, 0.5, 20, dtype=dtype)  # at and behind the camera
    means[20:60] = torch.tensor([0.0, 0.0, 1.5], dtype=dtype) + 0.02 * torch.randn(40, 3, generator=g, dtype=dtype)
    logits = torch.randn(n, generator=g, dtype=dtype) * 2
    logits[20:60] = 9.0  # a near-opaque stack: alpha clamps, pixels stop early
    leaves = [
        means.requires_grad_(),
        torch.randn(n, 4, generator=g, dtype=dtype).requires_grad_(),
        torch.log(0.02 + 0.15 * torch.rand(n, 3, generator=g, dtype=dtype)).requires_grad_(),
        logits.requires_grad_(),
        torch.rand(n, 7, generator=g, dtype=dtype).requires_grad_(),
    ]
    cfw = torch.linalg.inv(torch.as_tensor(_pose(5), dtype=dtype))
    cam = PinholeCamera(fx=60.0, fy=62.0, cx=31.3, cy=23.7, width=64, height=48)
    args = (cfw, cam.fx, cam.fy, cam.cx + 0.5, cam.cy + 0.5, cam.width, cam.height)
    xy = torch.rand(700, 2, generator=g, dtype=dtype) * torch.tensor([cam.width, cam.height], dtype=dtype)

    def run(compiled: bool):
        monkeypatch.setattr(cpu_kernels, "ENABLED", compiled)
        m, q, ls, ol, f = leaves
        feat, depth, alpha, proj = rasterize_torch(m, q, ls.exp(), torch.sigmoid(ol), f, *args, pixels_xy=xy)
        proj.means2d.retain_grad()
        w = torch.randn(feat.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
        loss = (feat * w).sum() + depth.sum() + alpha.square().sum()
        grads = torch.autograd.grad(loss, leaves + [proj.means2d])
        return (feat, depth, alpha, proj.conics), grads, proj.radii

    (out_k, grads_k, radii_k), (out_t, grads_t, radii_t) = run(True), run(False)
    assert float(out_t[2].max()) > 0.99 and float(out_t[2].min()) < 0.5, "pixels both saturated and not"
    assert torch.equal(radii_k, radii_t)
    tol = {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 2e-4}
    seen = (radii_t > 0).all(-1)
    for got, want in zip(out_k[:3] + (out_k[3][seen],), out_t[:3] + (out_t[3][seen],)):
        torch.testing.assert_close(got.detach(), want.detach(), **tol)
    for got, want in zip(grads_k, grads_t):
        scale = float(want.abs().max())
        torch.testing.assert_close(got / scale, want / scale, **tol)
