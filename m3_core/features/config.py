"""Which feature models a scene is memorised with, as a frozen config (YAML via m3_core.config).

features:
  models: [clip, language]
  device: auto
  options:
    clip: {arch: ViT-L-14-336}       # as the M3 code; default ViT-B-16 / openai
    language: {stride: 8}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from m3_core.features.cache import SceneFeatures, load_scene_features
from m3_core.features.registry import MODELS, model_options
from m3_core.scene import Scene


@dataclass(frozen=True)
class FeaturesConfig:
    models: tuple[str, ...] = ("clip", "language")
    """Feature models to extract (registry names: clip, siglip, dinov2, language)."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto (CUDA when available)."""
    allow_random_weights: bool = False
    """Random weights when real ones are missing: tests and benchmarks only (outputs say so)."""
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-model options for get_model, e.g. {"clip": {"arch": "ViT-L-14-336"}}."""

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models:
            raise ValueError(f"features.models must name some of {list(MODELS)}, got {list(self.models)}")
        for name, opts in self.options.items():
            if name not in MODELS:
                raise ValueError(f"features.options has unknown model {name!r}; valid: {list(MODELS)}")
            bad = sorted(set(opts) - set(model_options(name)))
            if bad:
                raise ValueError(
                    f"features.options.{name} has unknown key(s) {bad}; valid: {model_options(name)}"
                )


def load_features(scene: Scene, config: FeaturesConfig, progress: bool = True) -> dict[str, SceneFeatures]:
    """{model name: SceneFeatures} for every model in `config` (cached in scene/features/)."""
    return {
        name: load_scene_features(
            scene,
            name,
            device=config.device,
            allow_random_weights=config.allow_random_weights,
            progress=progress,
            options=config.options.get(name),
        )
        for name in config.models
    }
