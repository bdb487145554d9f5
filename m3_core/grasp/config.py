"""Hyperparameters of the grasp planner (one frozen dataclass; the gripper itself is in m3_core.robot)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GraspPlannerConfig:
    """How the planner samples, filters and ranks parallel-jaw grasps on a point cloud."""

    seed: int = 0
    """Seed of the planner's random generator: the same input gives the same grasps."""
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    """World up (REP 105 odom frame: +z); grasps must not approach against it from below the support."""

    # Point clouds
    object_voxel_m: float = 0.004
    """Voxel size the object's points are thinned to before sampling and collision checks, metres."""
    scene_voxel_m: float = 0.005
    """Voxel size the scene's points are thinned to; keep it below the finger thickness, metres."""
    max_object_points: int = 2048
    """At most this many object points after thinning (a random subset beyond that)."""
    normal_neighbours: int = 16
    """Neighbours in the local PCA that estimates a surface normal."""

    # Sampling
    num_seeds: int = 192
    """Object points from which an antipodal partner is searched along the inward normal."""
    ray_neighbours: int = 4
    """Nearest object points looked up at each step of a seed's ray (its partner candidates)."""
    friction_cone_deg: float = 25.0
    """Half-angle of the friction cone: a contact normal within it of the closing axis holds (mu ~ 0.47)."""
    num_approaches: int = 8
    """Approach directions per antipodal pair, evenly spaced about the closing axis (one is the most top-down)."""
    depth_offsets_m: tuple[float, ...] = (-0.01, 0.0, 0.01, 0.02)
    """Grasp origin moved back along -z by these from the contacts' midpoint (negative: deeper), metres."""
    top_down_heights: tuple[float, ...] = (0.5, 0.75)
    """Top-down candidates at these fractions of the object's height above its support (and at the
    lowest height whose fingertips clear the support)."""
    top_down_yaws: int = 24
    """Closing directions of the top-down candidates, evenly spaced over 180 degrees."""

    # Filters
    opening_clearance_m: float = 0.005
    """Free space left on each side of the object inside the open fingers, at least, metres."""
    approach_clearance_m: float = 0.015
    """Free space left on each side when the gripper's opening and the scene allow it (checked for
    collisions at that opening; else `opening_clearance_m`): a memory places an object's sides up to
    ~1.5 cm off (a blurred edge, a side it saw poorly), and a finger then lands on the object on its
    way down, metres."""
    collision_margin_m: float = 0.003
    """Gripper boxes are inflated by this for collision tests (covers gaps between sparse points), metres."""
    support_clearance_m: float = 0.003
    """The gripper must stay this far above the support plane, plus the support's noise allowance, metres."""
    support_noise_sigmas: float = 3.0
    """Noise allowance above the support plane, in standard deviations of its points' heights."""
    support_ring_m: float = 0.05
    """The support's height is read from scene points within this of the object's footprint, metres."""
    support_band_m: float = 0.02
    """... and within this of the object's lowest points' height, metres."""
    support_min_points: int = 30
    """Fewer such scene points: the object's lowest points are the support (no table in view)."""
    max_upward_approach_deg: float = 5.0
    """Approaches may point at most this far above horizontal (none come from below the support)."""
    min_points_between_fingers: int = 5
    """Object points that must lie in the closing region between the fingers."""
    extent_trim_fraction: float = 0.03
    """Fraction of the points between the fingers ignored at each end when measuring the object's width:
    depth noise and Gaussians spread a surface over millimetres, which would otherwise widen the grasp."""
    object_noise_m: float = 0.003
    """Object points up to this far past a finger's inner face are noise at the object's edges, not a
    collision (the fingers close onto the object anyway), metres."""
    min_contact_depth_m: float = 0.01
    """Each finger's contact points must span this much along the approach (the fingers' length):
    fingers that only graze the object's top edge slip off it, metres."""
    contact_band_m: float = 0.006
    """Object points within this of a finger's side of the closing region count as its contacts, metres."""
    hanging_lever_m: float = 0.08
    """A grasp farther than this from the object's centre (horizontally) holds an object that hangs
    from the fingers (a tray by its side): the grip must resist the
    weight's torque with the finger pads flat on the section, so its closing axis must follow the
    section's plane (`hanging_alignment_deg`). In physics a tray's 33-degree flared side held in all
    15 grasps closed along its normal and in none of 24 closed horizontally on the same spots, metres."""
    hanging_alignment_deg: float = 25.0
    """Largest angle between such a grasp's closing axis and the normal of the section it closes on
    (`section_plane_cos`), degrees."""
    section_half_width_m: float = 0.02
    """Half width (across the closing line, along the fingers' width) of the section whose plane is
    fitted, metres."""
    check_approach_sweep: bool = True
    """Also reject grasps whose fingers or palm hit something on the straight path from the pre-grasp."""

    # Ranking
    max_evaluated: int = 1024
    """At most this many candidates (best prior score first) go through the collision check (512 left
    the mug's rim grasps, ranked low by the prior's centring, unchecked in 5 of 12 built-in queries)."""
    batch_size: int = 64
    """Candidates checked per vectorised batch."""
    workers: int = 2
    """Threads checking batches side by side (1: in the calling thread; 0: one per CPU core). The
    result is the same for any number (batches are taken in order and the check stops at the same
    one). Only the batches' array loops release the GIL: on the machines measured 2 threads cut the
    mean planning time by 10-25 % (the median by -8 to +21 %), and 8 on a 16-core host made the
    found-path query's planning 30 % slower than one thread (BENCHMARKS.md, session 14)."""
    device: str | None = None
    """Where the candidates are checked. None: numpy on the host, `batch_size` at a time until
    `enough_feasible` are found (on `workers` threads). A torch device ("cuda", "cuda:1", "cpu"):
    every candidate at once as batched float64 torch (`m3_core.grasp.device_filters`), then cut
    where the host path would have stopped, so the grasps are the same as the host path's up to
    rounding. Meant for a GPU: one query's checks are then ~100 kernel launches instead of
    thousands of numpy calls."""
    device_chunk: int = 1024
    """Candidates checked per torch call on `device` (memory: ~chunk x scene points x 200 bytes)."""
    top_k: int = 10
    """Grasps returned at most (after near-duplicate suppression)."""
    enough_feasible: int = 96
    """Stop checking more candidates once this many feasible grasps were found. The prior cannot know
    a candidate's width (nor so its spare opening): stopping early (24) kept a body grasp at the full
    opening and never reached the narrow handle or rim grasps ranked below it."""
    nms_distance_m: float = 0.01
    """A grasp within this distance of a better one ..."""
    nms_angle_deg: float = 20.0
    """... and within this rotation of it is a near-duplicate and dropped."""
    clearance_saturation_m: float = 0.02
    """Clearance from the scene (table, neighbours) beyond this earns no more score, metres."""
    weight_antipodal: float = 0.35
    """Weight of the contacts' alignment with the closing axis."""
    weight_centring: float = 0.2
    """Weight of the closing axis passing near the object's centre (a proxy for its centre of mass)."""
    weight_top_down: float = 0.2
    """Weight of approaching from above."""
    weight_toward_robot: float = 0.1
    """Weight of approaching away from the arm base, as a reaching arm would (unused without a base)."""
    weight_clearance: float = 0.15
    """Weight of the gripper's clearance from the scene."""
    weight_spare_opening: float = 0.2
    """Weight of the opening left over beyond the grasp's width (see `spare_opening_saturation_m`)."""
    spare_opening_saturation_m: float = 0.03
    """Opening left over beyond the grasp's width that earns the full spare-opening score, metres."""
    weight_approach_room: float = 0.15
    """Weight of the room each finger has beside the object on the way down: half of the opening it
    approaches with minus the object's measured extent, full score at `approach_clearance_m`. A
    grasp that can only come down with `opening_clearance_m` to spare (across a tray's thin wall,
    where a wider opening meets the tray's floor) misses when the memory places the object a few
    millimetres off: on the built-in tray such a rim grasp ranked first and held nothing, the next
    three held."""

    def __post_init__(self) -> None:
        positive = ("object_voxel_m", "scene_voxel_m", "max_object_points", "normal_neighbours",
                    "num_seeds", "ray_neighbours", "num_approaches", "top_down_yaws", "batch_size", "top_k", "max_evaluated",
                    "device_chunk")
        bad = [name for name in positive if getattr(self, name) <= 0]
        if bad:
            raise ValueError(f"GraspPlannerConfig: {', '.join(bad)} must be > 0")
        if self.workers < 0:
            raise ValueError(f"GraspPlannerConfig: workers must be >= 0, got {self.workers}")
        if self.approach_clearance_m < self.opening_clearance_m:
            raise ValueError("approach_clearance_m must be >= opening_clearance_m")
        if not 0.0 < self.friction_cone_deg < 90.0:
            raise ValueError(f"friction_cone_deg must be in (0, 90), got {self.friction_cone_deg}")
        if len(self.up) != 3 or abs(sum(u * u for u in self.up) - 1.0) > 1e-6:
            raise ValueError(f"up must be a unit 3-vector, got {self.up}")
