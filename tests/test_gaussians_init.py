"""GaussianModel: construction from points and from a scene directory, densification helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from m3_core.geometry import PinholeCamera, matrix_from_pose
from m3_core.model.gaussians import GaussianInitConfig, GaussianModel, init_from_scene, voxel_downsample
from m3_core.render import rasterize
from m3_core.scene import Frame, Scene, atomic_write_png, depth_png_from_m, load_scene, save_scene


def _grid(spacing: float = 0.01, n: int = 10) -> np.ndarray:
    ax = np.arange(n) * spacing
    return np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)


def test_from_points_shapes_activations_and_query_slices() -> None:
    pts = _grid()
    model = GaussianModel.from_points(pts, np.full_like(pts, 0.5), {"clip": 16, "dino": 8}, init_opacity=0.2)
    n = len(pts)
    assert model.means.shape == (n, 3) and model.quats.shape == (n, 4) and model.queries.shape == (n, 24)
    assert model.query_slices == {"clip": slice(0, 16), "dino": slice(16, 24)}
    assert model.query("dino").shape == (n, 8)
    torch.testing.assert_close(model.opacities, torch.full((n,), 0.2))
    # interior grid points have 6 neighbours at the spacing: RMS distance of the 3 nearest = spacing
    torch.testing.assert_close(model.scales.median(), torch.tensor(0.01), rtol=1e-4, atol=0)
    assert {name for name, _ in model.named_parameters()} == {
        "means", "quats", "log_scales", "opacity_logits", "colors", "queries"
    }  # fmt: skip
    default = GaussianModel.from_points(pts[:5], np.zeros((5, 3)), ["clip", "siglip"], init_scale=0.02)
    assert default.query_dims == {"clip": 16, "siglip": 16}
    torch.testing.assert_close(default.scales, torch.full((5, 3), 0.02))
    with pytest.raises(ValueError, match="must both be"):
        GaussianModel.from_points(pts, np.zeros((3, 3)), ["clip"])
    with pytest.raises(KeyError, match="clip"):
        default.query("dinov2")


def test_prune_clone_split_carry_adam_state() -> None:
    model = GaussianModel.from_points(_grid(n=4), np.random.default_rng(0).random((64, 3)), ["clip"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cam = PinholeCamera(50.0, 50.0, 15.5, 11.5, 32, 24)
    pose = matrix_from_pose(np.array([0.015, 0.015, -0.3]), np.array([0.0, 0.0, 0.0, 1.0]))

    def step() -> None:
        opt.zero_grad()
        out = rasterize(model, pose, cam)
        (out.rgb.sum() + out.queries.square().sum()).backward()
        opt.step()

    step()
    old_means = model.means.detach().clone()
    remove = torch.zeros(64, dtype=torch.bool)
    remove[:4] = True
    model.prune(remove, opt)
    assert len(model) == 60
    torch.testing.assert_close(model.means, old_means[4:])
    assert opt.state[model.means]["exp_avg"].shape == (60, 3)
    assert opt.param_groups[0]["params"][0] is model.means

    sel = torch.zeros(60, dtype=torch.bool)
    sel[[0, 5]] = True
    model.clone(sel, opt)
    assert len(model) == 62
    torch.testing.assert_close(model.means[60:], model.means[[0, 5]])
    assert float(opt.state[model.queries]["exp_avg_sq"][60:].abs().sum()) == 0.0

    split = torch.zeros(62, dtype=torch.bool)
    split[1] = True
    scale_before = model.log_scales[1].detach().clone()
    model.split(split, n=2, optimizer=opt, generator=torch.Generator().manual_seed(0))
    assert len(model) == 63
    torch.testing.assert_close(model.log_scales[-1], scale_before - np.log(1.6))
    step()  # the optimizer still trains the edited parameters
    assert all(opt.state[p]["exp_avg"].shape == p.shape for p in model.parameters())


def test_voxel_downsample_averages() -> None:
    pts = np.array([[0.001, 0.001, 0.001], [0.003, 0.003, 0.003], [0.011, 0.0, 0.0]])
    cols = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    p, c, counts = voxel_downsample(pts, cols, 0.005)
    order = np.argsort(p[:, 0])
    np.testing.assert_allclose(p[order], [[0.002, 0.002, 0.002], [0.011, 0.0, 0.0]])
    np.testing.assert_allclose(c[order], [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(counts[order], [2, 1])


def _write_plane_scene(root: Path) -> Scene:
    """Two cameras looking at a textured plane z = 1.2 (world) from slightly different poses."""
    cam = PinholeCamera(80.0, 80.0, 31.5, 23.5, 64, 48)
    frames = []
    for i, x in enumerate([0.0, 0.05]):
        pose = matrix_from_pose(np.array([x, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 1.0]))
        depth = np.full((48, 64), 1.2, np.float32)
        depth[:4] = 0.0  # invalid rows are skipped
        rgb = np.zeros((48, 64, 3), np.uint8)
        rgb[..., 0] = np.arange(64, dtype=np.uint8)[None] * 4
        rgb[..., 1] = 200
        atomic_write_png(root / "images" / f"f{i}.png", rgb[..., ::-1].copy())  # cv2 writes BGR
        atomic_write_png(root / "depth" / f"f{i}.png", depth_png_from_m(depth))
        frames.append(
            Frame(f"f{i}", i, cam, pose, root / "images" / f"f{i}.png", root / "depth" / f"f{i}.png")
        )
    scene = Scene(root=root, frames=frames, source="sim")
    save_scene(scene)
    return load_scene(root)


def test_init_from_scene_backprojects_depth_with_pixel_colours(tmp_path: Path) -> None:
    scene = _write_plane_scene(tmp_path)
    model = init_from_scene(scene, {"clip": 16}, voxel_size=0.01, stride=1)
    pts = model.means.detach().numpy()
    np.testing.assert_allclose(pts[:, 2], 1.2, atol=1e-3)
    # the plane seen by both cameras: x from the left edge of camera 0 to the right edge of camera 1
    assert pts[:, 0].min() == pytest.approx(-31.5 / 80 * 1.2, abs=0.011)
    assert pts[:, 0].max() == pytest.approx(0.05 + 31.5 / 80 * 1.2, abs=0.011)
    assert pts[:, 1].min() > (4 - 23.5) / 80 * 1.2 - 0.011  # invalid rows left no points
    np.testing.assert_allclose(model.colors[:, 1].detach().numpy(), 200 / 255, atol=1e-6)
    assert model.query_slices == {"clip": slice(0, 16)}
    small = init_from_scene(scene, ["clip"], GaussianInitConfig(voxel_size=0.01, stride=2, max_points=100))
    assert len(small) == 100
    with pytest.raises(TypeError):
        init_from_scene(scene, ["clip"], voxel_sise=0.01)


def test_init_from_colmap_points_when_frames_have_no_depth(tmp_path: Path) -> None:
    from m3_core.scene import write_colmap_model

    scene = _write_plane_scene(tmp_path)
    frames = [
        Frame(f.name, f.stamp_ns, f.camera, f.world_from_camera, f.image_path, None) for f in scene.frames
    ]
    no_depth = Scene(root=tmp_path, frames=frames, source="colmap")
    pts = np.array([[0.0, 0.0, 1.0], [0.1, 0.0, 1.0], [0.0, 0.1, 1.2]])
    write_colmap_model(
        tmp_path / "sparse" / "0", frames, pts, np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]])
    )
    model = init_from_scene(no_depth, ["clip"], use_colmap_points=True, voxel_size=0.001)
    order = np.argsort(model.means[:, 0].detach().numpy() + model.means[:, 1].detach().numpy() * 10)
    np.testing.assert_allclose(model.means.detach().numpy()[order], pts, atol=1e-6)
    np.testing.assert_allclose(model.colors.detach().numpy()[order], np.eye(3)[[0, 1, 2]], atol=1e-6)
    with pytest.raises(Exception, match="no valid depth"):
        init_from_scene(no_depth, ["clip"])
