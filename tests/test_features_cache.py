"""Scene feature cache: reuse, invalidation, corruption, language masks, the `m3 features` CLI.

Scenes are small directories built here with m3_core.scene; image models are real architectures
with tiny configs and random weights, the language model has its real weights."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from m3_core.features import FeatureError, WeightsMissingError, get_model, load_scene_features
from m3_core.features.cache import cache_path
from m3_core.geometry.camera import PinholeCamera
from m3_core.scene import (
    Frame,
    Scene,
    atomic_write_json,
    atomic_write_png,
    depth_png_from_m,
    load_scene,
    save_scene,
)

H, W = 48, 64
TINY_DINOV2 = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
CAPTIONS = {1: "a yellow rubber duck", 2: "a red coffee mug"}


def make_scene(root: Path, n_frames: int = 3, masks_for: tuple[int, ...] = (0, 1, 2)) -> Scene:
    """A scene dir with n_frames random images, flat depth, a pose each, masks for `masks_for`."""
    rng = np.random.default_rng(0)
    camera = PinholeCamera(50.0, 50.0, (W - 1) / 2, (H - 1) / 2, W, H)
    frames, captions = [], {}
    for i in range(n_frames):
        name = f"frame_{i:06d}"
        atomic_write_png(root / "images" / f"{name}.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        atomic_write_png(root / "depth" / f"{name}.png", depth_png_from_m(np.full((H, W), 0.5)))
        pose = np.eye(4)
        pose[0, 3] = 0.1 * i
        frames.append(
            Frame(
                name, 1000 * i, camera, pose, root / "images" / f"{name}.png", root / "depth" / f"{name}.png"
            )
        )
        if i in masks_for:
            ids = np.zeros((H, W), np.uint16)
            ids[: H // 2, : W // 2] = 1
            ids[H // 2 :, W // 2 :] = 2
            atomic_write_png(root / "masks" / f"{name}.png", ids)
            captions[name] = {str(k): v for k, v in CAPTIONS.items()}
    if captions:
        atomic_write_json(root / "masks" / "captions.json", captions)
    save_scene(Scene(root=root, frames=frames, source="test"))
    return load_scene(root)


@pytest.fixture(scope="module")
def dinov2_tiny():
    return get_model("dinov2", allow_random_weights=True, config_overrides=TINY_DINOV2)


@pytest.fixture(scope="module")
def language():
    return get_model("language")


@pytest.fixture
def scene(tmp_path):
    return make_scene(tmp_path / "scene")


def test_extract_then_reuse(scene, dinov2_tiny):
    first = load_scene_features(scene, dinov2_tiny, progress=False)
    assert first.grids.shape == (3, 3, 5, 32) and first.grids.dtype == torch.float32
    assert first.names == [f.name for f in scene.frames] and first.num_extracted == 3
    assert first.model == "dinov2" and first.random_weights and first.dim == 32
    path = cache_path(scene, "dinov2")
    stamp = path.stat().st_mtime_ns
    second = load_scene_features(scene, dinov2_tiny, progress=False)
    assert second.num_extracted == 0 and path.stat().st_mtime_ns == stamp  # not even rewritten
    torch.testing.assert_close(second.grids, first.grids, rtol=0, atol=0)
    # equal to a fresh extraction (rounded through the float16 storage)
    fresh = dinov2_tiny.encode_image_dense(scene.read_rgb(1)).half().float()
    torch.testing.assert_close(second.grids[1], fresh, rtol=0, atol=0)
    assert not list(path.parent.glob(".*tmp"))  # atomic writes leave no temp files


def test_cache_metadata_records_model_and_frames(scene, dinov2_tiny):
    from safetensors import safe_open

    load_scene_features(scene, dinov2_tiny, progress=False)
    with safe_open(str(cache_path(scene, "dinov2")), framework="pt") as fh:
        meta = json.loads(fh.metadata()["m3"])
    assert meta["model_id"] == dinov2_tiny.model_id and meta["weights_hash"] == dinov2_tiny.weights_hash
    assert meta["random_weights"] is True and meta["preprocessing"]["patch"] == 14
    assert sorted(meta["frames"]) == [f.name for f in scene.frames]


def test_changed_image_is_re_extracted_alone(scene, dinov2_tiny):
    first = load_scene_features(scene, dinov2_tiny, progress=False)
    atomic_write_png(scene.frames[1].image_path, np.full((H, W, 3), 200, np.uint8))
    second = load_scene_features(scene, dinov2_tiny, progress=False)
    assert second.num_extracted == 1
    torch.testing.assert_close(second.grids[[0, 2]], first.grids[[0, 2]], rtol=0, atol=0)
    assert not torch.equal(second.grids[1], first.grids[1])


def test_other_weights_invalidate_the_cache(scene, dinov2_tiny):
    load_scene_features(scene, dinov2_tiny, progress=False)
    other = get_model(
        "dinov2", allow_random_weights=True, config_overrides={**TINY_DINOV2, "num_hidden_layers": 1}
    )
    assert other.weights_hash != dinov2_tiny.weights_hash
    assert load_scene_features(scene, other, progress=False).num_extracted == 3
    coarser = get_model("dinov2", allow_random_weights=True, config_overrides=TINY_DINOV2, short_side=28)
    again = load_scene_features(scene, coarser, progress=False)  # same weights, other preprocessing
    assert again.num_extracted == 3 and again.grids.shape == (3, 2, 3, 32)


def test_corrupt_file_is_re_extracted_with_warning(scene, dinov2_tiny, caplog):
    first = load_scene_features(scene, dinov2_tiny, progress=False)
    path = cache_path(scene, "dinov2")
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING):
        second = load_scene_features(scene, dinov2_tiny, progress=False)
    assert "corrupt" in caplog.text and second.num_extracted == 3
    torch.testing.assert_close(second.grids, first.grids, rtol=0, atol=0)
    path.write_bytes(b"not a safetensors file at all")
    assert load_scene_features(scene, dinov2_tiny, progress=False).num_extracted == 3


def test_corrupt_entry_is_never_used(scene, dinov2_tiny, caplog):
    first = load_scene_features(scene, dinov2_tiny, progress=False)
    path = cache_path(scene, "dinov2")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside the last tensor's data: the header still parses
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        second = load_scene_features(scene, dinov2_tiny, progress=False)
    assert second.num_extracted == 1 and "is corrupt; re-extracting it" in caplog.text
    torch.testing.assert_close(second.grids, first.grids, rtol=0, atol=0)


def test_removed_frames_leave_the_cache(tmp_path, dinov2_tiny):
    from safetensors import safe_open

    scene = make_scene(tmp_path / "s", n_frames=3)
    load_scene_features(scene, dinov2_tiny, progress=False)
    smaller = Scene(root=scene.root, frames=scene.frames[:2], source="test")
    save_scene(smaller)
    feats = load_scene_features(load_scene(scene.root), dinov2_tiny, progress=False)
    assert feats.num_extracted == 0 and feats.grids.shape[0] == 2
    with safe_open(str(cache_path(scene, "dinov2")), framework="pt") as fh:
        assert len(list(fh.keys())) == 2


def test_frames_of_different_sizes_are_refused(tmp_path, dinov2_tiny):
    scene = make_scene(tmp_path / "s", n_frames=2)
    atomic_write_png(scene.frames[1].image_path, np.zeros((H * 2, W * 2, 3), np.uint8))
    with pytest.raises(FeatureError, match="different shapes"):
        load_scene_features(scene, dinov2_tiny, progress=False)


def test_model_by_name_and_options(scene):
    feats = load_scene_features(
        scene, "dinov2", allow_random_weights=True, options={"config_overrides": TINY_DINOV2}, progress=False
    )
    assert feats.model_id == "transformers:facebook/dinov2-small/random-init" and feats.grids.shape[-1] == 32
    with pytest.raises(ValueError, match="unknown feature model"):
        load_scene_features(scene, "clipp", progress=False)


# -- language ---------------------------------------------------------------------------------


def test_language_scene_features(tmp_path, language, caplog):
    scene = make_scene(tmp_path / "s", n_frames=3, masks_for=(0, 2))
    with caplog.at_level(logging.WARNING):
        feats = load_scene_features(scene, language, progress=False)
    assert feats.grids.shape == (3, 6, 8, 384) and not feats.random_weights
    assert "frame_000001 has no mask" in caplog.text
    assert feats.grids[1].abs().max() == 0
    duck, mug = language.encode_text(list(CAPTIONS.values())).half().float()
    torch.testing.assert_close(feats.grids[0, 0, 0], duck, rtol=0, atol=0)
    torch.testing.assert_close(feats.grids[2, -1, -1], mug, rtol=0, atol=0)
    # the top-right quadrant has no mask: it carries the background caption's embedding
    background = language.encode_text([language.background_caption]).half().float()[0]
    torch.testing.assert_close(feats.grids[0, 0, -1], background, rtol=0, atol=0)
    # a changed caption re-extracts only that frame
    captions = json.loads((scene.root / "masks" / "captions.json").read_text())
    captions["frame_000002"]["2"] = "a blue lego brick"
    atomic_write_json(scene.root / "masks" / "captions.json", captions)
    again = load_scene_features(scene, language, progress=False)
    assert again.num_extracted == 1
    lego = language.encode_text(["a blue lego brick"])[0].half().float()
    torch.testing.assert_close(again.grids[2, -1, -1], lego, rtol=0, atol=0)


def test_language_without_masks_says_how_to_make_them(tmp_path, language):
    scene = make_scene(tmp_path / "s", n_frames=2, masks_for=())
    with pytest.raises(FeatureError, match=r"masks.*write_scene_masks.*segmenter"):
        load_scene_features(scene, language, progress=False)
    assert not cache_path(scene, "language").exists()


# -- CLI --------------------------------------------------------------------------------------


def test_cli_extracts_then_reuses(tmp_path, capsys):
    from m3_ros.cli import main

    scene = make_scene(tmp_path / "s", n_frames=2)
    args = ["features", str(scene.root), "--models", "language", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    assert "language" in capsys.readouterr().out
    assert cache_path(scene, "language").exists()
    assert main(args) == 0
    assert "0 extracted, 2 cached" in capsys.readouterr().out
    preview = ["--preview", "--preview-frame", "1", "--query", "rubber ducky"]
    assert main([*args, *preview]) == 0
    image = cv2.imread(str(scene.root / "features" / "preview_language.png"))
    assert image is not None and image.shape == (H, 3 * W, 3)
    assert main(["features", str(scene.root), "--models", "clip,nope"]) == 2
    assert main(["features", str(tmp_path / "missing"), "--models", "language"]) == 1
    # without weights and without the flag: a clear error naming the files, exit 1
    assert main(["features", str(scene.root), "--models", "dinov2", "--device", "cpu", "--no-progress"]) == 1
    assert "model.safetensors" in capsys.readouterr().out


# -- config -----------------------------------------------------------------------------------


def test_features_config_from_yaml_mapping(scene):
    from m3_core.config import from_dict
    from m3_core.features import FeaturesConfig, load_features

    config = from_dict(
        FeaturesConfig,
        {
            "models": ["dinov2", "language"],
            "device": "cpu",
            "allow_random_weights": True,
            "options": {"dinov2": {"config_overrides": TINY_DINOV2}, "language": {"stride": 16}},
        },
    )
    feats = load_features(scene, config, progress=False)
    assert list(feats) == ["dinov2", "language"]
    assert feats["dinov2"].grids.shape == (3, 3, 5, 32) and feats["language"].grids.shape == (3, 3, 4, 384)
    with pytest.raises(ValueError, match="features.models"):
        FeaturesConfig(models=("clip", "blip"))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['strides'\]"):
        FeaturesConfig(options={"language": {"strides": 4}})


def test_missing_image_is_a_scene_error(tmp_path, dinov2_tiny):
    from m3_core.scene import SceneError

    scene = make_scene(tmp_path / "s", n_frames=2)
    scene.frames[1].image_path.unlink()
    with pytest.raises(SceneError, match="frame_000001.*missing"):
        load_scene_features(scene, dinov2_tiny, progress=False)


# -- preview ----------------------------------------------------------------------------------


def test_pca_preview_separates_regions():
    from m3_core.features.preview import pca_rgb, preview_image, similarity_map

    grid = torch.zeros(4, 6, 8)
    grid[:, :3, 0] = 1.0  # left half: one feature
    grid[:, 3:5, 1] = 1.0  # two middle-right columns: another; last column: no feature
    colours = pca_rgb(grid)
    assert colours.shape == (4, 6, 3) and colours.dtype == np.uint8
    assert (colours[:, 5] == 0).all()  # no feature -> black
    assert not np.array_equal(colours[0, 0], colours[0, 3])  # different features, different colours
    assert np.array_equal(colours[0, 0], colours[3, 2])  # same feature, same colour
    sim = similarity_map(grid, torch.eye(8)[0])
    assert sim[0, 0] == 1 and sim[0, 4] == 0
    picture = preview_image(np.zeros((40, 60, 3), np.uint8), grid, sim)
    assert picture.shape == (40, 180, 3) and picture.dtype == np.uint8


# -- a cached scene without building the model ------------------------------------------------


@pytest.fixture
def get_model_calls(monkeypatch):
    """The get_model calls the feature cache makes (each still builds the real model)."""
    from m3_core.features import cache as cache_module

    calls: list[tuple[str, dict]] = []
    real = cache_module.get_model

    def counting(name, **kwargs):
        calls.append((name, kwargs))
        return real(name, **kwargs)

    monkeypatch.setattr(cache_module, "get_model", counting)
    return calls


def test_a_complete_cache_loads_without_building_the_model(scene, get_model_calls):
    options = {"arch": "ViT-B-32"}
    first = load_scene_features(scene, "clip", allow_random_weights=True, options=options, progress=False)
    assert len(get_model_calls) == 1 and first.num_extracted == 3
    again = load_scene_features(scene, "clip", allow_random_weights=True, options=options, progress=False)
    assert len(get_model_calls) == 1, "an unchanged source and a complete cache need no model"
    assert again.num_extracted == 0 and torch.equal(again.grids, first.grids)
    assert (again.model_id, again.weights_hash, again.dim) == (first.model_id, first.weights_hash, first.dim)
    assert again.preprocessing == first.preprocessing and again.random_weights
    # what could give other features builds the model: a changed image, other options ...
    atomic_write_png(scene.frames[1].image_path, np.zeros((H, W, 3), np.uint8))
    changed = load_scene_features(scene, "clip", allow_random_weights=True, options=options, progress=False)
    assert len(get_model_calls) == 2 and changed.num_extracted == 1
    coarser = load_scene_features(
        scene, "clip", allow_random_weights=True, options={**options, "short_side": 64}, progress=False
    )
    assert len(get_model_calls) == 3 and coarser.num_extracted == 3
    # ... and random weights that are no longer allowed say what is missing, as before
    with pytest.raises(WeightsMissingError):
        load_scene_features(scene, "clip", options=options, progress=False)


def test_a_touched_weights_file_builds_the_model_again(tmp_path, get_model_calls):
    from m3_core.features.language import minilm_dir

    model_dir = tmp_path / "minilm"
    model_dir.mkdir()
    for src in minilm_dir().iterdir():
        if src.is_file():  # the weights by link, the config as a file of its own to touch
            dst = model_dir / src.name
            dst.write_bytes(src.read_bytes()) if src.name == "config.json" else dst.symlink_to(src)
    scene = make_scene(tmp_path / "s", n_frames=2)
    options = {"model_dir": str(model_dir)}
    first = load_scene_features(scene, "language", options=options, progress=False)
    load_scene_features(scene, "language", options=options, progress=False)
    assert len(get_model_calls) == 1
    config = model_dir / "config.json"
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))
    again = load_scene_features(scene, "language", options=options, progress=False)
    # built again; the same weights hash keeps every frame, and the new source is recorded
    assert len(get_model_calls) == 2 and again.num_extracted == 0 and torch.equal(again.grids, first.grids)
    load_scene_features(scene, "language", options=options, progress=False)
    assert len(get_model_calls) == 2


def test_a_cache_naming_too_many_source_files_is_not_trusted(scene):
    from m3_core.features.cache import MAX_SOURCE_FILES, _unchanged_source, model_source

    files = [scene.root / f"w{i}" for i in range(MAX_SOURCE_FILES + 1)]
    meta = {"source": model_source("clip", {}, files)}
    assert not _unchanged_source(meta, "clip", {})
    meta = {"source": model_source("clip", {}, files[:2])}
    assert _unchanged_source(meta, "clip", {}) and not _unchanged_source(meta, "clip", {"arch": "ViT-B-32"})
