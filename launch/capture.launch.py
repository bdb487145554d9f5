"""Scan: pose chain + capture node -> a keyframed scene directory (camera, odometry, arm pose live).

    ros2 launch m3_grasp capture.launch.py scene_dir:=~/scans/table1 [robot_config:=~/robot.yaml]
    ros2 service call /m3_capture/save std_srvs/srv/Trigger      # save now (also saved on Ctrl-C)
    ros2 service call /m3_capture/finish std_srvs/srv/Trigger    # the scan is over: decide the last frames, save

Starts `m3_pose_chain_node` and `m3_capture_node` (`ros2 run m3_grasp <executable>`), as the group
"capture" of config/demo_graph.yaml describes them (the same description `m3 ros-demo capture`
starts). `--show-args` lists the arguments.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _graph_launch import describe  # noqa: E402


def generate_launch_description():
    return describe(["capture"])
