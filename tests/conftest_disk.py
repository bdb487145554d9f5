"""Real full disks for the writer tests: a small tmpfs (root), filled up to a chosen free space.

No writer is mocked: the code under test writes to a device that has no room left, as on a robot
whose disk filled during a capture. Without permission to mount (not root), tests that need it skip.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, size_kib: int) -> Iterator[Path]:
    """Mount a tmpfs of size_kib KiB at mount_point for the block; skip the test when impossible."""
    mount_point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0777", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill_leaving(mount_point: Path, free_bytes: int) -> None:
    """Write a filler file so that about free_bytes stay free on the file system of mount_point."""
    stat = os.statvfs(mount_point)
    available = stat.f_bavail * stat.f_frsize
    size = max(0, available - free_bytes)
    with open(mount_point / "filler.bin", "wb") as fh:
        fh.write(b"\0" * size)
