"""Publishes a known transform tree like a robot would: /tf_static (latched) for the mount and the
hand-eye, /tf at 100 Hz for odom->lidar_link (a circle) and arm_base_link->ee_link (a nod), using
the analytic trajectory in tf_trajectory.py so the test process can check what its buffer says."""

from __future__ import annotations

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import DurabilityPolicy, QoSProfile
from tf2_msgs.msg import TFMessage

from m3_ros.conversions import transform_msg_from_matrix
from tests.ros_peers.tf_trajectory import STATIC, dynamic_edges


def main() -> None:
    rclpy.init()
    node = rclpy.create_node("tf_peer")
    static_qos = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    static_pub = node.create_publisher(TFMessage, "/tf_static", static_qos)
    tf_pub = node.create_publisher(TFMessage, "/tf", 100)
    static_pub.publish(TFMessage(transforms=[transform_msg_from_matrix(T, p, c, 0) for p, c, T in STATIC]))

    def on_timer() -> None:
        stamp_ns = node.get_clock().now().nanoseconds
        tf_pub.publish(
            TFMessage(
                transforms=[
                    transform_msg_from_matrix(T, p, c, stamp_ns) for p, c, T in dynamic_edges(stamp_ns)
                ]
            )
        )

    node.create_timer(0.01, on_timer)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
