"""Per-scene feature cache: scene/features/<model>.safetensors.

File format (safetensors, so loading it cannot run code):
    tensors   "frame:<frame name>"  float16 [h, w, d]   (zeros = no feature)
    metadata  "m3": JSON {"format": "m3-features", "version": 1, "model", "model_id", "dim",
                          "weights_hash", "preprocessing", "random_weights",
                          "frames": {"<name>": {"input": sha256 of the frame's inputs,
                                                "sha256": sha256 of the stored tensor bytes}}}

A frame is reused when model id, weights hash and preprocessing match and its input hash (image
file bytes; for "language" also its mask file and captions) is unchanged. A file that cannot be
parsed, or an entry whose bytes do not match its recorded sha256, is re-extracted with a warning
and never used. The file is rewritten atomically when anything changed. Features are stored in
float16 and returned as float32; fresh extractions are rounded through float16 too, so a cache hit
and a miss give identical tensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from tqdm import tqdm

from m3_core.features.base import FeatureError, FeatureModel
from m3_core.features.registry import get_model
from m3_core.scene import Scene, SceneError, atomic_write_bytes

log = logging.getLogger(__name__)

CACHE_FORMAT = "m3-features"
CACHE_VERSION = 1
STORE_DTYPE = torch.float16


@dataclass
class SceneFeatures:
    """Dense features of every frame of a scene, for one model."""

    model: str  # registry name
    model_id: str  # architecture + pretrained tag
    dim: int
    names: list[str]  # frame names, in scene order
    grids: torch.Tensor  # [F, h, w, d] float32, zeros = no feature
    random_weights: bool  # True: made with random weights, meaningless
    weights_hash: str = ""
    preprocessing: dict[str, Any] = field(default_factory=dict)
    num_extracted: int = 0  # frames computed in this call (the rest came from the cache)


def cache_path(scene: Scene, model_name: str) -> Path:
    return Path(scene.root) / "features" / f"{model_name}.safetensors"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tensor_sha256(t: torch.Tensor) -> str:
    return _sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def _frame_input_hash(scene: Scene, i: int, model: FeatureModel) -> str:
    frame = scene.frames[i]
    if not Path(frame.image_path).is_file():
        raise SceneError(f"frame {frame.name}: image {frame.image_path} is missing")
    digest = hashlib.sha256(Path(frame.image_path).read_bytes())
    if model.name == "language":
        mask_path = Path(scene.root) / "masks" / f"{frame.name}.png"
        captions_path = Path(scene.root) / "masks" / "captions.json"
        if mask_path.exists() and captions_path.exists():
            digest.update(mask_path.read_bytes())
            captions = json.loads(captions_path.read_text()).get(frame.name, {})
            digest.update(json.dumps(captions, sort_keys=True).encode())
        else:
            digest.update(b"no-mask")
    return digest.hexdigest()


def _model_header(model: FeatureModel) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "model": model.name,
        "model_id": model.model_id,
        "dim": int(model.dim),
        "weights_hash": model.weights_hash,
        "preprocessing": model.preprocessing,
        "random_weights": bool(model.random_weights),
    }


def _read_cache(path: Path, header: dict[str, Any]) -> dict[str, tuple[str, torch.Tensor]]:
    """{frame name: (input hash, float16 grid)} of the valid entries of a cache file."""
    if not path.exists():
        return {}

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["m3"])
            if meta.get("format") != CACHE_FORMAT or not isinstance(meta.get("frames"), dict):
                raise ValueError("not an m3 feature cache")
            stored = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open API)
    except Exception as err:  # noqa: BLE001 (safetensors raises several types on corrupt files)
        log.warning("feature cache %s is corrupt or unreadable (%s); re-extracting all frames", path, err)
        return {}
    same = {k: meta.get(k) for k in header} == header
    if not same:
        log.info("feature cache %s was made with another model/weights/preprocessing; re-extracting", path)
        return {}
    out = {}
    for name, entry in meta["frames"].items():
        grid = stored.get(f"frame:{name}")
        ok = (
            grid is not None
            and isinstance(entry, dict)
            and grid.dtype == STORE_DTYPE
            and grid.ndim == 3
            and grid.shape[-1] == header["dim"]
            and _tensor_sha256(grid) == entry.get("sha256")
        )
        if not ok:
            log.warning("feature cache %s: entry for frame %s is corrupt; re-extracting it", path, name)
            continue
        out[name] = (str(entry.get("input")), grid)
    return out


def _write_cache(path: Path, header: dict[str, Any], entries: dict[str, tuple[str, torch.Tensor]]) -> None:
    meta = dict(header)
    meta["frames"] = {name: {"input": h, "sha256": _tensor_sha256(g)} for name, (h, g) in entries.items()}
    tensors = {f"frame:{name}": g.contiguous() for name, (_h, g) in entries.items()}
    atomic_write_bytes(path, save(tensors, metadata={"m3": json.dumps(meta, sort_keys=True)}))


def _extract(scene: Scene, i: int, model: FeatureModel) -> torch.Tensor:
    rgb = scene.read_rgb(i)
    if model.name != "language":
        return model.encode_image_dense(rgb)
    mask = scene.read_mask(i)
    if mask is None:
        log.warning(
            "frame %s has no mask in %s/masks/; its language features are zeros",
            scene.frames[i].name,
            scene.root,
        )
        h, w = model.grid_size(*rgb.shape[:2])
        return torch.zeros(h, w, model.dim)
    ids, captions = mask
    return model.encode_image_dense(rgb, masks=ids, captions=captions)


def _check_scene_has_masks(scene: Scene) -> None:
    masks_dir = Path(scene.root) / "masks"
    has_any = (masks_dir / "captions.json").exists() and any(
        (masks_dir / f"{f.name}.png").exists() for f in scene.frames
    )
    if not has_any:
        raise FeatureError(
            f"the language model needs per-frame masks and captions, but {masks_dir} has none "
            "(expected masks/<frame name>.png with 16-bit instance ids, 0 = none, and "
            'masks/captions.json {"<frame name>": {"<id>": "caption"}}). For the built-in scene '
            "m3_core.sim.write_scene_masks(scene_dir, gt_dir) writes them from the `<bag>_gt/` folder "
            "that `m3 sim` makes; for a real scan run any segmenter + captioner "
            "that writes this format (see m3_core.features.language)."
        )


def load_scene_features(
    scene: Scene,
    model: str | FeatureModel,
    *,
    device: str | torch.device = "cpu",
    allow_random_weights: bool = False,
    progress: bool = True,
    options: dict[str, Any] | None = None,
) -> SceneFeatures:
    """Dense features of all frames of `scene` for `model` (a registry name or a built model),
    from scene/features/<model>.safetensors where valid, extracting (and caching) the rest.

    `options` go to get_model when `model` is a name (e.g. {"arch": "ViT-L-14-336"}).
    """
    if isinstance(model, str):
        model = get_model(model, device=device, allow_random_weights=allow_random_weights, **(options or {}))
    elif options:
        raise ValueError("options only apply when model is given by name; this model is already built")
    if model.name == "language":
        _check_scene_has_masks(scene)
    path = cache_path(scene, model.name)
    header = _model_header(model)
    cached = _read_cache(path, header)
    entries: dict[str, tuple[str, torch.Tensor]] = {}
    extracted = 0
    frames = tqdm(
        range(len(scene.frames)),
        desc=f"{model.name} features",
        unit="frame",
        disable=not progress,
        leave=False,
    )
    for i in frames:
        name = scene.frames[i].name
        input_hash = _frame_input_hash(scene, i, model)
        hit = cached.get(name)
        if hit is not None and hit[0] == input_hash:
            entries[name] = hit
            continue
        grid = _extract(scene, i, model).to(STORE_DTYPE)
        entries[name] = (input_hash, grid)
        extracted += 1
    shapes = {tuple(g.shape) for _h, g in entries.values()}
    if len(shapes) > 1:
        raise FeatureError(
            f"frames of {scene.root} give feature grids of different shapes {sorted(shapes)}: the images "
            "differ in size; M3 expects one camera resolution per scene (resize the images)"
        )
    if extracted or set(cached) != set(entries):
        _write_cache(path, header, entries)
    if model.random_weights:
        log.warning("features in %s were made with RANDOM WEIGHTS (%s): meaningless", path, model.model_id)
    names = [f.name for f in scene.frames]
    grids = torch.stack([entries[n][1] for n in names]).float()
    log.info(
        "%s features: %d frames, %d extracted, %d from cache",
        model.name,
        len(names),
        extracted,
        len(names) - extracted,
    )
    return SceneFeatures(
        model=model.name,
        model_id=model.model_id,
        dim=int(model.dim),
        names=names,
        grids=grids,
        random_weights=bool(model.random_weights),
        weights_hash=model.weights_hash,
        preprocessing=model.preprocessing,
        num_extracted=extracted,
    )
