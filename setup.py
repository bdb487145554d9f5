"""Python packaging for the virtual-environment route (`pip install -e .`).

On a ROS 2 workspace, colcon builds CMakeLists.txt (ament_cmake), which installs the same
Python packages with ament_cmake_python and generates the m3_grasp interfaces.
"""

from setuptools import find_packages, setup

setup(
    name="m3-grasp-python",  # not "m3-grasp": that is the ROS package (rosidl egg-info)
    version="0.1.0",
    description="M3 3D-spatial multimodal memory for language-driven grasping (ROS 2)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["m3_core", "m3_core.*", "m3_ros", "m3_ros.*"]),
    package_data={"m3_core": ["py.typed"]},
    entry_points={
        "console_scripts": [
            "m3 = m3_ros.cli:main",
            "m3_capture_node = m3_ros.capture_node:main",
            "m3_pose_chain_node = m3_ros.pose_chain_node:main",
            "m3_query_node = m3_ros.query_node:main",
            "m3_replay_node = m3_ros.replay_cli:main",
        ],
    },
)
