"""`m3 colmap-align SCENE RECON`: Sim(3) from a COLMAP reconstruction to the robot world frame.

The paper's COLMAP_0 T_c0 step. Images are matched by file name between the scene (robot poses from
the pose chain) and the reconstruction (e.g. pycolmap SfM on scene/images); the camera centres give
robot_from_colmap by robust Umeyama (RANSAC over 3-point fits, refit on inliers). Residuals are
reported per camera (centre distance in metres, orientation difference in degrees) and the
reconstruction can be rewritten in robot coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from m3_core.capture.keyframes import rotation_angle_deg
from m3_core.geometry.camera import PinholeCamera
from m3_core.geometry.sim3 import Sim3, umeyama_sim3_robust
from m3_core.scene import atomic_directory, verify_colmap_model


@dataclass(frozen=True)
class Alignment:
    """robot_from_colmap and how well each matched camera fits it."""

    robot_from_colmap: Sim3
    names: list[str]
    inliers: np.ndarray  # [N] bool
    centre_residuals_m: np.ndarray  # [N] |robot centre - aligned COLMAP centre|
    rotation_residuals_deg: np.ndarray  # [N] angle between robot and aligned COLMAP orientation

    def summary(self) -> str:
        s = self.robot_from_colmap
        angle = np.degrees(np.linalg.norm(_rotvec(s.rotation)))
        inl = self.inliers
        r, a = self.centre_residuals_m[inl], self.rotation_residuals_deg[inl]
        lines = [
            f"robot_from_colmap: scale {s.scale:.6f}, rotation {angle:.3f} deg, translation "
            f"[{', '.join(f'{v:.4f}' for v in s.translation)}] m",
            f"cameras matched {len(self.names)}, inliers {int(inl.sum())}, outliers {int((~inl).sum())}",
            f"inlier centre residual: rms {np.sqrt(np.mean(r**2)):.4f} m, median {np.median(r):.4f} m, "
            f"max {r.max():.4f} m; orientation: median {np.median(a):.3f} deg, max {a.max():.3f} deg",
        ]
        outliers = [
            f"{n} ({d:.3f} m)" for n, d, ok in zip(self.names, self.centre_residuals_m, inl) if not ok
        ]
        if outliers:
            lines.append("outliers: " + ", ".join(outliers[:20]) + (" ..." if len(outliers) > 20 else ""))
        return "\n".join(lines)


def _rotvec(R: np.ndarray) -> np.ndarray:
    return Rotation.from_matrix(R).as_rotvec()


def align_camera_poses(
    colmap_poses: dict[str, np.ndarray],
    robot_poses: dict[str, np.ndarray],
    inlier_threshold_m: float = 0.05,
    iterations: int = 1000,
    seed: int = 0,
) -> Alignment:
    """Estimate robot_from_colmap from world_from_camera poses of the same images in both frames.

    colmap_poses, robot_poses: {image name: world_from_camera [4,4]} (COLMAP's and the robot's world).
    inlier_threshold_m: a camera whose aligned centre is farther than this from the robot's is an outlier.
    """
    names = sorted(set(colmap_poses) & set(robot_poses))
    if len(names) < 3:
        raise ValueError(
            f"only {len(names)} image names are common to the reconstruction and the scene (need >= 3); "
            "was the reconstruction made from the scene's images/ with their file names?"
        )
    src = np.stack([colmap_poses[n][:3, 3] for n in names])
    dst = np.stack([robot_poses[n][:3, 3] for n in names])
    sim3, inliers = umeyama_sim3_robust(src, dst, inlier_threshold_m, iterations=iterations, seed=seed)
    centre_res = np.linalg.norm(sim3.apply(src) - dst, axis=1)
    rot_res = np.array(
        [rotation_angle_deg(sim3.apply_to_pose(colmap_poses[n]), robot_poses[n]) for n in names]
    )
    return Alignment(sim3, names, inliers, centre_res, rot_res)


def write_aligned_reconstruction(recon_dir: Path, out_dir: Path, robot_from_colmap: Sim3) -> None:
    """Copy a COLMAP model to out_dir with every image and point mapped into robot coordinates."""
    import pycolmap  # local: heavy import, only for COLMAP models

    rec = pycolmap.Reconstruction(str(recon_dir))
    s = robot_from_colmap
    rec.transform(pycolmap.Sim3d(s.scale, pycolmap.Rotation3d(s.rotation), s.translation.reshape(3, 1)))
    # replaces only a COLMAP model (never another folder), and only once the files read back whole
    with atomic_directory(Path(out_dir), marker="cameras.bin", what="COLMAP model") as tmp:
        rec.write_binary(str(tmp))
        verify_colmap_model(tmp, rec)


def run_pycolmap_sfm(
    image_dir: Path, work_dir: Path, camera: PinholeCamera | None = None, dense_sift: bool = False
) -> Path:
    """SIFT + exhaustive matching + incremental mapping with pycolmap (CPU), one shared PINHOLE camera.

    camera: known intrinsics (e.g. from camera_info), held fixed; None lets SfM estimate them.
    dense_sift: a 3x lower SIFT peak threshold and up to 16384 features per image: on low-contrast
    images (rendered or matte tabletops) this cut SfM's rotation error about tenfold; slower.
    Returns the folder of the largest reconstruction (work_dir/sparse/<k>). Raises ValueError when
    nothing could be reconstructed (too few images, no texture).
    """
    import pycolmap  # local: heavy import, only for COLMAP models

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    database = work_dir / "database.db"
    database.unlink(missing_ok=True)
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "PINHOLE"  # the scene's images are undistorted pinhole images
    options = pycolmap.IncrementalPipelineOptions()
    if camera is not None:  # a calibrated camera: free intrinsics only add pose error
        # COLMAP puts pixel centres at +0.5 (OpenCV's, used here, at 0)
        reader.camera_params = f"{camera.fx},{camera.fy},{camera.cx + 0.5},{camera.cy + 0.5}"
        options.ba_refine_focal_length = False
        options.ba_refine_principal_point = False
        options.ba_refine_extra_params = False
    extraction = pycolmap.FeatureExtractionOptions()
    if dense_sift:
        extraction.sift.peak_threshold = 0.002  # COLMAP's default 0.0067 keeps few on flat colours
        extraction.sift.max_num_features = 16384
    pycolmap.extract_features(
        database,
        image_dir,
        camera_mode=pycolmap.CameraMode.SINGLE,
        reader_options=reader,
        extraction_options=extraction,
        device=pycolmap.Device.cpu,
    )
    pycolmap.match_exhaustive(database, device=pycolmap.Device.cpu)
    recs = pycolmap.incremental_mapping(database, image_dir, work_dir / "sparse", options)
    if not recs:
        raise ValueError(f"pycolmap could not reconstruct {image_dir} (too few images or matches)")
    best = max(recs, key=lambda k: recs[k].num_reg_images())
    return work_dir / "sparse" / str(best)
