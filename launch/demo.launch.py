"""A recorded or simulated scan from a bag: replay + pose chain + capture -> a scene directory.

    ros2 launch m3_grasp demo.launch.py bag:=/tmp/sim_bag scene_dir:=/tmp/sim_scene [rate:=2.0]

Starts `m3_replay_node`, `m3_pose_chain_node` and `m3_capture_node` (`ros2 run m3_grasp
<executable>`), groups "replay" and "capture" of config/demo_graph.yaml (the same description
`m3 ros-demo replay capture` starts). `bag` is required. `--show-args` lists the arguments.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _graph_launch import describe  # noqa: E402


def generate_launch_description():
    return describe(["replay", "capture"])
