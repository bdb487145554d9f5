"""Loading transformers models offline: a local directory, the Hugging Face cache, or (only when
allowed) a random initialisation of the real architecture from a config built here."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from m3_core.features import _torchvision_fix  # noqa: F401  (before transformers' vision imports)
from m3_core.features.base import WeightsMissingError, seeded_init, warn_random_weights

# The product never downloads weights at run time (robots are often offline); an explicit user
# setting still wins.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

log = logging.getLogger(__name__)


def hf_cache_dir(hf_id: str, cache_dir: str | None = None) -> Path:
    from huggingface_hub import constants

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
            from huggingface_hub import snapshot_download

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
