"""Answer text queries: pose chain + query node (/m3/query service, RViz clouds and markers).

    ros2 launch m3_grasp query.launch.py memory:=~/memories/table1 [device:=cuda]
    ros2 service call /m3/query m3_grasp/srv/Query "{text: 'yellow bath duck'}"
    rviz2 -d $(ros2 pkg prefix m3_grasp)/share/m3_grasp/config/m3_demo.rviz

Starts `m3_pose_chain_node` and `m3_query_node` (`ros2 run m3_grasp <executable>`), group "query"
of config/demo_graph.yaml (the same description `m3 ros-demo query` starts). `memory` is required.
`--show-args` lists the arguments.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _graph_launch import describe  # noqa: E402


def generate_launch_description():
    return describe(["query"])
