"""No data lost: outputs replace only their own kind, writers verify what reached the disk, paths
stay inside their folder, and bad command-line input ends in one line (issue: trust / data lost).

Each test is a probe that lost data or printed a traceback before: the notes folder wiped by
`m3 train --out`, the scene deleted by `--out SCENE`, a 0-byte images.bin reported as success on a
full disk, a depth path `../outside/x.png` read from outside the scene.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from m3_core.errors import M3Error
from m3_core.geometry.camera import PinholeCamera
from m3_core.model.memory import MANIFEST_FILE, TENSORS_FILE, M3Memory
from m3_core.scene import (
    SCENE_JSON,
    Frame,
    OutputExistsError,
    SceneError,
    atomic_directory,
    load_scene,
    read_colmap_poses,
    write_colmap_model,
)
from m3_ros.cli import main as m3_main
from tests.conftest_capture import write_synthetic_bag
from tests.conftest_disk import fill_leaving, small_tmpfs
from tests.conftest_memory import one_thread, small_memory, small_scene  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]


def _one_line_error(printed: str, prefix: str) -> None:
    """A refusal is one line that names the command, never a traceback."""
    assert "Traceback" not in printed, printed
    lines = [ln for ln in printed.strip().splitlines() if ln.startswith(prefix)]
    assert len(lines) == 1, printed


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    return write_synthetic_bag(tmp_path_factory.mktemp("safety_bag") / "bag")


@pytest.fixture()
def scene_dir(bag, tmp_path, capsys) -> Path:
    out = tmp_path / "scene"
    assert m3_main(["bag2scene", str(bag), str(out)]) == 0
    capsys.readouterr()
    return out


# -- 1. an output replaces only its own kind, never the input ---------------------------------


def test_train_refuses_to_replace_a_folder_that_is_not_a_memory(small_scene, tmp_path, capsys) -> None:  # noqa: F811
    scene, _ = small_scene
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("my notes")
    code = m3_main(["train", str(scene.root), "--out", str(notes), "--iters", "2", "--quiet"])
    printed = capsys.readouterr().out
    assert code != 0
    _one_line_error(printed, "m3 train:")
    assert "not a memory" in printed
    assert (notes / "todo.txt").read_text() == "my notes"


def test_train_refuses_the_scene_itself_as_output(small_scene, tmp_path, capsys) -> None:  # noqa: F811
    scene, _ = small_scene
    copy = tmp_path / "scene"
    shutil.copytree(scene.root, copy)
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    for out in (copy, tmp_path):  # the scene, and a folder holding it
        code = m3_main(["train", str(copy), "--out", str(out), "--iters", "2", "--quiet"])
        printed = capsys.readouterr().out
        assert code != 0, printed
        _one_line_error(printed, "m3 train:")
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before
    assert len(load_scene(copy)) == len(scene)


def test_train_output_under_a_file_is_one_line(small_scene, tmp_path, capsys) -> None:  # noqa: F811
    scene, _ = small_scene
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for out in (blocker, blocker / "memory"):
        code = m3_main(["train", str(scene.root), "--out", str(out), "--iters", "2", "--quiet"])
        printed = capsys.readouterr().out
        assert code != 0
        _one_line_error(printed, "m3 train:")
    assert blocker.read_text() == "x"


def test_memory_save_replaces_a_memory_and_nothing_else(small_memory, tmp_path) -> None:  # noqa: F811
    memory = small_memory.memory
    target = memory.save(tmp_path / "mem")
    memory.save(target)  # a memory replaces a memory
    assert M3Memory.load(target).models == memory.models
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"jpeg")
    with pytest.raises(OutputExistsError, match="not a memory"):
        memory.save(other)
    assert (other / "a.jpg").read_bytes() == b"jpeg"
    with pytest.raises(OutputExistsError), atomic_directory(other, marker=MANIFEST_FILE) as tmp:
        (tmp / "x").write_text("never swapped in")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mem", "photos"]  # no temp dirs left


def test_memory_files_have_the_same_plain_permissions(small_memory, tmp_path) -> None:  # noqa: F811
    path = small_memory.memory.save(tmp_path / "mem")
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {name: os.stat(path / name).st_mode & 0o777 for name in (TENSORS_FILE, MANIFEST_FILE)}
    assert modes == {TENSORS_FILE: 0o666 & ~umask, MANIFEST_FILE: 0o666 & ~umask}, modes


def test_bag2scene_never_writes_into_or_clears_a_folder_that_is_not_a_scene(bag, tmp_path, capsys) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("my notes")
    assert m3_main(["bag2scene", str(bag), str(notes)]) == 2
    _one_line_error(capsys.readouterr().out, "m3 bag2scene:")
    assert sorted(p.name for p in notes.iterdir()) == ["todo.txt"]
    photos = tmp_path / "photos"
    (photos / "images").mkdir(parents=True)
    (photos / "images" / "holiday.png").write_bytes(b"png")
    assert (
        m3_main(["bag2scene", str(bag), str(photos), "--overwrite"]) == 0
    )  # no scene there: nothing cleared
    capsys.readouterr()
    assert (photos / "images" / "holiday.png").read_bytes() == b"png"


def test_colmap_align_write_replaces_only_a_colmap_model(tmp_path) -> None:
    from m3_core.capture.colmap_align import write_aligned_reconstruction
    from m3_core.geometry.sim3 import Sim3

    model = tmp_path / "sfm"
    write_colmap_model(model, _frames(3), points=np.random.default_rng(0).random((20, 3)))
    identity = Sim3(1.0, np.eye(3), np.zeros(3))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("my notes")
    with pytest.raises(OutputExistsError):
        write_aligned_reconstruction(model, notes, identity)
    assert (notes / "todo.txt").read_text() == "my notes"
    write_aligned_reconstruction(model, tmp_path / "aligned", identity)
    write_aligned_reconstruction(model, tmp_path / "aligned", identity)  # a model replaces a model
    assert len(read_colmap_poses(tmp_path / "aligned")) == 3


# -- 2. a full disk fails the command with one line; nothing half-written is swapped in --------


def _frames(n: int) -> list[Frame]:
    cam = PinholeCamera(500.0, 500.0, 320.0, 240.0, 640, 480)
    poses = [np.eye(4) for _ in range(n)]
    for i, pose in enumerate(poses):
        pose[0, 3] = 0.01 * i
    return [
        Frame(f"frame_{i:06d}", i, cam, poses[i], Path(f"images/frame_{i:06d}.png"), None) for i in range(n)
    ]


def test_colmap_model_on_a_full_tmpfs_fails_and_keeps_the_old_model(tmp_path) -> None:
    with small_tmpfs(tmp_path / "disk", 256) as disk:
        sparse = disk / "sparse" / "0"
        write_colmap_model(sparse, _frames(3))
        before = {p.name: p.read_bytes() for p in sparse.iterdir()}
        fill_leaving(disk, 12 * 1024)  # the small files fit, images.bin of 800 frames (~70 kB) does not
        with pytest.raises(SceneError, match="COLMAP model"):
            write_colmap_model(sparse, _frames(800), points=np.random.default_rng(0).random((2000, 3)))
        assert {p.name: p.read_bytes() for p in sparse.iterdir()} == before  # old model intact
        assert len(read_colmap_poses(sparse)) == 3
        assert sorted(p.name for p in sparse.parent.iterdir()) == ["0"]  # no temp dirs left


_RLIMIT_CHILD = """
import sys
from pathlib import Path
import numpy as np
from m3_core.geometry.camera import PinholeCamera
from m3_core.scene import Frame, SceneError, write_colmap_model
cam = PinholeCamera(500.0, 500.0, 320.0, 240.0, 640, 480)
frames = [Frame(f"frame_{i:06d}", i, cam, np.eye(4), Path(f"images/frame_{i:06d}.png"), None) for i in range(400)]
try:
    write_colmap_model(Path(sys.argv[1]), frames)
except SceneError as err:
    print("REFUSED", err)
else:
    print("WROTE")
"""


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))  # bytes per file
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG


def test_colmap_model_short_write_under_a_file_size_limit_is_refused(tmp_path) -> None:
    """Without root (no tmpfs): RLIMIT_FSIZE makes pycolmap's writer stop short, as a full disk does."""
    done = subprocess.run(
        [sys.executable, "-c", _RLIMIT_CHILD, str(tmp_path / "sparse" / "0")],
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
        timeout=300,
    )
    assert "REFUSED" in done.stdout, done.stdout + done.stderr
    assert not (tmp_path / "sparse" / "0").exists()


def test_bag2scene_on_a_full_disk_fails_with_one_line(bag, tmp_path) -> None:
    with small_tmpfs(tmp_path / "disk", 160) as disk:  # the scene needs ~370 kB
        done = subprocess.run(
            [sys.executable, "-P", "-m", "m3_ros.cli", "bag2scene", str(bag), str(disk / "scene")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        printed = done.stdout + done.stderr
        assert done.returncode != 0, printed
        _one_line_error(done.stdout, "m3 bag2scene:")
        assert " keyframes in " not in done.stdout  # no success line


def test_memory_save_on_a_full_disk_is_refused_and_leaves_nothing(small_memory, tmp_path) -> None:  # noqa: F811
    memory = small_memory.memory
    with small_tmpfs(tmp_path / "disk", 64) as disk:  # the memory is larger than 64 KiB
        with pytest.raises((M3Error, OSError)) as info:
            memory.save(disk / "mem")
        assert "memory.safetensors" in str(info.value) or "No space" in str(info.value)
        assert sorted(p.name for p in disk.iterdir()) == []


def test_train_on_a_full_disk_is_one_line(small_scene, tmp_path, capsys) -> None:  # noqa: F811
    scene, _ = small_scene
    with small_tmpfs(tmp_path / "disk", 64) as disk:
        code = m3_main(
            [
                "train",
                str(scene.root),
                "--out",
                str(disk / "mem"),
                "--iters",
                "2",
                "--quiet",
                "--threads",
                "1",
            ]
        )
        printed = capsys.readouterr().out
        assert code != 0
        _one_line_error(printed, "m3 train:")


# -- 5. paths in scene.json stay inside the scene ------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("depth", "../outside/x.png"),
        ("image", "../outside/x.png"),
        ("depth", "/etc/hostname"),
        ("image", "images/../../outside/x.png"),
        ("name", "../../outside/x"),
    ],
)
def test_scene_paths_outside_the_folder_are_refused(scene_dir, key, value) -> None:
    outside = scene_dir.parent / "outside"
    outside.mkdir(exist_ok=True)
    shutil.copy(next((scene_dir / "depth").iterdir()), outside / "x.png")
    meta = json.loads((scene_dir / SCENE_JSON).read_text())
    meta["frames"][0][key] = value
    (scene_dir / SCENE_JSON).write_text(json.dumps(meta))
    with pytest.raises(SceneError, match="leaves the folder|not a plain file name"):
        load_scene(scene_dir)


# -- 6. bad command-line input: one line, no traceback -----------------------------------------


@pytest.fixture(scope="module")
def bad_bags(bag, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_bags")
    text = root / "notes.txt"
    text.write_text("not a bag\n")
    mcap = next(bag.glob("*.mcap"))
    truncated = root / "truncated.mcap"
    truncated.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    folder = root / "truncated_bag"
    folder.mkdir()
    shutil.copy(bag / "metadata.yaml", folder)
    (folder / mcap.name).write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    return {"text file": text, "truncated mcap": truncated, "truncated bag folder": folder}


@pytest.mark.parametrize("which", ["text file", "truncated mcap", "truncated bag folder"])
def test_bag2scene_bad_bag_is_one_line(bad_bags, which, tmp_path, capsys) -> None:
    code = m3_main(["bag2scene", str(bad_bags[which]), str(tmp_path / "scene")])
    printed = capsys.readouterr().out
    assert code == 2
    _one_line_error(printed, "m3 bag2scene:")


@pytest.mark.parametrize("which", ["text file", "truncated mcap", "truncated bag folder"])
def test_replay_bad_bag_is_one_line(bad_bags, which, ros_env) -> None:
    pytest.importorskip("rclpy", reason="rclpy (ROS 2 wheels) is not installed")
    done = subprocess.run(
        [sys.executable, "-P", "-m", "m3_ros.cli", "replay", str(bad_bags[which]), "--wait-for"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=ros_env,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    _one_line_error(done.stderr, "m3 replay:")


def test_bag2scene_output_that_is_a_file_is_one_line(bag, tmp_path, capsys) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for out in (blocker, blocker / "scene"):
        code = m3_main(["bag2scene", str(bag), str(out)])
        printed = capsys.readouterr().out
        assert code != 0
        _one_line_error(printed, "m3 bag2scene:")
    assert blocker.read_text() == "x"


def test_bag2scene_gt_flag_points_to_sim_masks_before_any_work(bag, tmp_path, capsys) -> None:
    code = m3_main(["bag2scene", str(bag), str(tmp_path / "scene"), "--gt", str(tmp_path / "no_gt")])
    printed = capsys.readouterr().out
    assert code == 2
    _one_line_error(printed, "m3 bag2scene:")
    assert "m3 sim masks" in printed
    assert not (tmp_path / "scene").exists()


def test_sim_masks_missing_gt_folder_is_one_line(bag, tmp_path, capsys) -> None:
    scene = tmp_path / "scene"
    assert m3_main(["bag2scene", str(bag), str(scene)]) == 0
    capsys.readouterr()
    code = m3_main(["sim", "masks", str(scene), str(tmp_path / "no_gt")])
    printed = capsys.readouterr().out
    assert code == 2
    _one_line_error(printed, "m3 sim masks:")
    assert not (scene / "masks").exists()


@pytest.fixture(scope="module")
def saved_memory(small_scene, tmp_path_factory) -> Path:  # noqa: F811
    """A language memory trained by `m3 train` (real caption embeddings), so a text query runs through."""
    scene, _ = small_scene
    out = tmp_path_factory.mktemp("safety_memory") / "mem"
    assert (
        m3_main(["train", str(scene.root), "--out", str(out), "--iters", "20", "--quiet", "--threads", "1"])
        == 0
    )
    return out


def test_query_out_on_a_file_is_one_line(saved_memory, small_scene, tmp_path, capsys) -> None:  # noqa: F811
    scene, _ = small_scene
    blocker = tmp_path / "result.txt"
    blocker.write_text("keep me")
    for out in (blocker, blocker / "sub"):
        code = m3_main(
            ["query", str(saved_memory), "a red box", "--scene", str(scene.root), "--out", str(out)]
        )
        printed = capsys.readouterr()
        assert code == 2, printed
        _one_line_error(printed.err, "m3 query:")
    assert blocker.read_text() == "keep me"


def test_query_intrinsics_asking_for_a_huge_render_are_refused(saved_memory, capsys) -> None:
    pose = ["0", "0", "1", "0", "0", "0", "1"]
    huge = ["600", "600", "160000", "90000", "320000", "180000"]  # ~57.6 GP: tens of GB per channel
    code = m3_main(["query", str(saved_memory), "a red box", "--pose", *pose, "--intrinsics", *huge])
    printed = capsys.readouterr()
    assert code == 2
    _one_line_error(printed.err, "m3 query:")
    assert "megapixels" in printed.err
