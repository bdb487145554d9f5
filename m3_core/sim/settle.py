"""The orientation an object comes to rest in when set down on a flat table.

`TabletopWorld` places objects by their visual mesh box, upright as the catalogue says, without
physics. For most models that is a resting pose, but not for all: the built-in scene's teddy
(scale 2) stands off balance and, once the physics check lets gravity act, tips over by up to 8 cm
of its surface. The renders (and so the memory) would then show a teddy where the physics has none.
`rest_rotation` drops the object alone on a flat plane in a private pybullet world and returns the
rotation it settles in, so renders, ground truth and physics all start from the same resting pose.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.spatial.transform import Rotation

REST_TOLERANCE_DEG = 1.0
"""Objects that turn less than this while settling keep their placed rotation: a stable model's
scene stays exactly as before (only off-balance ones are re-posed)."""


def rest_rotation(
    urdf: str,
    scale: float,
    world_R: np.ndarray,
    *,
    friction: float = 1.0,
    static_mass_kg: float = 0.3,
    settle_s: float = 1.5,
    time_step_s: float = 1.0 / 240.0,
) -> np.ndarray:
    """World rotation [3,3] in which the object (URDF, uniform scale) rests on a flat horizontal plane
    when set down with rotation `world_R` (its lowest point on the plane); `world_R` itself when
    it turns less than REST_TOLERANCE_DEG. Friction and the mass given to static (mass 0) models are
    those of the physics check (m3_core.sim.grasp_check). Deterministic: cached per input."""
    key = tuple(np.round(np.asarray(world_R, np.float64), 9).reshape(-1))
    quat = _settled_quat(urdf, float(scale), key, friction, static_mass_kg, settle_s, time_step_s)
    settled = Rotation.from_quat(quat).as_matrix()
    turned = Rotation.from_matrix(settled @ np.asarray(world_R).T).magnitude()
    return np.asarray(world_R, np.float64) if np.degrees(turned) < REST_TOLERANCE_DEG else settled


@lru_cache(maxsize=64)
def _settled_quat(
    urdf: str,
    scale: float,
    R_key: tuple,
    friction: float,
    static_mass_kg: float,
    settle_s: float,
    time_step_s: float,
) -> tuple[float, ...]:
    import pybullet as p  # local: heavy simulator, only when an object is placed

    client = p.connect(p.DIRECT)
    try:
        c = dict(physicsClientId=client)
        p.setGravity(0, 0, -9.81, **c)
        p.setPhysicsEngineParameter(fixedTimeStep=time_step_s, numSubSteps=2, numSolverIterations=50, **c)
        plane = p.createCollisionShape(p.GEOM_BOX, halfExtents=[2.0, 2.0, 0.05], **c)
        plane_id = p.createMultiBody(
            baseMass=0, baseCollisionShapeIndex=plane, basePosition=[0, 0, -0.05], **c
        )
        p.changeDynamics(plane_id, -1, lateralFriction=friction, **c)
        R = np.asarray(R_key, np.float64).reshape(3, 3)
        body = p.loadURDF(
            urdf, [0, 0, 1.0], Rotation.from_matrix(R).as_quat().tolist(), globalScaling=scale, **c
        )
        lo, _ = p.getAABB(body, -1, **c)
        pos, orn = p.getBasePositionAndOrientation(body, **c)
        p.resetBasePositionAndOrientation(body, [pos[0], pos[1], pos[2] - lo[2] + 1e-4], orn, **c)
        if p.getDynamicsInfo(body, -1, **c)[0] <= 0:
            p.changeDynamics(body, -1, mass=static_mass_kg, **c)
        p.changeDynamics(body, -1, lateralFriction=friction, **c)
        for _ in range(int(round(settle_s / time_step_s))):
            p.stepSimulation(**c)
        # the base pose is the inertial frame's: undo its rotation in the link to get the link's
        com_R = Rotation.from_quat(p.getBasePositionAndOrientation(body, **c)[1])
        link_from_com = Rotation.from_quat(p.getDynamicsInfo(body, -1, **c)[4])
        return tuple((com_R * link_from_com.inv()).as_quat())
    finally:
        p.disconnect(client)
