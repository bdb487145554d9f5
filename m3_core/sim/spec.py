"""The scene spec: what `m3 sim` builds, read from YAML (config/sim_default.yaml), no code per scene.

A spec names objects from the catalogue below (any pybullet_data URDF via `urdf:` too), with
captions and synonyms, fixed or random placement on the table, the robot's scan trajectory, the
camera and the publishing rates. `load_spec` reads and checks the structure; geometric checks
(objects on the table, reachable arm poses, a camera that sees the table) run in `m3_core.sim.plan`
before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from m3_core.config import from_dict, read_yaml

# Objects the simulator knows by name: pybullet_data URDF, the rotation (roll, pitch, yaw in
# degrees, applied before the spec's yaw) that stands the mesh upright, and a default colour
# (None keeps the URDF's texture/colour).
CATALOG: dict[str, dict] = {
    "duck": {"urdf": "duck_vhacd.urdf", "upright_rpy_deg": (90.0, 0.0, 0.0), "rgba": None},
    "teddy": {"urdf": "teddy_vhacd.urdf", "upright_rpy_deg": (90.0, 0.0, 0.0), "rgba": None},
    # pybullet_data's mug collides as a solid cylinder; "hollow" rebuilds it as the cup it looks
    # like (m3_core/sim/collision.py): 2.1 mm wall and 9 mm floor, as its visual mesh
    "mug": {
        "urdf": "objects/mug.urdf",
        "upright_rpy_deg": (0.0, 0.0, 0.0),
        "rgba": None,
        "hollow": {"part": "mug_col_Cylinder.003", "wall_m": 0.0021, "bottom_m": 0.009},
    },
    "lego": {"urdf": "lego/lego.urdf", "upright_rpy_deg": (0.0, 0.0, 0.0), "rgba": None},
    "tray": {"urdf": "tray/traybox.urdf", "upright_rpy_deg": (0.0, 0.0, 0.0), "rgba": None},
    "jenga": {"urdf": "jenga/jenga.urdf", "upright_rpy_deg": (0.0, 0.0, 0.0), "rgba": None},
    "domino": {"urdf": "domino/domino.urdf", "upright_rpy_deg": (0.0, 0.0, 0.0), "rgba": None},
    "soccerball": {"urdf": "soccerball.urdf", "upright_rpy_deg": (0.0, 0.0, 0.0), "rgba": None},
    "sphere": {"urdf": "sphere_small.urdf", "upright_rpy_deg": (0.0, 0.0, 0.0), "rgba": None},
    "cube": {"urdf": "cube_small.urdf", "upright_rpy_deg": (0.0, 0.0, 0.0), "rgba": None},
}


@dataclass(frozen=True)
class ObjectSpec:
    """One object on the table."""

    name: str = ""
    """Unique instance name (ground truth key), e.g. "duck"."""
    model: str = ""
    """Catalogue entry (see CATALOG); empty means the same as `name`."""
    urdf: str = ""
    """A pybullet_data-relative or absolute URDF path instead of a catalogue model."""
    caption: str = ""
    """Short description as a person would say it ("a yellow rubber duck")."""
    synonyms: tuple[str, ...] = ()
    """Other ways to ask for it, for retrieval accuracy benchmarks."""
    rgba: tuple[float, ...] | None = None
    """Colour override (r, g, b, a in 0..1); None keeps the model's own colour/texture."""
    scale: float = 1.0
    """Uniform scale applied on top of the URDF's mesh scale."""
    xy_m: tuple[float, ...] | None = None
    """Footprint centre on the table top, in the table frame (metres); None = random placement."""
    yaw_deg: float | None = None
    """Rotation about the vertical; None = random."""
    upright_rpy_deg: tuple[float, ...] | None = None
    """Override the catalogue's rotation that stands the mesh upright (roll, pitch, yaw in degrees)."""


@dataclass(frozen=True)
class TableSpec:
    """The support surface (pybullet_data table/table.urdf: 1.5 x 1.0 m, top at z = 0.625)."""

    urdf: str = "table/table.urdf"
    """Table URDF."""
    xy_m: tuple[float, ...] = (0.0, 0.0)
    """Table position in the world (odom) frame."""
    yaw_deg: float = 0.0
    """Table rotation about the vertical."""
    caption: str = "a wooden table"
    """Caption of the table region in the instance masks."""
    margin_m: float = 0.03
    """Objects must keep this distance from the table edge."""
    min_gap_m: float = 0.02
    """Random placement keeps footprints this far apart."""
    random_region_m: tuple[float, ...] = (-0.25, 0.25, -0.2, 0.2)
    """Random placement region on the table top (xmin, xmax, ymin, ymax in the table frame)."""
    floor_rgba: tuple[float, ...] = (0.55, 0.56, 0.6, 1.0)
    """Colour of the 6 m x 6 m floor around the table (r, g, b, a)."""


@dataclass(frozen=True)
class CameraSpec:
    """The wrist RealSense (D405-like) colour camera; depth is aligned to it."""

    width: int = 640
    """Image width (pixels)."""
    height: int = 480
    """Image height (pixels)."""
    fx: float = 385.0
    """Focal length x (pixels, at width x height)."""
    fy: float = 385.0
    """Focal length y (pixels)."""
    cx: float = 319.5
    """Principal point x (pixels, OpenCV pixel-centre convention)."""
    cy: float = 239.5
    """Principal point y (pixels)."""
    rate_hz: float = 15.0
    """Camera frame rate."""
    near_m: float = 0.05
    """Renderer near plane."""
    far_m: float = 4.0
    """Renderer far plane."""
    max_depth_m: float = 3.0
    """Depth beyond this is reported invalid (0), as a D405 does at range."""
    shadows: bool = True
    """Render shadows (more realistic, slower)."""


@dataclass(frozen=True)
class TrajectorySpec:
    """A centripetal scan: the body walks an arc around the table while the arm keeps the wrist
    camera on a look-at point and sweeps it side to side and up and down."""

    duration_s: float = 20.0
    """Scan length in seconds."""
    target_xyz_m: tuple[float, ...] = (0.0, 0.0, 0.04)
    """Look-at point in the table frame (z above the table top)."""
    body_radius_m: float = 1.0
    """Horizontal distance lidar_link -> target."""
    body_height_m: float = 0.72
    """lidar_link height above the floor (B1 standing, LiDAR on the back)."""
    body_arc_deg: tuple[float, ...] = (-120.0, -60.0)
    """Body azimuth around the target (table frame, 0 = +x), start and end."""
    camera_radius_m: float = 0.42
    """Horizontal distance camera -> target."""
    camera_height_m: float = 0.38
    """Camera height above the table top."""
    sweep_deg: float = 18.0
    """Side-to-side amplitude of the camera azimuth around the body's azimuth."""
    sweep_cycles: float = 2.0
    """Number of side-to-side cycles over the scan."""
    height_sweep_m: float = 0.06
    """Up-and-down amplitude of the camera height."""
    arm_reach_m: float = 0.72
    """Z1 reach: largest arm_base -> ee_link distance that counts as reachable."""
    arm_min_reach_m: float = 0.15
    """Smallest arm_base -> ee_link distance (closer collides with the arm's own base)."""


@dataclass(frozen=True)
class RealismSpec:
    """Sensor and estimation imperfections; all off by default so ground truth is exact."""

    depth_noise: bool = False
    """D405-like depth noise: Gaussian with sigma = depth_noise_k * z^2, plus edge dropouts."""
    depth_noise_k: float = 0.002
    """Depth noise coefficient (1/m): sigma_m = k * z_m^2 (0.5 mm at 0.5 m)."""
    edge_dropout: float = 0.5
    """Probability that a pixel at a depth discontinuity (> 2 cm jump) reads 0."""
    odometry_drift: bool = False
    """Odometry follows a random walk away from the true body pose."""
    drift_m_per_sqrt_s: float = 0.004
    """Position random-walk density of the drift (m / sqrt(s))."""
    drift_deg_per_sqrt_s: float = 0.05
    """Yaw random-walk density of the drift (deg / sqrt(s))."""
    stamp_jitter: bool = False
    """Camera header stamps deviate from the true capture time."""
    stamp_jitter_ms: float = 2.0
    """Standard deviation of the camera stamp jitter (milliseconds)."""


@dataclass(frozen=True)
class SimSpec:
    """A whole scene: table, objects, camera, trajectory, rates, realism, seed."""

    seed: int = 0
    """Random seed (placement, noise); the same seed gives the same bag."""
    start_time_s: float = 1_700_000_000.0
    """Bag start time (ROS time, seconds) so stamps are deterministic."""
    robot_config: str = "robot_b1z1.yaml"
    """Topics, frames and extrinsics (relative to the spec's folder, or absolute)."""
    published_robot_config: str = ""
    """Robot YAML whose extrinsics the bag's /tf_static carries, i.e. what the robot believes (e.g. a
    hand-eye that is off, to test `m3 calibrate`); empty: robot_config, the extrinsics rendered with."""
    odometry_rate_hz: float = 30.0
    """nav_msgs/Odometry rate (a multiple of the camera rate gives exact chain look-ups)."""
    ee_pose_rate_hz: float = 30.0
    """End-effector PoseStamped rate."""
    frames: int | None = None
    """Camera frame count; when set the scan lasts frames / camera.rate_hz seconds (same path,
    other speed), overriding trajectory.duration_s."""
    table: TableSpec = field(default_factory=TableSpec)
    """The table."""
    objects: tuple[ObjectSpec, ...] = ()
    """The objects on the table."""
    camera: CameraSpec = field(default_factory=CameraSpec)
    """The wrist camera."""
    trajectory: TrajectorySpec = field(default_factory=TrajectorySpec)
    """The scan."""
    realism: RealismSpec = field(default_factory=RealismSpec)
    """Noise options (off by default)."""


def resolved(spec: SimSpec) -> SimSpec:
    """The spec with `frames` folded into trajectory.duration_s (what the planner reads)."""
    if spec.frames is None:
        return spec
    if int(spec.frames) < 1:
        raise ValueError(f"frames must be >= 1, got {spec.frames}")
    duration_s = int(spec.frames) / spec.camera.rate_hz
    return replace(spec, frames=None, trajectory=replace(spec.trajectory, duration_s=duration_s))


def spec_from_dict(data: dict, where: str = "sim spec") -> SimSpec:
    """Build a SimSpec from a mapping; objects are a list of mappings."""
    data = dict(data)
    objects = data.pop("objects", []) or []
    if not isinstance(objects, list):
        raise ValueError(f"{where}: 'objects' must be a list of mappings, got {type(objects).__name__}")
    spec = from_dict(SimSpec, data, where)
    objs = []
    for i, od in enumerate(objects):
        if not isinstance(od, dict):
            raise ValueError(f"{where}: objects[{i}] must be a mapping, got {od!r}")
        objs.append(from_dict(ObjectSpec, od, f"{where}.objects[{i}]"))
    return replace(spec, objects=tuple(objs))


def load_spec(path: Path | str) -> tuple[SimSpec, Path]:
    """(spec, folder the spec lives in) from a YAML file."""
    path = Path(path)
    return spec_from_dict(read_yaml(path), where=str(path)), path.resolve().parent


def check_spec(spec: SimSpec) -> None:
    """Structural checks with a how-to-fix message; geometry is checked by the planner."""
    if not spec.objects:
        raise ValueError("the spec has no objects; add at least one under 'objects:'")
    names = [o.name for o in spec.objects]
    if any(not n for n in names):
        raise ValueError("every object needs a 'name:'")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"object names must be unique, repeated: {dup}")
    for o in spec.objects:
        _check_object(o)
    _check_camera_and_motion(spec)


def _check_object(o: ObjectSpec) -> None:
    if not o.urdf and (o.model or o.name) not in CATALOG:
        raise ValueError(
            f"unknown object {o.model or o.name!r} (object {o.name!r}); known models: "
            f"{sorted(CATALOG)}, or give 'urdf:' with a pybullet_data URDF path"
        )
    if not o.caption:
        raise ValueError(f"object {o.name!r} needs a caption (e.g. 'a yellow rubber duck')")
    if o.xy_m is not None and len(o.xy_m) != 2:
        raise ValueError(f"object {o.name!r}: xy_m must be [x, y], got {list(o.xy_m)}")
    if o.rgba is not None and len(o.rgba) != 4:
        raise ValueError(f"object {o.name!r}: rgba must have 4 values, got {list(o.rgba)}")
    if not o.scale > 0:
        raise ValueError(f"object {o.name!r}: scale must be > 0, got {o.scale}")


def _check_camera_and_motion(spec: SimSpec) -> None:
    cam = spec.camera
    if cam.width < 16 or cam.height < 16:
        raise ValueError(f"camera size {cam.width}x{cam.height} is too small (>= 16x16)")
    if not (0 < cam.near_m < cam.max_depth_m <= cam.far_m):
        raise ValueError("camera needs 0 < near_m < max_depth_m <= far_m")
    if not cam.rate_hz > 0 or not spec.odometry_rate_hz > 0 or not spec.ee_pose_rate_hz > 0:
        raise ValueError("rates must be > 0 Hz")
    if not spec.trajectory.duration_s > 0:
        raise ValueError(f"trajectory.duration_s must be > 0, got {spec.trajectory.duration_s}")
    if len(spec.trajectory.body_arc_deg) != 2 or len(spec.trajectory.target_xyz_m) != 3:
        raise ValueError("trajectory.body_arc_deg needs [start, end], target_xyz_m needs [x, y, z]")
