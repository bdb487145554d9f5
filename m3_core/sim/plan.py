"""Planning before rendering: object placement on the table and the robot's centripetal scan.

Everything here runs before a byte is written, so a bad spec (object off the table, pose out of
the arm's reach, camera looking at nothing) fails with a clear message and leaves no output.

The scan follows the real robot's kinematics (paper eq. 3): the B1 body walks an arc around the
table facing it (world_from_lidar, what LiDAR odometry reports), the Z1 arm holds the wrist camera
on a look-at point while sweeping it (armbase_from_ee = inv(world_from_lidar @ lidar_from_armbase)
@ world_from_camera @ inv(ee_from_camera)), and the rendered camera pose is then recomposed through
the chain, exactly as the pose-chain node will compose it from the bag.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m3_core.geometry.camera import PinholeCamera
from m3_core.geometry.chain import ArmChainExtrinsics
from m3_core.geometry.se3 import invert, transform_points
from m3_core.sim.spec import SimSpec, TrajectorySpec
from m3_core.sim.world import SimError, TabletopWorld


class SpecError(SimError, ValueError):
    """A spec that cannot be realised (geometry): raised before anything is written."""


def place_objects(spec: SimSpec, world: TabletopWorld, rng: np.random.Generator) -> None:
    """Add the spec's objects to the world, fixed or at random non-overlapping spots on the table."""
    half = world.table_half_extent - spec.table.margin_m
    region = np.asarray(spec.table.random_region_m, np.float64)
    if region.shape != (4,):
        raise SpecError(f"table.random_region_m must be [xmin, xmax, ymin, ymax], got {region.tolist()}")
    placed: list[tuple[np.ndarray, np.ndarray]] = []  # (centre xy, half extent xy) in the table frame
    names: list[str] = []
    for obj in spec.objects:
        yaw = np.radians(obj.yaw_deg) if obj.yaw_deg is not None else float(rng.uniform(0, 2 * np.pi))
        foot = world.footprint(obj, yaw)
        if obj.xy_m is not None:
            xy = np.asarray(obj.xy_m, np.float64)
            if np.any(np.abs(xy) + foot > half):
                raise SpecError(
                    f"object {obj.name!r} at xy_m={xy.tolist()} (footprint half extent "
                    f"{np.round(foot, 3).tolist()} m) is off the table: the top spans "
                    f"±{np.round(world.table_half_extent, 3).tolist()} m with a {spec.table.margin_m} m "
                    "margin; move it closer to the centre"
                )
            for (c, h), other in zip(placed, names):
                if np.all(np.abs(xy - c) < foot + h):
                    raise SpecError(
                        f"objects {other!r} and {obj.name!r} overlap on the table (footprints "
                        f"{np.round(c, 3).tolist()}±{np.round(h, 3).tolist()} and "
                        f"{np.round(xy, 3).tolist()}±{np.round(foot, 3).tolist()} m); move one of them"
                    )
        else:
            lo = np.maximum(region[[0, 2]], -half + foot)
            hi = np.minimum(region[[1, 3]], half - foot)
            if np.any(lo > hi):
                raise SpecError(
                    f"object {obj.name!r} does not fit in table.random_region_m {region.tolist()}; "
                    "enlarge the region or scale the object down"
                )
            for _ in range(500):
                xy = rng.uniform(lo, hi)
                if all(np.any(np.abs(xy - c) >= foot + h + spec.table.min_gap_m) for c, h in placed):
                    break
            else:
                raise SpecError(
                    f"could not place {obj.name!r} without overlapping others in {region.tolist()}; "
                    "enlarge table.random_region_m or give fixed xy_m"
                )
        placed.append((xy, foot))
        names.append(obj.name)
        world.add_object(obj, xy, yaw)


@dataclass(frozen=True)
class ScanPoses:
    """True poses at times t_s (seconds from the scan start)."""

    t_s: np.ndarray  # [N]
    world_from_lidar: np.ndarray  # [N,4,4] B1 body (LiDAR frame) in odom
    armbase_from_ee: np.ndarray  # [N,4,4] Z1 flange in the arm base frame
    world_from_camera: np.ndarray  # [N,4,4] optical frame in odom, composed through the chain


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV camera pose (z forward, x right, y down) at eye looking at target, no roll."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    if np.linalg.norm(x) < 1e-6:
        raise SpecError(
            "the camera looks straight down; lower trajectory.camera_height_m or widen the radius"
        )
    x = x / np.linalg.norm(x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, np.cross(z, x), z, eye
    return T


def scan_poses(
    traj: TrajectorySpec, world_from_table: np.ndarray, extrinsics: ArmChainExtrinsics, t_s: np.ndarray
) -> ScanPoses:
    """Body, arm and camera poses of the centripetal scan at times t_s."""
    t_s = np.asarray(t_s, np.float64)
    T = traj.duration_s
    s = 0.5 - 0.5 * np.cos(np.pi * np.clip(t_s / T, 0.0, 1.0))  # eased start and stop
    target = transform_points(world_from_table, np.asarray(traj.target_xyz_m, np.float64)[None])[0]
    table_yaw = np.arctan2(world_from_table[1, 0], world_from_table[0, 0])
    a0, a1 = np.radians(traj.body_arc_deg[0]), np.radians(traj.body_arc_deg[1])
    body_az = table_yaw + a0 + (a1 - a0) * s
    phase = 2 * np.pi * traj.sweep_cycles * t_s / T
    cam_az = body_az + np.radians(traj.sweep_deg) * np.sin(phase)
    cam_z = world_from_table[2, 3] + traj.camera_height_m + traj.height_sweep_m * np.sin(1.5 * phase + 0.7)
    n = len(t_s)
    wl, ae, wc = np.zeros((n, 4, 4)), np.zeros((n, 4, 4)), np.zeros((n, 4, 4))
    camera_from_ee = invert(extrinsics.ee_from_camera)
    for i in range(n):
        yaw = body_az[i] + np.pi  # the body faces the target
        c, si = np.cos(yaw), np.sin(yaw)
        body = np.eye(4)
        body[:3, :3] = [[c, -si, 0], [si, c, 0], [0, 0, 1]]
        body[:3, 3] = [
            target[0] + traj.body_radius_m * np.cos(body_az[i]),
            target[1] + traj.body_radius_m * np.sin(body_az[i]),
            traj.body_height_m,
        ]
        eye = np.array(
            [
                target[0] + traj.camera_radius_m * np.cos(cam_az[i]),
                target[1] + traj.camera_radius_m * np.sin(cam_az[i]),
                cam_z[i],
            ]
        )
        wanted = _look_at(eye, target)
        armbase_from_ee = invert(body @ extrinsics.lidar_from_armbase) @ wanted @ camera_from_ee
        wl[i], ae[i] = body, armbase_from_ee
        wc[i] = extrinsics.world_from_camera(body, armbase_from_ee)  # the chain, as nodes compose it
    return ScanPoses(t_s, wl, ae, wc)


def check_reach(traj: TrajectorySpec, poses: ScanPoses) -> None:
    """Every arm pose within the Z1's reach (distance arm base -> flange)."""
    dist = np.linalg.norm(poses.armbase_from_ee[:, :3, 3], axis=1)
    bad = np.nonzero((dist > traj.arm_reach_m) | (dist < traj.arm_min_reach_m))[0]
    if len(bad):
        i = bad[0]
        raise SpecError(
            f"unreachable arm pose at t={poses.t_s[i]:.2f} s ({len(bad)} of {len(dist)} poses): the flange "
            f"would be {dist[i]:.3f} m from the arm base, the Z1 reaches {traj.arm_min_reach_m}-"
            f"{traj.arm_reach_m} m; bring trajectory.body_radius_m and camera_radius_m closer together, "
            "or lower camera_height_m"
        )


def check_views(world: TabletopWorld, poses: ScanPoses, camera: PinholeCamera) -> None:
    """Every camera frame sees at least one object's box centre in the image, in front of the camera."""
    centres = np.stack([b.box_center for b in world.bodies])
    for i, wc in enumerate(poses.world_from_camera):
        pc = transform_points(invert(wc), centres)
        uv, z = camera.project(pc)
        ok = (
            (z > 0.05)
            & (uv[:, 0] >= 0)
            & (uv[:, 0] < camera.width)
            & (uv[:, 1] >= 0)
            & (uv[:, 1] < camera.height)
        )
        if not ok.any():
            raise SpecError(
                f"the camera looks at nothing at t={poses.t_s[i]:.2f} s (frame {i}): no object is in view; "
                "point trajectory.target_xyz_m at the objects or move them"
            )
