"""Shared body of the launch files: nodes of config/demo_graph.yaml groups as launch_ros Nodes."""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from m3_ros.graph import graph_arguments, load_group


def describe(groups: list[str]) -> LaunchDescription:
    defaults = graph_arguments()

    def nodes(context, *args, **kwargs):
        values = {k: LaunchConfiguration(k).perform(context) for k in defaults}
        actions = []
        seen = set()
        for group in groups:
            for spec in load_group(group, values):
                if spec.name in seen:  # e.g. the pose chain appears in capture and query
                    continue
                seen.add(spec.name)
                actions.append(
                    Node(
                        package="m3_grasp",
                        executable=spec.executable,
                        name=spec.name,
                        parameters=[spec.parameters],
                        arguments=list(spec.arguments),
                        output="screen",
                    )
                )
        return actions

    declared = [DeclareLaunchArgument(k, default_value=v) for k, v in defaults.items()]
    return LaunchDescription([*declared, OpaqueFunction(function=nodes)])
