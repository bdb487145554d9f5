"""DINOv2 through transformers: dense patch features (the last layer's normalised patch tokens).

Default `hf_id="facebook/dinov2-small"` (384-d, patch 14; a 34x46 grid for 640x480 at native
resolution), chosen for the robot's compute; `facebook/dinov2-base` / `-large` work the same way.
DINOv2 is image-only: `encode_text` raises NotImplementedError (M3 uses it for its visual memory,
not for text queries).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from m3_core.features._hf import load_hf_model
from m3_core.features.base import (
    FEATURES_ALGORITHM_VERSION,
    check_rgb,
    image_tensor_for_patches,
    l2_normalize,
    patch_grid_size,
    resolve_device,
    state_dict_hash,
)

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


class Dinov2Features:
    """DINOv2: dense patch features, L2-normalised. No text encoder."""

    name = "dinov2"

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
        from transformers import Dinov2Config, Dinov2Model

        if short_side is not None and short_side < 1:
            raise ValueError(f"short_side must be a positive number of pixels or None, got {short_side}")
        self.device = resolve_device(device)
        self.short_side = short_side
        self.hf_id = hf_id
        config = Dinov2Config(**{**KNOWN_CONFIGS.get(hf_id, {}), **(config_overrides or {})})
        model, source = load_hf_model(
            Dinov2Model,
            config,
            hf_id=hf_id,
            weights_path=weights_path,
            allow_random_weights=allow_random_weights,
            needed_files=NEEDED_FILES,
            cache_dir=cache_dir,
        )
        if source is not None and config_overrides:
            raise ValueError(
                "config_overrides only applies to random weights; real weights bring their config"
            )
        self.random_weights = source is None
        self.model_id = f"transformers:{hf_id}" + ("/random-init" if self.random_weights else "")
        self.model = model.to(self.device)
        self.patch = int(model.config.patch_size)
        self.dim = int(model.config.hidden_size)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self._weights_hash: str | None = None

    @property
    def weights_hash(self) -> str:
        if self._weights_hash is None:
            self._weights_hash = state_dict_hash(self.model)
        return self._weights_hash

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {
            "algorithm": f"dinov2-last-layer-patch-tokens/v{FEATURES_ALGORITHM_VERSION}",
            "hf_id": self.hf_id,
            "patch": self.patch,
            "short_side": self.short_side,
            "resize": "whole-image bicubic antialias, sides rounded to patch multiples",
            "mean": list(self.mean),
            "std": list(self.std),
            "normalize": "l2",
        }

    def grid_size(self, H: int, W: int) -> tuple[int, int]:
        return patch_grid_size(H, W, self.patch, self.short_side)

    @torch.inference_mode()
    def encode_image_dense(self, rgb: np.ndarray) -> torch.Tensor:
        """[H,W,3] uint8 RGB -> [h,w,dim] float32 CPU, L2-normalised; grid as base.grid_pixel_centers."""
        rgb = check_rgb(rgb)
        h, w = self.grid_size(*rgb.shape[:2])
        pixels = image_tensor_for_patches(rgb, (h, w), self.patch, self.mean, self.std, self.device)
        tokens = self.model(pixel_values=pixels).last_hidden_state  # [1, 1 + h*w, dim], layer-normed
        return l2_normalize(tokens[0, 1:].float().reshape(h, w, -1)).cpu()

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError(
            "dinov2 has no text encoder: it gives image features only. Query text with 'clip', "
            "'siglip' or 'language' and use dinov2 features for image-to-image similarity"
        )
