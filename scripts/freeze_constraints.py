"""Print pins for constraints.txt: every distribution pip installed in this environment.

    M3_VENV=/tmp/fresh bash scripts/setup_env.sh      # a fresh environment from the README route
    /tmp/fresh/bin/python scripts/freeze_constraints.py > constraints.txt

Left out: this package (editable) and the packages that rosidl/CMake installed (the generated
m3_grasp and tf2_msgs interfaces, and the message packages inside the ROS wheels), which pip does
not resolve. Local version labels are dropped (torch 2.13.0+cpu -> 2.13.0: the CPU index decides).
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import sys

HEADER = """\
# Exact versions of every Python package the README commands install (scripts/setup_env.sh passes
# this file to each `pip install -c`). Regenerate from a fresh environment:
#   M3_VENV=/tmp/fresh bash scripts/setup_env.sh && /tmp/fresh/bin/python scripts/freeze_constraints.py > constraints.txt
"""


def pins() -> list[str]:
    out = set()
    for dist in metadata.distributions():
        if (dist.read_text("INSTALLER") or "").strip() != "pip":
            continue  # installed by CMake (rosidl) or egg-info inside a ROS wheel
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        if direct.get("dir_info", {}).get("editable"):
            continue  # this package
        out.add(f"{dist.metadata['Name']}=={dist.version.split('+')[0]}")
    return sorted(out, key=str.lower)


if __name__ == "__main__":
    sys.stdout.write(HEADER + "\n".join(pins()) + "\n")
