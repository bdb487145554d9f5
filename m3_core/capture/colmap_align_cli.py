"""`m3 colmap-align`: the command line of m3_core.capture.colmap_align."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from m3_core.capture.colmap_align import align_camera_poses, run_pycolmap_sfm, write_aligned_reconstruction
from m3_core.errors import M3Error
from m3_core.scene import load_scene, read_colmap_poses


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scene", type=Path, help="scene directory with robot poses (scene.json + sparse/0)")
    parser.add_argument(
        "recon",
        type=Path,
        nargs="?",
        default=None,
        help="COLMAP model directory (cameras/images/points3D .bin or .txt) of the scene's images",
    )
    parser.add_argument(
        "--run-sfm",
        type=Path,
        default=None,
        metavar="WORKDIR",
        help="instead of RECON: reconstruct SCENE/images with pycolmap SfM (CPU) in WORKDIR first",
    )
    parser.add_argument("--threshold", type=float, default=0.05, help="inlier distance of camera centres, m")
    parser.add_argument("--iterations", type=int, default=1000, help="RANSAC iterations")
    parser.add_argument(
        "--write", type=Path, default=None, help="write the reconstruction in robot coordinates"
    )


def run(args: argparse.Namespace) -> int:
    if (args.recon is None) == (args.run_sfm is None):
        print("m3 colmap-align: give either RECON (an existing COLMAP model) or --run-sfm WORKDIR")
        return 2
    try:
        scene = load_scene(args.scene)
        if args.run_sfm is not None:
            args.recon = run_pycolmap_sfm(Path(args.scene) / "images", args.run_sfm)
            print(f"pycolmap SfM: {args.recon}")
        colmap = {name: pose for name, (_cam, pose) in read_colmap_poses(args.recon).items()}
        robot = {Path(f.image_path).name: f.world_from_camera for f in scene.frames}
        alignment = align_camera_poses(colmap, robot, args.threshold, args.iterations)
    except (ValueError, OSError, M3Error) as err:
        print(f"m3 colmap-align: {err}")
        return 2
    print(alignment.summary())
    print("robot_from_colmap (4x4, scaled rotation):")
    print(np.array2string(alignment.robot_from_colmap.matrix(), precision=6, suppress_small=True))
    if args.write is not None:
        write_aligned_reconstruction(args.recon, args.write, alignment.robot_from_colmap)
        print(f"wrote the reconstruction in robot coordinates to {args.write}")
    return 0

