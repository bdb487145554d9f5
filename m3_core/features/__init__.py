"""Dense foundation-model features for M3 (CLIP, SigLIP, DINOv2, language-mask) and their cache.

    from m3_core.features import get_model, load_scene_features
    clip = get_model("clip", device="cuda")          # open_clip ViT-B-16 / openai
    grid = clip.encode_image_dense(rgb)              # [h, w, 512], cell centres: grid_pixel_centers
    text = clip.encode_text(["yellow bath duck"])    # [1, 512]; (grid @ text.T) = cosine similarity
    feats = load_scene_features(scene, "language")   # [F, h, w, 384], cached in scene/features/

Conventions and the protocol: m3_core.features.base. Importing this package makes torchvision
importable on CPU torch (m3_core.features._torchvision_fix).
"""

from m3_core.features import _torchvision_fix  # noqa: F401  (first: before any torchvision import)
from m3_core.features.base import (
    FeatureError,
    FeatureModel,
    WeightsMissingError,
    grid_pixel_centers,
)
from m3_core.features.cache import SceneFeatures, load_scene_features
from m3_core.features.config import FeaturesConfig, load_features
from m3_core.features.registry import MODELS, get_model

__all__ = [
    "MODELS",
    "FeatureError",
    "FeatureModel",
    "FeaturesConfig",
    "SceneFeatures",
    "WeightsMissingError",
    "get_model",
    "grid_pixel_centers",
    "load_features",
    "load_scene_features",
]
