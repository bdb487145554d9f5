"""The browser viewer: one memory in a viser scene, a rendered panel, a text query and its grasp.

What a person sees:
- the memory's Gaussians as splats in the 3D view (orbit with the mouse);
- a panel with the memory rendered by m3-grasp's own renderer at the browser's camera pose, as
  colour, depth or relevance to the last query;
- a text box: a query runs at the browser's current camera pose; the object's points light up and
  the gripper is drawn at the best grasp; the status line says what was found (or why not).

Rendering on the CPU takes a fraction of a second, so panel renders run on one worker thread and a
newer camera pose replaces an older one that has not started yet.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from m3_core.errors import M3Error
from m3_core.geometry.camera import PinholeCamera
from m3_core.geometry.quaternion import rotmat_from_quat_wxyz
from m3_core.geometry.se3 import matrix_from_quat_xyzw, quat_xyzw_from_matrix
from m3_core.grasp.gripper import gripper_boxes
from m3_core.grasp.types import Grasp
from m3_core.query.config import QueryConfig
from m3_core.query.engine import QueryEngine
from m3_core.query.result import QueryResult
from m3_core.query.view import View
from m3_core.robot import RobotConfig
from m3_core.view.images import VIEW_MODES, camera_from_fov, render_view

if TYPE_CHECKING:
    import viser

log = logging.getLogger(__name__)

PROMPT = "Type an object and press **Find**."
"""The status line before anything is typed."""


@dataclass(frozen=True)
class ViewerConfig:
    """How the viewer serves and renders."""

    host: str = "127.0.0.1"
    """Address to listen on; the default serves this machine only (use 0.0.0.0 to share on a LAN)."""
    port: int = 8080
    """TCP port of the web page."""
    panel_height_px: int = 180
    """Height of the rendered panel in pixels (CPU rendering cost grows with its area)."""
    max_splats: int = 300_000
    """Show at most this many Gaussians (the most opaque) in the 3D view."""
    model: str = ""
    """Feature model to query ("" = language if the memory holds it, else its first model)."""


def splat_arrays(gaussians: torch.nn.Module, max_splats: int) -> dict[str, np.ndarray]:
    """centers [N,3], covariances [N,3,3], rgbs [N,3] in [0,1], opacities [N,1] of the most opaque Gaussians."""
    with torch.no_grad():
        opacities = gaussians.opacities.detach().float().cpu()
        keep = torch.argsort(opacities, descending=True)[:max_splats]
        R = rotmat_from_quat_wxyz(gaussians.quats.detach().float().cpu()[keep])
        M = R * gaussians.scales.detach().float().cpu()[keep][:, None, :]
        return {
            "centers": gaussians.means.detach().float().cpu()[keep].numpy(),
            "covariances": (M @ M.transpose(-1, -2)).numpy(),
            "rgbs": gaussians.colors.detach().float().cpu()[keep].clamp(0, 1).numpy(),
            "opacities": opacities[keep][:, None].numpy(),
        }


def initial_view(centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(look_at, eye): the middle of the memory, seen from the -y side and above at 1.2x its size."""
    lo, hi = np.percentile(centers, [5, 95], axis=0)
    middle = 0.5 * (lo + hi)
    size = float(max(np.linalg.norm(hi - lo), 0.1))
    return middle, middle + size * np.array([0.0, -0.9, 0.8])


def world_from_viser_camera(wxyz: np.ndarray, position: np.ndarray) -> np.ndarray:
    """[4,4] world_from_camera of a viser camera (viser cameras use OpenCV axes, as m3_core does)."""
    w, x, y, z = (float(v) for v in wxyz)
    T = np.eye(4)
    T[:3, :3] = matrix_from_quat_xyzw(np.array([x, y, z, w]))
    T[:3, 3] = np.asarray(position, dtype=np.float64)
    return T


class MemoryViewer:
    """A viser scene and GUI around one memory. Create it, then keep the process alive."""

    def __init__(
        self,
        memory: torch.nn.Module,
        server: viser.ViserServer,
        config: ViewerConfig,
        query_config: QueryConfig,
        robot: RobotConfig,
    ) -> None:
        self.memory, self.server, self.config = memory, server, config
        self.gripper = robot.gripper
        models = list(memory.models)
        self.model = config.model or ("language" if "language" in models else models[0])
        self.engine = QueryEngine(memory, query_config, robot)
        self.last: QueryResult | None = None
        self._pending: dict[int, object] = {}
        self._wake = threading.Condition()
        self._query_lock = threading.Lock()
        self._echoed = ""  # the query text last echoed in the status line

        server.scene.set_up_direction("+z")
        splats = splat_arrays(memory.gaussians, config.max_splats)
        server.scene.add_gaussian_splats("/memory", **splats)
        look_at, eye = initial_view(splats["centers"])
        server.initial_camera.look_at, server.initial_camera.position = tuple(look_at), tuple(eye)
        gui = server.gui
        self.mode = gui.add_dropdown("View", VIEW_MODES, initial_value="rgb")
        self.text = gui.add_text("Query", initial_value="", hint='an object, e.g. "yellow bath duck"')
        self.button = gui.add_button("Find")
        self.status = gui.add_markdown(PROMPT)
        self.panel = gui.add_image(np.zeros((config.panel_height_px, config.panel_height_px, 3), np.uint8), label="memory")
        self.button.on_click(lambda event: self._on_find(event.client))
        self.text.on_update(lambda event: self._on_text())
        self.mode.on_update(lambda event: self._request_all())
        server.on_client_connect(self._on_connect)
        threading.Thread(target=self._render_loop, name="m3-view-render", daemon=True).start()

    # -- camera and panel ----------------------------------------------------------------------
    def _on_connect(self, client: viser.ClientHandle) -> None:
        client.camera.on_update(lambda camera: self._request(client))

    def _request_all(self) -> None:
        for client in self.server.get_clients().values():
            self._request(client)

    def _request(self, client: viser.ClientHandle) -> None:
        with self._wake:
            self._pending[client.client_id] = client  # newest pose wins: render reads it when it starts
            self._wake.notify()

    def _render_loop(self) -> None:
        while True:
            with self._wake:
                while not self._pending:
                    self._wake.wait()
                _, client = self._pending.popitem()
            try:
                self._render_panel(client)
            except Exception:  # a disconnected client or a render error must not stop the loop
                log.exception("viewer panel render failed")

    def client_view(self, client: viser.ClientHandle) -> tuple[np.ndarray, PinholeCamera]:
        """(world_from_camera, camera) of a browser's current view at the panel's resolution."""
        cam = client.camera
        camera = camera_from_fov(float(cam.fov), float(cam.aspect), self.config.panel_height_px)
        return world_from_viser_camera(cam.wxyz, cam.position), camera

    def _render_panel(self, client: viser.ClientHandle) -> None:
        world_from_camera, camera = self.client_view(client)
        relevance = mask = None
        last = self.last
        same_view = (
            last is not None
            and last.relevance is not None
            and last.world_from_camera is not None
            and np.allclose(last.world_from_camera, world_from_camera, atol=1e-6)
        )
        if same_view:
            relevance, mask = last.relevance, last.mask
        self.panel.image = render_view(self.memory, world_from_camera, camera, self.mode.value, relevance, mask)

    # -- query -----------------------------------------------------------------------------------
    def _on_text(self) -> None:
        # The browser sends the typed text while the user types, and Find queries what has arrived:
        # the status line echoes it, so what Find will look for is on the screen before the click.
        text = self.text.value.strip()
        if text == self._echoed:  # a repeated value (a blur after typing) must not hide an answer
            return
        self._echoed = text
        self.status.content = f"Press **Find** to look for **{text}**." if text else PROMPT

    def _on_find(self, client: viser.ClientHandle | None) -> None:
        text = self.text.value
        if client is None:
            self.status.content = "No browser camera to query from."
            return
        world_from_camera, camera = self.client_view(client)
        self.status.content = f"Looking for **{text}** ..."
        message = self.run_query(text, world_from_camera, camera)
        self.status.content = message
        log.info("viewer query %r: %s", text, message)
        self._request(client)

    def run_query(self, text: str, world_from_camera: np.ndarray, camera: PinholeCamera) -> str:
        """Answer `text` from this camera, draw the answer in the 3D view, return the status line."""
        with self._query_lock:
            try:
                result = self.engine.query(text, model=self.model, view=View(world_from_camera, camera))
            except (ValueError, TypeError, M3Error) as err:
                return f"Cannot query: {err}"
            if not result.found:
                self.last = None
                self._clear_answer()
                return f"Not found: {result.message}"
            self.last = result
            self._draw_answer(result)
        c = result.position
        grasp = result.grasps[0] if result.grasps else None
        where = f"at ({c[0]:.3f}, {c[1]:.3f}, {c[2]:.3f}) m"
        if grasp is None:
            return f"Found **{result.text}** {where}, score {result.score:.2f}; no feasible grasp."
        return (
            f"Found **{result.text}** {where}, score {result.score:.2f}; grasp shown: width "
            f"{100 * grasp.width_m:.1f} cm, quality {grasp.quality:.2f} ({len(result.grasps)} candidates)."
        )

    def _clear_answer(self) -> None:
        for name in ("/answer/points", "/answer/grasp"):
            self.server.scene.remove_by_name(name)

    def _draw_answer(self, result: QueryResult) -> None:
        self._clear_answer()
        scene = self.server.scene
        if len(result.points):
            scene.add_point_cloud(
                "/answer/points", points=np.asarray(result.points, np.float32),
                colors=(255, 40, 40), point_size=0.006,
            )  # fmt: skip
        if result.grasps:
            self._draw_gripper(result.grasps[0])

    def _draw_gripper(self, grasp: Grasp) -> None:
        for name, (world_from_box, size) in zip(("finger_left", "finger_right", "palm"), gripper_boxes(grasp, self.gripper)):
            x, y, z, w = quat_xyzw_from_matrix(world_from_box[:3, :3])
            self.server.scene.add_box(
                f"/answer/grasp/{name}", dimensions=tuple(float(v) for v in size), wxyz=(w, x, y, z),
                position=tuple(float(v) for v in world_from_box[:3, 3]), color=(40, 200, 80), opacity=0.8,
            )  # fmt: skip
