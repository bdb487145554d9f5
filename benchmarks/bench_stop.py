"""Stop benchmark: SIGINT to a capture node under replay traffic, N times over fresh processes.

    .venv/bin/python benchmarks/bench_stop.py [--runs 10] [--rate 1] [--spread-s 2] [--json OUT]

Each run starts m3_pose_chain_node, m3_capture_node (saving every keyframe) and a looping replay of
the synthetic test bag (45 frames 160x120), waits for the capture's first save, waits a further
random 0..--spread-s seconds (so the stop lands at different points of the work), sends SIGINT to
the capture node while the replay still sends and times SIGINT -> exit. A node that does not exit
within m3_ros.ros_demo.STOP_TIMEOUT_S has its stacks dumped (SIGUSR1) and is killed.
Prints one row per run and the exit codes, stop duration p50 / max, and runs that lost keyframes
(saved on disk != kept).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest_capture import write_synthetic_bag  # noqa: E402
from tests.conftest_stop import stop_capture_under_traffic  # noqa: E402  (sets an own ROS domain)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=1.0, help="replay rate")
    parser.add_argument("--spread-s", type=float, default=2.0, help="extra wait after the first save: 0..S s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="keep bag, scenes and logs here")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="m3_bench_stop_"))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    bag = work / "bag"
    if not bag.exists():
        write_synthetic_bag(bag)
    rng = random.Random(args.seed)
    rows = []
    print(f"{'run':>3} {'extra_s':>7} {'exit':>4} {'stop_s':>6} {'saved':>5} {'kept':>4} final_save traffic")
    for i in range(args.runs):
        extra = rng.uniform(0.0, args.spread_s)
        run = stop_capture_under_traffic(
            bag, work / f"scene{i}", env, work / f"logs{i}", rate=args.rate, extra_wait_s=extra
        )
        rows.append(
            {"run": i + 1, "extra_s": round(extra, 2), "exit": run.code, "stop_s": round(run.stop_s, 2),
             "saved": run.saved, "kept": run.kept, "final_save": run.final_save, "traffic": run.traffic,
             "others": run.others}
        )  # fmt: skip
        r = rows[-1]
        print(f"{r['run']:>3} {r['extra_s']:>7.2f} {r['exit']:>4} {r['stop_s']:>6.2f} {r['saved']:>5} "
              f"{r['kept']:>4} {str(r['final_save']):>10} {r['traffic']}", flush=True)  # fmt: skip
    stops = np.array([r["stop_s"] for r in rows])
    codes = sorted({r["exit"] for r in rows})
    summary = {
        "runs": len(rows),
        "exit_0": sum(r["exit"] == 0 for r in rows),
        "exit_codes": codes,
        "stop_s_p50": round(float(np.median(stops)), 2),
        "stop_s_max": round(float(stops.max()), 2),
        "lost_keyframes_runs": sum(r["saved"] != r["kept"] for r in rows),
        "other_nodes_nonzero": sum(any(c != 0 for c in r["others"].values()) for r in rows),
        "rate": args.rate,
        "work": str(work),
    }
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": rows}, indent=1) + "\n")
    return 0 if summary["exit_0"] == len(rows) and summary["lost_keyframes_runs"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
