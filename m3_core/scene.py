"""Scene directory: the hand-off between capture (or the simulator, or COLMAP) and the trainer.

Layout (docs/architecture.md, "Scene directory"):

    scene/
      images/<name>.png       color, 8-bit RGB (PNG; JPEG also read)
      depth/<name>.png        16-bit PNG, millimetres, aligned to color, 0 = invalid
      sparse/0/               COLMAP model written with pycolmap (cameras, images, points3D)
      scene.json              robot metadata: frame ids, stamps, depth scale, source (below)
      masks/<name>.png        optional: 16-bit instance ids, 0 = no region (language-mask model)
      masks/captions.json     optional: {"<name>": {"<id>": "caption", ...}, ...}
      features/               feature cache (m3_core.features.cache)

`<name>` is the frame name without extension, e.g. "frame_000012". Poses inside m3_core are
world_from_camera, OpenCV camera axes; COLMAP stores cam_from_world, converted here.

scene.json:
    {"format": "m3-scene", "version": 1, "source": "sim|bag|live|colmap",
     "world_frame": "odom", "camera_frame": "camera_color_optical_frame",
     "depth_scale_m": 0.001,
     "frames": [{"name": "frame_000000", "stamp_ns": 123, "image": "images/frame_000000.png",
                 "depth": "depth/frame_000000.png"}, ...],
     "extra": {...}}
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from m3_core.errors import M3Error
from m3_core.geometry.camera import PinholeCamera
from m3_core.geometry.se3 import invert

log = logging.getLogger(__name__)

SCENE_JSON = "scene.json"
SCENE_FORMAT_VERSION = 1


class SceneError(M3Error):
    """A scene directory that is missing, incomplete or inconsistent."""


@dataclass(frozen=True)
class Frame:
    """One keyframe: where the images are, the camera, and its pose."""

    name: str
    stamp_ns: int
    camera: PinholeCamera
    world_from_camera: np.ndarray  # [4,4] float64, OpenCV camera axes
    image_path: Path
    depth_path: Path | None


@dataclass
class Scene:
    """A loaded scene directory (lazy images: pixels are read on demand)."""

    root: Path
    frames: list[Frame]
    world_frame: str = "odom"
    camera_frame: str = "camera_color_optical_frame"
    depth_scale_m: float = 0.001
    source: str = "unknown"
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)

    def frame(self, name: str) -> Frame:
        for f in self.frames:
            if f.name == name:
                return f
        raise KeyError(f"no frame named {name!r} in {self.root}")

    def read_rgb(self, i: int) -> np.ndarray:
        """[H,W,3] uint8 RGB of frame i."""
        return read_rgb(self.frames[i].image_path)

    def read_depth_m(self, i: int) -> np.ndarray | None:
        """[H,W] float32 metres (0 = invalid) of frame i, or None when the frame has no depth."""
        path = self.frames[i].depth_path
        if path is None:
            return None
        return read_depth_png(path, self.depth_scale_m)

    def read_mask(self, i: int) -> tuple[np.ndarray, dict[int, str]] | None:
        """(instance ids [H,W] int32, {id: caption}) of frame i, or None without masks."""
        name = self.frames[i].name
        path = self.root / "masks" / f"{name}.png"
        captions_path = self.root / "masks" / "captions.json"
        if not path.exists() or not captions_path.exists():
            return None
        ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if ids is None:
            raise SceneError(f"cannot read mask {path}")
        captions = json.loads(captions_path.read_text()).get(name, {})
        return ids.astype(np.int32), {int(k): v for k, v in captions.items()}


# -- pixels ----------------------------------------------------------------------------------


_T = TypeVar("_T")


def map_frames(read: Callable[[int], _T], indices: Sequence[int]) -> Iterator[_T]:
    """`read(i)` for each frame index, in order, on up to 8 threads: cv2 decodes PNGs with the GIL
    released. A few frames at a time, not all at once: a long capture's images would not fit in
    memory together."""
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(indices), 2 * workers):
            yield from pool.map(read, indices[start:start + 2 * workers])


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SceneError(f"cannot read color image {path} (missing or corrupt)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_depth_png(path: Path, depth_scale_m: float = 0.001) -> np.ndarray:
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise SceneError(f"cannot read depth image {path} (missing or corrupt)")
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise SceneError(f"depth {path} must be a 16-bit single-channel PNG, got {raw.dtype} {raw.shape}")
    return raw.astype(np.float32) * np.float32(depth_scale_m)


def depth_png_from_m(depth_m: np.ndarray, depth_scale_m: float = 0.001) -> np.ndarray:
    """Metres -> uint16 units of depth_scale_m; invalid (NaN, <=0, too far) become 0."""
    d = np.nan_to_num(np.asarray(depth_m, np.float64), nan=0.0, posinf=0.0, neginf=0.0) / depth_scale_m
    d = np.where((d > 0) & (d < 65535), np.round(d), 0)
    return d.astype(np.uint16)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never half of it.

    The temporary file's size is checked after fsync, before the rename: a short write (a full
    disk that did not raise) fails here instead of leaving a truncated file under the real name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            written = os.fstat(fh.fileno()).st_size
        if written != len(data):
            raise OSError(
                errno.ENOSPC, f"short write: {written} of {len(data)} bytes (disk full?)", str(path)
            )
        # mkstemp makes 0600 files; give the file the permissions a plain open() would have
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plain_file_mode() -> int:
    """The mode a plain open() gives a new file (0o666 less the umask), for files that tools made."""
    return 0o666 & ~_umask()


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


class OutputExistsError(M3Error):
    """An output path that holds something this writer must not replace (not its own kind of output)."""


def check_replaceable(path: Path, marker: str, what: str) -> None:
    """Raise OutputExistsError unless `path` is absent, an empty directory, or a directory holding
    `marker` (the file that identifies a `what`, e.g. a memory's manifest.json)."""
    path = Path(path)
    for parent in path.parents:  # the nearest existing parent must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(f"{path} lies under {parent}, which is a file, not a directory")
            break
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise OutputExistsError(f"{path} exists and is not a {what} directory; refusing to replace it")
    if (path / marker).is_file() or not any(path.iterdir()):
        return
    raise OutputExistsError(
        f"{path} exists and is not a {what} (no {marker}); refusing to replace it: pick another output path"
    )


@contextlib.contextmanager
def atomic_directory(path: Path, *, marker: str, what: str = "output") -> Iterator[Path]:
    """Yield a fresh temp directory next to `path`; on success it replaces `path` as a whole (readers
    see the old directory or the new one, never a mix); on an exception it is removed.

    An existing `path` is replaced only when it is a `what` directory, recognised by its `marker`
    file (or empty): anything else raises OutputExistsError, before and again after the work.
    """
    path = Path(path)
    check_replaceable(path, marker, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp."))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 directories
        check_replaceable(path, marker, what)  # something else may have appeared meanwhile
        old = tmp.with_name(tmp.name.replace(".tmp.", ".old.", 1))  # unique: never someone's folder
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_png(path: Path, image: np.ndarray) -> None:
    """PNG of an RGB uint8 [H,W,3], or a single-channel uint8/uint16 image, written atomically."""
    img = image
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise SceneError(f"PNG encoding failed for {path}")
    atomic_write_bytes(path, buf.tobytes())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


# -- COLMAP model ----------------------------------------------------------------------------


def write_colmap_model(
    sparse_dir: Path,
    frames: list[Frame],
    points: np.ndarray | None = None,
    colors: np.ndarray | None = None,
) -> None:
    """Write cameras/images(/points3D) with pycolmap: PINHOLE cameras, known poses.

    Written to a temporary folder and swapped in, so a reader never sees half a model.
    """
    import pycolmap  # local: heavy import, only needed by writers/readers of sparse/

    rec = pycolmap.Reconstruction()
    cam_ids: dict[PinholeCamera, int] = {}
    for image_id, fr in enumerate(frames, start=1):
        cam = fr.camera
        if cam not in cam_ids:
            cam_ids[cam] = len(cam_ids) + 1
            rec.add_camera_with_trivial_rig(
                pycolmap.Camera(
                    camera_id=cam_ids[cam],
                    model="PINHOLE",
                    width=cam.width,
                    height=cam.height,
                    params=[cam.fx, cam.fy, cam.cx, cam.cy],
                )
            )
        cam_from_world = invert(fr.world_from_camera)
        image = pycolmap.Image(name=Path(fr.image_path).name, camera_id=cam_ids[cam], image_id=image_id)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(cam_from_world[:3, :]))
    if points is not None and len(points):
        cols = np.zeros((len(points), 3), np.uint8) if colors is None else np.asarray(colors, np.uint8)
        for p, c in zip(np.asarray(points, np.float64), cols):
            rec.add_point3D(p, pycolmap.Track(), c)
    with atomic_directory(Path(sparse_dir), marker="cameras.bin", what="COLMAP model") as tmp:
        rec.write_binary(str(tmp))
        verify_colmap_model(tmp, rec)


def colmap_file_sizes(rec: Any) -> dict[str, int]:
    """Byte sizes of cameras.bin, images.bin and points3D.bin that COLMAP's binary format gives `rec`."""
    cameras = 8 + sum(24 + 8 * len(cam.params) for cam in rec.cameras.values())
    images = 8 + sum(
        73 + len(im.name.encode()) + 24 * len(im.points2D) for im in rec.images.values()
    )  # id 4, pose 56, camera id 4, name + NUL, count 8, then (x, y, point id) per 2D point
    points = 8 + sum(51 + 8 * pt.track.length() for pt in rec.points3D.values())
    return {"cameras.bin": cameras, "images.bin": images, "points3D.bin": points}


def verify_colmap_model(model_dir: Path, rec: Any) -> None:
    """Check the files pycolmap wrote before they replace the old model: pycolmap's writer returns
    normally on a full disk, leaving short or empty files. Sizes first (a truncated file must not
    reach the reader), then a read-back of what the model holds."""
    import pycolmap  # local: heavy import, only for COLMAP models

    for name, expected in colmap_file_sizes(rec).items():
        path = Path(model_dir) / name
        got = path.stat().st_size if path.is_file() else -1
        if got != expected:
            raise SceneError(
                f"writing the COLMAP model failed: {name} has {got} bytes, expected {expected} "
                "(disk full or not writable?)"
            )
    try:
        back = pycolmap.Reconstruction(str(model_dir))
    except (RuntimeError, MemoryError, ValueError) as err:
        raise SceneError(f"the COLMAP model just written cannot be read back: {err}") from err
    want = (len(rec.cameras), sorted(im.name for im in rec.images.values()), len(rec.points3D))
    got_model = (len(back.cameras), sorted(im.name for im in back.images.values()), len(back.points3D))
    if want != got_model:
        raise SceneError("the COLMAP model read back differs from the one written (disk full?)")


def read_colmap_poses(sparse_dir: Path) -> dict[str, tuple[PinholeCamera, np.ndarray]]:
    """{image file name: (camera, world_from_camera)} from a COLMAP model (PINHOLE or SIMPLE_PINHOLE)."""
    import pycolmap  # local: heavy import, only for COLMAP models

    sparse_dir = Path(sparse_dir)
    if not sparse_dir.is_dir():
        raise SceneError(f"no COLMAP model at {sparse_dir}")
    rec = pycolmap.Reconstruction(str(sparse_dir))
    out = {}
    for image in rec.images.values():
        cam = image.camera
        model = str(cam.model).split(".")[-1]
        p = list(cam.params)
        if model == "PINHOLE":
            pin = PinholeCamera(p[0], p[1], p[2], p[3], cam.width, cam.height)
        elif model == "SIMPLE_PINHOLE":
            pin = PinholeCamera(p[0], p[0], p[1], p[2], cam.width, cam.height)
        else:
            raise SceneError(
                f"camera model {model} of {image.name} is not a pinhole; undistort the images first "
                "(colmap image_undistorter)"
            )
        cfw = np.eye(4)
        cfw[:3, :] = image.cam_from_world().matrix()
        out[image.name] = (pin, invert(cfw))
    return out


# -- scene dir -------------------------------------------------------------------------------

_FRAME_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def path_inside(root: Path, relative: Any, what: str) -> Path:
    """root / relative, refused (SceneError) unless it is a relative path that stays inside root.

    The check is on the path as written (no `..`, not absolute), so a folder the user linked in on
    purpose (images/ -> another disk) still works, while a file naming `../outside/x.png` cannot
    make a reader open files of someone else's choosing.
    """
    if not isinstance(relative, str) or not relative:
        raise SceneError(f"{what}: expected a path relative to {root}, got {relative!r}")
    rel = Path(relative)
    normal = os.path.normpath(relative)
    if rel.is_absolute() or normal == ".." or normal.startswith(("../", "..\\")) or "\x00" in relative:
        raise SceneError(f"{what}: path {relative!r} leaves the folder {root}; paths must stay inside it")
    return Path(root) / normal


def check_frame_name(name: Any, where: Path) -> None:
    """Frame names become file names (masks/<name>.png): letters, digits, '_', '-', '.' only."""
    if not isinstance(name, str) or not _FRAME_NAME.fullmatch(name) or ".." in name:
        raise SceneError(f"{where}: frame name {name!r} is not a plain file name (e.g. frame_000012)")


def write_scene_metadata(root: Path, scene: Scene) -> None:
    meta = {
        "format": "m3-scene",
        "version": SCENE_FORMAT_VERSION,
        "source": scene.source,
        "world_frame": scene.world_frame,
        "camera_frame": scene.camera_frame,
        "depth_scale_m": scene.depth_scale_m,
        "frames": [
            {
                "name": f.name,
                "stamp_ns": int(f.stamp_ns),
                "image": str(Path(f.image_path).relative_to(root)),
                "depth": str(Path(f.depth_path).relative_to(root)) if f.depth_path else None,
            }
            for f in scene.frames
        ],
        "extra": scene.extra,
    }
    atomic_write_json(Path(root) / SCENE_JSON, meta)


def save_scene(scene: Scene) -> None:
    """Write scene.json and sparse/0 for frames whose images are already in place."""
    write_colmap_model(scene.root / "sparse" / "0", scene.frames)
    write_scene_metadata(scene.root, scene)


def load_scene(root: Path | str) -> Scene:
    """Load a scene directory (scene.json + sparse/0). Raises SceneError with what is missing."""
    root = Path(root)
    meta_path = root / SCENE_JSON
    if not meta_path.exists():
        raise SceneError(f"{root} is not an m3 scene directory: {SCENE_JSON} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise SceneError(f"{meta_path} is not valid JSON: {err}") from err
    if meta.get("format") != "m3-scene":
        raise SceneError(f"{meta_path} is not an m3 scene file (format={meta.get('format')!r})")
    if int(meta.get("version", 0)) > SCENE_FORMAT_VERSION:
        raise SceneError(
            f"{meta_path} has scene format version {meta['version']}, this m3 reads up to "
            f"{SCENE_FORMAT_VERSION}; update m3-grasp"
        )
    poses = read_colmap_poses(root / "sparse" / "0")
    frames = []
    for fm in meta["frames"]:
        check_frame_name(fm.get("name"), meta_path)
        image_path = path_inside(root, fm["image"], f"frame {fm['name']} image")
        if image_path.name not in poses:
            raise SceneError(f"frame {fm['name']} has no pose in {root / 'sparse/0'}")
        cam, pose = poses[image_path.name]
        frames.append(
            Frame(
                name=fm["name"],
                stamp_ns=int(fm["stamp_ns"]),
                camera=cam,
                world_from_camera=pose,
                image_path=image_path,
                depth_path=path_inside(root, fm["depth"], f"frame {fm['name']} depth")
                if fm.get("depth")
                else None,
            )
        )
    if not frames:
        raise SceneError(f"scene {root} has no frames")
    return Scene(
        root=root,
        frames=frames,
        world_frame=meta.get("world_frame", "odom"),
        camera_frame=meta.get("camera_frame", "camera_color_optical_frame"),
        depth_scale_m=float(meta.get("depth_scale_m", 0.001)),
        source=meta.get("source", "unknown"),
        extra=meta.get("extra", {}),
    )
