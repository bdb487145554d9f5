"""Pose-chain node: body odometry + arm end-effector pose -> /tf and world<-camera (paper eq. 3).

For robots without a URDF and robot_state_publisher. Publishes
- /tf: world->lidar from each nav_msgs/Odometry, arm_base->ee from each geometry_msgs/PoseStamped;
- /tf_static (parameter publish_static): the YAML's mount and hand-eye extrinsics, latched; leave it
  off when the robot or the bag already publishes them;
- the camera_pose topic: world_from_camera composed with m3_core.capture.PoseChain at each ee stamp,
  once odometry has reached that stamp.

    ros2 run m3_grasp m3_pose_chain_node --ros-args -p publish_static:=true -p robot_config:=~/robot.yaml

Parameters: m3_ros.params.POSE_CHAIN_PARAMS.
"""

from __future__ import annotations

import sys

from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from tf2_msgs.msg import TFMessage

from m3_core.capture.pose_chain import PoseChain, StampedTransform
from m3_core.errors import StaleStampError, TransformError
from m3_core.robot import load_robot_config
from m3_ros.conversions import (
    matrix_from_odometry_msg,
    matrix_from_pose_msg,
    pose_msg_from_matrix,
    stamp_ns_from_msg,
    transform_msg_from_matrix,
)
from m3_ros.drops import DropCounter
from m3_ros.params import POSE_CHAIN_PARAMS, declare_parameters
from m3_ros.ready import ReadinessReporter
from m3_ros.spin import spin_node


class PoseChainNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("m3_pose_chain", **kwargs)
        p = declare_parameters(self, POSE_CHAIN_PARAMS)
        robot = load_robot_config(p["robot_config"])
        self.robot = robot
        self.chain = PoseChain(robot)
        odom_topic = p["odometry_topic"] or robot.topics.odometry
        ee_topic = p["ee_pose_topic"] or robot.topics.ee_pose
        camera_topic = p["camera_pose_topic"] or robot.topics.camera_pose
        self.input_topics = (odom_topic, ee_topic)

        reliability = ReliabilityPolicy.RELIABLE if p["reliable_inputs"] else ReliabilityPolicy.BEST_EFFORT
        # deep queues: a lost odometry or ee sample moves interpolated camera poses by millimetres,
        # and on a loaded host a 100-deep queue overflowed at a 2x replay (120 messages/s)
        in_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=reliability)
        out_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE
        )
        static_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.tf_pub = self.create_publisher(TFMessage, "/tf", out_qos)
        self.camera_pub = self.create_publisher(PoseStamped, camera_topic, out_qos)
        if p["publish_static"]:
            self.static_pub = self.create_publisher(TFMessage, "/tf_static", static_qos)
            self.static_pub.publish(
                TFMessage(
                    transforms=[transform_msg_from_matrix(T, a, b) for a, b, T in robot.static_transforms()]
                )
            )
        inputs = [
            self.create_subscription(Odometry, odom_topic, self._on_odometry, in_qos),
            self.create_subscription(PoseStamped, ee_topic, self._on_ee_pose, in_qos),
        ]
        self.readiness = ReadinessReporter(self, inputs, outputs=[self.tf_pub], stats=self._progress)
        self.drops = DropCounter(self.get_logger())
        self.get_logger().info(
            f"{odom_topic} + {ee_topic} -> /tf{' + /tf_static' if p['publish_static'] else ''} and {camera_topic}"
        )

    def _progress(self) -> dict:
        """What the node reports on /m3/node_status under "stats": messages refused by the clock
        check (stamp_outlier, clock_jump) and malformed ones, per reason / topic."""
        return {
            "dropped": dict(self.chain.dropped),
            "clock_jumps": self.chain.clock.jumps,
            "malformed": dict(self.drops.counts),
        }

    def _publish(self, tf: StampedTransform, poses: list) -> None:
        self.tf_pub.publish(
            TFMessage(
                transforms=[transform_msg_from_matrix(tf.parent_from_child, tf.parent, tf.child, tf.stamp_ns)]
            )
        )
        for stamp_ns, world_from_camera in poses:
            self.camera_pub.publish(
                pose_msg_from_matrix(world_from_camera, stamp_ns, self.robot.frames.world)
            )

    def _on_odometry(self, msg: Odometry) -> None:
        try:
            world_from_lidar, parent, child, stamp_ns = matrix_from_odometry_msg(msg)
        except ValueError as err:  # zero quaternion, NaN: drop it, count it, keep running
            self.drops.drop(self.input_topics[0], err)
            return
        try:
            tf = self.chain.odometry_transform(parent, child, world_from_lidar, stamp_ns)
            self._publish(tf, self.chain.add_odometry(tf))
        except (ValueError, TransformError, StaleStampError) as err:
            self.get_logger().warning(f"odometry ignored: {err}", throttle_duration_sec=5.0)

    def _on_ee_pose(self, msg: PoseStamped) -> None:
        try:
            armbase_from_ee = matrix_from_pose_msg(msg)
        except ValueError as err:
            self.drops.drop(self.input_topics[1], err)
            return
        try:
            tf = self.chain.ee_transform(
                msg.header.frame_id, armbase_from_ee, stamp_ns_from_msg(msg.header.stamp)
            )
            self._publish(tf, self.chain.add_ee(tf))
        except (ValueError, TransformError, StaleStampError) as err:
            self.get_logger().warning(f"end-effector pose ignored: {err}", throttle_duration_sec=5.0)


def main(args: list[str] | None = None) -> int:
    return spin_node(PoseChainNode, "m3_pose_chain_node", args, threads=1)


if __name__ == "__main__":
    sys.exit(main())
