"""Does a grasp hold? Execute a `Grasp` with a free-floating parallel-jaw gripper in pybullet physics.

The planner sees only the memory; this check sees the simulator's ground truth: the same URDFs,
scales and placements as the `m3 sim` scene (TabletopWorld + place_objects with the spec's seed),
with gravity, the table as a fixed body and a collision floor. The gripper is built from the robot
YAML's `gripper:` section (m3_core.robot.GripperConfig): a palm box and two finger boxes on
prismatic joints, in the grasp frame (+z approach, +x closing, origin between the fingertips'
centres). A fixed constraint with a force limit moves the palm; the fingers run under position
control with the gripper's force cap.

Sequence: settle the scene; teleport the open gripper (grasp width + margin) to the pre-grasp pose
(refused if it touches anything there); approach along +z to the grasp pose; close; lift 10 cm;
hold 1 s. Success: an object rose >= 5 cm and is still between the fingers; `GraspOutcome.held`
names it, so a grasp that holds the wrong object is visible as such.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np

from m3_core.geometry.camera import PinholeCamera
from m3_core.geometry.se3 import invert, matrix_from_pose, pose_from_matrix, transform_from_rt
from m3_core.grasp.types import Grasp
from m3_core.robot import GripperConfig
from m3_core.sim.plan import place_objects
from m3_core.sim.spec import SimSpec, resolved
from m3_core.sim.world import TabletopWorld

log = logging.getLogger(__name__)

FLOOR = "floor"
TABLE = "table"


@dataclass(frozen=True)
class GraspCheckConfig:
    """Physics and protocol of the grasp check (times in seconds, distances in metres)."""

    time_step_s: float = 1.0 / 240.0
    """Physics step; each step is split into `substeps` (thin objects need small steps)."""
    substeps: int = 2
    """Solver substeps per physics step (4 lifts ~1 cm higher, at twice the time)."""
    solver_iterations: int = 50
    """Constraint solver iterations per substep."""
    friction: float = 1.0
    """Lateral friction of the fingers and of every object (rubber-padded fingers)."""
    spinning_friction: float = 0.002
    """Torsional friction at finger contacts (a finger pad resists twisting a little), N m per N."""
    static_mass_kg: float = 0.3
    """Mass given to objects whose URDF says 0 (pybullet's 'static'), so they can be lifted."""
    settle_s: float = 0.5
    """Let the scene come to rest under gravity before the gripper appears."""
    open_margin_m: float = 0.01
    """Extra opening beyond the grasp width at the pre-grasp pose and during the approach."""
    approach_speed_m_s: float = 0.10
    """Palm speed from the pre-grasp to the grasp pose."""
    close_s: float = 0.8
    """Time given to the fingers to close."""
    finger_speed_m_s: float = 0.08
    """Closing speed of each finger."""
    lift_m: float = 0.10
    """Lift along world +z after closing."""
    lift_speed_m_s: float = 0.10
    """Lift speed."""
    hold_s: float = 1.0
    """Hold the object up this long before judging."""
    min_lift_m: float = 0.05
    """An object counts as lifted when its centre of mass rose this much."""
    move_force_n: float = 150.0
    """Force limit of the constraint that moves the palm (a real arm cannot push through a table)."""
    palm_mass_kg: float = 0.4
    """Palm mass."""
    finger_mass_kg: float = 0.05
    """Mass of each finger."""
    reach_tolerance_m: float = 0.01
    """The approach is blocked when the palm ends farther than this from the grasp pose."""
    contact_distance_m: float = 0.004
    """A finger 'touches' an object within this distance."""


@dataclass(frozen=True)
class GraspOutcome:
    """What happened when a grasp was executed in physics."""

    success: bool
    """An object was lifted and held (the target, when one was named)."""
    held: str | None
    """Name of the object held between the fingers after the hold, or None."""
    target: str | None
    """The object the grasp was meant for (None: any object counts)."""
    lift_m: float
    """Rise of the held object (else of the target, else the largest rise), metres."""
    reason: str
    """Failure code: '' on success, else one of too_wide, too_narrow, start_collision, blocked,
    nothing_held, dropped, not_clear (rose but still rests on the table), wrong_object."""
    message: str
    """One line a person can read."""
    lifts_m: dict[str, float] = field(default_factory=dict)
    """Rise of every object's centre of mass, metres."""
    finger_gap_m: float = 0.0
    """Gap between the fingers' inner faces at the end, metres."""
    touching_at_start: tuple[str, ...] = ()
    """What the gripper touched at the pre-grasp pose (start_collision)."""

    def to_json(self) -> dict:
        return {
            "success": self.success,
            "held": self.held,
            "target": self.target,
            "lift_m": round(self.lift_m, 4),
            "reason": self.reason,
            "message": self.message,
            "lifts_m": {k: round(v, 4) for k, v in self.lifts_m.items()},
            "finger_gap_m": round(self.finger_gap_m, 4),
            "touching_at_start": list(self.touching_at_start),
        }


@dataclass
class _Gripper:
    body_id: int
    constraint_id: int


class GraspSim:
    """The ground-truth scene of a sim spec as a physics world; `check` executes one grasp.

    Each `check` starts from the same settled scene (pybullet state saved after settling).
    """

    def __init__(
        self, spec: SimSpec, gripper: GripperConfig | None = None, config: GraspCheckConfig | None = None
    ) -> None:
        import pybullet as p  # local: heavy simulator, only when a world is built

        self._p = p
        self.gripper = gripper or GripperConfig()
        self.config = config or GraspCheckConfig()
        self.spec = resolved(spec)
        self.world = TabletopWorld(self.spec)
        try:
            place_objects(self.spec, self.world, np.random.default_rng(self.spec.seed))
            self._make_physical()
            self._state = p.saveState(physicsClientId=self.client)
            self.rest_z = {b.name: self._com(b.body_id)[2] for b in self.world.bodies}
            # meshes where the objects came to rest (an object placed off balance, like the teddy,
            # tips over a little: grasps from ground truth should use these, not body.vertices)
            self.rest_vertices = {b.name: self.world._world_mesh(b.body_id)[0] for b in self.world.bodies}
        except Exception:
            self.world.close()
            raise
        self._last: _Gripper | None = None
        self.picture_camera: PinholeCamera | None = None
        """Set it to get `snapshots` (side views after closing and after the hold) from `check`."""
        self.snapshots: dict[str, np.ndarray] = {}

    @property
    def client(self) -> int:
        return self.world.client

    def close(self) -> None:
        self.world.close()

    def __enter__(self) -> GraspSim:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def names(self) -> list[str]:
        return [b.name for b in self.world.bodies]

    def _make_physical(self) -> None:
        """Gravity, a collision floor, friction and masses; then let the objects settle."""
        p, c, cfg = self._p, self.client, self.config
        p.setGravity(0, 0, -9.81, physicsClientId=c)
        p.setPhysicsEngineParameter(
            fixedTimeStep=cfg.time_step_s,
            numSubSteps=cfg.substeps,
            numSolverIterations=cfg.solver_iterations,
            physicsClientId=c,
        )
        # the world's floor is drawn only; give it a collision box so dropped objects stop on it
        floor = p.createCollisionShape(p.GEOM_BOX, halfExtents=[3.0, 3.0, 0.005], physicsClientId=c)
        self.floor_collision_id = p.createMultiBody(
            baseMass=0, baseCollisionShapeIndex=floor, basePosition=[0, 0, -0.005], physicsClientId=c
        )
        for body in self.world.bodies:
            mass = p.getDynamicsInfo(body.body_id, -1, physicsClientId=c)[0]
            if mass <= 0:
                log.info("%s has mass 0 in its URDF (static); using %.2f kg", body.name, cfg.static_mass_kg)
                p.changeDynamics(body.body_id, -1, mass=cfg.static_mass_kg, physicsClientId=c)
            p.changeDynamics(body.body_id, -1, lateralFriction=cfg.friction, physicsClientId=c)
        before = {b.name: self._com(b.body_id) for b in self.world.bodies}
        self._step(cfg.settle_s)
        for b in self.world.bodies:
            moved = float(np.linalg.norm(self._com(b.body_id) - before[b.name]))
            if moved > 0.01:
                log.warning("%s moved %.1f cm while settling on the table", b.name, moved * 100)

    def _com(self, body_id: int) -> np.ndarray:
        pos, _ = self._p.getBasePositionAndOrientation(body_id, physicsClientId=self.client)
        return np.asarray(pos, np.float64)

    def _step(self, seconds: float, each=None) -> None:
        n = max(1, int(round(seconds / self.config.time_step_s)))
        for i in range(n):
            if each is not None:
                each((i + 1) / n)
            self._p.stepSimulation(physicsClientId=self.client)

    def _name_of(self, body_id: int) -> str:
        for b in self.world.bodies:
            if b.body_id == body_id:
                return b.name
        if body_id == self.world.table.body_id:
            return TABLE
        if body_id == self.floor_collision_id:
            return FLOOR
        return f"body {body_id}"

    # -- the protocol ------------------------------------------------------------------------------

    def check(self, grasp: Grasp, target: str | None = None) -> GraspOutcome:
        """Execute `grasp` (world frame of the scene) from the settled scene; judge the result."""
        if target is not None and target not in self.names():
            raise ValueError(f"target {target!r} is not in the scene; objects: {self.names()}")
        refused = self._refusal(grasp, target)
        if refused is not None:
            return refused
        self._remove_gripper()
        self._p.restoreState(self._state, physicsClientId=self.client)
        self.snapshots.clear()
        opening = min(grasp.width_m + self.config.open_margin_m, self.gripper.max_opening_m)
        self._last = gripper = self._add_gripper(grasp.world_from_pregrasp, opening)
        self._snapshot("pre-grasp", grasp.world_from_grasp)
        touching = self._touching(gripper.body_id)
        if touching:
            return self._outcome(
                target,
                "start_collision",
                f"the gripper touches {', '.join(touching)} at the pre-grasp pose",
                touching=touching,
            )
        self._move(gripper, grasp.world_from_pregrasp, grasp.world_from_grasp, self.config.approach_speed_m_s)
        error = self._pose_error(gripper, grasp.world_from_grasp)
        if error > self.config.reach_tolerance_m:
            self._snapshot("blocked", grasp.world_from_grasp)
            hit = self._touching(gripper.body_id, self.config.contact_distance_m)
            return self._outcome(
                target,
                "blocked",
                f"the approach stopped {error * 100:.1f} cm short of the grasp pose"
                + (f" (touching {', '.join(hit)})" if hit else ""),
            )
        self._set_fingers(gripper, -0.01)  # below zero: squeeze with the force cap until blocked
        self._step(self.config.close_s)
        self._snapshot("closed", grasp.world_from_grasp)
        lifted = grasp.world_from_grasp.copy()
        lifted[2, 3] += self.config.lift_m
        self._move(gripper, grasp.world_from_grasp, lifted, self.config.lift_speed_m_s)
        self._step(self.config.hold_s)
        self._snapshot("held", lifted)
        return self._judge(gripper, target)

    def _snapshot(self, phase: str, world_from_grasp: np.ndarray) -> None:
        if self.picture_camera is not None:
            eye_from_grasp = snapshot_view(world_from_grasp)
            rgb, _, _ = self.world.render(eye_from_grasp, self.picture_camera)
            self.snapshots[phase] = rgb

    def _refusal(self, grasp: Grasp, target: str | None) -> GraspOutcome | None:
        g = self.gripper
        if grasp.width_m > g.max_opening_m + 1e-9:
            return self._outcome(
                target,
                "too_wide",
                f"the grasp needs a {grasp.width_m * 100:.1f} cm opening; the gripper opens "
                f"{g.max_opening_m * 100:.1f} cm",
                run=False,
            )
        if grasp.width_m < g.min_opening_m:
            return self._outcome(
                target,
                "too_narrow",
                f"the grasp width {grasp.width_m * 1000:.1f} mm is below the gripper's minimum "
                f"{g.min_opening_m * 1000:.1f} mm",
                run=False,
            )
        return None

    def _judge(self, gripper: _Gripper, target: str | None) -> GraspOutcome:
        lifts = self._lifts()
        between = [n for n in self.names() if self._between_fingers(gripper.body_id, n)]
        held_candidates = [n for n in between if lifts[n] >= self.config.min_lift_m]
        held = max(held_candidates, key=lambda n: lifts[n]) if held_candidates else None
        if held is not None and self._on_support(held):
            return self._outcome(
                target,
                "not_clear",
                f"{held} rose {lifts[held] * 100:.1f} cm but still rests on the table or floor",
            )
        if held is not None and (target is None or held == target):
            return self._outcome(target, "", f"{held} lifted {lifts[held] * 100:.1f} cm and held", held=held)
        if held is not None:
            return self._outcome(target, "wrong_object", f"held {held}, not {target}", held=held)
        risen = [n for n in self.names() if lifts[n] >= self.config.min_lift_m]
        if risen:
            return self._outcome(target, "dropped", f"{', '.join(risen)} rose but is not between the fingers")
        return self._outcome(target, "nothing_held", "no object rose 5 cm between the fingers")

    def _outcome(
        self,
        target: str | None,
        reason: str,
        message: str,
        *,
        held: str | None = None,
        touching: tuple[str, ...] = (),
        run: bool = True,
    ) -> GraspOutcome:
        lifts = self._lifts() if run else {}
        ref = held or target
        lift = lifts.get(ref, max(lifts.values(), default=0.0)) if lifts else 0.0
        gap = self._finger_gap() if run and self._last is not None else 0.0
        return GraspOutcome(
            success=reason == "",
            held=held,
            target=target,
            lift_m=float(lift),
            reason=reason,
            message=message,
            lifts_m=lifts,
            finger_gap_m=gap,
            touching_at_start=touching,
        )

    def _lifts(self) -> dict[str, float]:
        return {b.name: float(self._com(b.body_id)[2] - self.rest_z[b.name]) for b in self.world.bodies}

    # -- the gripper ---------------------------------------------------------------------------------

    def _add_gripper(self, world_from_pose: np.ndarray, opening_m: float) -> _Gripper:
        """Palm + two prismatic fingers, base frame = grasp frame, held by a fixed constraint."""
        p, c, g, cfg = self._p, self.client, self.gripper, self.config
        palm_half = [g.palm_width_m / 2, g.palm_height_m / 2, g.palm_depth_m / 2]
        palm_at = [0.0, 0.0, -g.tcp_depth_m - g.palm_depth_m / 2]
        finger_half = [g.finger_thickness_m / 2, g.finger_width_m / 2, g.finger_length_m / 2]
        finger_z = -g.tcp_depth_m + g.finger_length_m / 2
        shape = dict(physicsClientId=c)
        palm_col = p.createCollisionShape(
            p.GEOM_BOX, halfExtents=palm_half, collisionFramePosition=palm_at, **shape
        )
        palm_vis = p.createVisualShape(
            p.GEOM_BOX,
            halfExtents=palm_half,
            visualFramePosition=palm_at,
            rgbaColor=[0.25, 0.25, 0.28, 1],
            **shape,
        )
        finger_col = p.createCollisionShape(p.GEOM_BOX, halfExtents=finger_half, **shape)
        finger_vis = p.createVisualShape(
            p.GEOM_BOX, halfExtents=finger_half, rgbaColor=[0.85, 0.85, 0.9, 1], **shape
        )
        pos, quat = pose_from_matrix(world_from_pose)
        # finger link frames sit at the finger centres; joint value q = half the opening
        t = g.finger_thickness_m / 2
        body = p.createMultiBody(
            baseMass=cfg.palm_mass_kg,
            baseCollisionShapeIndex=palm_col,
            baseVisualShapeIndex=palm_vis,
            basePosition=pos.tolist(),
            baseOrientation=quat.tolist(),
            linkMasses=[cfg.finger_mass_kg] * 2,
            linkCollisionShapeIndices=[finger_col] * 2,
            linkVisualShapeIndices=[finger_vis] * 2,
            linkPositions=[[-t, 0, finger_z], [t, 0, finger_z]],
            linkOrientations=[[0, 0, 0, 1]] * 2,
            linkInertialFramePositions=[[0, 0, 0]] * 2,
            linkInertialFrameOrientations=[[0, 0, 0, 1]] * 2,
            linkParentIndices=[0, 0],
            linkJointTypes=[p.JOINT_PRISMATIC] * 2,
            linkJointAxis=[[-1, 0, 0], [1, 0, 0]],
            **shape,
        )
        # the fingers slide along the palm's face: no contacts inside the gripper
        for a, b in ((-1, 0), (-1, 1), (0, 1)):
            p.setCollisionFilterPair(body, body, a, b, 0, **shape)
        for j in (0, 1):
            p.resetJointState(body, j, opening_m / 2, **shape)
            p.changeDynamics(
                body, j, lateralFriction=cfg.friction, spinningFriction=cfg.spinning_friction, **shape
            )
        constraint = p.createConstraint(
            body,
            -1,
            -1,
            -1,
            p.JOINT_FIXED,
            [0, 0, 0],
            [0, 0, 0],
            pos.tolist(),
            childFrameOrientation=quat.tolist(),
            **shape,
        )
        gripper = _Gripper(body, constraint)
        self._hold_pose(gripper, world_from_pose)
        self._set_fingers(gripper, opening_m / 2)
        return gripper

    def _remove_gripper(self) -> None:
        if self._last is not None:
            self._p.removeConstraint(self._last.constraint_id, physicsClientId=self.client)
            self._p.removeBody(self._last.body_id, physicsClientId=self.client)
            self._last = None

    def _hold_pose(self, gripper: _Gripper, world_from_pose: np.ndarray) -> None:
        pos, quat = pose_from_matrix(world_from_pose)
        self._p.changeConstraint(
            gripper.constraint_id,
            jointChildPivot=pos.tolist(),
            jointChildFrameOrientation=quat.tolist(),
            maxForce=self.config.move_force_n,
            physicsClientId=self.client,
        )

    def _set_fingers(self, gripper: _Gripper, half_opening_m: float) -> None:
        for j in (0, 1):
            self._p.setJointMotorControl2(
                gripper.body_id,
                j,
                self._p.POSITION_CONTROL,
                targetPosition=half_opening_m,
                force=self.gripper.max_force_n,
                maxVelocity=self.config.finger_speed_m_s,
                physicsClientId=self.client,
            )

    def _move(self, gripper: _Gripper, start: np.ndarray, end: np.ndarray, speed_m_s: float) -> None:
        """Move the constraint target along a straight line (orientation of `end`), then settle."""
        distance = float(np.linalg.norm(end[:3, 3] - start[:3, 3]))
        duration = max(distance / speed_m_s, self.config.time_step_s)

        def at(s: float) -> None:
            pose = end.copy()
            pose[:3, 3] = (1 - s) * start[:3, 3] + s * end[:3, 3]
            self._hold_pose(gripper, pose)

        self._step(duration, at)
        self._step(0.2)  # let the palm catch up with the target

    def _pose_error(self, gripper: _Gripper, world_from_pose: np.ndarray) -> float:
        return float(np.linalg.norm(self._com(gripper.body_id) - world_from_pose[:3, 3]))

    def _touching(self, body_id: int, distance_m: float = 0.0) -> tuple[str, ...]:
        """Names of what the body touches (closest points within distance_m; 0 = penetrating)."""
        p, c = self._p, self.client
        p.performCollisionDetection(physicsClientId=c)
        others = [b.body_id for b in self.world.bodies] + [self.world.table.body_id, self.floor_collision_id]
        hits = []
        for other in others:
            if p.getClosestPoints(body_id, other, distance_m, physicsClientId=c):
                hits.append(self._name_of(other))
        return tuple(hits)

    def _between_fingers(self, gripper_id: int, name: str) -> bool:
        """Both fingers touch the object, or its centre lies inside the gap between them."""
        p, c, d = self._p, self.client, self.config.contact_distance_m
        body_id = next(b.body_id for b in self.world.bodies if b.name == name)
        left = p.getClosestPoints(gripper_id, body_id, d, linkIndexA=0, physicsClientId=c)
        right = p.getClosestPoints(gripper_id, body_id, d, linkIndexA=1, physicsClientId=c)
        if left and right:
            return True
        return self._inside_gap(gripper_id, body_id)

    def _on_support(self, name: str) -> bool:
        """The object still touches the table or the floor (tilted up, not lifted clear)."""
        p, c = self._p, self.client
        body_id = next(b.body_id for b in self.world.bodies if b.name == name)
        supports = (self.world.table.body_id, self.floor_collision_id)
        return any(p.getClosestPoints(body_id, s, 0.001, physicsClientId=c) for s in supports)

    def _inside_gap(self, gripper_id: int, body_id: int) -> bool:
        p, c, g = self._p, self.client, self.gripper
        pos, quat = p.getBasePositionAndOrientation(gripper_id, physicsClientId=c)
        grasp_from_world = invert(matrix_from_pose(np.asarray(pos), np.asarray(quat)))
        centre = grasp_from_world[:3, :3] @ self._com(body_id) + grasp_from_world[:3, 3]
        z_lo, z_hi = -g.tcp_depth_m, -g.tcp_depth_m + g.finger_length_m
        return bool(
            abs(centre[0]) < self._finger_gap() / 2 + 1e-3
            and abs(centre[1]) < g.finger_width_m / 2
            and z_lo <= centre[2] <= z_hi
        )

    def _finger_gap(self) -> float:
        if self._last is None:
            return 0.0
        q = [self._p.getJointState(self._last.body_id, j, physicsClientId=self.client)[0] for j in (0, 1)]
        return float(sum(q))


# -- pictures ----------------------------------------------------------------------------------------


def snapshot_view(
    world_from_grasp: np.ndarray, distance_m: float = 0.42, elevation_deg: float = 35.0
) -> np.ndarray:
    """world_from_camera (OpenCV axes) looking down at the grasp across the fingers (along the
    grasp's y axis made horizontal, from the world's -y side), so both fingers and the object show."""
    up = np.array([0.0, 0.0, 1.0])
    side = world_from_grasp[:3, 1] - (world_from_grasp[:3, 1] @ up) * up
    if np.linalg.norm(side) < 1e-3:  # side grasp closing vertically: look across +x instead
        side = np.cross(world_from_grasp[:3, 0], up)
    side /= np.linalg.norm(side)
    if side[1] < 0:  # look from the -y side of the table, where the robot stands
        side = -side
    target = world_from_grasp[:3, 3] + np.array([0.0, 0.0, 0.03])
    elevation = np.radians(elevation_deg)
    eye = target - distance_m * np.cos(elevation) * side + distance_m * np.sin(elevation) * up
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    return transform_from_rt(np.stack([x, np.cross(z, x), z], axis=1), eye)


def picture_camera(width: int = 400, height: int = 300) -> PinholeCamera:
    """Camera of the snapshots (about 64 degrees wide)."""
    return PinholeCamera(0.78 * width, 0.78 * width, (width - 1) / 2, (height - 1) / 2, width, height)


def grasp_picture(snapshots: dict[str, np.ndarray], outcome: GraspOutcome) -> np.ndarray:
    """The snapshots side by side, each labelled, with the verdict underneath ([H,W,3] uint8 RGB)."""

    panels = []
    for phase, rgb in snapshots.items():
        panel = np.ascontiguousarray(rgb)
        cv2.putText(panel, phase, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 2, cv2.LINE_AA)
        panels.append(panel)
    if not panels:
        panels = [np.full((300, 400, 3), 255, np.uint8)]
    image = np.concatenate(panels, axis=1)
    banner = np.full((34, image.shape[1], 3), 255, np.uint8)
    colour = (0, 140, 0) if outcome.success else (200, 0, 0)
    verdict = ("HELD: " if outcome.success else f"FAILED ({outcome.reason}): ") + outcome.message
    cv2.putText(banner, verdict[:110], (8, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.55, colour, 1, cv2.LINE_AA)
    return np.concatenate([image, banner], axis=0)
