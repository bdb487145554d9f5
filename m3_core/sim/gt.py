"""Ground truth of a simulated bag: the sidecar folder `<bag_dir>_gt/` (never on topics).

objects.json    {"format": "m3-sim-gt", "version": 1, "world_frame": "odom",
                 "objects": [{"id", "name", "caption", "synonyms", "model", "urdf", "support",
                              "box_center_world", "box_extent", "box_min_world", "box_max_world"}]}
                ids 1..N are the spec's objects in order; the table comes last (support: true);
                0 in masks = floor / nothing. Boxes are the visual mesh's axis-aligned box in world
                (metres), not pybullet's centre of mass.
masks/<stamp_ns>.png   16-bit instance ids per camera frame, named by the image header stamp
cameras.json    {"camera": {fx, fy, cx, cy, width, height}, "frames": [{"stamp_ns", "capture_ns",
                 "world_from_camera", "world_from_lidar", "armbase_from_ee"}]} (true poses, 4x4)
meshes.npz      "<name>/vertices" [V,3] world metres and "<name>/faces" [F,3] per object
spec.json       the resolved spec that produced the bag
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np

from m3_core.scene import SceneError, atomic_write_bytes, atomic_write_json, atomic_write_png, load_scene

OBJECTS_JSON = "objects.json"
CAMERAS_JSON = "cameras.json"
MESHES_NPZ = "meshes.npz"
MASKS_DIR = "masks"


def objects_record(world) -> dict:
    """objects.json content for a TabletopWorld."""
    objs = []
    for b in [*world.bodies, world.table]:
        support = b is world.table
        objs.append(
            {
                "id": world.table_instance_id if support else b.instance_id,
                "name": b.name,
                "caption": b.caption,
                "synonyms": list(b.synonyms),
                "model": b.model,
                "urdf": b.urdf,
                "support": support,
                "box_center_world": b.box_center.round(6).tolist(),
                "box_extent": b.box_extent.round(6).tolist(),
                "box_min_world": b.box_min.round(6).tolist(),
                "box_max_world": b.box_max.round(6).tolist(),
            }
        )
    return {"format": "m3-sim-gt", "version": 1, "world_frame": "odom", "objects": objs}


def write_meshes(path: Path, world) -> None:
    arrays = {}
    for b in [*world.bodies, world.table]:
        arrays[f"{b.name}/vertices"] = b.vertices.astype(np.float64)
        arrays[f"{b.name}/faces"] = b.faces.astype(np.int64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def write_cameras(gt_dir: Path, camera, stamps_ns, capture_ns, poses, robot) -> None:
    frames = [
        {
            "stamp_ns": int(s),
            "capture_ns": int(c),
            "world_from_camera": poses.world_from_camera[i].tolist(),
            "world_from_lidar": poses.world_from_lidar[i].tolist(),
            "armbase_from_ee": poses.armbase_from_ee[i].tolist(),
        }
        for i, (s, c) in enumerate(zip(stamps_ns, capture_ns))
    ]
    cam = {k: getattr(camera, k) for k in ("fx", "fy", "cx", "cy", "width", "height")}
    atomic_write_json(
        Path(gt_dir) / CAMERAS_JSON,
        {
            "camera": cam,
            "world_frame": robot.frames.world,
            "camera_frame": robot.frames.camera,
            "frames": frames,
        },
    )


# -- readers -----------------------------------------------------------------------------------


def _need(gt_dir: Path, name: str) -> Path:
    path = Path(gt_dir) / name
    if not path.exists():
        raise SceneError(f"{gt_dir} is not a simulator ground-truth folder: {name} is missing")
    return path


def read_objects(gt_dir: Path | str) -> list[dict]:
    """The objects (table included, support: true) of a ground-truth folder."""
    return json.loads(_need(Path(gt_dir), OBJECTS_JSON).read_text())["objects"]


def read_cameras(gt_dir: Path | str) -> dict:
    """cameras.json (true poses per camera frame, as lists; see the module docstring)."""
    return json.loads(_need(Path(gt_dir), CAMERAS_JSON).read_text())


def read_meshes(gt_dir: Path | str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{object name: (vertices [V,3] world, faces [F,3])}."""
    with np.load(_need(Path(gt_dir), MESHES_NPZ), allow_pickle=False) as z:
        names = sorted({k.split("/")[0] for k in z.files})
        return {n: (z[f"{n}/vertices"], z[f"{n}/faces"]) for n in names}


def mask_stamps_ns(gt_dir: Path | str) -> np.ndarray:
    """Sorted stamps (ns) of the available instance masks."""
    folder = _need(Path(gt_dir), MASKS_DIR)
    return np.array(sorted(int(p.stem) for p in folder.glob("*.png")), np.int64)


def read_mask(gt_dir: Path | str, stamp_ns: int) -> np.ndarray:
    """Instance ids [H,W] uint16 of the camera frame with this header stamp."""
    path = Path(gt_dir) / MASKS_DIR / f"{int(stamp_ns)}.png"
    ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if ids is None:
        raise SceneError(f"no ground-truth mask for stamp {stamp_ns} ({path})")
    return ids


def write_scene_masks(scene_dir: Path | str, gt_dir: Path | str, tolerance_ns: int = 1_000_000) -> int:
    """Give a scene directory made from a simulated bag its ground-truth instance masks.

    For each frame (stamps from scene.json), the mask with the same stamp (nearest within
    tolerance_ns) is copied to masks/<frame name>.png, resized (nearest) to the frame's image size
    if the scene was resampled, and masks/captions.json maps {frame name: {id: caption}} for the ids
    present. Returns the number of frames written. Raises SceneError if a frame has no mask.
    """
    scene = load_scene(scene_dir)
    objects = {int(o["id"]): o["caption"] for o in read_objects(gt_dir)}
    stamps = mask_stamps_ns(gt_dir)
    if not len(stamps):
        raise SceneError(f"{gt_dir}/{MASKS_DIR} holds no masks")
    plan = []
    for frame in scene.frames:
        k = int(np.argmin(np.abs(stamps - frame.stamp_ns)))
        if abs(int(stamps[k]) - frame.stamp_ns) > tolerance_ns:
            raise SceneError(
                f"frame {frame.name} (stamp {frame.stamp_ns}) has no ground-truth mask within "
                f"{tolerance_ns / 1e6:.1f} ms in {gt_dir}; was the scene made from this bag?"
            )
        plan.append((frame, int(stamps[k])))
    captions: dict[str, dict[str, str]] = {}
    for frame, stamp in plan:
        ids = read_mask(gt_dir, stamp)
        if ids.shape != (frame.camera.height, frame.camera.width):
            ids = cv2.resize(ids, (frame.camera.width, frame.camera.height), interpolation=cv2.INTER_NEAREST)
        atomic_write_png(scene.root / "masks" / f"{frame.name}.png", ids.astype(np.uint16))
        present = [int(i) for i in np.unique(ids) if int(i) in objects]
        captions[frame.name] = {str(i): objects[i] for i in present}
    atomic_write_json(scene.root / "masks" / "captions.json", captions)
    return len(plan)
