"""Incremental, atomic writer of the scene directory (layout: m3_core.scene).

Pixels go to images/ and depth/ as each keyframe is kept (atomic PNG writes); scene.json and
sparse/0 are rewritten as a whole (atomically, model first, then the JSON that names the frames)
every `save_every` keyframes and on `save()`. A reader therefore always finds a consistent scene:
the frames listed in scene.json, each with its PNGs and its pose.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from m3_core.errors import M3Error
from m3_core.geometry.camera import PinholeCamera
from m3_core.scene import SCENE_JSON, Frame, Scene, atomic_write_png, save_scene

log = logging.getLogger(__name__)


class SceneWriteError(M3Error):
    """The scene directory could not be written (permissions, disk full, ...)."""


# What a scene directory holds (m3_core.scene); anything else in an output directory is someone's.
SCENE_ENTRIES = frozenset({SCENE_JSON, "images", "depth", "sparse", "masks", "features"})


def foreign_entries(root: Path) -> list[str]:
    """Names in an existing output directory that a scene does not hold (hidden temp files aside)."""
    if not root.is_dir():
        return []  # absent, or a file: the first keyframe reports it (a node keeps running)
    return sorted(
        p.name for p in root.iterdir() if p.name not in SCENE_ENTRIES and not p.name.startswith(".")
    )


class SceneWriter:
    """Appends keyframes to a scene directory.

    root: output directory (created on the first keyframe, so a bad path fails there, not at start).
    overwrite: an existing scene at root is an error unless True (then its frames are removed).
    A directory holding anything but a scene's own entries is never written into (ValueError).
    """

    def __init__(
        self,
        root: Path | str,
        *,
        world_frame: str = "odom",
        camera_frame: str = "camera_color_optical_frame",
        source: str = "live",
        depth_scale_m: float = 0.001,
        save_every: int = 10,
        overwrite: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.root = Path(root)
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        if (self.root / SCENE_JSON).exists() and not overwrite:
            raise ValueError(
                f"{self.root} already holds a scene ({SCENE_JSON}); pick another output directory or "
                "pass overwrite"
            )
        foreign = foreign_entries(self.root)
        if foreign:
            raise ValueError(
                f"{self.root} holds files that are not part of a scene ({', '.join(foreign[:3])}); "
                "pick a new or empty output directory"
            )
        self.save_every = int(save_every)
        self._overwrite = overwrite
        self._prepared = False
        self.scene = Scene(
            root=self.root,
            frames=[],
            world_frame=world_frame,
            camera_frame=camera_frame,
            depth_scale_m=depth_scale_m,
            source=source,
            extra=dict(extra or {}),
        )
        self.saved_frames = 0

    @property
    def frames(self) -> list[Frame]:
        return self.scene.frames

    def _prepare(self) -> None:
        if self._prepared:
            return
        try:
            if self._overwrite and (self.root / SCENE_JSON).exists():  # only a scene is cleared
                for sub in ("images", "depth", "sparse", "masks"):
                    shutil.rmtree(self.root / sub, ignore_errors=True)
                (self.root / SCENE_JSON).unlink(missing_ok=True)
            for sub in ("images", "depth"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SceneWriteError(f"cannot create the scene directory {self.root}: {err}") from err
        self._prepared = True

    def add(
        self,
        rgb: np.ndarray,
        depth: np.ndarray | None,
        camera: PinholeCamera,
        world_from_camera: np.ndarray,
        stamp_ns: int,
    ) -> Frame:
        """Write one keyframe's PNGs (RGB uint8 [H,W,3], depth uint16 [H,W]); listed at the next save."""
        self._prepare()
        name = f"frame_{len(self.scene.frames):06d}"
        image_path = self.root / "images" / f"{name}.png"
        depth_path = self.root / "depth" / f"{name}.png" if depth is not None else None
        try:
            atomic_write_png(image_path, rgb)
            if depth_path is not None:
                atomic_write_png(depth_path, depth)
        except (OSError, M3Error) as err:
            for p in (image_path, depth_path):  # an unlisted file is harmless, but leave no litter
                if p is not None:
                    p.unlink(missing_ok=True)
            raise SceneWriteError(f"cannot write keyframe {name} into {self.root}: {err}") from err
        frame = Frame(
            name, int(stamp_ns), camera, np.array(world_from_camera, np.float64), image_path, depth_path
        )
        self.scene.frames.append(frame)
        return frame

    @property
    def save_due(self) -> bool:
        """True once save_every keyframes were added since the last save."""
        return len(self.scene.frames) - self.saved_frames >= self.save_every

    def save(self) -> int:
        """Rewrite sparse/0 and scene.json for all frames so far; returns the frame count."""
        if not self.scene.frames:
            self._prepare()  # nothing to list yet, but say now if the directory cannot be written
            return 0
        try:
            save_scene(self.scene)
        except (OSError, RuntimeError, M3Error) as err:  # pycolmap raises RuntimeError on I/O failures
            raise SceneWriteError(f"cannot save the scene {self.root}: {err}") from err
        self.saved_frames = len(self.scene.frames)
        return self.saved_frames
