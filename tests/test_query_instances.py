"""m3_core.query.instances on synthetic point clouds: clustering, support surfaces, size and
workspace limits, and how the answer is chosen among candidates."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from m3_core.query import (
    Instance,
    QueryConfig,
    Workspace,
    choose,
    pixel_clusters,
    principal_sizes,
    rejection_reason,
    split_instances,
    voxel_clusters,
)

UP = np.array([0.0, 0.0, 1.0])
CONFIG = QueryConfig().for_model("language")  # relevance >= 0.80, cosine >= 0.50


def _grid(x0, x1, y0, y1, z, step):
    xs, ys = np.meshgrid(np.arange(x0, x1 + 1e-9, step), np.arange(y0, y1 + 1e-9, step))
    return np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, z)], 1)


def _box(centre, size, step=0.005):
    g = [np.arange(-s / 2, s / 2 + 1e-9, step) for s in size]
    pts = np.stack([m.ravel() for m in np.meshgrid(*g, indexing="ij")], 1)
    return centre + pts


def _instance(points, rel=0.9, sim=0.7, **kw):
    n = len(points)
    return Instance(points, np.full(n, rel), np.full(n, sim), "gaussians", **kw)


def _candidates(points, rel, config=CONFIG):
    return split_instances(points, rel, rel - 0.2, source="gaussians", config=config, up=UP, min_points=5)


def test_voxel_clusters_keep_a_sparse_grid_whole_and_split_at_gaps():
    table = _grid(-0.3, 0.3, -0.24, 0.24, 0.7, 0.015)  # 1.5 cm apart: linked at 2 cm
    far = table + [1.0, 0, 0]
    labels = voxel_clusters(np.vstack([table, far]), 0.02)
    assert len(set(labels[: len(table)])) == 1 and len(set(labels[len(table) :])) == 1
    assert labels[0] != labels[-1]
    assert len(voxel_clusters(np.zeros((0, 3)), 0.02)) == 0


def test_a_table_under_an_object_is_split_off_and_refused():
    table = _grid(-0.4, 0.4, -0.3, 0.3, 0.7, 0.01)
    block = _box(np.array([0.1, 0.05, 0.72]), (0.04, 0.04, 0.04))  # stands on the table: touching
    points = np.vstack([table, block])
    rel = np.concatenate([np.full(len(table), 0.90), np.full(len(block), 0.97)])
    found = _candidates(points, rel)
    support = [c for c in found if c.support]
    objects = [c for c in found if not c.support]
    assert len(support) == 1 and len(objects) == 1
    length, width, height = support[0].size(UP)
    assert length > 0.75 and width > 0.55 and height < 0.01
    assert objects[0].support_level_m == pytest.approx(0.7, abs=1e-6)
    assert np.linalg.norm(objects[0].centre() - [0.1, 0.05, 0.725]) < 0.006  # bottom went with the table
    reason = rejection_reason(support[0], CONFIG, Workspace(), UP)
    assert reason.startswith("a support surface (0.78 m x 0.58 m")  # (2, 98) percentile sizes
    assert rejection_reason(objects[0], CONFIG, Workspace(), UP) == ""


def test_a_tray_is_not_a_support_surface():
    tray = np.vstack(
        [_grid(-0.11, 0.11, -0.11, 0.11, 0.63, 0.01), _box([0, 0, 0.65], (0.24, 0.24, 0.05), 0.01)]
    )
    found = _candidates(tray, np.full(len(tray), 0.9))
    assert len(found) == 1 and not found[0].support  # 0.24 m: below support_min_width_m (0.3)


def test_oversize_and_workspace_are_refused():
    wall = _box(np.array([0.0, 1.0, 0.5]), (0.6, 0.02, 0.5), 0.01)
    assert "larger than the 0.35 m the gripper can take" in rejection_reason(
        _instance(wall), CONFIG, Workspace(), UP
    )
    cup = _instance(_box(np.array([1.0, 0.0, 0.7]), (0.06, 0.06, 0.08)))
    assert rejection_reason(cup, CONFIG, Workspace(), UP) == ""
    base = Workspace(armbase_position=np.zeros(3), max_reach_m=0.84)
    assert "from the arm base, beyond its reach of 0.84 m" in rejection_reason(cup, CONFIG, base, UP)
    camera = Workspace(camera_position=np.array([-1.0, 0, 0.7]), max_camera_distance_m=1.5)
    assert "2.00 m from the camera" in rejection_reason(cup, CONFIG, camera, UP)
    box = Workspace(box_min=np.array([-0.5, -0.5, 0.0]), box_max=np.array([0.5, 0.5, 1.0]))
    assert "outside the workspace box" in rejection_reason(cup, CONFIG, box, UP)


def _check(config=CONFIG):
    return lambda c: replace(c, rejection=rejection_reason(c, config, Workspace(), UP))


def test_choose_takes_the_next_candidate_when_its_relevance_is_close():
    table = _instance(_grid(-0.75, 0.75, -0.5, 0.5, 0.7, 0.02), rel=0.95, support=True)
    block = _instance(_box(np.array([0.1, 0.0, 0.72]), (0.04, 0.04, 0.04)), rel=0.90)
    choice = choose([block, table], "wooden box", CONFIG, _check())
    assert choice.instance is not None and choice.instance.points is block.points
    assert choice.candidates[0].support and "support surface" in choice.candidates[0].rejection


def test_choose_says_why_when_the_best_match_is_not_graspable():
    table = _instance(_grid(-0.75, 0.75, -0.5, 0.5, 0.7, 0.02), rel=0.99, support=True)
    block = _instance(_box(np.array([0.1, 0.0, 0.72]), (0.04, 0.04, 0.04)), rel=0.82)
    choice = choose([block, table], "wooden table", CONFIG, _check())
    assert choice.instance is None
    assert choice.message.startswith('"wooden table" best matches a support surface (1.46 m x 0.96 m')
    assert "which is not graspable" in choice.message and "not within 0.10" in choice.message


def test_choose_needs_a_similar_enough_match_and_prefers_evidence_over_fragments():
    weak = _instance(_box(np.zeros(3), (0.04, 0.04, 0.04)), rel=0.95, sim=0.3)
    choice = choose([weak], "banana", CONFIG, _check())
    assert choice.instance is None and "similarity 0.30 is below 0.50" in choice.message
    obj = _instance(_box(np.zeros(3), (0.06, 0.06, 0.06)), rel=0.94)  # 2197 points
    fragment = _instance(_box(np.array([0.1, 0, 0]), (0.01, 0.01, 0.01)), rel=0.95)  # 27 points
    assert choose([fragment, obj], "teddy", CONFIG, _check()).instance.points is obj.points


def test_unlabelled_background_never_wins():
    """Background pixels carry the background caption's feature; with it among the negatives their
    relevance to any query is ~0, so no candidate is built from them even when they far outnumber
    the object (the floor behind a table)."""
    import torch

    from m3_core.query.relevance import relevance

    g = torch.Generator().manual_seed(3)
    table = torch.nn.functional.normalize(torch.randn(6, 32, generator=g), dim=1)
    query, negatives, background, teddy = table[0], table[1:4], table[4], table[5]
    teddy = torch.nn.functional.normalize(teddy + 2.0 * query, dim=0)  # the object the query names
    floor = torch.nn.functional.normalize(background + 0.05 * torch.randn(5000, 32, generator=g), dim=1)
    rel_floor, _ = relevance(floor, query, torch.vstack([negatives, background]))
    rel_teddy, _ = relevance(teddy[None], query, torch.vstack([negatives, background]))
    assert rel_floor.max() < 0.5 < 0.8 < rel_teddy.min()
    floor_pts = _grid(-1.5, 1.5, 1.0, 3.0, 0.0, 0.03)[:5000]
    teddy_pts = _box(np.array([0.2, 0.1, 0.78]), (0.08, 0.08, 0.08), 0.01)
    points = np.vstack([floor_pts, teddy_pts])
    rel = np.concatenate([rel_floor.numpy()[: len(floor_pts)], np.full(len(teddy_pts), float(rel_teddy[0]))])
    keep = rel >= CONFIG.relevance_threshold
    found = _candidates(points[keep], rel[keep])
    assert len(found) == 1 and np.linalg.norm(found[0].centre() - [0.2, 0.1, 0.78]) < 0.01


def test_pixel_clusters_link_a_slanted_far_surface_and_cut_at_depth_jumps():
    # a row of pixels on a floor 2.5 m away, 10 cm apart (grazing view), then an object at 0.5 m
    floor = np.stack([np.zeros(20), 1.0 + 0.1 * np.arange(20), np.zeros(20)], 1)
    obj = np.stack([np.zeros(5), np.full(5, 0.5), 0.3 + 0.003 * np.arange(5)], 1)
    pixels = np.stack([np.arange(25), np.full(25, 10)], 1)
    depth = np.concatenate([np.full(20, 2.5), np.full(5, 0.5)])
    labels = pixel_clusters(np.vstack([floor, obj]), pixels, depth, stride=1, fx=40.0, radius_m=0.02)
    assert len(set(labels[:20])) == 1 and len(set(labels[20:])) == 1 and labels[0] != labels[-1]


def test_principal_sizes_of_a_rotated_box():
    yaw = np.deg2rad(30)
    R = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    pts = _box(np.zeros(3), (0.2, 0.05, 0.1), 0.005) @ R.T
    length, width, height = principal_sizes(pts, UP, percentile=0.0)
    assert (length, width, height) == pytest.approx((0.2, 0.05, 0.1), abs=2e-3)
