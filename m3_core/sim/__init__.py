"""The built-in robot scene: a simulated B1+Z1 tabletop scan written as a ROS 2 bag (`m3 sim`).

generate(spec, ...) -> bag + `<bag>_gt/` ground truth; write_scene_masks(scene_dir, gt_dir) gives a
scene made from that bag its instance masks and captions. pybullet is imported only when a world
is built.
"""

from m3_core.sim.generate import SimResult, config_dir, generate, gt_dir_for, with_overrides
from m3_core.sim.gt import read_cameras, read_mask, read_meshes, read_objects, write_scene_masks
from m3_core.sim.spec import SimSpec, load_spec

__all__ = [
    "SimResult",
    "SimSpec",
    "config_dir",
    "generate",
    "gt_dir_for",
    "load_spec",
    "read_cameras",
    "read_mask",
    "read_meshes",
    "read_objects",
    "with_overrides",
    "write_scene_masks",
]
