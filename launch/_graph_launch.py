"""Shared body of the launch files: the nodes of config/demo_graph.yaml groups as launch_ros Nodes.

Each file declares only the arguments its groups use, each with its description (`ros2 launch
m3_grasp <file> --show-args`); a required argument has no default, so launch stops before any node
starts when it is missing. Parameter values are passed with their declared type
(ParameterValue(value_type=...)): launch_ros would otherwise read `scene_dir:=20250101` as a number.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription
from m3_ros.graph import NodeSpec, group_arguments, load_group
from m3_ros.params import node_param


def typed_parameters(spec: NodeSpec) -> dict[str, ParameterValue]:
    """The spec's parameters, each wrapped with the ROS type its node declares."""
    return {
        name: ParameterValue(value, value_type=node_param(spec.module, name).type.python_type)
        for name, value in spec.parameters.items()
    }


def describe(groups: list[str]) -> LaunchDescription:
    arguments = group_arguments(groups)

    def nodes(context, *args, **kwargs):
        values = {a.name: LaunchConfiguration(a.name).perform(context) for a in arguments}
        actions = []
        seen = set()
        for group in groups:
            for spec in load_group(group, values):  # ValueError (one line) for an empty required one
                if spec.name in seen:  # e.g. the pose chain appears in capture and query
                    continue
                seen.add(spec.name)
                actions.append(
                    Node(
                        package="m3_grasp",
                        executable=spec.executable,
                        name=spec.name,
                        parameters=[typed_parameters(spec)],
                        arguments=list(spec.arguments),
                        output="screen",
                    )
                )
        return actions

    declared = [
        DeclareLaunchArgument(a.name, description=a.description)
        if a.required
        else DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
        for a in arguments
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=nodes)])
