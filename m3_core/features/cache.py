"""Per-scene feature cache: scene/features/<model>.safetensors.

File format (safetensors, so loading it cannot run code):
    tensors   "frame:<frame name>"  float16 [h, w, d]   (zeros = no feature)
    metadata  "m3": JSON {"format": "m3-features", "version": 1, "model", "model_id", "dim",
                          "weights_hash", "preprocessing", "random_weights",
                          "source": {"model", "options", "files": [[path, size, mtime_ns]], "versions"},
                          "frames": {"<name>": {"input": sha256 of the frame's inputs,
                                                "sha256": sha256 of the stored tensor bytes}}}

A frame is reused when model id, weights hash and preprocessing match and its input hash (image
file bytes; for "language" also its mask file and captions) is unchanged. A file that cannot be
parsed, or an entry whose bytes do not match its recorded sha256, is re-extracted with a warning
and never used. The file is rewritten atomically when anything changed. Features are stored in
float16 and returned as float32; fresh extractions are rounded through float16 too, so a cache hit
and a miss give identical tensors.

"source" records what the model was built from: its get_model options, the weights files it read
or looked for (with their size and modification time) and the versions of the packages that build
it. When all of them are unchanged and every frame hits, the features are loaded without building
the model at all (importing open_clip and building a ViT costs seconds; a cached scene needs none
of it). Otherwise the model is built and the cache is checked against its weights hash as always.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
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
# Packages whose version can change what a model computes from the same weights files.
SOURCE_PACKAGES = ("torch", "open_clip_torch", "transformers")
MAX_SOURCE_FILES = 64
# The metadata keys that must equal the current model's for a cache entry to be used.
_HEADER_KEYS = (
    "format",
    "version",
    "model",
    "model_id",
    "dim",
    "weights_hash",
    "preprocessing",
    "random_weights",
)


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


def _frame_input_hash(scene: Scene, i: int, model_name: str) -> str:
    frame = scene.frames[i]
    if not Path(frame.image_path).is_file():
        raise SceneError(f"frame {frame.name}: image {frame.image_path} is missing")
    digest = hashlib.sha256(Path(frame.image_path).read_bytes())
    if model_name == "language":
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


def _file_state(path: Path) -> list[str | int | None]:
    """[path, size, mtime_ns], or [path, None, None] where nothing is."""
    try:
        st = path.stat()
    except OSError:
        return [str(path), None, None]
    return [str(path), int(st.st_size), int(st.st_mtime_ns)]


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def model_source(name: str, options: dict[str, Any], files: list[Path]) -> dict[str, Any]:
    """What a model built by `get_model(name, **options)` depends on, as the cache records it."""
    return {
        "model": name,
        "options": json.loads(json.dumps(options, sort_keys=True, default=str)),
        "files": [_file_state(p) for p in files],
        "versions": {pkg: _package_version(pkg) for pkg in SOURCE_PACKAGES},
    }


def _built_source(model: FeatureModel) -> dict[str, Any] | None:
    """The source of a model from get_model that reports its weights files, else None."""
    files = getattr(model, "weights_files", None)
    options = getattr(model, "build_options", None)
    if files is None or options is None:
        return None
    return model_source(model.name, options, list(files))


def _read_meta(path: Path) -> dict[str, Any] | None:
    """The "m3" metadata of a cache file (no tensor is read), or None when there is none."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["m3"])
    except Exception:  # noqa: BLE001 (safetensors raises several types on corrupt files)
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == CACHE_FORMAT else None


def _unchanged_source(meta: dict[str, Any], name: str, options: dict[str, Any]) -> bool:
    """Whether the model the cache was made with would be rebuilt identical now: same options,
    the same weights files (size and mtime) present or absent, the same package versions."""
    source = meta.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("files"), list):
        return False
    files = source["files"]
    # A model reads or looks for a handful of files; a cache naming more is not one we wrote.
    if len(files) > MAX_SOURCE_FILES or not all(
        isinstance(f, list) and f and isinstance(f[0], str) for f in files
    ):
        return False
    return model_source(name, options, [Path(f[0]) for f in files]) == source


def _read_cache(
    path: Path, header: dict[str, Any]
) -> tuple[dict[str, tuple[str, torch.Tensor]], dict[str, Any] | None]:
    """({frame name: (input hash, float16 grid)} of the valid entries of a cache file, the source it
    records (None: none, or no valid entry))."""
    if not path.exists():
        return {}, None

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["m3"])
            if meta.get("format") != CACHE_FORMAT or not isinstance(meta.get("frames"), dict):
                raise ValueError("not an m3 feature cache")
            stored = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open API)
    except Exception as err:  # noqa: BLE001 (safetensors raises several types on corrupt files)
        log.warning("feature cache %s is corrupt or unreadable (%s); re-extracting all frames", path, err)
        return {}, None
    same = {k: meta.get(k) for k in header} == header
    if not same:
        log.info("feature cache %s was made with another model/weights/preprocessing; re-extracting", path)
        return {}, None
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
    return out, (meta.get("source") if out else None)


def _write_cache(
    path: Path,
    header: dict[str, Any],
    entries: dict[str, tuple[str, torch.Tensor]],
    source: dict[str, Any] | None,
) -> None:
    meta = dict(header)
    if source is not None:
        meta["source"] = source
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

    `options` go to get_model when `model` is a name (e.g. {"arch": "ViT-L-14-336"}). A name whose
    cache is complete and whose recorded source is unchanged loads without building the model.
    """
    if (model if isinstance(model, str) else model.name) == "language":
        _check_scene_has_masks(scene)
    if isinstance(model, str):
        cached = _features_from_cache_alone(scene, model, options or {}, allow_random_weights)
        if cached is not None:
            return cached
        model = get_model(model, device=device, allow_random_weights=allow_random_weights, **(options or {}))
    elif options:
        raise ValueError("options only apply when model is given by name; this model is already built")
    path = cache_path(scene, model.name)
    header = _model_header(model)
    source = _built_source(model)
    cached, stored_source = _read_cache(path, header)
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
        input_hash = _frame_input_hash(scene, i, model.name)
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
    if extracted or set(cached) != set(entries) or (source is not None and stored_source != source):
        _write_cache(path, header, entries, source)
    return _scene_features(scene, path, header, entries, extracted)


def _features_from_cache_alone(
    scene: Scene, name: str, options: dict[str, Any], allow_random_weights: bool
) -> SceneFeatures | None:
    """The features of every frame from the cache, without building model `name`, when the cache
    records an unchanged source and holds every frame's current input; else None."""
    path = cache_path(scene, name)
    meta = _read_meta(path)
    if meta is None or meta.get("model") != name or not _unchanged_source(meta, name, options):
        return None
    if meta.get("random_weights") and not allow_random_weights:
        return None  # building says what is missing (WeightsMissingError)
    header = {key: meta.get(key) for key in _HEADER_KEYS}
    cached, _ = _read_cache(path, header)
    entries = {}
    for i, frame in enumerate(scene.frames):
        hit = cached.get(frame.name)
        if hit is None or hit[0] != _frame_input_hash(scene, i, name):
            return None
        entries[frame.name] = hit
    if len({tuple(g.shape) for _h, g in entries.values()}) != 1:
        return None
    return _scene_features(scene, path, header, entries, 0, built=False)


def _scene_features(
    scene: Scene,
    path: Path,
    header: dict[str, Any],
    entries: dict[str, tuple[str, torch.Tensor]],
    extracted: int,
    built: bool = True,
) -> SceneFeatures:
    if header["random_weights"]:
        log.warning(
            "features in %s were made with RANDOM WEIGHTS (%s): meaningless", path, header["model_id"]
        )
    names = [f.name for f in scene.frames]
    grids = torch.stack([entries[n][1] for n in names]).float()
    log.info(
        "%s features: %d frames, %d extracted, %d from cache%s",
        header["model"],
        len(names),
        extracted,
        len(names) - extracted,
        "" if built else " (model not built: the cache records an unchanged source)",
    )
    return SceneFeatures(
        model=header["model"],
        model_id=header["model_id"],
        dim=int(header["dim"]),
        names=names,
        grids=grids,
        random_weights=bool(header["random_weights"]),
        weights_hash=header["weights_hash"],
        preprocessing=header["preprocessing"],
        num_extracted=extracted,
    )
