"""The one place that makes torchvision importable on CPU-only torch.

The PyPI torchvision wheel's `_C.so` links CUDA libraries; on the CPU torch wheel it fails to load,
and `import torchvision` (so open_clip, and transformers' vision models) then dies in
`torchvision/_meta_registrations.py` with "operator torchvision::nms does not exist", because the
fake-kernel registrations there need the two operator schemas that `_C.so` would have defined.

`ensure_torchvision_ops()` first tries to load the real `_C.so` (which works on a CUDA torch, where
nothing else is done), and only if that fails defines the schemas `nms` and `qnms` itself. Nothing
here needs torchvision's compiled ops (torchvision.ops.nms still raises torchvision's own "Couldn't
load custom C++ ops"); open_clip and transformers only need the import to succeed. It must run
before any torchvision / open_clip / transformers vision import; importing `m3_core.features`
runs it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os

import torch

log = logging.getLogger(__name__)

_library: torch.library.Library | None = None  # kept alive: dropping it would undefine the ops


def _has_nms() -> bool:
    try:
        return hasattr(torch.ops.torchvision, "nms")
    except (AttributeError, RuntimeError):
        return False


def ensure_torchvision_ops() -> None:
    """Idempotent: make `torchvision::nms`/`qnms` exist before torchvision is imported."""
    global _library
    if _library is not None or _has_nms():
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return  # no torchvision: nothing to fix (open_clip would fail with its own clear error)
    lib_path = os.path.join(os.path.dirname(spec.origin), "_C.so")
    if os.path.exists(lib_path):
        with contextlib.suppress(OSError):  # OSError: the CPU-torch case this module exists for
            torch.ops.load_library(lib_path)
    if _has_nms():
        return
    log.debug("torchvision's _C.so does not load on this torch build; defining nms/qnms in Python")
    _library = torch.library.Library("torchvision", "DEF")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


ensure_torchvision_ops()
