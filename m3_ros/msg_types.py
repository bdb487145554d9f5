"""Message types named by a bag: which ones may be imported, and from where.

A bag is data from someone else, yet its type names (`sensor_msgs/msg/Image`) become Python
imports when publishers are created for them. A name is therefore accepted only when it has the
exact ROS interface form and its package is an installed interface package, found outside the
current directory (a package shipped next to a bag must not run), and the class it names is a
generated rosidl message. BAG_READ_ERRORS lists what reading a broken bag raises.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import site
import sysconfig
from pathlib import Path

from rosbags.highlevel import AnyReaderError
from rosbags.rosbag2 import ReaderError

# What rosbags raises for a file that is not a bag, or a truncated / corrupt one.
BAG_READ_ERRORS: tuple[type[Exception], ...] = (AnyReaderError, ReaderError)

# package/msg/Name: lower-case package (ROS naming rules), msg or srv, CamelCase type
MSG_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]*/(msg|srv)/[A-Z][A-Za-z0-9]*$")


def install_dirs() -> list[Path]:
    """Where installed Python packages live (site-packages of this interpreter and the user's)."""
    dirs = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    dirs.update(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.add(site.getusersitepackages())
    dirs.update(p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p)  # ROS installs
    return [Path(d).resolve() for d in dirs if d]


def _is_installed(package: str) -> bool:
    """True when `package` is found inside an install directory (so not in the current directory,
    which `python -m` and `python -c` put first on sys.path)."""
    spec = importlib.util.find_spec(package)  # top-level: locates the package, runs none of it
    if spec is None:
        return False
    places = list(spec.submodule_search_locations or []) or ([spec.origin] if spec.origin else [])
    roots = install_dirs()
    return bool(places) and all(
        any(root in Path(place).resolve().parents for root in roots) for place in places
    )


def message_class(msgtype: str) -> type:
    """The rclpy message class of a bag type name like 'sensor_msgs/msg/Image' (ValueError otherwise)."""
    if not isinstance(msgtype, str) or not MSG_TYPE_PATTERN.fullmatch(msgtype):
        raise ValueError(
            f"message type {msgtype!r} is not a ROS interface name like sensor_msgs/msg/Image; "
            "leave its topic out with --topics"
        )
    package, kind, name = msgtype.split("/")
    hint = f"pip install ros-{package.replace('_', '-')}"
    if not _is_installed(package):
        raise ValueError(
            f"message type {msgtype} is not from an installed interface package ({hint}); "
            "or leave its topic out with --topics"
        )
    try:
        cls = getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"message type {msgtype} is not installed for rclpy ({hint}); or leave its topic out with --topics"
        ) from err
    if not (isinstance(cls, type) and hasattr(cls, "_TYPE_SUPPORT")):  # what rosidl generates
        raise ValueError(f"{msgtype} is not a generated ROS interface type")
    return cls
