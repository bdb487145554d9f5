"""The memory directory: round trip, atomic save, and clear errors for bad files or requests."""

from __future__ import annotations

import json

import pytest
import torch

from m3_core.errors import M3Error
from m3_core.model.memory import (
    MANIFEST_FILE,
    MEMORY_FORMAT_VERSION,
    TENSORS_FILE,
    M3Memory,
    MemoryFileError,
    UnknownModelError,
    read_manifest,
)
from tests.conftest_memory import one_thread, small_memory, small_scene  # noqa: F401 (fixtures)


@pytest.fixture()
def saved(small_memory, tmp_path):  # noqa: F811
    return small_memory.memory.save(tmp_path / "mem")


def test_round_trip_renders_the_same(small_memory, small_scene, saved) -> None:  # noqa: F811
    scene, _ = small_scene
    mem = small_memory.memory
    loaded = M3Memory.load(saved)
    assert loaded.models == ["language", "clip"]
    for k, v in mem.state_tensors().items():
        torch.testing.assert_close(loaded.state_tensors()[k], v, msg=k)
    frame = scene.frames[1]
    pix = torch.tensor([[3.0, 4.0], [20.0, 30.0], [35.0, 47.0]])
    a = mem.render(torch.as_tensor(frame.world_from_camera), frame.camera, pixels=pix)
    b = loaded.render(torch.as_tensor(frame.world_from_camera), frame.camera, pixels=pix)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[2]["clip"], b[2]["clip"])
    assert b[2]["language"].shape == (3, 24) and b[2]["clip"].shape == (3, 32)
    full = loaded.render(torch.as_tensor(frame.world_from_camera), frame.camera, models=["language"])
    assert (
        full[0].shape == (36, 48, 3)
        and full[1].shape == (36, 48)
        and full[2]["language"].shape == (36, 48, 24)
    )
    g = loaded.gaussian_features("clip")
    assert g.shape == (loaded.gaussians.num_gaussians, 32) and torch.isfinite(g).all()
    man = json.loads((saved / MANIFEST_FILE).read_text())
    assert man["version"] == MEMORY_FORMAT_VERSION and man["head"] == "attention"
    assert "kind" not in man  # one name for the head: `kind` is read from older memories only
    assert man["models"]["clip"]["query_dim"] == 16 and man["models"]["clip"]["theta"] == 0.8
    assert man["models"]["clip"]["random_weights"] is True
    assert man["frames"]["heldout"] == ["frame_000000", "frame_000008"]
    assert man["training"]["iterations"] == 40


@pytest.mark.parametrize(("kind", "head"), [("m3", "attention"), ("distill", "linear"), (None, "attention")])
def test_older_manifest_kind_still_loads(saved, kind, head) -> None:
    """Memories written before the `head` key named the head by `kind` (or, the first ones, not at all)."""
    man_path = saved / MANIFEST_FILE
    man = json.loads(man_path.read_text())
    del man["head"]
    if kind is not None:
        man["kind"] = kind
    man_path.write_text(json.dumps(man))
    assert read_manifest(saved)["head"] == head
    loaded = M3Memory.load(saved)  # each model's entry names its decoder; the top-level key summarises
    assert loaded.manifest["head"] == head and "kind" not in loaded.manifest


def test_unknown_head_is_refused(saved) -> None:
    man_path = saved / MANIFEST_FILE
    man = json.loads(man_path.read_text())
    man["head"] = "transformer"
    man_path.write_text(json.dumps(man))
    with pytest.raises(MemoryFileError, match="unknown head"):
        M3Memory.load(saved)


def test_unknown_model_lists_held_ones(saved) -> None:
    mem = M3Memory.load(saved)
    with pytest.raises(UnknownModelError, match="holds: language, clip"):
        mem.render(torch.eye(4, dtype=torch.float64), mem_camera(), models=["siglip"])
    with pytest.raises(M3Error, match="dinov2"):
        mem.gaussian_features("dinov2")


def mem_camera():
    from m3_core.geometry.camera import PinholeCamera

    return PinholeCamera(40.0, 40.0, 23.5, 17.5, 48, 36)


def test_newer_version_is_refused(saved) -> None:
    man = json.loads((saved / MANIFEST_FILE).read_text())
    man["version"] = MEMORY_FORMAT_VERSION + 1
    (saved / MANIFEST_FILE).write_text(json.dumps(man))
    with pytest.raises(MemoryFileError, match="update m3-grasp"):
        M3Memory.load(saved)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "manifest", "missing"])
def test_corrupt_files_give_clear_errors(saved, damage: str) -> None:
    tensors = saved / TENSORS_FILE
    if damage == "truncate":
        data = tensors.read_bytes()
        tensors.write_bytes(data[: len(data) // 2])
        match = "truncated or corrupt"
    elif damage == "garbage":
        tensors.write_bytes(b"\x00" * 100)
        match = "truncated or corrupt"
    elif damage == "manifest":
        (saved / MANIFEST_FILE).write_text('{"format": "m3-memory", "vers')
        match = "not valid JSON"
    else:
        tensors.unlink()
        match = "incomplete"
    with pytest.raises(MemoryFileError, match=match):
        M3Memory.load(saved)


def test_not_a_memory(tmp_path) -> None:
    with pytest.raises(MemoryFileError, match="manifest.json is missing"):
        M3Memory.load(tmp_path)


def test_failed_save_keeps_the_old_memory(small_memory, saved, monkeypatch) -> None:  # noqa: F811
    before = (saved / TENSORS_FILE).read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("m3_core.model.memory.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        small_memory.memory.save(saved)
    assert (saved / TENSORS_FILE).read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == ["mem"]  # no temp dirs left behind


def test_atomic_directory_swaps_whole_or_keeps_the_old(tmp_path) -> None:
    import os

    from m3_core.scene import atomic_directory

    target = tmp_path / "memory"
    with atomic_directory(target, marker="a.txt") as tmp:
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o777 & ~umask  # a plain mkdir's mode, not mkdtemp's 0700
    with pytest.raises(RuntimeError), atomic_directory(target, marker="a.txt") as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("crash while writing")
    assert (target / "a.txt").read_text() == "first"  # the old directory is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory"]  # no temp directories left
