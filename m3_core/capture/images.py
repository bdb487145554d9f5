"""Pixels of a sensor_msgs/Image given as plain fields, checked for what capture needs.

One decoder for both capture paths: the live node passes the fields of an rclpy message, bag2scene
those of a rosbags message, so both see identical pixels. No ROS import here.
"""

from __future__ import annotations

import numpy as np

from m3_core.scene import depth_png_from_m

COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
LAYOUT: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}


class ImageEncodingError(ValueError):
    """An image whose encoding or layout capture cannot use (drop reason 'bad_encoding')."""


def array_from_image_fields(
    data: bytes | np.ndarray, encoding: str, height: int, width: int, step: int, is_bigendian: bool = False
) -> np.ndarray:
    """Raw pixel array [H,W(,C)] of an Image, honouring `step` padding and byte order.

    Channel order is the encoding's (bgr8 stays BGR here); see rgb_from_array for RGB.
    """
    if encoding not in LAYOUT:
        raise ImageEncodingError(
            f"unsupported image encoding {encoding!r}; capture reads {sorted(LAYOUT)} "
            "(compressed images need a republish/decoder node first)"
        )
    dtype, channels = LAYOUT[encoding]
    h, w, step = int(height), int(width), int(step)
    row_bytes = w * channels * dtype.itemsize
    if h <= 0 or w <= 0:
        raise ImageEncodingError(f"empty {encoding} image ({w}x{h})")
    if step < row_bytes:
        raise ImageEncodingError(f"{encoding} {w}x{h}: step {step} < width*channels*bytes = {row_bytes}")
    buf = np.frombuffer(data if isinstance(data, (bytes, bytearray)) else memoryview(data), np.uint8)
    if buf.size < step * h:
        raise ImageEncodingError(f"{encoding} {w}x{h}: {buf.size} bytes of data, expected {step * h}")
    # a copy: the frame may wait in a queue after the message buffer is gone or reused
    rows = np.array(buf[: step * h].reshape(h, step)[:, :row_bytes], copy=True)
    arr = rows.view(dtype.newbyteorder(">" if is_bigendian else "<"))
    arr = arr.reshape(h, w, channels) if channels > 1 else arr.reshape(h, w)
    return arr.astype(dtype, copy=False)


def rgb_from_array(array: np.ndarray, encoding: str) -> np.ndarray:
    """RGB uint8 [H,W,3] from a color image array in `encoding` (rgb8, bgr8, rgba8, bgra8, mono8)."""
    if encoding not in COLOR_ENCODINGS:
        hint = (
            " (that is a depth encoding: are the color and depth topics swapped?)"
            if encoding in (DEPTH_ENCODINGS)
            else ""
        )
        raise ImageEncodingError(f"color image must be one of {COLOR_ENCODINGS}, got {encoding!r}{hint}")
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise ImageEncodingError(f"{encoding} color image must be uint8, got {arr.dtype}")
    if encoding == "mono8":
        if arr.ndim != 2:
            raise ImageEncodingError(f"mono8 image must be [H,W], got {arr.shape}")
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != LAYOUT[encoding][1]:
        raise ImageEncodingError(f"{encoding} image must be [H,W,{LAYOUT[encoding][1]}], got {arr.shape}")
    if encoding.startswith("bgr"):
        arr = arr[:, :, 2::-1]
    return np.ascontiguousarray(arr[:, :, :3])


def depth_mm_from_array(array: np.ndarray, encoding: str, depth_scale_m: float = 0.001) -> np.ndarray:
    """uint16 depth [H,W] in units of depth_scale_m (0 = invalid) from 16UC1/mono16 or 32FC1 metres.

    16UC1 is taken as already in depth_scale_m units (RealSense: millimetres) and kept bit-exact.
    """
    if encoding not in DEPTH_ENCODINGS:
        hint = (
            " (that is a color encoding: are the color and depth topics swapped?)"
            if encoding in (COLOR_ENCODINGS)
            else ""
        )
        raise ImageEncodingError(f"depth image must be one of {DEPTH_ENCODINGS}, got {encoding!r}{hint}")
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise ImageEncodingError(f"depth image must be [H,W], got {arr.shape}")
    if encoding == "32FC1":
        return depth_png_from_m(arr, depth_scale_m)  # NaN, inf, <= 0 -> 0
    if arr.dtype != np.uint16:
        raise ImageEncodingError(f"{encoding} depth must be uint16, got {arr.dtype}")
    return np.ascontiguousarray(arr)
