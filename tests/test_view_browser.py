"""`m3 view` in a real headless Chromium: the page loads, a typed query changes the picture, the
gripper appears at the grasp.

The viewer runs as its own process (`m3 view`, exactly what a user starts) on the analytic memory of
conftest_query; Chromium is driven by Selenium through the system chromedriver.
"""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from m3_core.geometry.camera import PinholeCamera
from m3_core.view.app import world_from_viser_camera
from m3_core.view.images import camera_from_fov, depth_image
from tests.conftest_query import build_memory

CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def viewer_url(tmp_path_factory) -> Iterator[str]:
    memory = build_memory(tmp_path_factory.mktemp("view") / "memory")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "m3_ros.cli", "view", str(memory), "--port", str(port), "--panel-height", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        # Ready when it prints its address (the server is listening by then).
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("m3 view:"):
                break
        assert proc.poll() is None, "m3 view exited:\n" + "".join(lines)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, f"m3 view did not stop cleanly on SIGTERM (exit {proc.returncode})"


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if not (CHROMEDRIVER and CHROMIUM):
        pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,700",
                "--enable-unsafe-swiftshader", "--use-angle=swiftshader"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _screenshot(driver) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")).astype(np.int16)


def _green_pixels(image: np.ndarray) -> int:
    """Pixels of the gripper's colour (40, 200, 80), give or take shading."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return int(((g > 120) & (g - r > 60) & (g - b > 40)).sum())


def _page_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


@pytest.mark.slow
def test_query_in_the_browser_shows_object_and_gripper(viewer_url, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(viewer_url)
    button = _wait_for(lambda: [b for b in browser.find_elements(By.TAG_NAME, "button") if b.text == "Find"],
                       120, "the Find button")[0]  # fmt: skip
    _wait_for(lambda: "Type an object" in _page_text(browser), 60, "the status line")
    # The splats and the panel (the memory rendered by our renderer) draw after the page is up:
    # wait until two screenshots in a row agree, then every later step waits on a visible change.
    shots_before: list[np.ndarray] = [_screenshot(browser)]

    def settled() -> bool:
        shots_before.append(_screenshot(browser))
        a, b = shots_before[-2:]
        return bool((np.abs(a - b).sum(axis=2) > 30).mean() < 1e-4) and bool(b.max() > 0)

    _wait_for(settled, 120, "the page to finish drawing")
    before = shots_before[-1]
    green_before = _green_pixels(before)  # the axes gizmo and the "connected" icon are green too

    query = [i for i in browser.find_elements(By.TAG_NAME, "input") if i.get_attribute("type") == "text"][-1]
    query.send_keys("yellow rubber duck", Keys.TAB)
    # The text reaches the viewer while it is typed; Find queries what has arrived (a click right
    # after the last key, on a busy machine, once queried "y"): wait for the viewer's echo of it.
    _wait_for(lambda: "look for yellow rubber duck" in _page_text(browser), 60, "the viewer to have the typed text")
    button.click()
    _wait_for(lambda: "ound " in _page_text(browser), 180, "the query's status line")  # Found / Not found
    page = _page_text(browser)
    assert "Found yellow rubber duck" in page and "grasp shown" in page, page
    shots: list[np.ndarray] = []
    _wait_for(
        lambda: _green_pixels(shots.append(_screenshot(browser)) or shots[-1]) >= green_before + 40,
        60, "the gripper to be drawn",
    )  # fmt: skip
    after = shots[-1]
    changed = np.abs(after - before).sum(axis=2) > 30
    assert changed.mean() > 0.002, f"the picture barely changed ({changed.mean():.4f} of the pixels)"


def test_viser_camera_is_opencv_world_from_camera() -> None:
    T = world_from_viser_camera(np.array([1.0, 0.0, 0.0, 0.0]), np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(T, np.array([[1, 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1.0]]))


def test_camera_from_fov_matches_the_pinhole_model() -> None:
    camera = camera_from_fov(np.deg2rad(60.0), 1.5, 120)
    assert isinstance(camera, PinholeCamera) and (camera.width, camera.height) == (180, 120)
    np.testing.assert_allclose(camera.fy, 60.0 / np.tan(np.deg2rad(30.0)))
    with pytest.raises(ValueError):
        camera_from_fov(0.0, 1.5, 120)


def test_depth_image_is_near_bright_and_empty_black() -> None:
    depth = np.array([[0.5, 1.0], [2.0, 0.0]])
    alpha = np.array([[1.0, 1.0], [1.0, 0.0]])
    image = depth_image(depth, alpha)
    assert image[0, 0, 0] > image[0, 1, 0] > image[1, 0, 0] and image[1, 1].sum() == 0


def test_m3_view_refuses_a_missing_memory(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "m3_ros.cli", "view", str(tmp_path / "nothing"), "--port", str(_free_port())],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and "m3 view:" in out.stderr and "Traceback" not in out.stderr
