"""A real rclpy node in its own process for the interface tests: serves m3_grasp/srv/Query on
/m3/query (answering from the request, so the test can check every field crossed the wire) and
streams N m3_grasp/msg/GraspTarget messages on /m3/grasp_target once a subscriber is there."""

from __future__ import annotations

import sys

import rclpy
from m3_grasp.msg import GraspTarget
from m3_grasp.srv import Query
from rclpy.executors import ExternalShutdownException


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    rclpy.init()
    node = rclpy.create_node("interface_peer")
    pub = node.create_publisher(GraspTarget, "/m3/grasp_target", 10)

    def on_query(request: Query.Request, response: Query.Response) -> Query.Response:
        response.success = bool(request.text.strip())
        response.message = f"echo: {request.text}" if response.success else "empty text"
        t = response.target
        t.query = request.text
        t.model = request.model or "clip"
        t.pose.header.frame_id = request.target_frame or "arm_base_link"
        t.pose.pose.position.x = float(len(request.text))
        t.pose.pose.position.z = request.camera_pose.pose.position.z
        t.pose.pose.orientation.w = 1.0
        response.relevance.encoding = "32FC1"
        response.relevance.height, response.relevance.width = 2, 3
        response.relevance.step = 12
        response.relevance.data = bytes(range(24))
        response.total_ms = 1.5
        return response

    node.create_service(Query, "/m3/query", on_query)
    sent = 0

    def on_timer() -> None:
        nonlocal sent
        if sent < count and pub.get_subscription_count() > 0:
            msg = GraspTarget()
            msg.query = "duck"
            msg.score = float(sent)
            msg.num_points = sent
            msg.extent.x = 0.07
            pub.publish(msg)
            sent += 1

    node.create_timer(0.01, on_timer)
    print("interface_peer ready", flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
