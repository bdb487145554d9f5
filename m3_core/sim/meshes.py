"""Wavefront OBJ geometry for ground truth: the visual meshes pybullet renders, in world.

pybullet does not hand back the triangles it renders, so the ground truth reads the same OBJ files
(vertices and faces only; materials are the renderer's business) and places them with the same
scale and frames. Point-to-surface distances use exact point-triangle distance on candidate
triangles found through a KD-tree of triangle centres.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from m3_core.geometry.se3 import transform_points


@lru_cache(maxsize=64)
def _read_obj_cached(path: str) -> tuple[np.ndarray, np.ndarray]:
    vertices: list[tuple[float, float, float]] = []
    faces: list[tuple[int, int, int]] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("v "):
                parts = line.split()
                vertices.append((float(parts[1]), float(parts[2]), float(parts[3])))
            elif line.startswith("f "):
                idx = []
                for tok in line.split()[1:]:
                    i = int(tok.split("/")[0])
                    # OBJ indices are 1-based; negative ones count back from the current end
                    idx.append(i - 1 if i > 0 else len(vertices) + i)
                for k in range(1, len(idx) - 1):  # fan-triangulate polygons
                    faces.append((idx[0], idx[k], idx[k + 1]))
    if not vertices or not faces:
        raise ValueError(f"{path} holds no triangle mesh (vertices={len(vertices)}, faces={len(faces)})")
    return np.asarray(vertices, np.float64), np.asarray(faces, np.int64)


def read_obj(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """(vertices [V,3] float64, faces [F,3] int64) of an OBJ file; polygons are fan-triangulated."""
    v, f = _read_obj_cached(str(path))
    return v.copy(), f.copy()


def merge_meshes(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """One mesh from several (vertices, faces) pairs."""
    vertices, faces, offset = [], [], 0
    for v, f in parts:
        vertices.append(v)
        faces.append(f + offset)
        offset += len(v)
    return np.concatenate(vertices), np.concatenate(faces)


def placed_mesh(
    path: Path | str, scale: np.ndarray, world_from_mesh: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """An OBJ scaled per axis (URDF mesh scale) and moved into world by world_from_mesh [4,4]."""
    v, f = read_obj(path)
    return transform_points(world_from_mesh, v * np.asarray(scale, np.float64)), f


def _closest_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Closest points on triangles (a, b, c) [N,3] to points p [N,3] (Ericson, RTCD 5.1.5)."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = np.einsum("ij,ij->i", ab, ap), np.einsum("ij,ij->i", ac, ap)
    bp = p - b
    d3, d4 = np.einsum("ij,ij->i", ab, bp), np.einsum("ij,ij->i", ac, bp)
    cp = p - c
    d5, d6 = np.einsum("ij,ij->i", ab, cp), np.einsum("ij,ij->i", ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = 1.0 / (va + vb + vc)
        out = a + ab * (vb * denom)[:, None] + ac * (vc * denom)[:, None]  # inside the face
        # edge regions (later assignments take precedence over the face, vertices over edges)
        t_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        m = (va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0)
        out[m] = (b + (c - b) * t_bc[:, None])[m]
        t_ac = d2 / (d2 - d6)
        m = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
        out[m] = (a + ac * t_ac[:, None])[m]
        t_ab = d1 / (d1 - d3)
        m = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
        out[m] = (a + ab * t_ab[:, None])[m]
    m = (d6 >= 0) & (d5 <= d6)
    out[m] = c[m]
    m = (d3 >= 0) & (d4 <= d3)
    out[m] = b[m]
    m = (d1 <= 0) & (d2 <= 0)
    out[m] = a[m]
    # degenerate triangles: fall back to the nearest vertex
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        cand = np.stack([a[bad], b[bad], c[bad]], axis=1)
        k = np.argmin(np.linalg.norm(cand - p[bad, None], axis=2), axis=1)
        out[bad] = cand[np.arange(len(k)), k]
    return out


def distance_to_mesh(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, k: int = 24) -> np.ndarray:
    """Distance [N] (metres) from points [N,3] to a triangle mesh surface.

    Exact point-triangle distances over the k triangles whose centres are nearest; exact for the
    fine meshes used here (triangles much smaller than k neighbourhoods), an upper bound otherwise.
    Large triangles are split first so their centres stay representative.
    """
    vertices, faces = _subdivide_large(np.asarray(vertices, np.float64), np.asarray(faces, np.int64))
    tri = vertices[faces]  # [F,3,3]
    tree = cKDTree(tri.mean(axis=1))
    points = np.asarray(points, np.float64)
    k = min(k, len(faces))
    _, idx = tree.query(points, k=k)
    idx = idx.reshape(len(points), k)
    best = np.full(len(points), np.inf)
    for j in range(k):
        t = tri[idx[:, j]]
        q = _closest_on_triangles(points, t[:, 0], t[:, 1], t[:, 2])
        best = np.minimum(best, np.linalg.norm(points - q, axis=1))
    return best


def _subdivide_large(vertices: np.ndarray, faces: np.ndarray, max_edge_m: float = 0.02) -> tuple:
    """Split triangles with an edge longer than max_edge_m into four (repeatedly); no welding."""
    for _ in range(12):
        tri = vertices[faces]
        edge = np.max(np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2), axis=1)
        big = edge > max_edge_m
        if not big.any():
            break
        t = tri[big]
        m01, m12, m20 = (t[:, 0] + t[:, 1]) / 2, (t[:, 1] + t[:, 2]) / 2, (t[:, 2] + t[:, 0]) / 2
        new = np.concatenate(
            [
                np.stack([t[:, 0], m01, m20], 1),
                np.stack([m01, t[:, 1], m12], 1),
                np.stack([m20, m12, t[:, 2]], 1),
                np.stack([m01, m12, m20], 1),
            ]
        )
        keep = vertices[faces[~big]]
        allt = np.concatenate([keep, new]).reshape(-1, 3)
        vertices = allt
        faces = np.arange(len(allt)).reshape(-1, 3)
    return vertices, faces
