"""The protocol every foundation model implements, plus the checks and helpers they share.

Conventions (every model in the registry follows them):
- `encode_image_dense(rgb)` takes an RGB uint8 [H,W,3] image and returns a float32 [h,w,d] grid
  that covers the WHOLE image uniformly: cell (i, j) is centred at pixel
  x = (j + 0.5) * W / w - 0.5, y = (i + 0.5) * H / h - 0.5 (`grid_pixel_centers`), i.e. the grid is
  the image resized to (h, w) with half-pixel centres (align_corners=False, as F.interpolate).
- Every non-zero feature vector is L2-normalised; an all-zero vector means "no feature there"
  (the language-mask model outside any mask). `encode_text` is L2-normalised the same way, so the
  dot product of a text row and a grid cell is their cosine similarity.
- Weights: real pretrained weights from a local file or cache; random initialisation only with
  `allow_random_weights=True`, which sets `random_weights=True` and logs a warning.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch idiom)

from m3_core.errors import M3Error

log = logging.getLogger(__name__)

# Bumped when the dense-feature algorithm changes, so feature caches made by older code are redone.
FEATURES_ALGORITHM_VERSION = 1


class FeatureError(M3Error):
    """A feature model or feature cache that cannot be used."""


class WeightsMissingError(FeatureError):
    """Pretrained weights are not on this machine; the message names the files and where."""


@runtime_checkable
class FeatureModel(Protocol):
    """A foundation model that yields dense image features and (usually) text features."""

    name: str  # registry name: "clip", "siglip", "dinov2", "language"
    dim: int  # feature dimension d
    model_id: str  # architecture + pretrained tag, e.g. "open_clip:ViT-B-16/openai"
    random_weights: bool  # True: randomly initialised, outputs carry no meaning
    device: torch.device

    @property
    def weights_hash(self) -> str:
        """sha256 of the weights (the feature cache records it)."""

    @property
    def preprocessing(self) -> dict[str, Any]:
        """JSON-able description of everything besides weights that changes the features; its
        keys that are get_model options (arch, pretrained, hf_id, short_side, stride, ...) rebuild
        the same model: get_model(name, **{k: v for k in preprocessing if k in model_options(name)})."""

    def grid_size(self, H: int, W: int) -> tuple[int, int]:
        """(h, w) of the dense grid for an H x W image."""

    def encode_image_dense(self, rgb: np.ndarray, **kwargs: Any) -> torch.Tensor:
        """[H,W,3] uint8 RGB -> [h,w,d] float32 (CPU), L2-normalised, zeros = no feature."""

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """n strings -> [n,d] float32 (CPU), L2-normalised like the image features."""


# -- input checks ----------------------------------------------------------------------------


def check_rgb(rgb: Any) -> np.ndarray:
    """Validate an RGB uint8 [H,W,3] image; raise a ValueError/TypeError that says how to fix it."""
    if isinstance(rgb, torch.Tensor):
        raise TypeError("rgb must be a numpy array [H,W,3] uint8, got a torch.Tensor; pass tensor.numpy()")
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"rgb must be a numpy array [H,W,3] uint8, got {type(rgb).__name__}")
    if rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == 1):
        raise ValueError(
            f"rgb must be [H,W,3] RGB, got a grayscale image of shape {rgb.shape}; "
            "convert it with cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)"
        )
    if rgb.ndim == 3 and rgb.shape[2] == 4:
        raise ValueError(
            f"rgb must be [H,W,3] RGB, got 4 channels {rgb.shape} (RGBA?); drop alpha with rgb[..., :3]"
        )
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be [H,W,3], got shape {rgb.shape}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"rgb is empty (shape {rgb.shape}); an image needs at least 1x1 pixels")
    if rgb.dtype != np.uint8:
        raise TypeError(
            f"rgb must be uint8 (0-255), got {rgb.dtype}; for floats in [0,1] use (img*255).round().astype(np.uint8)"
        )
    return rgb


def check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"texts must be a list of strings, got one string {texts!r}; wrap it: [text]")
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError("texts is empty; pass at least one string")
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must all be strings, got {type(bad[0]).__name__} ({bad[0]!r})")
    return list(texts)


def resolve_device(device: str | torch.device) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when available)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device type {dev.type!r} is not supported; use 'cpu' or 'cuda'")
    return dev


# -- grids -----------------------------------------------------------------------------------


def grid_pixel_centers(h: int, w: int, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates of the centres of an (h, w) grid laid uniformly over an H x W image.

    Returns (x [w], y [h]) float64: x_j = (j + 0.5) * W / w - 0.5, y_i = (i + 0.5) * H / h - 0.5,
    in pixel units with pixel centres at integers (OpenCV convention).
    """
    if min(h, w, H, W) <= 0:
        raise ValueError(f"grid and image sizes must be positive, got h={h} w={w} H={H} W={W}")
    x = (np.arange(w, dtype=np.float64) + 0.5) * (W / w) - 0.5
    y = (np.arange(h, dtype=np.float64) + 0.5) * (H / h) - 0.5
    return x, y


def patch_grid_size(H: int, W: int, patch: int, short_side: int | None) -> tuple[int, int]:
    """Grid (h, w) for a ViT with square patches: the image is resized so its short side is
    `short_side` pixels (None: native size) and each side rounded to a whole number of patches."""
    scale = 1.0 if short_side is None else short_side / min(H, W)
    return max(1, round(H * scale / patch)), max(1, round(W * scale / patch))


def image_tensor_for_patches(
    rgb: np.ndarray,
    grid_hw: tuple[int, int],
    patch: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    device: torch.device,
) -> torch.Tensor:
    """[H,W,3] uint8 -> [1,3,h*patch,w*patch] float32, resized (bicubic, antialiased) and normalised.

    The whole image is resized (no crop), so grid cells map to pixels as `grid_pixel_centers` says.
    """
    h, w = grid_hw
    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None].float() / 255.0
    size = (h * patch, w * patch)
    if size != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last axis; all-zero vectors stay zero (they mean "no feature")."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


# -- weights ---------------------------------------------------------------------------------


def state_dict_hash(module: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a module's parameters and buffers."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def warn_random_weights(model_id: str) -> None:
    log.warning(
        "RANDOM WEIGHTS: %s is randomly initialised (allow_random_weights=True). Its features and "
        "text embeddings are meaningless; use this only for tests and benchmarks.",
        model_id,
    )


class seeded_init:  # noqa: N801 (used like a function: `with seeded_init():`)
    """Context manager: random initialisation from a fixed seed, without touching the caller's RNG,
    so a random-weights model (and its weights hash, and so the feature cache) is reproducible."""

    def __enter__(self) -> None:
        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()
        torch.manual_seed(0)

    def __exit__(self, *exc: object) -> None:
        self._fork.__exit__(*exc)


# -- the ViT patch-feature models' shared part -----------------------------------------------


class PatchFeatureModel:
    """What clip, siglip and dinov2 share: a ViT whose patch tokens become the dense grid.

    A subclass sets `algorithm`, builds `model` and sets `patch`, `dim`, `mean`, `std`,
    `model_id`, `random_weights` (after `_init_patch_grid`), and implements `dense_tokens`;
    `_model_keys` adds the get_model options that name its weights to `preprocessing`.
    """

    name: str
    algorithm: str  # the dense-feature method, versioned in `preprocessing`
    dim: int
    model_id: str
    random_weights: bool
    device: torch.device
    model: torch.nn.Module
    patch: int  # ViT patch side in pixels
    short_side: int | None  # resize the image's short side to this many pixels; None: native size
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    _weights_hash: str | None = None

    def _init_patch_grid(self, device: str | torch.device, short_side: int | None) -> None:
        if short_side is not None and short_side < 1:
            raise ValueError(f"short_side must be a positive number of pixels or None, got {short_side}")
        self.device = resolve_device(device)
        self.short_side = short_side

    @property
    def weights_hash(self) -> str:
        if self._weights_hash is None:  # hashing every parameter takes a while: once per model
            self._weights_hash = state_dict_hash(self.model)
        return self._weights_hash

    def _model_keys(self) -> dict[str, Any]:
        """The get_model options that name the weights; `preprocessing` puts them after "algorithm"."""
        return {}

    @property
    def preprocessing(self) -> dict[str, Any]:
        # Key order and content are part of the feature-cache key: changing them redoes every cache.
        return {
            "algorithm": f"{self.algorithm}/v{FEATURES_ALGORITHM_VERSION}",
            **self._model_keys(),
            "patch": self.patch,
            "short_side": self.short_side,
            "resize": "whole-image bicubic antialias, sides rounded to patch multiples",
            "mean": list(self.mean),
            "std": list(self.std),
            "normalize": "l2",
        }

    def grid_size(self, H: int, W: int) -> tuple[int, int]:
        """(h, w) of the dense grid for an H x W image."""
        return patch_grid_size(H, W, self.patch, self.short_side)

    def dense_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """[1,3,h*p,w*p] normalised pixels -> [h, w, dim] features (not normalised)."""
        raise NotImplementedError(f"{type(self).__name__} must implement dense_tokens")

    @torch.inference_mode()
    def encode_image_dense(self, rgb: np.ndarray) -> torch.Tensor:
        """[H,W,3] uint8 RGB -> [h,w,dim] float32 CPU, L2-normalised; grid as base.grid_pixel_centers."""
        rgb = check_rgb(rgb)
        grid = self.grid_size(*rgb.shape[:2])
        pixels = image_tensor_for_patches(rgb, grid, self.patch, self.mean, self.std, self.device)
        return l2_normalize(self.dense_tokens(pixels).float()).cpu()
