"""SigLIP through transformers, with dense patch features in the image-text space.

Default `hf_id="google/siglip-base-patch16-224"` (768-d, patch 16; a 30x40 grid for 640x480 at
native resolution). Weights: `weights_path` (a directory with config.json, model.safetensors and
the tokenizer files) or the Hugging Face cache; absent -> WeightsMissingError naming them.

Dense features, MaskCLIP-style for SigLIP's pooling: SigLIP has no class token; its image embedding
is a multihead-attention pooling head (one learned probe attends to all patch tokens, then a
residual MLP). Run per patch token with the attention replaced by the token's own value path
(value projection -> out_proj, what the head computes when it attends to that token alone), then
the head's residual MLP. The vision tower interpolates its positional embedding to the grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch idiom)

from m3_core.features._hf import HfPatchFeatureModel
from m3_core.features.base import FeatureError, check_texts, l2_normalize

DEFAULT_HF_ID = "google/siglip-base-patch16-224"
NEEDED_FILES = "config.json, model.safetensors and the tokenizer files (spiece.model, tokenizer_config.json)"


class SiglipFeatures(HfPatchFeatureModel):
    """SigLIP: dense patch features (pooling head per token) + text features, L2-normalised."""

    name = "siglip"
    algorithm = "siglip-head-value-path"
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
        from transformers import SiglipConfig, SiglipModel  # local: heavy, optional

        self._init_patch_grid(device, short_side)
        # Random init builds the real architecture; SiglipConfig's defaults are siglip-base-patch16-224.
        config = SiglipConfig(**(config_overrides or {}))
        source = self._load_hf(
            SiglipModel, config, hf_id, weights_path, allow_random_weights, config_overrides, cache_dir
        )
        vcfg = self.model.config.vision_config
        self.patch = int(vcfg.patch_size)
        self.dim = int(vcfg.hidden_size)
        self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # SigLIP's image normalisation
        self.text_length = int(self.model.config.text_config.max_position_embeddings)
        self.vocab_size = int(self.model.config.text_config.vocab_size)
        self.tokenizer = self._load_tokenizer(source)

    def _load_tokenizer(self, source: str | None) -> Any:
        if source is None:
            return None  # random weights: see _tokenize
        from transformers import AutoTokenizer  # local: heavy, optional

        try:
            return AutoTokenizer.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError, ImportError) as err:
            raise FeatureError(
                f"cannot load the SigLIP tokenizer from {source} ({err}); the directory needs "
                f"{NEEDED_FILES}, and a sentencepiece tokenizer needs `pip install sentencepiece`"
            ) from err

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        if self.tokenizer is not None:
            batch = self.tokenizer(
                texts, padding="max_length", max_length=self.text_length, truncation=True, return_tensors="pt"
            )
            return batch["input_ids"]
        # Random weights come without tokenizer files. open_clip's bundled BPE gives real token
        # sequences (ids folded into SigLIP's vocabulary) so shapes and code paths are exercised;
        # the outputs are meaningless either way (random_weights=True says so).
        import open_clip  # local: heavy optional dependency, only for CLIP/SigLIP models

        ids = open_clip.tokenize(texts, context_length=self.text_length)
        return ids % self.vocab_size

    def dense_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """[1,3,h*p,w*p] -> [h, w, dim] per-token pooling-head features (not normalised)."""
        h, w = pixels.shape[-2] // self.patch, pixels.shape[-1] // self.patch
        vision = self.model.vision_model
        tokens = vision(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state  # post-LN
        head = getattr(vision, "head", None)
        if head is not None:
            tokens = self.head_per_token(head, tokens)
        return tokens.reshape(h, w, -1)

    @staticmethod
    def head_per_token(head: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """The attention-pooling head applied to every token as if it were the only one."""
        attn: torch.nn.MultiheadAttention = head.attention
        d = attn.embed_dim
        bias = attn.in_proj_bias[2 * d :] if attn.in_proj_bias is not None else None
        x = attn.out_proj(F.linear(tokens, attn.in_proj_weight[2 * d :], bias))
        return x + head.mlp(head.layernorm(x))

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """n strings -> [n, dim] float32 CPU, L2-normalised."""
        texts = check_texts(texts)
        ids = self._tokenize(texts).to(self.device)
        features = self.model.text_model(input_ids=ids).pooler_output
        return l2_normalize(features.float()).cpu()
