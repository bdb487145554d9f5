"""Feature models: real architectures (random init unless real weights are installed), grid shapes,
grid geometry, the dense paths against reference computations, errors on bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from m3_core.errors import M3Error
from m3_core.features import WeightsMissingError, get_model, grid_pixel_centers
from m3_core.features.base import check_rgb, check_texts, resolve_device

TINY_SIGLIP = {
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 64,
        "patch_size": 16,
    },
    "text_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "vocab_size": 1000,
        "max_position_embeddings": 16,
    },
}
TINY_DINOV2 = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def _image(H: int, W: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def clip_small():
    # ViT-S-32: the same open_clip VisionTransformer code path as ViT-B-16/L-14, a quarter the width.
    return get_model("clip", arch="ViT-S-32", allow_random_weights=True)


@pytest.fixture(scope="module")
def siglip_tiny():
    return get_model("siglip", allow_random_weights=True, config_overrides=TINY_SIGLIP)


@pytest.fixture(scope="module")
def dinov2_tiny():
    return get_model("dinov2", allow_random_weights=True, config_overrides=TINY_DINOV2)


# -- grid geometry ---------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w", "H", "W"), [(15, 20, 480, 640), (5, 6, 37, 51), (1, 1, 7, 3)])
def test_grid_pixel_centers_match_area_resampling(h, w, H, W):
    x, y = grid_pixel_centers(h, w, H, W)
    # Resampling a coordinate ramp with half-pixel centres (what the models' resize does) yields
    # the centre coordinates: bilinear on a linear ramp is exact.
    xs = torch.arange(W, dtype=torch.float64).expand(1, 1, H, W)
    ys = torch.arange(H, dtype=torch.float64)[:, None].expand(1, 1, H, W)
    rx = F.interpolate(xs, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    ry = F.interpolate(ys, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(rx[0].numpy(), x, atol=1e-9)
    np.testing.assert_allclose(ry[:, 0].numpy(), y, atol=1e-9)
    assert x[0] >= -0.5 and x[-1] <= W - 0.5 and np.allclose(np.diff(x), W / w)


def test_grid_pixel_centers_rejects_empty():
    with pytest.raises(ValueError, match="positive"):
        grid_pixel_centers(0, 3, 10, 10)


# -- CLIP ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("H", "W", "grid"), [(480, 640, (15, 20)), (37, 51, (1, 2)), (481, 641, (15, 20))])
def test_clip_dense_grid_shapes(clip_small, H, W, grid):
    out = clip_small.encode_image_dense(_image(H, W))
    assert out.shape == (*grid, clip_small.dim) and out.dtype == torch.float32
    assert clip_small.grid_size(H, W) == grid
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(grid))
    assert clip_small.random_weights and "random-init" in clip_small.model_id


def test_clip_default_is_vit_b16_with_native_grid():
    model = get_model("clip", allow_random_weights=True)
    assert model.model_id == "open_clip:ViT-B-16-quickgelu/random-init" and model.dim == 512
    out = model.encode_image_dense(_image(480, 640))
    assert out.shape == (30, 40, 512)
    # different image content must give different features (the patch path is live)
    assert (out.reshape(-1, 512) @ out.reshape(-1, 512).T).min() < 0.999


def test_clip_short_side_option():
    model = get_model("clip", arch="ViT-S-32", allow_random_weights=True, short_side=224)
    assert model.grid_size(480, 640) == (7, 9)
    assert model.encode_image_dense(_image(480, 640)).shape == (7, 9, model.dim)
    with pytest.raises(ValueError, match="short_side"):
        get_model("clip", arch="ViT-S-32", allow_random_weights=True, short_side=0)


def test_clip_value_path_is_attention_to_self(clip_small):
    # A token that attends only to itself gets softmax weight 1: the MultiheadAttention output
    # then equals the value path. Check the hand-written path against torch's attention.
    block = clip_small.model.visual.transformer.resblocks[-1]
    x = torch.randn(
        1, 7, clip_small.model.visual.transformer.width, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        ours = clip_small.value_path(block, x)
        ln = block.ln_1(x)[0][:, None]  # 7 sequences of length 1
        ref = block.ls_1(block.attn(ln, ln, ln, need_weights=False)[0])[:, 0][None]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_clip_positional_embedding_unchanged_at_native_grid(clip_small):
    visual = clip_small.model.visual
    gh, gw = visual.grid_size
    with torch.no_grad():
        torch.testing.assert_close(clip_small._positional_embedding(gh, gw), visual.positional_embedding)
        assert clip_small._positional_embedding(15, 20).shape == (
            1 + 300,
            visual.positional_embedding.shape[1],
        )


def test_clip_text_encoding(clip_small):
    out = clip_small.encode_text(["a yellow rubber duck", "a red mug", "x"])
    assert out.shape == (3, clip_small.dim)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


def test_clip_random_init_is_reproducible(clip_small):
    again = get_model("clip", arch="ViT-S-32", allow_random_weights=True)
    assert again.weights_hash == clip_small.weights_hash


def test_preprocessing_rebuilds_the_model(clip_small):
    from m3_core.features.registry import model_options

    options = {k: v for k, v in clip_small.preprocessing.items() if k in model_options("clip")}
    assert options == {"arch": "ViT-S-32", "pretrained": "openai", "quick_gelu": True, "short_side": None}
    again = get_model("clip", allow_random_weights=True, **options)
    assert again.model_id == clip_small.model_id and again.weights_hash == clip_small.weights_hash


def test_clip_loads_local_weights_file(clip_small, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "clip_vit_s32.safetensors"
    save_file({k: v.contiguous() for k, v in clip_small.model.state_dict().items()}, str(path))
    # pretrained="openai" -> QuickGELU, as the random-init model was built
    loaded = get_model("clip", arch="ViT-S-32", pretrained="openai", weights_path=path)
    assert not loaded.random_weights and loaded.model_id == "open_clip:ViT-S-32-quickgelu/openai"
    assert loaded.weights_hash == clip_small.weights_hash
    rgb = _image(64, 96)
    torch.testing.assert_close(loaded.encode_image_dense(rgb), clip_small.encode_image_dense(rgb))


def test_clip_loads_openai_torchscript_archive(clip_small, tmp_path):
    # OpenAI's ViT-*.pt downloads are TorchScript archives; build one holding the same state dict.
    root = torch.nn.Module()
    state = {**clip_small.model.state_dict(), "input_resolution": torch.tensor(224)}
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, value.detach().clone())
    path = tmp_path / "ViT-S-32.pt"
    torch.jit.script(root).save(str(path))
    loaded = get_model("clip", arch="ViT-S-32", pretrained="openai", weights_path=path)
    assert loaded.weights_hash == clip_small.weights_hash
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\0" * 64)
    with pytest.raises(M3Error, match="not a usable open_clip checkpoint"):
        get_model("clip", arch="ViT-S-32", weights_path=garbage)


def test_clip_missing_weights_error_names_the_files(tmp_path):
    with pytest.raises(WeightsMissingError) as info:
        get_model("clip", cache_dir=str(tmp_path))
    msg = str(info.value)
    assert isinstance(info.value, M3Error)
    assert "open_clip_model.safetensors" in msg and "ViT-B-16.pt" in msg and "weights_path" in msg
    assert "models--timm--vit_base_patch16_clip_224.openai" in msg
    with pytest.raises(WeightsMissingError, match="nope.safetensors does not exist"):
        get_model("clip", weights_path=tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="pretrained tag"):
        get_model("clip", pretrained="no-such-tag", allow_random_weights=True)


def test_clip_real_weights_localise_colours():
    """Only with real OpenAI ViT-B-16 weights on this machine (skips otherwise, naming the file)."""
    try:
        model = get_model("clip")
    except WeightsMissingError as err:
        pytest.skip(f"real CLIP weights not installed: {err}")
    rgb = np.zeros((224, 448, 3), np.uint8)
    rgb[:, :224] = (220, 30, 30)
    rgb[:, 224:] = (30, 60, 220)
    grid = model.encode_image_dense(rgb)
    text = model.encode_text(["a red area", "a blue area"])
    best = (grid @ text.T).argmax(-1)
    w = grid.shape[1]
    assert (best[:, : w // 2 - 1] == 0).float().mean() > 0.8
    assert (best[:, w // 2 + 1 :] == 1).float().mean() > 0.8


# -- SigLIP / DINOv2 -------------------------------------------------------------------------


@pytest.mark.parametrize(("H", "W", "grid"), [(480, 640, (30, 40)), (37, 51, (2, 3)), (10, 10, (1, 1))])
def test_siglip_dense_grid_shapes(siglip_tiny, H, W, grid):
    out = siglip_tiny.encode_image_dense(_image(H, W))
    assert out.shape == (*grid, 32) and siglip_tiny.dim == 32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(grid))
    assert siglip_tiny.random_weights


def test_siglip_head_per_token_is_pooling_over_one_token(siglip_tiny):
    head = siglip_tiny.model.vision_model.head
    tokens = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = siglip_tiny.head_per_token(head, tokens)[0]
        ref = torch.stack([head(tokens[:, k : k + 1])[0] for k in range(5)])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_siglip_text(siglip_tiny):
    out = siglip_tiny.encode_text(["a yellow rubber duck", "cup"])
    assert out.shape == (2, 32)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize(("H", "W", "grid"), [(480, 640, (34, 46)), (37, 51, (3, 4)), (5, 200, (1, 14))])
def test_dinov2_dense_grid_shapes(dinov2_tiny, H, W, grid):
    out = dinov2_tiny.encode_image_dense(_image(H, W))
    assert out.shape == (*grid, 32)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(grid))


def test_dinov2_default_small_architecture():
    model = get_model("dinov2", allow_random_weights=True)
    assert model.dim == 384 and model.patch == 14 and model.model_id.endswith("dinov2-small/random-init")
    assert model.encode_image_dense(_image(48, 64)).shape == (3, 5, 384)


def test_dinov2_has_no_text_encoder(dinov2_tiny):
    with pytest.raises(NotImplementedError, match="no text encoder"):
        dinov2_tiny.encode_text(["duck"])


def test_siglip_loads_a_weights_directory(siglip_tiny, tmp_path):
    # The real-weights path: a save_pretrained directory with weights + a sentencepiece tokenizer
    # (a tiny one trained here; google/siglip-* ship spiece.model the same way).
    import sentencepiece as spm
    from transformers import SiglipTokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n".join(["a yellow rubber duck", "a red coffee mug", "a blue lego brick", "cup"] * 20)
    )
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(tmp_path / "spiece"),
        vocab_size=30,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
        hard_vocab_limit=False,  # a tiny corpus: vocab_size is an upper bound
    )
    weights = tmp_path / "siglip"
    siglip_tiny.model.save_pretrained(weights)
    SiglipTokenizer(vocab_file=str(tmp_path / "spiece.model")).save_pretrained(weights)
    loaded = get_model("siglip", hf_id="google/siglip-tiny-test", weights_path=weights)
    assert not loaded.random_weights and loaded.model_id == "transformers:google/siglip-tiny-test"
    assert loaded.weights_hash == siglip_tiny.weights_hash and loaded.tokenizer is not None
    rgb = _image(48, 64)
    torch.testing.assert_close(loaded.encode_image_dense(rgb), siglip_tiny.encode_image_dense(rgb))
    text = loaded.encode_text(["a yellow rubber duck", "cup"])
    assert text.shape == (2, 32) and not torch.allclose(text[0], text[1])
    with pytest.raises(ValueError, match="config_overrides only applies to random weights"):
        get_model("siglip", weights_path=weights, config_overrides=TINY_SIGLIP)


def test_dinov2_loads_a_weights_directory(dinov2_tiny, tmp_path):
    dinov2_tiny.model.save_pretrained(tmp_path / "dinov2")
    loaded = get_model("dinov2", weights_path=tmp_path / "dinov2")
    assert not loaded.random_weights and loaded.model_id == "transformers:facebook/dinov2-small"
    rgb = _image(48, 64)
    torch.testing.assert_close(loaded.encode_image_dense(rgb), dinov2_tiny.encode_image_dense(rgb))
    with pytest.raises(WeightsMissingError, match="config.json"):
        get_model("dinov2", weights_path=tmp_path / "empty")


def test_dinov2_loads_from_the_hugging_face_cache(dinov2_tiny, tmp_path):
    # The layout huggingface_hub writes: models--org--name/refs/main + snapshots/<revision>/
    repo = tmp_path / "hub" / "models--facebook--dinov2-small"
    dinov2_tiny.model.save_pretrained(repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    loaded = get_model("dinov2", cache_dir=str(tmp_path / "hub"))
    assert not loaded.random_weights and loaded.weights_hash == dinov2_tiny.weights_hash


@pytest.mark.parametrize("name", ["siglip", "dinov2"])
def test_hf_missing_weights_error_names_the_files(name, tmp_path):
    with pytest.raises(WeightsMissingError) as info:
        get_model(name, cache_dir=str(tmp_path))
    msg = str(info.value)
    assert "config.json" in msg and "model.safetensors" in msg and str(tmp_path) in msg
    assert "weights_path" in msg


# -- registry, devices, bad input ------------------------------------------------------------


def test_unknown_model_and_option():
    with pytest.raises(ValueError, match="valid names: clip, siglip, dinov2, language"):
        get_model("llava")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['patch'\].*valid"):
        get_model("dinov2", patch=16)


def test_device_selection():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.gpu
def test_cuda_matches_cpu(dinov2_tiny):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA (no GPU on this machine)")
    gpu = get_model("dinov2", device="cuda", allow_random_weights=True, config_overrides=TINY_DINOV2)
    rgb = _image(48, 64)
    torch.testing.assert_close(
        gpu.encode_image_dense(rgb), dinov2_tiny.encode_image_dense(rgb), rtol=1e-3, atol=1e-3
    )


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (np.zeros((8, 8), np.uint8), ValueError, "grayscale.*COLOR_GRAY2RGB"),
        (np.zeros((8, 8, 1), np.uint8), ValueError, "grayscale"),
        (np.zeros((8, 8, 4), np.uint8), ValueError, r"RGBA.*\[\.\.\., :3\]"),
        (np.zeros((0, 8, 3), np.uint8), ValueError, "empty"),
        (np.zeros((8, 8, 3), np.float32), TypeError, "uint8"),
        (torch.zeros(8, 8, 3, dtype=torch.uint8), TypeError, "numpy"),
    ],
)
def test_bad_images(dinov2_tiny, image, error, match):
    with pytest.raises(error, match=match):
        check_rgb(image)
    with pytest.raises(error, match=match):
        dinov2_tiny.encode_image_dense(image)


def test_bad_texts(clip_small):
    with pytest.raises(ValueError, match="empty"):
        clip_small.encode_text([])
    with pytest.raises(TypeError, match=r"wrap it: \[text\]"):
        check_texts("duck")
    with pytest.raises(TypeError, match="strings"):
        check_texts(["duck", 3])


def test_torchvision_fix_makes_open_clip_and_transformers_importable():
    # A fresh interpreter: importing m3_core.features first must make the vision stacks importable
    # (on CPU torch, `import torchvision` alone dies with "operator torchvision::nms does not exist").
    code = (
        "import m3_core.features, torchvision, open_clip\n"
        "from transformers import SiglipModel, Dinov2Model\n"
        "import torch; assert hasattr(torch.ops.torchvision, 'nms')\n"
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
