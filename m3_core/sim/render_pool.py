"""Render camera frames in worker processes (TinyRenderer is single-threaded CPU code).

Each worker rebuilds the same world from the spec and the placements (pure function of the
inputs), so results do not depend on the number of workers; frames come back in order.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator

import numpy as np

from m3_core.geometry.camera import PinholeCamera
from m3_core.sim.spec import SimSpec
from m3_core.sim.world import TabletopWorld

_WORLD: TabletopWorld | None = None
_CAMERA: PinholeCamera | None = None


def _init(spec: SimSpec, placements, camera: PinholeCamera) -> None:
    global _WORLD, _CAMERA
    _WORLD = TabletopWorld(spec)
    for obj, xy, yaw in placements:
        _WORLD.add_object(obj, xy, yaw)
    _CAMERA = camera


def _render(world_from_camera: np.ndarray):
    assert _WORLD is not None and _CAMERA is not None
    return _WORLD.render(world_from_camera, _CAMERA)


def default_workers(n_frames: int) -> int:
    """Two workers on a 2-core box; one for tiny scenes, where starting workers costs more."""
    if n_frames < 24:
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def render_frames(
    world: TabletopWorld, camera: PinholeCamera, poses: np.ndarray, workers: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (rgb, depth_m, ids) for each world_from_camera in poses [N,4,4], in order."""
    if workers <= 1:
        for T in poses:
            yield world.render(T, camera)
        return
    ctx = mp.get_context("spawn")  # a fresh interpreter: no inherited pybullet client
    with ctx.Pool(workers, initializer=_init, initargs=(world.spec, world.placements, camera)) as pool:
        yield from pool.imap(_render, list(poses), chunksize=2)
