"""`m3 view MEMORY`: open a memory in the browser (viser): orbit it, render it, query it.

    m3 view runs/memory                 # then open http://127.0.0.1:8080
    m3 view runs/memory --port 8090 --host 0.0.0.0   # reachable from other machines on your network

Exit codes: 0 after Ctrl-C / SIGTERM, 2 bad input (no memory, port in use).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from pathlib import Path

from m3_core.errors import M3Error
from m3_core.model.memory import M3Memory
from m3_core.query.config import QueryConfig
from m3_core.robot import load_robot_config
from m3_core.view.app import MemoryViewer, ViewerConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("memory", type=Path, help="memory directory (manifest.json + memory.safetensors)")
    parser.add_argument("--host", default=ViewerConfig.host, help="address to serve on (default: this machine only)")
    parser.add_argument("--port", type=int, default=ViewerConfig.port, help="web page port")
    parser.add_argument("--model", default="", help='feature model to query ("" = language if held)')
    parser.add_argument("--robot-config", type=Path, help="robot YAML with the gripper (default: B1+Z1)")
    parser.add_argument(
        "--panel-height", type=int, default=ViewerConfig.panel_height_px, help="rendered panel height, pixels"
    )


def run(args: argparse.Namespace) -> int:
    import viser  # local: heavy optional dependency, only this command needs it


    if not 1 <= args.port <= 65535 or not 16 <= args.panel_height <= 2048:
        print("m3 view: --port must be 1-65535 and --panel-height 16-2048", file=sys.stderr)
        return 2
    try:
        memory = M3Memory.load(args.memory.expanduser())
        memory.eval()
        robot = load_robot_config(args.robot_config.expanduser() if args.robot_config else None)
        if args.model and args.model not in memory.models:
            raise ValueError(f"unknown model {args.model!r}: this memory holds {list(memory.models)}")
    except (OSError, ValueError, M3Error) as err:
        print(f"m3 view: {err}", file=sys.stderr)
        return 2
    config = ViewerConfig(host=args.host, port=args.port, panel_height_px=args.panel_height, model=args.model)
    try:
        server = viser.ViserServer(host=config.host, port=config.port, verbose=False)
    except OSError as err:
        print(f"m3 view: cannot serve on {config.host}:{config.port}: {err}", file=sys.stderr)
        return 2
    MemoryViewer(memory, server, config, QueryConfig(), robot)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"m3 view: {args.memory} at http://{config.host}:{server.get_port()} (Ctrl-C to stop)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    server.stop()
    return 0
