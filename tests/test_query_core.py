"""m3_core.query pure functions on synthetic feature fields, depth images and Gaussians."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m3_core.geometry import PinholeCamera, points_from_depth, transform_from_rt
from m3_core.query import (
    QueryConfig,
    candidate_mask,
    closing_direction,
    cluster_points,
    estimate_object,
    gaussian_relevance,
    grasp_pose,
    otsu_threshold,
    reject_outliers,
    split_instances,
    validate_text,
)
from m3_core.query.relevance import relevance

D = 32


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


@pytest.fixture
def embeddings():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(8, D, generator=g)
    return {"query": table[0], "negatives": table[1:5], "background": table[5], "absent": table[6]}


def _field(emb, h=60, w=80, blob=(30, 40, 8), noise=0.05, seed=1):
    """[h,w,D] features: background embedding everywhere, the query's in a disc."""
    g = torch.Generator().manual_seed(seed)
    feats = emb["background"].expand(h, w, D).clone()
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    disc = (rows - blob[0]) ** 2 + (cols - blob[1]) ** 2 <= blob[2] ** 2
    feats[disc] = emb["query"]
    return feats + noise * torch.randn(h, w, D, generator=g), disc.numpy()


# -- relevance ---------------------------------------------------------------------------------
def test_relevance_matches_lerf_pairwise_softmax(embeddings):
    feats = torch.randn(5, 7, D, generator=torch.Generator().manual_seed(2))
    rel, sim = relevance(feats, embeddings["query"], embeddings["negatives"], temperature=0.1)
    f, t, n = _unit(feats), _unit(embeddings["query"]), _unit(embeddings["negatives"])
    pos = (f @ t)[..., None]
    pairs = torch.stack([pos.expand(-1, -1, 4), f @ n.T], dim=-1)  # [5,7,k,2]
    expected = torch.softmax(pairs / 0.1, dim=-1)[..., 0].amin(dim=-1)
    torch.testing.assert_close(rel, expected)
    torch.testing.assert_close(sim, pos[..., 0])


def test_relevance_high_on_query_low_elsewhere(embeddings):
    feats, disc = _field(embeddings)
    rel, _ = relevance(feats, embeddings["query"], embeddings["negatives"])
    assert rel[torch.from_numpy(disc)].min() > 0.9
    assert rel[~torch.from_numpy(disc)].max() < 0.6


def test_relevance_zero_features_and_no_negatives(embeddings):
    feats = torch.zeros(3, 4, D)
    feats[0, 0] = embeddings["query"]
    rel, sim = relevance(feats, embeddings["query"], None)
    assert rel[0, 0] == pytest.approx(1.0) and sim[0, 0] == pytest.approx(1.0)
    assert float(rel.flatten()[1:].abs().max()) == 0.0  # empty pixels are not relevant
    rel_gauss, _ = relevance(torch.stack([embeddings["query"], -embeddings["query"]]), embeddings["query"])
    assert rel_gauss.tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


@pytest.mark.parametrize(
    "feats, text, negs",
    [
        (torch.zeros(4, 4, D), torch.zeros(D + 1), None),  # dimension mismatch
        (torch.zeros(4, 4, D), torch.zeros(D), torch.zeros(3, D - 1)),
        (torch.zeros(D), torch.zeros(D), None),  # no leading dims
    ],
)
def test_relevance_bad_shapes(feats, text, negs):
    with pytest.raises(ValueError):
        relevance(feats, text, negs)


def test_relevance_bad_types():
    with pytest.raises(TypeError):
        relevance(np.zeros((4, D)), torch.zeros(D))
    with pytest.raises(ValueError):
        relevance(torch.zeros(4, D), torch.zeros(D), temperature=0.0)


# -- mask --------------------------------------------------------------------------------------
def test_mask_keeps_every_region_and_drops_speckle():
    rel = np.zeros((50, 60), np.float32)
    rel[5:15, 5:15] = 0.7  # 100 px
    rel[30:40, 30:45] = 0.95  # 150 px
    rel[45, 2] = 1.0  # speckle
    mask, thr = candidate_mask(rel, 0.6, morph_kernel_px=3, min_area_px=4)
    assert thr == 0.6
    assert mask[35, 35] and mask[10, 10] and not mask[45, 2]
    # opening with a 3x3 ellipse (a cross) may trim the 4 corners of each square
    assert 242 <= mask.sum() <= 250


def test_mask_empty_when_nothing_above_threshold():
    rel = np.full((20, 20), 0.4, np.float32)
    mask, _ = candidate_mask(rel, 0.6)
    assert mask.dtype == bool and not mask.any()
    mask, thr = candidate_mask(rel, 0.6, mode="otsu")
    assert not mask.any() and thr >= 0.6  # Otsu never goes below the floor


def test_mask_valid_region_and_min_area():
    rel = np.zeros((20, 20), np.float32)
    rel[2:6, 2:6] = 0.9
    valid = np.ones_like(rel, bool)
    valid[:, :4] = False
    mask, _ = candidate_mask(rel, 0.5, valid=valid, morph_kernel_px=0)
    assert mask.sum() == 8 and not mask[:, :4].any()
    mask, _ = candidate_mask(rel, 0.5, valid=valid, morph_kernel_px=0, min_area_px=9)
    assert not mask.any()


def test_otsu_splits_two_modes():
    values = np.concatenate([np.full(500, 0.2), np.full(100, 0.8)])
    assert 0.2 < otsu_threshold(values) <= 0.8
    rel = np.zeros((30, 30), np.float32) + 0.2
    rel[10:20, 10:20] = 0.8
    mask, thr = candidate_mask(rel, 0.1, mode="otsu", morph_kernel_px=0)
    assert 0.2 < thr <= 0.8 and mask.sum() == 100


def test_mask_bad_input():
    with pytest.raises(ValueError):
        candidate_mask(np.zeros((3, 3, 3)), 0.5)
    with pytest.raises(ValueError):
        candidate_mask(np.zeros((3, 3)), 0.5, mode="kmeans")
    with pytest.raises(ValueError):
        candidate_mask(np.zeros((3, 3)), 0.5, valid=np.ones((4, 4), bool))


# -- 3D target ---------------------------------------------------------------------------------
CAMERA = PinholeCamera(fx=100.0, fy=100.0, cx=39.5, cy=29.5, width=80, height=60)


def _world_from_camera():
    # Camera 1 m above the table looking straight down (optical z = world -z).
    R = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]])
    return transform_from_rt(R, np.array([0.3, -0.2, 1.0]))


def test_target_of_a_disc_on_a_plane_within_1mm(embeddings):
    """Full chain on synthetic data: feature field -> relevance -> mask -> depth -> robust centre."""
    feats, disc = _field(embeddings)
    depth = np.full((60, 80), 1.0)
    depth[disc] = 0.95  # a 5 cm thick puck on the table
    depth[0, :] = 0.0  # dropouts are skipped
    world_from_camera = _world_from_camera()
    rel, _ = relevance(feats, embeddings["query"], embeddings["negatives"])
    mask, _ = candidate_mask(rel.numpy(), 0.6)
    points, _ = points_from_depth(depth, CAMERA, world_from_camera, mask=mask)
    est = estimate_object(points)
    # Blob centre pixel (row 30, col 40) at depth 0.95, in the world.
    expected = world_from_camera[:3, :3] @ np.array(
        [(40 - 39.5) / 100 * 0.95, (30 - 29.5) / 100 * 0.95, 0.95]
    )
    expected += world_from_camera[:3, 3]
    assert np.linalg.norm(est.centre - expected) < 1e-3
    assert est.extent[0] == pytest.approx(0.16 * 0.95, abs=0.02)  # 16 px across at f=100, z=0.95
    assert est.num_points == disc.sum()


def test_outliers_rejected():
    rng = np.random.default_rng(3)
    inliers = rng.normal([0.5, 0.1, 0.7], 0.01, size=(900, 3))
    outliers = rng.uniform(-2, 2, size=(100, 3))
    keep = reject_outliers(np.vstack([inliers, outliers]))
    assert keep[:900].mean() > 0.98 and keep[900:].mean() < 0.1
    est = estimate_object(np.vstack([inliers, outliers]))
    assert np.linalg.norm(est.centre - [0.5, 0.1, 0.7]) < 2e-3


def test_surface_to_centre_recovers_sphere_centre():
    """Visible pixels of a sphere: median is 0.707 r in front; the correction brings it back."""
    r, centre_cam = 0.05, np.array([0.0, 0.0, 0.6])
    cam = PinholeCamera(400.0, 400.0, 79.5, 79.5, 160, 160)
    rows, cols = np.mgrid[0:160, 0:160]
    x, y = (cols - cam.cx) / cam.fx, (rows - cam.cy) / cam.fy
    d = np.stack([x, y, np.ones_like(x)], -1)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    b = d @ centre_cam
    disc = b**2 - (centre_cam @ centre_cam - r**2)
    t = np.where(disc > 0, b - np.sqrt(np.clip(disc, 0, None)), 0.0)
    depth = t * d[..., 2]
    points, _ = points_from_depth(depth, cam)
    plain = estimate_object(points)
    corrected = estimate_object(points, camera_position=np.zeros(3), surface_to_centre=0.8)
    assert np.linalg.norm(plain.centre - centre_cam) > 0.03  # the plain median sits on the front
    assert np.linalg.norm(corrected.centre - centre_cam) < 0.005


def test_estimate_bad_input():
    with pytest.raises(ValueError):
        estimate_object(np.zeros((4, 2)))
    with pytest.raises(ValueError):
        estimate_object(np.full((4, 3), np.nan))


# -- grasp pose --------------------------------------------------------------------------------
def _check_rotation(T):
    R = T[:3, :3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-9)
    assert np.linalg.det(R) == pytest.approx(1.0)


def test_top_down_grasp_closes_across_the_narrow_side():
    rng = np.random.default_rng(4)
    # An object long along world y (12 cm), narrow along x (4 cm).
    points = rng.uniform([-0.02, -0.06, 0.0], [0.02, 0.06, 0.05], size=(2000, 3)) + [1.0, 2.0, 0.7]
    T = grasp_pose(np.array([1.0, 2.0, 0.72]), mode="top_down", points=points)
    _check_rotation(T)
    np.testing.assert_allclose(T[:3, 2], [0, 0, -1], atol=1e-9)  # approach downwards
    assert abs(T[0, 0]) > 0.99  # closing along world x, the narrow side
    np.testing.assert_allclose(T[:3, 3], [1.0, 2.0, 0.72])
    # Deterministic under resampling of the same object.
    points2 = rng.uniform([-0.02, -0.06, 0.0], [0.02, 0.06, 0.05], size=(2000, 3)) + [1.0, 2.0, 0.7]
    T2 = grasp_pose(np.array([1.0, 2.0, 0.72]), mode="top_down", points=points2)
    np.testing.assert_allclose(T2[:3, 0], T[:3, 0], atol=0.05)


def test_view_ray_grasp_and_fallback():
    cam_pos = np.array([0.0, 0.0, 1.0])
    target = np.array([0.5, 0.0, 0.5])
    T = grasp_pose(target, mode="view_ray", camera_position=cam_pos)
    _check_rotation(T)
    np.testing.assert_allclose(T[:3, 2], (target - cam_pos) / np.linalg.norm(target - cam_pos))
    x = closing_direction(np.array([0, 0, -1.0]))
    assert x @ [0, 0, -1.0] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        grasp_pose(target, mode="view_ray")  # needs the camera
    with pytest.raises(ValueError):
        grasp_pose(target, mode="sideways")
    with pytest.raises(ValueError):
        grasp_pose(np.array([np.nan, 0, 0]))


# -- 3D query over Gaussians -------------------------------------------------------------------
def test_cluster_points():
    rng = np.random.default_rng(5)
    a = rng.normal([0, 0, 0], 0.005, (50, 3))
    b = rng.normal([0.3, 0, 0], 0.005, (30, 3))
    labels = cluster_points(np.vstack([a, b]), 0.02)
    assert len(set(labels[:50])) == 1 and len(set(labels[50:])) == 1 and labels[0] != labels[50]
    assert len(cluster_points(np.zeros((0, 3)), 0.02)) == 0
    with pytest.raises(ValueError):
        cluster_points(a, 0.0)


def test_relevant_gaussians_become_one_candidate_per_object(embeddings):
    g = torch.Generator().manual_seed(6)
    obj = torch.randn(200, 3, generator=g) * 0.01 + torch.tensor([0.8, -0.3, 0.75])
    clutter = torch.rand(2000, 3, generator=g) * torch.tensor([1.0, 1.0, 0.02]) + torch.tensor(
        [0.0, -0.8, 0.7]
    )
    means = torch.cat([obj, clutter]).double().numpy()
    feats = torch.cat([embeddings["query"].expand(200, D), embeddings["background"].expand(2000, D)])
    feats = feats + 0.05 * torch.randn(feats.shape, generator=g)
    opacities = torch.full((2200,), 0.9)
    opacities[:20] = 0.01  # transparent ones do not count
    cfg = QueryConfig(relevance_threshold=0.6, min_similarity=0.5)
    rel, sim = gaussian_relevance(feats, opacities, embeddings["query"], embeddings["negatives"], cfg)
    assert (rel[:20] == 0).all() and rel[20:200].min() > 0.9 and rel[200:].max() < 0.6
    idx = np.nonzero(rel >= 0.6)[0]
    found = split_instances(
        means[idx], rel[idx], sim[idx], source="gaussians", config=cfg, up=np.array([0, 0, 1.0]), min_points=5
    )
    assert len(found) == 1 and not found[0].support and found[0].num_points == 180
    assert np.linalg.norm(found[0].centre() - [0.8, -0.3, 0.75]) < 3e-3
    with pytest.raises(ValueError):
        gaussian_relevance(feats[:10], opacities, embeddings["query"], None, cfg)


# -- input checks ------------------------------------------------------------------------------
def test_validate_text():
    assert validate_text("  yellow   bath duck ", 200) == "yellow bath duck"
    for bad in ["", "   ", "\n\t"]:
        with pytest.raises(ValueError, match="empty"):
            validate_text(bad, 200)
    with pytest.raises(ValueError, match="characters"):
        validate_text("duck " * 100, 200)
    with pytest.raises(TypeError):
        validate_text(None, 200)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        QueryConfig(threshold_mode="magic")
    with pytest.raises(ValueError):
        QueryConfig(grasp_mode="sideways")
    with pytest.raises(ValueError):
        QueryConfig(relevance_threshold=1.5)
    with pytest.raises(ValueError):
        QueryConfig(negatives=("object", ""))
    with pytest.raises(ValueError):
        QueryConfig(fuse_relative_relevance=0.0)


def test_thresholds_default_per_model():
    assert QueryConfig().for_model("language").relevance_threshold == 0.8
    assert QueryConfig().for_model("language").min_similarity == 0.5
    assert QueryConfig(relevance_threshold=0.3).for_model("language").relevance_threshold == 0.3
    assert QueryConfig().for_model("some_new_model").relevance_threshold == 0.6
