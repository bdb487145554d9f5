"""DINOv2 through transformers: dense patch features (the last layer's normalised patch tokens).

Default `hf_id="facebook/dinov2-small"` (384-d, patch 14; a 34x46 grid for 640x480 at native
resolution), chosen for the robot's compute; `facebook/dinov2-base` / `-large` work the same way.
DINOv2 is image-only: `encode_text` raises NotImplementedError (M3 uses it for its visual memory,
not for text queries).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from m3_core.features._hf import HfPatchFeatureModel

DEFAULT_HF_ID = "facebook/dinov2-small"
NEEDED_FILES = "config.json and model.safetensors"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Architectures for random initialisation (offline), keyed by hub id; Dinov2Config defaults = base.
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "facebook/dinov2-small": {"hidden_size": 384, "num_attention_heads": 6},
    "facebook/dinov2-base": {},
    "facebook/dinov2-large": {"hidden_size": 1024, "num_attention_heads": 16, "num_hidden_layers": 24},
}


class Dinov2Features(HfPatchFeatureModel):
    """DINOv2: dense patch features, L2-normalised. No text encoder."""

    name = "dinov2"
    algorithm = "dinov2-last-layer-patch-tokens"
    needed_files = NEEDED_FILES

    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        allow_random_weights: bool = False,
        hf_id: str = DEFAULT_HF_ID,
        weights_path: str | Path | None = None,
        short_side: int | None = None,
        config_overrides: dict[str, Any] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        from transformers import Dinov2Config, Dinov2Model  # local: heavy, optional

        self._init_patch_grid(device, short_side)
        config = Dinov2Config(**{**KNOWN_CONFIGS.get(hf_id, {}), **(config_overrides or {})})
        self._load_hf(
            Dinov2Model, config, hf_id, weights_path, allow_random_weights, config_overrides, cache_dir
        )
        self.patch = int(self.model.config.patch_size)
        self.dim = int(self.model.config.hidden_size)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    def dense_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """[1,3,h*p,w*p] -> [h, w, dim] last-layer patch tokens (layer-normed, not L2-normalised)."""
        h, w = pixels.shape[-2] // self.patch, pixels.shape[-1] // self.patch
        tokens = self.model(pixel_values=pixels).last_hidden_state  # [1, 1 + h*w, dim]: class token first
        return tokens[0, 1:].reshape(h, w, -1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError(
            "dinov2 has no text encoder: it gives image features only. Query text with 'clip', "
            "'siglip' or 'language' and use dinov2 features for image-to-image similarity"
        )
