"""Relevance map -> candidate regions: threshold (fixed or Otsu), small morphology, a minimum area."""

from __future__ import annotations

import cv2
import numpy as np


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (maximises the between-class variance)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return 1.0
    hist, edges = np.histogram(np.clip(values, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = values.size - w0
    m0 = np.cumsum(hist * centres)
    total = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - (total - m0) / w1) ** 2
    between[~np.isfinite(between)] = -1.0
    return float(edges[int(np.argmax(between)) + 1])


def candidate_mask(
    relevance: np.ndarray,  # [H, W] in [0, 1]
    threshold: float,
    *,
    mode: str = "fixed",
    valid: np.ndarray | None = None,  # [H, W] bool
    morph_kernel_px: int = 3,
    min_area_px: int = 1,
) -> tuple[np.ndarray, float]:
    """Mask [H,W] bool of every candidate region (empty when nothing qualifies) and the threshold.

    mode "fixed": pixels >= threshold; "otsu": Otsu's threshold over the valid pixels, never below
    `threshold` (Otsu always splits, even a map with no object in it). Opening then closing with
    an elliptic kernel removes speckle; 8-connected components smaller than `min_area_px` are
    dropped. Which region is the object is decided in 3D (m3_core.query.instances).
    """
    relevance = np.asarray(relevance, dtype=np.float32)
    if relevance.ndim != 2:
        raise ValueError(f"relevance must be a 2D map [H,W], got shape {relevance.shape}")
    if valid is not None and valid.shape != relevance.shape:
        raise ValueError(f"valid mask shape {valid.shape} != relevance shape {relevance.shape}")
    if mode not in ("fixed", "otsu"):
        raise ValueError(f"mode must be 'fixed' or 'otsu', got {mode!r}")
    usable = np.isfinite(relevance) if valid is None else (valid.astype(bool) & np.isfinite(relevance))
    if mode == "otsu":
        threshold = max(float(threshold), otsu_threshold(relevance[usable]))
    binary = (usable & (relevance >= threshold)).astype(np.uint8)
    if not binary.any():
        return binary.astype(bool), float(threshold)
    if morph_kernel_px > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (morph_kernel_px, morph_kernel_px))
        opened = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel)
        # A small object at a coarse render can vanish under opening: keep the unopened mask then.
        binary = cv2.morphologyEx(opened if opened.any() else binary, cv2.MORPH_CLOSE, kernel)
        binary &= usable.astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area_px
    keep[0] = False
    return keep[labels], float(threshold)


def erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Mask eroded by `pixels` (square kernel); the mask itself when erosion would empty it."""
    if pixels <= 0 or not mask.any():
        return mask
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    eroded = cv2.erode(mask.astype(np.uint8), kernel).astype(bool)
    return eroded if eroded.any() else mask
