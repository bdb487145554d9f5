"""No code from a stranger's files: a memory cannot pick the weights file that is loaded (a
TorchScript file in it ran during `m3 query`), a bag's type names cannot import a package shipped
next to it, and the processes we start leave the current directory off the import path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from m3_core.model.memory import MANIFEST_FILE
from m3_ros.graph import NodeSpec
from tests.conftest_memory import one_thread, small_memory, small_scene  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]
MARKER = "M3_UNTRUSTED_CODE_RAN"


class _Payload(torch.nn.Module):
    """A module whose TorchScript __setstate__ runs when the file is loaded (torch.jit.load)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        print("M3_UNTRUSTED_CODE_RAN")
        self.w = state[0]
        self.training = state[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _write_payload(path: Path) -> None:
    torch.jit.save(torch.jit.script(_Payload()), str(path))
    check = subprocess.run(
        [sys.executable, "-c", f"import torch; torch.jit.load({str(path)!r})"], capture_output=True, text=True
    )
    assert MARKER in check.stdout, "the payload must run when loaded, or the test below proves nothing"


def test_torchscript_named_by_a_memory_manifest_never_runs(small_memory, tmp_path) -> None:  # noqa: F811
    pytest.importorskip("open_clip", reason="open_clip is not installed (the CLIP text encoder)")
    memory_dir = small_memory.memory.save(tmp_path / "mem")
    _write_payload(memory_dir / "clip_weights.pt")
    manifest = json.loads((memory_dir / MANIFEST_FILE).read_text())
    clip = manifest["models"]["clip"]
    clip.pop("model_id", None)
    clip["random_weights"] = True  # lets the encoder build without weights on this machine
    clip["preprocessing"] = {
        "arch": "ViT-B-16",
        "pretrained": "openai",
        "weights_path": str(memory_dir / "clip_weights.pt"),
        "cache_dir": str(memory_dir),
    }
    (memory_dir / MANIFEST_FILE).write_text(json.dumps(manifest))
    done = subprocess.run(
        [
            sys.executable,
            "-P",
            "-m",
            "m3_ros.cli",
            "query",
            str(memory_dir),
            "a red box",
            "--3d",
            "--model",
            "clip",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    printed = done.stdout + done.stderr
    assert MARKER not in printed
    assert "clip_weights.pt" not in printed  # never opened as weights
    assert "Traceback" not in printed, printed


def test_manifest_options_never_name_files() -> None:
    from m3_core.model.memory import MEMORY_MODEL_OPTIONS, MemoryFileError, memory_model_options

    valid = {
        "arch",
        "pretrained",
        "quick_gelu",
        "weights_path",
        "cache_dir",
        "model_dir",
        "short_side",
        "hf_id",
    }
    options = memory_model_options(
        {
            "arch": "ViT-B-16",
            "weights_path": "/x.pt",
            "cache_dir": "/c",
            "model_dir": "/m",
            "short_side": 224,
        },
        valid,
    )
    assert options == {"arch": "ViT-B-16", "short_side": 224}
    assert not {"weights_path", "cache_dir", "model_dir"} & MEMORY_MODEL_OPTIONS
    with pytest.raises(MemoryFileError, match="hub id"):
        memory_model_options({"hf_id": "../../models/evil"}, valid)


# -- bag message types ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "this/msg/Evil",  # not an installed interface package
        "os/msg/Path",  # stdlib module
        "sensor_msgs/msg/image",  # not CamelCase
        "Sensor_msgs/msg/Image",
        "sensor_msgs/action/Image",
        "../sensor_msgs/msg/Image",
        "sensor_msgs.msg/Image/x",
        "sensor_msgs/msg/Image/Extra",
        "sensor_msgs/msg/Image ",
        "sensor_msgs/msg/NoSuchType",
    ],
)
def test_bag_type_names_outside_the_pattern_or_the_install_are_refused(name) -> None:
    pytest.importorskip("rclpy", reason="rclpy (ROS 2 wheels) is not installed")
    from m3_ros.replay_node import message_class

    with pytest.raises(ValueError, match="message type|interface"):
        message_class(name)


def test_installed_bag_types_resolve() -> None:
    pytest.importorskip("rclpy", reason="rclpy (ROS 2 wheels) is not installed")
    from m3_ros.replay_node import message_class

    for name in ("sensor_msgs/msg/Image", "geometry_msgs/msg/PoseStamped", "tf2_msgs/msg/TFMessage"):
        assert message_class(name).__name__ == name.rsplit("/", 1)[1]


def _package_next_to_a_bag(folder: Path, marker: Path) -> None:
    """What an attacker ships in a bag folder: a package named like the bag's message type."""
    (folder / "this" / "msg").mkdir(parents=True)
    (folder / "this" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (folder / "this" / "msg" / "__init__.py").write_text("class Evil:\n    _TYPE_SUPPORT = None\n")


def test_a_package_in_the_current_directory_is_never_imported_for_a_bag_type(tmp_path) -> None:
    pytest.importorskip("rclpy", reason="rclpy (ROS 2 wheels) is not installed")
    bag_folder, marker = tmp_path / "bag", tmp_path / "ran.txt"
    bag_folder.mkdir()
    _package_next_to_a_bag(bag_folder, marker)
    code = (
        "from m3_ros.replay_node import message_class\n"
        "try:\n    message_class('this/msg/Evil')\nexcept ValueError as err:\n    print('refused:', err)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=bag_folder, capture_output=True, text=True, timeout=120
    )
    assert not marker.exists(), done.stdout + done.stderr  # `python -c` puts the cwd first on sys.path
    assert "refused:" in done.stdout, done.stdout + done.stderr


def _shadow_module(folder: Path, module: str, marker: Path) -> None:
    (folder / f"{module}.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nraise ImportError('shadow')\n"
    )


def test_node_processes_leave_the_current_directory_off_the_import_path(tmp_path) -> None:
    """`m3 ros-demo` / launch start nodes with `python -m`: a yaml.py in the folder must not run."""
    marker = tmp_path / "ran.txt"
    _shadow_module(tmp_path, "yaml", marker)
    cmd = NodeSpec(name="probe", module="m3_core.config", executable="none").command()
    subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert not marker.exists(), " ".join(cmd)


def test_demo_stages_leave_the_current_directory_off_the_import_path(tmp_path, monkeypatch) -> None:
    from m3_ros.demo import _m3

    marker = tmp_path / "ran.txt"
    _shadow_module(tmp_path, "argparse", marker)  # the m3 dispatcher imports argparse first thing
    monkeypatch.chdir(tmp_path)
    _m3(["--help"], timeout=120)
    assert not marker.exists()
