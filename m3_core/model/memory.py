"""The M3 memory artifact: what the trainer writes and the query node loads.

A memory is a directory:

    memory/
      memory.safetensors   tensors only (never pickle: a memory from someone else runs no code)
                           gaussians.<name>      the GaussianModel parameters (means, quats, ...)
                           heads.<model>.psc     [T, d] principal scene components  (M3 head)
                           heads.<model>.w_m     [l, d] memory projection            (M3 head)
                           heads.<model>.weight  [d, L], heads.<model>.bias [d]     (linear head)
      manifest.json        {"format": "m3-memory", "version": 1, "head": "attention" | "linear",
                            "models": {name: {dim, query_dim, query_slice, theta, model_id,
                                              random_weights, head, attention, psc_stats}},
                            "num_gaussians", "frames": {"train": [...], "heldout": [...]},
                            "world_frame", "scene_bounds": {"min", "max"}, "training": {...}}

Memories written before the `head` key named the head by `kind` ("m3" / "distill");
`read_manifest` maps those through LEGACY_KIND_HEADS, so they still load.

`save` writes a temporary directory next to the target and renames it into place, so a reader
sees the old memory or the new one, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from m3_core.config import from_dict, to_dict
from m3_core.errors import M3Error
from m3_core.features.registry import get_model, model_options
from m3_core.geometry.camera import PinholeCamera
from m3_core.model.attention import AttentionConfig, MemoryAttention
from m3_core.model.gaussians import PARAM_NAMES, GaussianModel
from m3_core.model.linear import LinearDecoder
from m3_core.render import rasterize
from m3_core.scene import atomic_directory, atomic_write_json, plain_file_mode

log = logging.getLogger(__name__)

MEMORY_FORMAT = "m3-memory"
MEMORY_FORMAT_VERSION = 1
TENSORS_FILE = "memory.safetensors"
MANIFEST_FILE = "manifest.json"


# The get_model options a manifest may set: they name an architecture and its preprocessing, never
# a file or folder (weights_path, model_dir, cache_dir are left out on purpose).
MEMORY_MODEL_OPTIONS = frozenset({"arch", "pretrained", "quick_gelu", "hf_id", "short_side", "stride"})
_HF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


class MemoryFileError(M3Error):
    """A memory directory that is missing, truncated, corrupt or of an unsupported version."""


class UnknownModelError(M3Error, KeyError):
    """A foundation model that this memory does not hold."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


def make_head(entry: dict[str, Any], tensors: dict[str, torch.Tensor], prefix: str) -> nn.Module:
    """The feature head of one model from its manifest entry and tensors."""
    if entry["head"] == "attention":
        cfg = from_dict(AttentionConfig, entry.get("attention", {}))
        psc, w_m = tensors[f"{prefix}.psc"], tensors[f"{prefix}.w_m"]
        return MemoryAttention(psc, int(entry["query_dim"]), cfg, w_m=w_m)
    if entry["head"] == "linear":
        weight = tensors[f"{prefix}.weight"]
        dec = LinearDecoder(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            dec.linear.weight.copy_(weight)
            dec.linear.bias.copy_(tensors[f"{prefix}.bias"])
        return dec
    raise MemoryFileError(f"unknown head type {entry['head']!r} for a model in the manifest")


def head_tensors(head: nn.Module) -> dict[str, torch.Tensor]:
    if isinstance(head, MemoryAttention):
        return {"psc": head.psc, "w_m": head.w_m}
    if isinstance(head, LinearDecoder):
        return {"weight": head.linear.weight, "bias": head.linear.bias}
    raise TypeError(f"unknown head {type(head).__name__}")


def head_entry(head: nn.Module) -> dict[str, Any]:
    if isinstance(head, MemoryAttention):
        return {"head": "attention", "attention": to_dict(head.config), "psc_size": int(head.psc.shape[0])}
    return {"head": "linear"}


class M3Memory(nn.Module):
    """Gaussians with principal queries + one feature head per foundation model."""

    def __init__(self, gaussians: nn.Module, heads: dict[str, nn.Module], manifest: dict[str, Any]) -> None:
        super().__init__()
        self.gaussians = gaussians
        self.heads = nn.ModuleDict(heads)
        self.manifest = manifest

    # -- what it holds --------------------------------------------------------------------

    @property
    def models(self) -> list[str]:
        return list(self.heads.keys())

    @property
    def device(self) -> torch.device:
        return self.gaussians.means.device

    @property
    def background(self) -> torch.Tensor:
        """[3] RGB the memory was trained against (behind the Gaussians)."""
        bg = self.manifest.get("background")
        if bg is None:
            bg = self.manifest.get("training", {}).get("config", {}).get("background", (0.0, 0.0, 0.0))
        return torch.tensor([float(v) for v in bg], device=self.device)

    def _check_models(self, models: list[str] | None) -> list[str]:
        if models is None:
            return self.models
        if isinstance(models, str):
            models = [models]
        missing = [m for m in models if m not in self.heads]
        if missing:
            raise UnknownModelError(
                f"this memory holds no {', '.join(map(repr, missing))} features; it holds: "
                f"{', '.join(self.models)} (train one with `m3 train SCENE --models ...`)"
            )
        return list(models)

    def query_slice(self, model: str) -> slice:
        self._check_models([model])
        return self.gaussians.query_slices[model]

    # -- read-out -------------------------------------------------------------------------

    def decode(self, model: str, queries: torch.Tensor) -> torch.Tensor:
        """Rendered queries [..., Q_all] (all models' columns) -> features [..., d] of one model."""
        sl = self.query_slice(model)  # checks the model first
        return self.heads[model](queries[..., sl])

    @torch.no_grad()
    def render(
        self,
        world_from_camera: torch.Tensor,  # [4, 4]
        camera: PinholeCamera,
        models: list[str] | None = None,
        pixels: torch.Tensor | None = None,  # [P, 2] (row, col)
        backend: str = "auto",
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(rgb [H,W,3], depth_m [H,W], {model: features [H,W,d]}, alpha [H,W]) at a camera pose;
        per-pixel [P, ...] shapes when pixels are given."""
        models = self._check_models(models)
        out = render_memory(
            self.gaussians, world_from_camera, camera, pixels=pixels, backend=backend, background=self.background,
            render_queries=bool(models),
        )  # fmt: skip
        features = {m: self.decode(m, out.queries) for m in models}
        return out.rgb, out.depth, features, out.alpha

    @torch.no_grad()
    def feature_products(
        self,
        model: str,
        queries: torch.Tensor,  # [..., Q_all] rendered queries (all models' columns)
        directions: torch.Tensor,  # [m, d] e.g. unit text and negative embeddings
    ) -> tuple[torch.Tensor, torch.Tensor]:  # [..., m], [...]
        """(f . directions, |f|) for the features f = decode(model, queries): all that relevance
        needs. The attention head computes them from its PSC without decoding the [..., d] map
        (MemoryAttention.feature_products); other heads decode and multiply."""
        sl = self.query_slice(model)  # checks the model first
        head = self.heads[model]
        if isinstance(head, MemoryAttention):
            return head.feature_products(queries[..., sl], directions)
        features = head(queries[..., sl]).float()
        return features @ directions.to(features).T, features.norm(dim=-1)

    @torch.no_grad()
    def gaussian_features(self, model: str) -> torch.Tensor:
        """[N, d]: the head applied to each Gaussian's own query (3D read-out without a view)."""
        return self.decode(model, self.gaussians.queries)

    def text_encoder(
        self, model: str, device: str | torch.device = "cpu", options: dict[str, Any] | None = None
    ):
        """The feature model that encodes text into this memory's feature space (`.encode_text`).

        The manifest only says which architecture to rebuild (MEMORY_MODEL_OPTIONS): which file
        holds its weights is never the memory's choice, since loading a checkpoint can run code.
        Weights come from the local install / cache, or from `options` (e.g. weights_path), which
        must come from the user, never from a memory.
        """

        self._check_models([model])
        entry = self.manifest["models"][model]
        rebuild = memory_model_options(entry.get("preprocessing", {}), set(model_options(model)))
        encoder = get_model(
            model,
            device=device,
            allow_random_weights=bool(entry.get("random_weights")),
            **{**rebuild, **(options or {})},
        )
        if entry.get("model_id") and encoder.model_id != entry["model_id"]:
            raise M3Error(
                f"{model}: this memory was trained on {entry['model_id']} features but the text encoder "
                f"available is {encoder.model_id}; install the same weights"
            )
        return encoder

    # -- files ----------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"gaussians.{k}": v for k, v in self.gaussians.state_dict().items()}
        for model, head in self.heads.items():
            tensors.update({f"heads.{model}.{k}": v for k, v in head_tensors(head).items()})
        return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}

    def full_manifest(self) -> dict[str, Any]:
        man = dict(self.manifest)
        man["format"], man["version"] = MEMORY_FORMAT, MEMORY_FORMAT_VERSION
        man["num_gaussians"] = int(self.gaussians.means.shape[0])
        models = {}
        for model, head in self.heads.items():
            entry = dict(man.get("models", {}).get(model, {}))
            sl = self.gaussians.query_slices[model]
            entry.update(head_entry(head))
            entry.update(dim=head.feature_dim, query_dim=head.query_dim, query_slice=[sl.start, sl.stop])
            models[model] = entry
        man["models"] = models
        return man

    def save(self, path: str | Path) -> Path:
        """Write the memory directory atomically (temp dir + rename); returns its path."""
        path = Path(path)
        manifest = self.full_manifest()
        tensors = self.state_tensors()
        with atomic_directory(path, marker=MANIFEST_FILE, what="memory") as tmp:
            write_tensors_file(tmp / TENSORS_FILE, tensors)
            atomic_write_json(tmp / MANIFEST_FILE, manifest)
        log.info(
            "memory written to %s (%d Gaussians, models %s)", path, manifest["num_gaussians"], self.models
        )
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> M3Memory:
        manifest = read_manifest(path)
        tensor_path = Path(path) / TENSORS_FILE
        if not tensor_path.exists():
            raise MemoryFileError(f"{path} has a manifest but no {TENSORS_FILE}; the memory is incomplete")
        try:
            tensors = load_file(str(tensor_path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise MemoryFileError(
                f"{tensor_path} is truncated or corrupt ({err}); train the memory again"
            ) from err
        try:
            gaussians = gaussians_from_tensors(
                {k[len("gaussians.") :]: v for k, v in tensors.items() if k.startswith("gaussians.")},
                {m: slice(*e["query_slice"]) for m, e in manifest["models"].items()},
            )
            heads = {m: make_head(e, tensors, f"heads.{m}") for m, e in manifest["models"].items()}
        except (KeyError, ValueError, RuntimeError) as err:
            raise MemoryFileError(f"{path} is inconsistent with its manifest: {err}") from err
        n = int(gaussians.means.shape[0])
        if n != int(manifest.get("num_gaussians", n)):
            raise MemoryFileError(
                f"{path}: manifest says {manifest['num_gaussians']} Gaussians, file has {n}"
            )
        return cls(gaussians, heads, manifest).to(device)


def memory_model_options(preprocessing: Any, valid: set[str]) -> dict[str, Any]:
    """The options of a manifest's `preprocessing` that may rebuild its text encoder (see
    MEMORY_MODEL_OPTIONS); a path-like option is dropped with a warning, a bad value refused."""
    if not isinstance(preprocessing, dict):
        raise MemoryFileError(f"manifest preprocessing must be a mapping, got {type(preprocessing).__name__}")
    ignored = sorted(k for k in preprocessing if k in valid and k not in MEMORY_MODEL_OPTIONS)
    if ignored:
        log.warning(
            "memory manifest names %s for its text encoder: ignored (weights come from this machine's "
            "install or cache, or from an explicit option)",
            ignored,
        )
    options = {k: v for k, v in preprocessing.items() if k in valid and k in MEMORY_MODEL_OPTIONS}
    for key in ("arch", "pretrained", "hf_id"):
        value = options.get(key)
        if value is not None and not isinstance(value, str):
            raise MemoryFileError(f"manifest option {key} must be a string, got {value!r}")
    if "hf_id" in options and not _HF_ID.fullmatch(options["hf_id"]):
        raise MemoryFileError(f"manifest hf_id {options['hf_id']!r} is not a hub id like org/name")
    return options


def write_tensors_file(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors file with the permissions of a plain file (its writer makes 0600), read back."""
    try:
        save_file(tensors, str(path), metadata={"format": MEMORY_FORMAT})
    except SafetensorError as err:  # the writer reports I/O errors (ENOSPC, EFBIG) this way
        raise MemoryFileError(f"cannot write the memory's {path.name}: {err}") from err
    os.chmod(path, plain_file_mode())
    verify_tensors_file(path, tensors)


def verify_tensors_file(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Read back the header of a safetensors file just written: every tensor with its shape, and a
    file exactly as long as the header says (a short write on a full disk fails here)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            shapes = {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise MemoryFileError(f"writing {path.name} failed, the file does not read back: {err}") from err
    if shapes != {k: list(v.shape) for k, v in tensors.items()}:
        raise MemoryFileError(f"writing {path.name} failed: the tensors read back differ from those written")


HEADS = ("attention", "linear")
"""The feature head of a memory: M3's memory attention, or the F-3DGS-style linear decoder."""
LEGACY_KIND_HEADS = {"m3": "attention", "distill": "linear"}
"""Manifests before the `head` key said `kind`: its values, mapped to the head they mean."""


def manifest_head(manifest: dict[str, Any], where: str | Path = "manifest") -> str:
    """The head a manifest names: its `head` key, or (older memories) the head of its `kind`."""
    if "head" in manifest:
        head = manifest["head"]
    else:
        head = LEGACY_KIND_HEADS.get(manifest.get("kind", "m3"))
    if head not in HEADS:
        raise MemoryFileError(
            f"{where} names an unknown head ({manifest.get('head', manifest.get('kind'))!r}); "
            f"known: {HEADS} (or the older kind {sorted(LEGACY_KIND_HEADS)})"
        )
    return head


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a memory directory, checked for format and version; an older manifest's
    `kind` is replaced by the `head` it means."""
    path = Path(path)
    man_path = path / MANIFEST_FILE
    if not man_path.exists():
        raise MemoryFileError(f"{path} is not an M3 memory: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(man_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MemoryFileError(f"{man_path} is not valid JSON (truncated?): {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != MEMORY_FORMAT:
        raise MemoryFileError(f"{man_path} is not an M3 memory manifest (format != {MEMORY_FORMAT!r})")
    version = manifest.get("version")
    if not isinstance(version, int) or version < 1:
        raise MemoryFileError(f"{man_path} has no valid format version ({version!r})")
    if version > MEMORY_FORMAT_VERSION:
        raise MemoryFileError(
            f"{path} is memory format version {version}, this m3-grasp reads up to "
            f"{MEMORY_FORMAT_VERSION}; update m3-grasp to load it"
        )
    if not manifest.get("models"):
        raise MemoryFileError(f"{man_path} lists no models")
    manifest["head"] = manifest_head(manifest, man_path)
    manifest.pop("kind", None)
    return manifest


def gaussians_from_tensors(tensors: dict[str, torch.Tensor], query_slices: dict[str, slice]) -> nn.Module:
    """A GaussianModel holding the given parameter tensors."""

    missing = [n for n in PARAM_NAMES if n not in tensors]
    if missing:
        raise KeyError(f"tensors gaussians.{missing} are missing")
    ordered = sorted(query_slices.items(), key=lambda kv: kv[1].start)
    start = 0
    for _name, sl in ordered:
        if sl.start != start or sl.stop <= sl.start:
            raise ValueError(f"query slices {query_slices} do not tile the query columns")
        start = sl.stop
    dims = {name: sl.stop - sl.start for name, sl in ordered}
    return GaussianModel(**{n: tensors[n] for n in PARAM_NAMES}, query_dims=dims)


def render_memory(
    gaussians: nn.Module, world_from_camera: torch.Tensor, camera: PinholeCamera, **kwargs: Any
):
    """rasterize() of the memory's Gaussians (one place, so trainer and reader render alike)."""

    return rasterize(gaussians, world_from_camera, camera, **kwargs)
