"""Model registry: configuration names a model ("clip", "siglip", "dinov2", "language")."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch

from m3_core.features.base import FeatureModel

# name: (module, class). Modules are imported on demand: open_clip/transformers load slowly.
MODELS: dict[str, tuple[str, str]] = {
    "clip": ("m3_core.features.clip", "ClipFeatures"),
    "siglip": ("m3_core.features.siglip", "SiglipFeatures"),
    "dinov2": ("m3_core.features.dinov2", "Dinov2Features"),
    "language": ("m3_core.features.language", "LanguageMaskFeatures"),
}


def model_class(name: str) -> type:
    if name not in MODELS:
        raise ValueError(f"unknown feature model {name!r}; valid names: {', '.join(MODELS)}")
    module, cls = MODELS[name]
    return getattr(importlib.import_module(module), cls)


def model_options(name: str) -> list[str]:
    """The keyword options a model takes besides device and allow_random_weights."""
    params = inspect.signature(model_class(name).__init__).parameters
    return [p for p in params if p not in ("self", "device", "allow_random_weights")]


def get_model(
    name: str, *, device: str | torch.device = "cpu", allow_random_weights: bool = False, **options: Any
) -> FeatureModel:
    """Build feature model `name` on `device` ("cpu", "cuda", "cuda:N", "auto").

    Options per model (see each module): clip: arch, pretrained, weights_path, short_side,
    cache_dir; siglip/dinov2: hf_id, weights_path, short_side, config_overrides, cache_dir;
    language: stride, model_dir. Without weights a WeightsMissingError (an M3Error) names the
    files to provide; `allow_random_weights=True` builds the real architecture with random
    weights instead (model.random_weights is then True and a warning is logged).
    """
    cls = model_class(name)
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for feature model {name!r}; valid: {valid}")
    model = cls(device=device, allow_random_weights=allow_random_weights, **options)
    # With `weights_files` (set by models that know them) this lets the feature cache tell whether
    # the same call would rebuild the same model, without building it (features/cache.py).
    model.build_options = dict(options)
    return model
