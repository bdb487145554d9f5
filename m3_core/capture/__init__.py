"""Capture: streamed color + depth + transforms -> keyframed scene directory (no ROS here).

CaptureSession is the one implementation of the capture logic; the live node (m3_ros.capture_node)
and the offline path (`m3 bag2scene`, bag2scene.bag_to_scene) both drive it, so both keep the same
keyframes with the same poses. PoseChain is the pose-chain node's logic (paper eq. 3).
"""

from m3_core.capture.images import (
    ImageEncodingError,
    array_from_image_fields,
    depth_mm_from_array,
    rgb_from_array,
)
from m3_core.capture.keyframes import KeyframeConfig, KeyframeSelector, sharpness, valid_depth_fraction
from m3_core.capture.pairing import Pair, StampPairer
from m3_core.capture.pose_chain import PoseChain, StampedTransform
from m3_core.capture.session import CaptureConfig, CaptureSession, CaptureStats
from m3_core.capture.writer import SceneWriteError, SceneWriter

__all__ = [
    "CaptureConfig",
    "CaptureSession",
    "CaptureStats",
    "ImageEncodingError",
    "KeyframeConfig",
    "KeyframeSelector",
    "Pair",
    "PoseChain",
    "SceneWriteError",
    "SceneWriter",
    "StampPairer",
    "StampedTransform",
    "array_from_image_fields",
    "depth_mm_from_array",
    "rgb_from_array",
    "sharpness",
    "valid_depth_fraction",
]
