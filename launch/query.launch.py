"""ros2 launch m3_grasp query.launch.py [arg:=value ...]: nodes of config/demo_graph.yaml group(s) ["query"].

Arguments and node parameters are declared in config/demo_graph.yaml (the same description
`m3 ros-demo` starts), e.g. robot_config:=/path/robot.yaml scene_dir:=~/scans/table1.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _graph_launch import describe  # noqa: E402


def generate_launch_description():
    return describe(["query"])
