"""Query node: text -> grasp target from an M3 memory, as the /m3/query service.

    ros2 run m3_grasp m3_query_node --ros-args -p memory_path:=~/memories/table1 -p robot_config:=~/robot.yaml
    ros2 service call /m3/query m3_grasp/srv/Query "{text: 'yellow bath duck'}"

Per request: the camera pose comes from the request (camera_pose with a frame id) or from the
transform buffer (/tf, /tf_static) at the latest time both the camera and the target frame are
known; the memory is rendered there; m3_core.query finds the object and its grasp pose. Outputs:
the response, and latched topics with the target (PoseStamped, GraspTarget with the ranked grasps),
the grasps as a PoseArray (/m3/grasp_candidates), RViz markers (the gripper at the best grasp and
the next candidates, the object box), the relevance heatmap over the rendered image (rgb8) and, for RViz, the
memory as a coloured PointCloud2 (/m3/memory_cloud, once loaded) and the answer's relevance per
Gaussian (/m3/relevance_cloud); `rviz2 -d config/m3_demo.rviz` shows them.
Every failure (no memory, unknown model, empty or long text, no transform, not found, wrong depth
size) answers success=false with a message; the node keeps running.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from dataclasses import fields
from typing import Any

import numpy as np
from geometry_msgs.msg import Point, PoseArray, PoseStamped
from m3_grasp.msg import GraspTarget
from m3_grasp.srv import Query
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import Marker, MarkerArray

from m3_core.errors import M3Error, TransformError
from m3_core.geometry import PinholeCamera, TransformBuffer, transform_points
from m3_core.model.memory import M3Memory
from m3_core.query import QueryConfig, QueryEngine, TextEmbeddingTable, View, robust_extent
from m3_core.query.overlay import draw_target, heatmap, overlay_relevance
from m3_core.query.result import NotFoundError
from m3_core.robot import load_robot_config
from m3_ros.conversions import (
    camera_from_info_msg,
    depth_m_from_msg,
    matrix_from_pose_msg,
    msg_from_image,
    stamp_ns_from_msg,
    time_msg_from_ns,
    transforms_from_tf_msg,
    xyzrgb_cloud_msg,
)
from m3_ros.drops import DropCounter
from m3_ros.grasp_msgs import grasp_markers, grasp_pose_array, grasp_target_msg
from m3_ros.params import QUERY_PARAMS, dataclass_kwargs, declare_parameters
from m3_ros.spin import spin_node

# The default service QoS keeps 10 requests: more callers at once lost requests (20 clients x 5
# calls got 90 answers). Keep every request until it is taken.
SERVICE_QOS = QoSProfile(
    depth=1000, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE
)
LATCHED = QoSProfile(
    depth=1,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
    reliability=ReliabilityPolicy.RELIABLE,
    history=HistoryPolicy.KEEP_LAST,
)
_QUERY_FIELDS = {f.name for f in fields(QueryConfig)}
# Answered while neither CameraInfo nor the parameter has given intrinsics; a client may ask again.
NO_INTRINSICS_MESSAGE = (
    "no camera intrinsics: no CameraInfo received yet and parameter camera_intrinsics is not set "
    "(fx fy cx cy width height)"
)


class QueryNode(Node):
    """Serves m3_grasp/srv/Query from a memory loaded in the background."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("m3_query", **kwargs)
        p = declare_parameters(self, QUERY_PARAMS)
        # one robot description for every node: frames and topics default to its values
        self.robot = load_robot_config(p["robot_config"])
        frames, topics = self.robot.frames, self.robot.topics
        self.memory_path: str = p["memory_path"]
        self.text_embeddings: str = p["text_embeddings"]
        self.device: str = p["device"]
        self.world_frame: str = p["world_frame"] or frames.world
        self.camera_frame: str = p["camera_frame"] or frames.camera
        self.service_name: str = p["service_name"]
        camera_info_topic = p["camera_info_topic"] or topics.camera_info
        depth_topic = (p["depth_topic"] or topics.depth) if p["use_live_depth"] else ""
        self._publish_clouds: bool = p["publish_clouds"]

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
        # Requests: taken as they come (reentrant group), then answered one at a time behind
        # _serve_lock; the node knows how many wait and says so in its log.
        requests = ReentrantCallbackGroup()
        self._serve_lock = threading.Lock()
        self._waiting = 0
        self._answered = 0
        self.drops = DropCounter(self.get_logger())
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
        self.grasps_pub = self.create_publisher(PoseArray, "/m3/grasp_candidates", LATCHED)
        self.overlay_pub = self.create_publisher(Image, "/m3/relevance_overlay", LATCHED)
        # RViz: the memory (Gaussian centres, RGB) once loaded, the last answer's relevance per Gaussian
        self.memory_cloud_pub = self.create_publisher(PointCloud2, "/m3/memory_cloud", LATCHED)
        self.relevance_cloud_pub = self.create_publisher(PointCloud2, "/m3/relevance_cloud", LATCHED)
        self.create_service(
            Query, self.service_name, self._on_query, qos_profile=SERVICE_QOS, callback_group=requests
        )
        self._cloud_request: tuple[QueryEngine, str, str, QueryConfig] | None = None
        if self._publish_clouds:  # takes _serve_lock: never while a query is answered
            self.create_timer(0.2, self._on_relevance_cloud, callback_group=MutuallyExclusiveCallbackGroup())
        if self.memory_path:
            # Loading (and the first text encoder) takes seconds: never in __init__'s thread.
            threading.Thread(target=self._load_memory, name="m3_memory_loader", daemon=True).start()
        else:
            self.get_logger().warn("no memory_path given: every query will answer 'no memory loaded'")
        self.get_logger().info(
            f"query node up: service {self.service_name}, memory {self.memory_path or '-'}"
        )

    # -- setup -------------------------------------------------------------------------------
    def _load_memory(self) -> None:
        try:
            t0 = time.perf_counter()
            memory = M3Memory.load(self.memory_path, device=self.device)
            memory.eval()
            table = TextEmbeddingTable.load(self.text_embeddings) if self.text_embeddings else None
            cache = QueryEngine(memory, robot=self.robot, text_table=table)
            model = self._model_name(memory, "")
            # loads the text encoder, unless text_embeddings holds the negatives and background caption
            cache.encode("object", model, self._query_config())
            with self._lock:
                self._memory, self._cache, self._load_error = memory, cache, ""
            if self._publish_clouds:
                self.memory_cloud_pub.publish(self._memory_cloud(memory))
            encoder = "loaded" if cache.loaded_encoders else f"not needed yet (texts from {self.text_embeddings})"
            self.get_logger().info(
                f"memory {self.memory_path} loaded in {time.perf_counter() - t0:.1f}s: "
                f"models {memory.models}, {int(memory.gaussians.means.shape[0])} Gaussians; text encoder {encoder}"
            )
        except Exception as err:  # any failure must leave the node answering, not dead
            with self._lock:
                self._load_error = f"{type(err).__name__}: {err}"
            self.get_logger().error(f"could not load memory {self.memory_path}: {err}")

    def _query_config(self) -> QueryConfig:
        values = {p.name: self.get_parameter(p.name).value for p in QUERY_PARAMS if p.name in _QUERY_FIELDS}
        return QueryConfig(**dataclass_kwargs(values, QUERY_PARAMS, QueryConfig))

    def _model_name(self, memory: Any, requested: str) -> str:
        name = requested or self.get_parameter("model").value
        if name:
            return name
        return "language" if "language" in memory.models else memory.models[0]

    # -- sensor callbacks --------------------------------------------------------------------
    def _on_tf(self, msg: TFMessage) -> None:
        for parent, child, matrix, stamp_ns in self._good_transforms(msg, "/tf"):
            self.buffer.set_transform(parent, child, matrix, stamp_ns)
            with self._lock:
                self._newest_by_child[child] = max(self._newest_by_child.get(child, 0), stamp_ns)
                self._newest_tf_ns = max(self._newest_tf_ns, stamp_ns)

    def _on_tf_static(self, msg: TFMessage) -> None:
        for parent, child, matrix, stamp_ns in self._good_transforms(msg, "/tf_static"):
            self.buffer.set_transform(parent, child, matrix, stamp_ns, static=True)

    def _good_transforms(self, msg: TFMessage, topic: str) -> list:
        """The message's well-formed transforms; a malformed one is dropped, counted and logged."""
        good, errors = transforms_from_tf_msg(msg)
        for error in errors:
            self._malformed(topic, error)
        return good

    def _malformed(self, topic: str, error: object) -> None:
        self.drops.drop(topic, error)

    def _on_info(self, msg: CameraInfo) -> None:
        try:
            camera = camera_from_info_msg(msg)
        except ValueError as err:
            self._malformed("camera_info", f"ignoring CameraInfo: {err}")
            return
        with self._lock:
            self._camera = camera

    def _on_depth(self, msg: Image) -> None:
        try:
            depth = depth_m_from_msg(msg)
        except ValueError as err:
            self._malformed("depth", f"ignoring depth image: {err}")
            return
        with self._lock:
            self._depth = (stamp_ns_from_msg(msg.header.stamp), depth)

    # -- the service -------------------------------------------------------------------------
    def _on_query(self, request: Query.Request, response: Query.Response) -> Query.Response:
        with self._lock:
            self._waiting += 1
            ahead = self._waiting - 1
        if ahead:
            self.get_logger().info(f"query {request.text[:60]!r} queued behind {ahead} request(s)")
        with self._serve_lock:  # one query at a time: rendering is the bottleneck
            with self._lock:
                self._waiting -= 1
            self._serve(request, response)
            with self._lock:
                self._answered += 1
        return response

    def _serve(self, request: Query.Request, response: Query.Response) -> Query.Response:
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
        with self._lock:
            waiting = self._waiting
        level(
            f"query {request.text[:60]!r}: {response.message} ({response.total_ms:.0f} ms; "
            f"{waiting} waiting)"
        )
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
        target_frame = (
            request.target_frame or self.get_parameter("target_frame").value or self.robot.frames.arm_base
        )
        camera = camera or self._camera_from_parameter()
        config = self._query_config()

        world_from_camera, stamp_ns, live_view = self._camera_pose(request, depth, newest_tf, common_tf)
        try:
            target_from_world = self.buffer.lookup(target_frame, self.world_frame, stamp_ns)
        except TransformError as err:
            raise TransformError(f"no transform {self.world_frame} -> {target_frame}: {err}") from err

        depth_m, depth_ok = None, False
        if live_view and depth is not None and self.get_parameter("use_live_depth").value:
            depth_ok = self._depth_is_fresh(depth[0], stamp_ns)
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
        target = grasp_target_msg(result, target_from_world, extent, target_frame, stamp_ns, request.text)
        response.target = target
        response.success = True
        response.message = _found_message(result, target, target_frame)
        t = result.timings_ms
        response.encode_ms, response.render_ms = float(t["encode"]), float(t["render"])
        response.locate_ms = float(t["locate"])
        if result.relevance is not None:
            response.relevance = msg_from_image(result.relevance, "32FC1", stamp_ns, self.camera_frame)
        self.pose_pub.publish(target.pose)
        self.target_pub.publish(target)
        self.grasps_pub.publish(grasp_pose_array(result.grasps, target_from_world, target_frame, stamp_ns))
        markers = grasp_markers(
            result.grasps, self.robot.gripper, target_from_world, target_frame, stamp_ns, request.text
        )
        markers.markers += self._markers(target_from_grasp, extent, target_frame, stamp_ns, request.text).markers
        self.marker_pub.publish(markers)
        if result.relevance is not None:
            image = draw_target(
                overlay_relevance(result.rgb, result.relevance, result.mask),
                result.render_camera,
                world_from_camera,
                result.world_from_grasp,
            )
            self._publish_overlay(image, None, None, stamp_ns)
        if self._publish_clouds:  # after the response: encoding the text again takes ~1 s on a CPU
            self._cloud_request = (cache, model, request.text, config)

    def _depth_is_fresh(self, depth_stamp_ns: int, stamp_ns: int) -> bool:
        """Live depth belongs to a pose when their stamps are at most depth_max_age_s apart."""
        return abs(depth_stamp_ns - stamp_ns) <= self.get_parameter("depth_max_age_s").value * 1e9

    def _camera_from_parameter(self) -> PinholeCamera:
        values = list(self.get_parameter("camera_intrinsics").value or [])
        if len(values) != 6:
            raise M3Error(NO_INTRINSICS_MESSAGE)
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
        if depth is not None and self._depth_is_fresh(depth[0], newest_tf_ns):
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

    def _memory_cloud(self, memory: Any) -> PointCloud2:
        """The memory's Gaussian centres in their RGB colour (opaque enough ones), in the world frame."""
        means = memory.gaussians.means.detach().cpu().numpy()
        keep = memory.gaussians.opacities.detach().reshape(-1).cpu().numpy() >= QueryConfig().min_opacity
        colors = memory.gaussians.colors.detach().cpu().numpy()[keep]
        rgb = (np.clip(colors, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return xyzrgb_cloud_msg(means[keep], rgb, 0, self.world_frame)

    def _on_relevance_cloud(self) -> None:
        request, self._cloud_request = self._cloud_request, None
        if request is None:
            return
        try:
            with self._serve_lock:  # one heavy job at a time: queries come first
                cloud = self._relevance_cloud(*request)
            self.relevance_cloud_pub.publish(cloud)
        except Exception as err:  # a picture for RViz must not take the node down
            self.get_logger().error(f"relevance cloud of {request[2]!r} failed: {err}")

    def _relevance_cloud(self, engine: QueryEngine, model: str, text: str, config: QueryConfig) -> PointCloud2:
        """Every Gaussian centre coloured by its relevance to `text` (turbo), with a relevance channel."""
        means, _ = engine.host_gaussians()
        enc = engine.encode(text, model, config)  # embeddings are cached: the query just made them
        relevance = engine.gaussian_scores(enc)[0].astype(np.float32)  # no [N, d] features decoded
        keep = relevance > 0  # 0: too transparent to count
        rgb = heatmap(relevance[keep][None])[0]
        return xyzrgb_cloud_msg(means[keep], rgb, 0, self.world_frame, extra={"relevance": relevance[keep]})

    def _publish_overlay(
        self, rgb: np.ndarray | None, relevance: np.ndarray | None, mask: np.ndarray | None, stamp_ns: int = 0
    ) -> None:
        if not self.get_parameter("publish_overlay").value or rgb is None:
            return
        image = rgb if relevance is None else overlay_relevance(rgb, relevance, mask)
        self.overlay_pub.publish(
            msg_from_image(np.ascontiguousarray(image), "rgb8", stamp_ns, self.camera_frame)
        )


def _found_message(result: Any, target: Any, target_frame: str) -> str:
    """The service's one-line answer: where the object is, its score and the best grasp."""
    p = target.pose.pose.position
    where = "in view" if result.source == "view" else "among the Gaussians (outside the view)"
    grasp = (
        f", grasp {100 * target.width:.1f} cm wide, quality {target.quality:.2f} "
        f"({len(result.grasps)} feasible)"
        if result.grasps
        else ""
    )
    return (
        f"found {result.text!r} {where} at ({p.x:.3f}, {p.y:.3f}, "
        f"{p.z:.3f}) in {target_frame}, score {result.score:.2f}{grasp}"
        + (f", depth from {result.depth_source}" if result.depth_source else "")
    )


def main(args: list[str] | None = None) -> int:
    # queued requests each hold an executor thread while they wait their turn: enough threads that
    # /tf and the camera keep flowing meanwhile
    return spin_node(QueryNode, "m3_query_node", args, threads=8)


if __name__ == "__main__":
    sys.exit(main())
