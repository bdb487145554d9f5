"""The pybullet tabletop: load the table and objects, place them, render RGB-D + instance ids.

pybullet runs headless (DIRECT) with its CPU TinyRenderer. Conventions: matrices
come column-major; world_from_camera (OpenCV) = inv(V) @ diag(1,-1,-1,1); the projection is built
from OpenCV intrinsics so the rendered image matches camera_info exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from m3_core.errors import M3Error
from m3_core.geometry.camera import PinholeCamera
from m3_core.geometry.se3 import invert, matrix_from_pose, quat_xyzw_from_matrix, transform_from_rt
from m3_core.sim.collision import HollowCylinder, hollow_urdf
from m3_core.sim.meshes import merge_meshes, placed_mesh
from m3_core.sim.settle import rest_rotation
from m3_core.sim.spec import CATALOG, ObjectSpec, SimSpec

log = logging.getLogger(__name__)

_GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])
# TinyRenderer samples row r at the ray of image row r + 0.5 (measured: a plane fitted to rendered
# depth sits exactly half a row off, columns are exact). Rendering with cy + 0.5 puts every
# pixel on the ray that camera_info's K gives it; without this, slanted far surfaces are mm off.
_TINY_RENDERER_ROW_OFFSET = 0.5


class SimError(M3Error):
    """A scene that cannot be built or rendered as specified."""


@dataclass
class Body:
    """A loaded pybullet body and its ground truth."""

    instance_id: int
    name: str
    caption: str
    synonyms: tuple[str, ...]
    urdf: str
    model: str
    body_id: int
    vertices: np.ndarray  # [V,3] world, visual mesh
    faces: np.ndarray  # [F,3]

    @property
    def box_min(self) -> np.ndarray:
        return self.vertices.min(axis=0)

    @property
    def box_max(self) -> np.ndarray:
        return self.vertices.max(axis=0)

    @property
    def box_center(self) -> np.ndarray:
        return (self.box_min + self.box_max) / 2

    @property
    def box_extent(self) -> np.ndarray:
        return self.box_max - self.box_min


def data_path() -> Path:
    import pybullet_data  # local: heavy simulator, only when a world is built

    return Path(pybullet_data.getDataPath())


def resolve_urdf(obj: ObjectSpec) -> str:
    """The URDF to load for `obj`; a catalogue model whose collision is wrong (the solid mug) gets a
    corrected copy (m3_core/sim/collision.py). A spec's own `urdf:` is loaded as given."""
    entry = {} if obj.urdf else CATALOG[obj.model or obj.name]
    urdf = obj.urdf or entry["urdf"]
    path = Path(urdf) if Path(urdf).is_absolute() else data_path() / urdf
    if not path.exists():
        raise ValueError(f"object {obj.name!r}: URDF {urdf} not found (looked at {path})")
    if "hollow" in entry:
        return hollow_urdf(path, HollowCylinder(**entry["hollow"]))
    return str(path)


def projection_from_camera(camera: PinholeCamera, near_m: float, far_m: float) -> np.ndarray:
    """OpenGL projection [4,4] (row-major) reproducing OpenCV intrinsics exactly."""
    W, H = camera.width, camera.height
    P = np.zeros((4, 4))
    P[0, 0] = 2 * camera.fx / W
    P[1, 1] = 2 * camera.fy / H
    P[0, 2] = 1 - 2 * (camera.cx + 0.5) / W
    P[1, 2] = 2 * (camera.cy + 0.5) / H - 1
    P[2, 2] = -(far_m + near_m) / (far_m - near_m)
    P[2, 3] = -2 * far_m * near_m / (far_m - near_m)
    P[3, 2] = -1.0
    return P


class TabletopWorld:
    """A headless pybullet world holding the table and the spec's objects (no physics stepping:
    objects are placed resting on the table top by their visual mesh boxes)."""

    def __init__(self, spec: SimSpec) -> None:
        import pybullet as p  # local: heavy simulator, only when a world is built

        self._p = p
        self.spec = spec
        self.client = p.connect(p.DIRECT)
        self.bodies: list[Body] = []
        self.placements: list[tuple[ObjectSpec, np.ndarray, float]] = []
        """(object, xy in the table frame, yaw) as added, to rebuild the same world elsewhere."""
        p.setAdditionalSearchPath(str(data_path()), physicsClientId=self.client)
        self.floor_id: int | None = None
        """The floor's body, made at the first render (_add_floor)."""
        t = spec.table
        table_id = p.loadURDF(
            str(data_path() / t.urdf),
            [t.xy_m[0], t.xy_m[1], 0.0],
            p.getQuaternionFromEuler([0, 0, np.radians(t.yaw_deg)]),
            useFixedBase=True,
            physicsClientId=self.client,
        )
        v, f = self._world_mesh(table_id)
        # table_from_world: origin at the top centre, z up, x along the table's length
        self.world_from_table = transform_from_rt(
            _rot_z(np.radians(t.yaw_deg)), np.array([t.xy_m[0], t.xy_m[1], v[:, 2].max()])
        )
        # the table's mask id is N+1 once all N objects are in (table_instance_id)
        self.table = Body(-1, "table", t.caption, (), t.urdf, "table", table_id, v, f)
        # top extent in the table frame (the top is the widest part)
        local = (v - self.world_from_table[:3, 3]) @ self.world_from_table[:3, :3]
        self.table_half_extent = np.abs(local[:, :2]).max(axis=0)

    def close(self) -> None:
        if self.client is not None:
            self._p.disconnect(self.client)
            self.client = None

    def __enter__(self) -> TabletopWorld:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def table_instance_id(self) -> int:
        """Mask id of the table: right after the objects (1..N)."""
        return len(self.bodies) + 1

    @property
    def table_top_z(self) -> float:
        return float(self.world_from_table[2, 3])

    def _world_mesh(self, body_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The body's visual meshes in world (base link only: catalogue objects are single links)."""
        p = self._p
        pos, orn = p.getBasePositionAndOrientation(body_id, physicsClientId=self.client)
        world_from_com = matrix_from_pose(pos, orn)
        dyn = p.getDynamicsInfo(body_id, -1, physicsClientId=self.client)
        link_from_com = matrix_from_pose(dyn[3], dyn[4])
        world_from_link = world_from_com @ invert(link_from_com)
        parts = []
        for vis in p.getVisualShapeData(body_id, physicsClientId=self.client):
            if vis[1] != -1:
                raise SimError(f"body {body_id}: multi-link URDFs are not supported by the ground truth")
            mesh_file = vis[4].decode() if isinstance(vis[4], bytes) else vis[4]
            if vis[2] != p.GEOM_MESH or not mesh_file.endswith(".obj"):
                raise SimError(f"body {body_id}: only OBJ visual meshes are supported, got {mesh_file!r}")
            link_from_visual = matrix_from_pose(vis[5], vis[6])
            parts.append(placed_mesh(mesh_file, np.asarray(vis[3]), world_from_link @ link_from_visual))
        if not parts:
            raise SimError(f"body {body_id} has no visual mesh")
        return merge_meshes(parts)

    def add_object(self, obj: ObjectSpec, xy_table: np.ndarray, yaw_rad: float) -> Body:
        """Load an object and rest its visual mesh box on the table top, footprint centred at
        xy_table (table frame)."""
        p = self._p
        entry = CATALOG.get(obj.model or obj.name, {})
        urdf, world_R = self._placed_rotation(obj, yaw_rad)
        quat = quat_xyzw_from_matrix(world_R).tolist()
        body_id = p.loadURDF(
            urdf,
            [0, 0, 5.0],
            quat,
            globalScaling=float(obj.scale),
            physicsClientId=self.client,
        )
        v, _ = self._world_mesh(body_id)
        # box in the table frame: centre its footprint on xy_table, its bottom on the top
        R_table, t_table = self.world_from_table[:3, :3], self.world_from_table[:3, 3]
        local = (v - t_table) @ R_table
        box_c = (local.min(axis=0) + local.max(axis=0)) / 2
        shift = R_table @ np.array([xy_table[0] - box_c[0], xy_table[1] - box_c[1], -local[:, 2].min()])
        pos, orn = p.getBasePositionAndOrientation(body_id, physicsClientId=self.client)
        p.resetBasePositionAndOrientation(body_id, np.asarray(pos) + shift, orn, physicsClientId=self.client)
        rgba = obj.rgba if obj.rgba is not None else entry.get("rgba")
        if rgba is not None:
            p.changeVisualShape(body_id, -1, rgbaColor=list(rgba), physicsClientId=self.client)
        v, f = self._world_mesh(body_id)
        body = Body(
            len(self.bodies) + 1,
            obj.name,
            obj.caption,
            tuple(obj.synonyms),
            obj.urdf or CATALOG[obj.model or obj.name]["urdf"],
            obj.model or obj.name,
            body_id,
            v,
            f,
        )
        self.bodies.append(body)
        self.placements.append((obj, np.asarray(xy_table, np.float64).copy(), float(yaw_rad)))
        return body

    def _placed_rotation(self, obj: ObjectSpec, yaw_rad: float) -> tuple[str, np.ndarray]:
        """(URDF path, world rotation [3,3]) of an object placed upright at this yaw on the table.

        An off-balance model (the scale-2 teddy) gets the rotation it comes to rest in, not the one
        it would stand in for an instant before tipping over in physics (m3_core.sim.settle)."""
        entry = CATALOG.get(obj.model or obj.name, {})
        rpy = obj.upright_rpy_deg or entry.get("upright_rpy_deg", (0.0, 0.0, 0.0))
        R = _rot_z(yaw_rad) @ _rot_rpy(np.radians(rpy))
        urdf = resolve_urdf(obj)
        return urdf, rest_rotation(urdf, float(obj.scale), self.world_from_table[:3, :3] @ R)

    def footprint(self, obj: ObjectSpec, yaw_rad: float) -> np.ndarray:
        """Half extent (x, y) in the table frame of an object's box at this yaw, without keeping it."""
        p = self._p
        urdf, world_R = self._placed_rotation(obj, yaw_rad)
        body_id = p.loadURDF(
            urdf,
            [0, 0, 5.0],
            quat_xyzw_from_matrix(self.world_from_table[:3, :3].T @ world_R).tolist(),
            globalScaling=float(obj.scale),
            physicsClientId=self.client,
        )
        try:
            v, _ = self._world_mesh(body_id)
        finally:
            p.removeBody(body_id, physicsClientId=self.client)
        return (v[:, :2].max(axis=0) - v[:, :2].min(axis=0)) / 2

    def _add_floor(self) -> None:
        """A plain 6 m x 6 m floor (the textured 200 m plane.urdf costs ~3x more render time), made
        after everything else: TinyRenderer draws bodies in order, and a floor drawn first was shaded
        under the whole table and every object again (a scan frame: 152 -> 115 ms, same pixels)."""
        p = self._p
        floor = p.createVisualShape(
            p.GEOM_BOX,
            halfExtents=[3.0, 3.0, 0.005],
            rgbaColor=list(self.spec.table.floor_rgba),
            physicsClientId=self.client,
        )
        self.floor_id = p.createMultiBody(
            baseMass=0, baseVisualShapeIndex=floor, basePosition=[0, 0, -0.005], physicsClientId=self.client
        )

    def render(
        self, world_from_camera: np.ndarray, camera: PinholeCamera
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Render at an OpenCV camera pose (world_from_camera [4,4]).

        Returns rgb [H,W,3] uint8, depth_m [H,W] float32 z-depth in metres (0 = nothing or beyond
        max_depth_m) and instance ids [H,W] uint16: objects 1..N in spec order, the table N+1,
        floor and sky 0.
        """
        p = self._p
        cam = self.spec.camera
        if self.floor_id is None:
            self._add_floor()
        V = _GL_FROM_CV @ invert(world_from_camera)
        render_camera = PinholeCamera(
            camera.fx,
            camera.fy,
            camera.cx,
            camera.cy + _TINY_RENDERER_ROW_OFFSET,
            camera.width,
            camera.height,
        )
        P = projection_from_camera(render_camera, cam.near_m, cam.far_m)
        _, _, rgba, zbuf, seg = p.getCameraImage(
            camera.width,
            camera.height,
            viewMatrix=V.T.reshape(-1).tolist(),
            projectionMatrix=P.T.reshape(-1).tolist(),
            renderer=p.ER_TINY_RENDERER,
            shadow=int(cam.shadows),
            lightDirection=[0.4, -0.6, 1.0],
            lightColor=[1.0, 1.0, 1.0],
            lightAmbientCoeff=0.55,
            lightDiffuseCoeff=0.45,
            lightSpecularCoeff=0.05,
            physicsClientId=self.client,
        )
        H, W = camera.height, camera.width
        rgb = np.asarray(rgba, np.uint8).reshape(H, W, 4)[:, :, :3].copy()
        d = np.asarray(zbuf, np.float64).reshape(H, W)
        near, far = cam.near_m, cam.far_m
        z = far * near / (far - (far - near) * d)
        z[(d >= 1.0) | (z > cam.max_depth_m)] = 0.0
        seg = np.asarray(seg, np.int64).reshape(H, W)
        ids = np.zeros((H, W), np.uint16)
        for body in self.bodies:
            ids[seg == body.body_id] = body.instance_id
        ids[seg == self.table.body_id] = self.table_instance_id
        return rgb, z.astype(np.float32), ids


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_rpy(rpy: np.ndarray) -> np.ndarray:
    return Rotation.from_euler("xyz", rpy).as_matrix()


