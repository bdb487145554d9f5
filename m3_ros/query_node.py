"""Query node: text -> grasp target from an M3 memory, as the /m3/query service.

    ros2 run m3_grasp m3_query_node --ros-args -p memory_path:=/path/to/memory
    ros2 service call /m3/query m3_grasp/srv/Query "{text: 'yellow bath duck'}"

Per request: the camera pose comes from the request (camera_pose with a frame id) or from the
transform buffer (/tf, /tf_static) at the latest time both the camera and the target frame are
known; the memory is rendered there; m3_core.query finds the object and its grasp pose. Outputs:
the response, and latched topics with the target (PoseStamped, GraspTarget), RViz markers (approach
arrow + object box) and the relevance heatmap over the rendered image (rgb8).
Every failure (no memory, unknown model, empty or long text, no transform, not found, wrong depth
size) answers success=false with a message; the node keeps running.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from dataclasses import fields, replace
from typing import Any

import numpy as np
from geometry_msgs.msg import Point, PoseStamped
from m3_grasp.msg import GraspTarget
from m3_grasp.srv import Query
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import Marker, MarkerArray

from m3_core.errors import M3Error, TransformError
from m3_core.geometry import PinholeCamera, TransformBuffer, transform_points
from m3_core.query import QueryConfig, QueryEngine, View, robust_extent
from m3_core.query.overlay import draw_target, overlay_relevance
from m3_core.query.result import NotFoundError
from m3_core.robot import load_robot_config
from m3_ros.conversions import (
    camera_from_info_msg,
    depth_m_from_msg,
    feed_buffer_from_tf_msg,
    matrix_from_pose_msg,
    msg_from_image,
    pose_msg_from_matrix,
    stamp_ns_from_msg,
    time_msg_from_ns,
)
from m3_ros.spin import spin_node

LATCHED = QoSProfile(
    depth=1,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
    reliability=ReliabilityPolicy.RELIABLE,
    history=HistoryPolicy.KEEP_LAST,
)
_QUERY_FIELDS = {f.name for f in fields(QueryConfig)}


class QueryNode(Node):
    """Serves m3_grasp/srv/Query from a memory loaded in the background."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("query_node", **kwargs)
        robot = load_robot_config()
        defaults = QueryConfig()
        p = self._declare
        self.memory_path = p(
            "memory_path", "", "M3 memory directory (manifest.json + memory.safetensors)", True
        )
        self.device = p(
            "device", "cpu", "torch device for rendering and text encoding: cpu, cuda, cuda:1", True
        )
        self.default_model = p("model", "", 'default feature model; "" = "language" if held, else the first')
        self.world_frame = p("world_frame", robot.frames.world, "frame of the memory (its world)", True)
        self.target_frame = p(
            "target_frame", robot.frames.arm_base, "frame of the answer when the request has none"
        )
        self.camera_frame = p(
            "camera_frame", robot.frames.camera, "camera optical frame for live poses", True
        )
        self.service_name = p("service_name", "/m3/query", "name of the Query service", True)
        camera_info_topic = p(
            "camera_info_topic", robot.topics.camera_info, "CameraInfo of the color camera", True
        )
        depth_topic = p(
            "depth_topic", robot.topics.depth, "aligned depth (16UC1 mm or 32FC1 m); '' = none", True
        )
        self.intrinsics = p(
            "camera_intrinsics",
            [0.0],
            "fx fy cx cy width height used until CameraInfo arrives ([0.0] = wait for CameraInfo)",
        )
        self.depth_max_age_s = p(
            "depth_max_age_s", 0.1, "live depth is used when this close in time to the pose"
        )
        self.use_live_depth = p(
            "use_live_depth", True, "use the depth camera (else the memory's rendered depth)"
        )
        self.search_3d = p(
            "search_3d", "fallback", "3D query among Gaussians: never, fallback (not in view), always"
        )
        self.publish_overlay = p("publish_overlay", True, "publish the relevance heatmap image")
        self.config_params = {
            "relevance_threshold": p(
                "relevance_threshold", -1.0, "relevance floor in [0, 1]; < 0 = the model's calibrated default"
            ),
            "min_similarity": p(
                "min_similarity", -2.0, "cosine the match must reach; < -1 = the model's calibrated default"
            ),
            "threshold_mode": p("threshold_mode", defaults.threshold_mode, "fixed or otsu"),
            "temperature": p("temperature", defaults.temperature, "pairwise softmax temperature"),
            "negatives": p("negatives", list(defaults.negatives), "canonical negative phrases"),
            "grasp_mode": p("grasp_mode", defaults.grasp_mode, "top_down or view_ray"),
            "render_width": p("render_width", 320, "render width in pixels (0 = camera size)"),
            "render_height": p("render_height", 0, "render height (0 = keep the aspect)"),
            "max_text_chars": p("max_text_chars", defaults.max_text_chars, "longest accepted query"),
            "cluster_radius_m": p(
                "cluster_radius_m", defaults.cluster_radius_m, "3D query cluster radius (m)"
            ),
        }

        self.buffer = TransformBuffer()
        self._lock = threading.Lock()
        self._newest_tf_ns = 0
        self._newest_by_child: dict[str, int] = {}  # dynamic edges: child frame -> newest stamp
        self._camera: PinholeCamera | None = None
        self._depth: tuple[int, np.ndarray] | None = None  # (stamp_ns, depth_m)
        self._memory: Any = None
        self._cache: QueryEngine | None = None  # the query engine, once the memory is loaded
        self._load_error = "still loading" if self.memory_path else "parameter memory_path is empty"

        sensors = ReentrantCallbackGroup()
        heavy = MutuallyExclusiveCallbackGroup()  # one query at a time; sensors keep flowing meanwhile
        self.create_subscription(TFMessage, "/tf", self._on_tf, 100, callback_group=sensors)
        self.create_subscription(TFMessage, "/tf_static", self._on_tf_static, LATCHED, callback_group=sensors)
        self.create_subscription(
            CameraInfo, camera_info_topic, self._on_info, qos_profile_sensor_data, callback_group=sensors
        )
        if depth_topic:
            self.create_subscription(
                Image, depth_topic, self._on_depth, qos_profile_sensor_data, callback_group=sensors
            )
        self.pose_pub = self.create_publisher(PoseStamped, "/m3/target_pose", LATCHED)
        self.target_pub = self.create_publisher(GraspTarget, "/m3/grasp_target", LATCHED)
        self.marker_pub = self.create_publisher(MarkerArray, "/m3/target_markers", LATCHED)
        self.overlay_pub = self.create_publisher(Image, "/m3/relevance_overlay", LATCHED)
        self.create_service(Query, self.service_name, self._on_query, callback_group=heavy)
        if self.memory_path:
            # Loading (and the first text encoder) takes seconds: never in __init__'s thread.
            threading.Thread(target=self._load_memory, name="m3_memory_loader", daemon=True).start()
        else:
            self.get_logger().warn("no memory_path given: every query will answer 'no memory loaded'")
        self.get_logger().info(
            f"query node up: service {self.service_name}, memory {self.memory_path or '-'}"
        )

    # -- setup -------------------------------------------------------------------------------
    def _declare(self, name: str, default: Any, description: str, read_only: bool = False) -> Any:
        descriptor = ParameterDescriptor(description=description, read_only=read_only)
        return self.declare_parameter(name, default, descriptor).value

    def _load_memory(self) -> None:
        from m3_core.model.memory import M3Memory

        try:
            t0 = time.perf_counter()
            memory = M3Memory.load(self.memory_path, device=self.device)
            memory.eval()
            cache = QueryEngine(memory)
            model = self._model_name(memory, "")
            cache.encode("object", model, self._query_config())  # loads the text encoder
            with self._lock:
                self._memory, self._cache, self._load_error = memory, cache, ""
            self.get_logger().info(
                f"memory {self.memory_path} loaded in {time.perf_counter() - t0:.1f}s: "
                f"models {memory.models}, {int(memory.gaussians.means.shape[0])} Gaussians"
            )
        except Exception as err:  # any failure must leave the node answering, not dead
            with self._lock:
                self._load_error = f"{type(err).__name__}: {err}"
            self.get_logger().error(f"could not load memory {self.memory_path}: {err}")

    def _query_config(self) -> QueryConfig:
        values = {k: self.get_parameter(k).value for k in self.config_params}
        values["negatives"] = tuple(values["negatives"] or ())
        # ROS parameters cannot be None: negative sentinels mean "the model's calibrated default".
        if values["relevance_threshold"] < 0:
            values["relevance_threshold"] = None
        if values["min_similarity"] < -1:
            values["min_similarity"] = None
        return replace(QueryConfig(), **{k: v for k, v in values.items() if k in _QUERY_FIELDS})

    def _model_name(self, memory: Any, requested: str) -> str:
        name = requested or self.get_parameter("model").value
        if name:
            return name
        return "language" if "language" in memory.models else memory.models[0]

    # -- sensor callbacks --------------------------------------------------------------------
    def _on_tf(self, msg: TFMessage) -> None:
        feed_buffer_from_tf_msg(self.buffer, msg, static=False)
        with self._lock:
            for tf in msg.transforms:
                stamp_ns = stamp_ns_from_msg(tf.header.stamp)
                child = tf.child_frame_id
                self._newest_by_child[child] = max(self._newest_by_child.get(child, 0), stamp_ns)
                self._newest_tf_ns = max(self._newest_tf_ns, stamp_ns)

    def _on_tf_static(self, msg: TFMessage) -> None:
        feed_buffer_from_tf_msg(self.buffer, msg, static=True)

    def _on_info(self, msg: CameraInfo) -> None:
        try:
            camera = camera_from_info_msg(msg)
        except ValueError as err:
            self.get_logger().warn(f"ignoring CameraInfo: {err}", throttle_duration_sec=5.0)
            return
        with self._lock:
            self._camera = camera

    def _on_depth(self, msg: Image) -> None:
        try:
            depth = depth_m_from_msg(msg)
        except ValueError as err:
            self.get_logger().warn(f"ignoring depth image: {err}", throttle_duration_sec=5.0)
            return
        with self._lock:
            self._depth = (stamp_ns_from_msg(msg.header.stamp), depth)

    # -- the service -------------------------------------------------------------------------
    def _on_query(self, request: Query.Request, response: Query.Response) -> Query.Response:
        t0 = time.perf_counter()
        try:
            self._answer(request, response)
        except NotFoundError as err:
            self._fail(response, str(err))
            if err.relevance is not None:
                response.relevance = msg_from_image(err.relevance, "32FC1", 0, self.camera_frame)
                self._publish_overlay(err.rgb, err.relevance, None)
        except (ValueError, TypeError, M3Error) as err:
            self._fail(response, str(err))
        except Exception as err:  # a bug must not take the node down: report it, log the trace
            self.get_logger().error(f"query {request.text!r} failed:\n{traceback.format_exc()}")
            self._fail(response, f"internal error ({type(err).__name__}: {err}); see the node's log")
        response.total_ms = float((time.perf_counter() - t0) * 1e3)
        level = self.get_logger().info if response.success else self.get_logger().warn
        level(f"query {request.text[:60]!r}: {response.message} ({response.total_ms:.0f} ms)")
        return response

    def _fail(self, response: Query.Response, message: str) -> None:
        response.success = False
        response.message = message
        marker = Marker(action=Marker.DELETEALL)
        self.marker_pub.publish(MarkerArray(markers=[marker]))  # no stale target in RViz

    def _answer(self, request: Query.Request, response: Query.Response) -> None:
        with self._lock:
            memory, cache, load_error = self._memory, self._cache, self._load_error
            camera, depth, newest_tf = self._camera, self._depth, self._newest_tf_ns
            common_tf = min(self._newest_by_child.values(), default=0)
        if memory is None:
            raise M3Error(f"no memory loaded: {load_error} (memory_path={self.memory_path!r})")
        if not request.text.strip():
            raise ValueError('empty text: ask for an object, e.g. "yellow bath duck"')
        model = self._model_name(memory, request.model)
        target_frame = request.target_frame or self.get_parameter("target_frame").value
        camera = camera or self._camera_from_parameter()
        config = self._query_config()

        world_from_camera, stamp_ns, live_view = self._camera_pose(request, depth, newest_tf, common_tf)
        try:
            target_from_world = self.buffer.lookup(target_frame, self.world_frame, stamp_ns)
        except TransformError as err:
            raise TransformError(f"no transform {self.world_frame} -> {target_frame}: {err}") from err

        depth_m, depth_ok = None, False
        if live_view and depth is not None and self.get_parameter("use_live_depth").value:
            depth_ok = abs(depth[0] - stamp_ns) <= self.get_parameter("depth_max_age_s").value * 1e9
            depth_m = depth[1]
        try:  # the arm base's pose enables the engine's reach check
            world_from_armbase = self.buffer.lookup(self.world_frame, cache.robot.frames.arm_base, stamp_ns)
        except TransformError:
            world_from_armbase = None
        result = cache.query(
            request.text,
            model=model,
            view=View(world_from_camera, camera, depth_m, depth_ok),
            world_from_armbase=world_from_armbase,
            search_3d=self.get_parameter("search_3d").value,
            config=config,
        ).require_found()
        target_from_grasp = target_from_world @ result.world_from_grasp
        extent = robust_extent(transform_points(target_from_world, result.points), config.extent_percentile)
        pose = pose_msg_from_matrix(target_from_grasp, stamp_ns, target_frame)

        target = response.target
        target.pose = pose
        target.query, target.label, target.model = request.text, result.label, model
        target.score = float(result.score)
        target.extent.x, target.extent.y, target.extent.z = (float(v) for v in extent)
        target.num_points = int(result.num_points)
        response.success = True
        where = "in view" if result.source == "view" else "among the Gaussians (outside the view)"
        response.message = (
            f"found {result.text!r} {where} at ({pose.pose.position.x:.3f}, {pose.pose.position.y:.3f}, "
            f"{pose.pose.position.z:.3f}) in {target_frame}, score {result.score:.2f}"
            + (f", depth from {result.depth_source}" if result.depth_source else "")
        )
        t = result.timings_ms
        response.encode_ms, response.render_ms = float(t["encode"]), float(t["render"])
        response.locate_ms = float(t["locate"])
        if result.relevance is not None:
            response.relevance = msg_from_image(result.relevance, "32FC1", stamp_ns, self.camera_frame)
        self.pose_pub.publish(pose)
        self.target_pub.publish(target)
        self.marker_pub.publish(
            self._markers(target_from_grasp, extent, target_frame, stamp_ns, request.text)
        )
        if result.relevance is not None:
            image = draw_target(
                overlay_relevance(result.rgb, result.relevance, result.mask),
                result.render_camera,
                world_from_camera,
                result.world_from_grasp,
            )
            self._publish_overlay(image, None, None, stamp_ns)

    def _camera_from_parameter(self) -> PinholeCamera:
        values = list(self.get_parameter("camera_intrinsics").value or [])
        if len(values) != 6:
            raise M3Error(
                "no camera intrinsics: no CameraInfo received yet and parameter camera_intrinsics is not "
                "set (fx fy cx cy width height)"
            )
        fx, fy, cx, cy, w, h = values
        return PinholeCamera(float(fx), float(fy), float(cx), float(cy), int(w), int(h))

    def _camera_pose(
        self,
        request: Query.Request,
        depth: tuple[int, np.ndarray] | None,
        newest_tf_ns: int,
        common_tf_ns: int,
    ) -> tuple[np.ndarray, int, bool]:
        """(world_from_camera, stamp_ns, live) from the request's pose or the transform buffer."""
        given = request.camera_pose
        if given.header.frame_id:
            frame_from_camera = matrix_from_pose_msg(given)
            stamp_ns = stamp_ns_from_msg(given.header.stamp)
            if not stamp_ns:
                stamp_ns = newest_tf_ns
            if given.header.frame_id == self.world_frame:
                return frame_from_camera, stamp_ns, False
            try:
                world_from_frame = self.buffer.lookup(self.world_frame, given.header.frame_id, stamp_ns)
            except TransformError as err:
                raise TransformError(
                    f"no transform {self.world_frame} -> {given.header.frame_id} for the requested camera pose: {err}"
                ) from err
            return world_from_frame @ frame_from_camera, stamp_ns, False
        # Live pose, at request time: the newest depth frame's stamp when it is recent (pose and depth
        # then belong together), else the newest TF stamp, else the latest time every dynamic edge
        # has reached (the latest common time).
        candidates = [newest_tf_ns, common_tf_ns]
        max_age_ns = self.get_parameter("depth_max_age_s").value * 1e9
        if depth is not None and abs(depth[0] - newest_tf_ns) <= max_age_ns:
            candidates.insert(0, depth[0])
        error: Exception | None = None
        for stamp_ns in candidates:
            try:
                return self.buffer.lookup(self.world_frame, self.camera_frame, stamp_ns), stamp_ns, True
            except TransformError as err:
                error = err
        raise TransformError(
            f"no transform {self.world_frame} -> {self.camera_frame} for the camera: {error}"
        )

    # -- outputs -----------------------------------------------------------------------------
    def _markers(
        self, target_from_grasp: np.ndarray, extent: np.ndarray, frame: str, stamp_ns: int, text: str
    ) -> MarkerArray:
        header = Header(stamp=time_msg_from_ns(stamp_ns), frame_id=frame)
        position = target_from_grasp[:3, 3]
        approach = target_from_grasp[:3, 2]
        arrow = Marker(header=header, ns="m3_target", id=0, type=Marker.ARROW, action=Marker.ADD)
        start = position - 0.12 * approach  # the arrow ends at the target, coming along +z
        arrow.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in (start, position)]
        arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.01, 0.02, 0.03
        arrow.color.r, arrow.color.g, arrow.color.b, arrow.color.a = 0.1, 0.9, 0.2, 1.0
        box = Marker(header=header, ns="m3_target", id=1, type=Marker.CUBE, action=Marker.ADD)
        box.pose.position.x, box.pose.position.y, box.pose.position.z = (float(v) for v in position)
        box.pose.orientation.w = 1.0  # extent is axis-aligned in the target frame
        box.scale.x, box.scale.y, box.scale.z = (float(max(v, 0.005)) for v in extent)
        box.color.r, box.color.g, box.color.b, box.color.a = 1.0, 0.8, 0.1, 0.4
        label = Marker(header=header, ns="m3_target", id=2, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
        label.pose.position.x, label.pose.position.y = float(position[0]), float(position[1])
        label.pose.position.z = float(position[2] + 0.5 * extent[2] + 0.04)
        label.scale.z = 0.03
        label.color.r = label.color.g = label.color.b = label.color.a = 1.0
        label.text = text[:60]
        return MarkerArray(markers=[arrow, box, label])

    def _publish_overlay(
        self, rgb: np.ndarray | None, relevance: np.ndarray | None, mask: np.ndarray | None, stamp_ns: int = 0
    ) -> None:
        if not self.get_parameter("publish_overlay").value or rgb is None:
            return
        image = rgb if relevance is None else overlay_relevance(rgb, relevance, mask)
        self.overlay_pub.publish(
            msg_from_image(np.ascontiguousarray(image), "rgb8", stamp_ns, self.camera_frame)
        )


def main(args: list[str] | None = None) -> int:
    return spin_node(QueryNode, "m3_query_node", args, threads=4)


if __name__ == "__main__":
    sys.exit(main())
