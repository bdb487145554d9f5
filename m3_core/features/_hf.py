"""Loading transformers models offline: a local directory, the Hugging Face cache, or (only when
allowed) a random initialisation of the real architecture from a config built here; and the part the
transformers-based patch-feature models (siglip, dinov2) share."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from m3_core.features import _torchvision_fix  # noqa: F401  (before transformers' vision imports)
from m3_core.features.base import (
    PatchFeatureModel,
    WeightsMissingError,
    seeded_init,
    warn_random_weights,
)

# The product never downloads weights at run time (robots are often offline); an explicit user
# setting still wins.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

log = logging.getLogger(__name__)


def hf_cache_dir(hf_id: str, cache_dir: str | None = None) -> Path:
    from huggingface_hub import constants  # local: optional hub

    return Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{hf_id.replace('/', '--')}"


def load_hf_model(
    model_cls: Any,
    config: Any,
    *,
    hf_id: str,
    weights_path: str | Path | None,
    allow_random_weights: bool,
    needed_files: str,
    cache_dir: str | None = None,
) -> tuple[torch.nn.Module, str | None]:
    """(model in eval mode, the directory its weights came from, or None for random weights).

    `config` is the architecture to initialise randomly when no weights are found and
    `allow_random_weights` is set; `needed_files` names the files a weights directory holds.
    """
    source: str | None = None
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not (path / "config.json").is_file():
            raise WeightsMissingError(
                f"weights_path {path} must be a directory with {needed_files} (as written by "
                f"save_pretrained or found under {hf_cache_dir(hf_id, cache_dir)}/snapshots/<revision>)"
            )
        source = str(path)
    else:
        try:
            from huggingface_hub import snapshot_download  # local: optional hub

            source = snapshot_download(hf_id, local_files_only=True, cache_dir=cache_dir)
        except Exception as err:  # noqa: BLE001 (hub raises several types for "not cached")
            if not allow_random_weights:
                raise WeightsMissingError(
                    f"{hf_id} weights are not on this machine. Provide {needed_files} either in the "
                    f"Hugging Face cache at {hf_cache_dir(hf_id, cache_dir)}/snapshots/<revision>/ "
                    f"(e.g. `huggingface-cli download {hf_id}` on a machine with internet access, then "
                    f"copy ~/.cache/huggingface/hub over) or in a directory passed as weights_path. "
                    f"For tests/benchmarks only: allow_random_weights=True."
                ) from err
    if source is not None:
        log.info("loading %s weights from %s", hf_id, source)
        try:
            model = model_cls.from_pretrained(source, local_files_only=True)
        except OSError as err:
            raise WeightsMissingError(
                f"cannot load {hf_id} from {source} ({err}); it needs {needed_files}"
            ) from err
        return model.eval(), source
    with seeded_init():
        model = model_cls(config)
    warn_random_weights(f"transformers:{hf_id}")
    return model.eval(), None


class HfPatchFeatureModel(PatchFeatureModel):
    """A PatchFeatureModel whose weights are a transformers model named by its hub id `hf_id`."""

    needed_files: str  # what a weights directory holds, for load_hf_model's messages
    hf_id: str

    def _model_keys(self) -> dict[str, Any]:
        return {"hf_id": self.hf_id}

    def _load_hf(
        self,
        model_cls: Any,
        config: Any,
        hf_id: str,
        weights_path: str | Path | None,
        allow_random_weights: bool,
        config_overrides: dict[str, Any] | None,
        cache_dir: str | None,
    ) -> str | None:
        """Load (load_hf_model) and set hf_id, model (on self.device), random_weights and model_id;
        returns the weights directory, None for random weights. Call after `_init_patch_grid`."""
        self.hf_id = hf_id
        model, source = load_hf_model(
            model_cls,
            config,
            hf_id=hf_id,
            weights_path=weights_path,
            allow_random_weights=allow_random_weights,
            needed_files=self.needed_files,
            cache_dir=cache_dir,
        )
        if source is not None and config_overrides:
            raise ValueError(
                "config_overrides only applies to random weights; real weights bring their config"
            )
        self.random_weights = source is None
        self.model_id = f"transformers:{hf_id}" + ("/random-init" if self.random_weights else "")
        self.model = model.to(self.device)
        return source
