"""A real node run by m3_ros.spin whose final save never returns: the hang a test harness must
report (stack dump on SIGUSR1) before it kills the process. It logs "ready" once spinning and
"finalize: blocking" when its finalize starts, so a test can wait on those lines."""

from __future__ import annotations

import sys
import threading

from rclpy.node import Node

from m3_ros.spin import spin_node


class StuckNode(Node):
    def __init__(self) -> None:
        super().__init__("m3_stuck")
        self.create_timer(0.05, self._on_timer)
        self._announced = False

    def _on_timer(self) -> None:
        if not self._announced:
            self._announced = True
            print("stuck node: ready", flush=True)

    def finalize(self) -> None:
        print("stuck node: finalize: blocking", flush=True)
        threading.Event().wait()  # never set: a save that never returns


def main() -> int:
    return spin_node(StuckNode, "stuck_node", threads=1)


if __name__ == "__main__":
    sys.exit(main())
