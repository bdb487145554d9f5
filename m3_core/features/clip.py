"""CLIP through open_clip, with dense MaskCLIP-style patch features (as the M3 code does).

Default: ViT-B-16 with OpenAI weights (`arch="ViT-B-16", pretrained="openai"`, 512-d, a 30x40 grid
for 640x480 at native resolution). The M3 code used ViT-L-14-336 (768-d, 34x46 grid); it is about
4x slower and 2x the memory per frame, which matters on the robot's CPU/GPU and in the feature
cache; pass `arch="ViT-L-14-336"` to match the paper exactly.

Dense features (MaskCLIP): the image is resized as a whole (no crops) to a multiple of the patch
size, the positional embedding is interpolated (bicubic) to the patch grid, all blocks but the last
run as usual, and the last block keeps only its value path (ln_1 -> value projection -> out_proj,
no q/k attention, no residual, no MLP), then ln_post and the CLIP projection per patch token. The
tokens then live in the joint image-text space, so cosine with `encode_text` is meaningful.

Weights, in this order: `weights_path` (an open_clip checkpoint: .safetensors, .bin or the OpenAI
.pt), the Hugging Face cache (`~/.cache/huggingface/hub`, where open_clip itself downloads), the
open_clip URL cache (`~/.cache/clip`). None present -> WeightsMissingError naming the files.
`quick_gelu` (default: True for the "openai" tag, whose models were trained with QuickGELU) must
match the checkpoint; model_id then reads e.g. "open_clip:ViT-B-16-quickgelu/openai".
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch idiom)

from m3_core.features import _torchvision_fix  # noqa: F401  (before open_clip imports torchvision)
from m3_core.features.base import (
    FeatureError,
    PatchFeatureModel,
    WeightsMissingError,
    check_texts,
    l2_normalize,
    seeded_init,
    warn_random_weights,
)

log = logging.getLogger(__name__)

DEFAULT_ARCH = "ViT-B-16"
DEFAULT_PRETRAINED = "openai"


def clip_weight_candidates(arch: str, pretrained: str, cache_dir: str | None = None) -> list[Path]:
    """Where open_clip's weights for (arch, pretrained) would be on this machine, present or not."""
    import open_clip  # local: heavy optional dependency, only for CLIP/SigLIP models

    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if not tags:  # e.g. ViT-S-32: only a local file (weights_path) can give it weights
            raise WeightsMissingError(
                f"open_clip has no pretrained weights for {arch}; pass weights_path=FILE"
            )
        raise ValueError(f"open_clip knows no pretrained tag {pretrained!r} for {arch}; known tags: {tags}")
    out: list[Path] = []
    hub = cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)  # "org/name/" -> ("org/name", ""): default file names
        from huggingface_hub import constants, try_to_load_from_cache  # local: optional hub

        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str):
                out.append(Path(found))
            else:
                hub_dir = Path(cache_dir or constants.HF_HUB_CACHE)
                out.append(
                    hub_dir / f"models--{repo_id.replace('/', '--')}" / "snapshots" / "<revision>" / name
                )
    if cfg.get("url"):
        out.append(Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"]))
    if "file" in cfg:
        out.append(Path(cfg["file"]))
    return out


def find_clip_weights(
    arch: str, pretrained: str, weights_path: str | Path | None, cache_dir: str | None
) -> Path:
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsMissingError(
                f"CLIP weights_path {path} does not exist; it must be the open_clip checkpoint of "
                f"{arch}/{pretrained} (.safetensors, .bin or OpenAI .pt)"
            )
        return path
    candidates = clip_weight_candidates(arch, pretrained, cache_dir)
    for path in candidates:
        if path.is_file():
            return path
    listing = "\n  ".join(str(p) for p in candidates)
    raise WeightsMissingError(
        f"CLIP weights for open_clip {arch}/{pretrained} are not on this machine. Provide one of:\n  "
        f"{listing}\n(any one file is enough), or pass weights_path=/path/to/the/checkpoint "
        f"(m3 features --clip-weights PATH). Copy the file from a machine with internet access, e.g. "
        f"python -c \"import open_clip; open_clip.create_model('{arch}', pretrained='{pretrained}')\" "
        f"downloads it into the same cache. For tests/benchmarks only: allow_random_weights=True."
    )


def _weights_files(
    arch: str, pretrained: str, weights_path: str | Path | None, cache_dir: str | None, found: Path | None
) -> tuple[Path, ...]:
    """The files (or, for a hub snapshot not downloaded, the folder one would appear in) whose
    presence and content decide this model's weights: what the feature cache records."""
    if found is not None:
        return (found,)
    if weights_path is not None:
        return (Path(weights_path).expanduser(),)
    try:
        candidates = clip_weight_candidates(arch, pretrained, cache_dir)
    except WeightsMissingError:
        return ()  # no pretrained weights exist for this architecture: always random
    # "<revision>" stands for a snapshot folder: its parent changes when one is downloaded.
    return tuple(p.parent.parent if "<revision>" in p.parts else p for p in candidates)


class _quiet_root_warnings:  # noqa: N801 (a context manager used like a function)
    """Hide open_clip's root-logger "No pretrained weights loaded" while building: weights are
    loaded right after (or random weights are announced by our own warning)."""

    @staticmethod
    def filter(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    def __enter__(self) -> None:
        logging.getLogger().addFilter(self.filter)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeFilter(self.filter)


def is_torchscript_archive(path: Path) -> bool:
    """OpenAI's released CLIP .pt files are TorchScript archives (zip with a code/ folder)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_clip_weights(model: torch.nn.Module, path: Path, what: str) -> None:
    """Load an open_clip checkpoint (.safetensors/.bin) or an OpenAI TorchScript .pt into `model`."""
    import open_clip  # local: heavy optional dependency, only for CLIP/SigLIP models

    try:
        if is_torchscript_archive(path):
            # torch.load(weights_only=True) refuses TorchScript archives; their state dict uses the
            # key names of open_clip's CLIP, plus three scalars that are configuration, not weights.
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
            for key in ("input_resolution", "context_length", "vocab_size"):
                state.pop(key, None)
            model.load_state_dict(state)
        else:
            open_clip.load_checkpoint(model, str(path))
    except Exception as err:  # noqa: BLE001 (torch.load/unpickling fail in many ways on bad files)
        raise FeatureError(f"{path} is not a usable open_clip checkpoint for {what}: {err}") from err


class ClipFeatures(PatchFeatureModel):
    """open_clip CLIP: dense MaskCLIP patch features + text features, both L2-normalised."""

    name = "clip"
    algorithm = "maskclip-last-block-value"

    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        allow_random_weights: bool = False,
        arch: str = DEFAULT_ARCH,
        pretrained: str = DEFAULT_PRETRAINED,
        weights_path: str | Path | None = None,
        short_side: int | None = None,
        quick_gelu: bool | None = None,
        cache_dir: str | None = None,
    ) -> None:
        import open_clip  # local: heavy optional dependency, only for CLIP/SigLIP models

        if arch not in open_clip.list_models():
            raise ValueError(
                f"unknown open_clip architecture {arch!r}; e.g. ViT-B-16, ViT-B-32, ViT-L-14-336"
            )
        self._init_patch_grid(device, short_side)
        if quick_gelu is None:
            quick_gelu = pretrained == "openai"  # OpenAI checkpoints were trained with QuickGELU
        self.arch, self.pretrained, self.quick_gelu = arch, pretrained, bool(quick_gelu)
        arch_id = f"{arch}-quickgelu" if quick_gelu and not arch.endswith("quickgelu") else arch
        try:
            path = find_clip_weights(arch, pretrained, weights_path, cache_dir)
        except WeightsMissingError:
            if not allow_random_weights:
                raise
            path = None
        self.weights_files = _weights_files(arch, pretrained, weights_path, cache_dir, path)
        with seeded_init(), _quiet_root_warnings():
            model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu)
        if path is not None:
            log.info("loading CLIP %s/%s weights from %s", arch, pretrained, path)
            load_clip_weights(model, path, f"{arch}/{pretrained}")
            self.model_id = f"open_clip:{arch_id}/{pretrained}"
            self.random_weights = False
        else:
            self.model_id = f"open_clip:{arch_id}/random-init"
            self.random_weights = True
            warn_random_weights(self.model_id)
        visual = model.visual
        dense_ok = isinstance(visual, open_clip.transformer.VisionTransformer)
        if not dense_ok or visual.attn_pool is not None or visual.proj is None:
            raise ValueError(
                f"dense CLIP features need an open_clip VisionTransformer without attention pooling; "
                f"{arch} has {type(visual).__name__}. Use a ViT arch such as ViT-B-16 or ViT-L-14-336"
            )
        if not isinstance(visual.transformer.resblocks[-1].attn, torch.nn.MultiheadAttention):
            raise ValueError(
                f"{arch} uses custom attention blocks; the MaskCLIP value path supports standard ones"
            )
        self.model = model.eval().to(self.device)
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.patch = int(visual.patch_size[0])
        self.dim = int(visual.output_dim)
        pre = model.visual.preprocess_cfg
        self.mean = tuple(float(v) for v in pre["mean"])
        self.std = tuple(float(v) for v in pre["std"])
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}

    def _model_keys(self) -> dict[str, Any]:
        return {"arch": self.arch, "pretrained": self.pretrained, "quick_gelu": self.quick_gelu}

    def _positional_embedding(self, h: int, w: int) -> torch.Tensor:
        """[1 + h*w, width]: class position + the patch positions resampled to an h x w grid."""
        if (h, w) not in self._pos_cache:
            pos = self.model.visual.positional_embedding
            gh, gw = self.model.visual.grid_size
            grid = pos[1:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2).float()
            if (gh, gw) != (h, w):
                grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
            grid = grid.permute(0, 2, 3, 1).reshape(h * w, -1).to(pos.dtype)
            self._pos_cache[(h, w)] = torch.cat([pos[:1], grid], dim=0)
        return self._pos_cache[(h, w)]

    def dense_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """[1,3,h*p,w*p] normalised pixels -> [h, w, dim] MaskCLIP features (not normalised)."""
        visual = self.model.visual
        tokens = visual.conv1(pixels)  # [1, width, h, w]
        h, w = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)  # [1, h*w, width]
        cls = visual.class_embedding.to(tokens.dtype).view(1, 1, -1)
        x = torch.cat([cls, tokens], dim=1) + self._positional_embedding(h, w).to(tokens.dtype)
        x = visual.ln_pre(x)
        blocks = visual.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        x = self.value_path(blocks[-1], x)
        x = visual.ln_post(x[:, 1:]) @ visual.proj
        return x.reshape(h, w, -1)

    @staticmethod
    def value_path(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The last block as MaskCLIP runs it: each token attends only to itself (v -> out_proj)."""
        attn: torch.nn.MultiheadAttention = block.attn
        d = attn.embed_dim
        bias = attn.in_proj_bias[2 * d :] if attn.in_proj_bias is not None else None
        v = F.linear(block.ln_1(x), attn.in_proj_weight[2 * d :], bias)
        return block.ls_1(attn.out_proj(v))

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """n strings -> [n, dim] float32 CPU, L2-normalised."""
        texts = check_texts(texts)
        tokens = self.tokenizer(texts).to(self.device)
        return l2_normalize(self.model.encode_text(tokens).float()).cpu()
