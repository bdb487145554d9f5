"""Collision geometry where a pybullet_data model's own is physically wrong.

pybullet_data's mug (objects/mug.urdf) collides as a *solid* convex cylinder (the first part of
mug_col.obj) plus five convex handle pieces, while it renders as a hollow cup with a 2 mm wall. In
physics no finger can enter it, so a grasp on its rim (one finger inside, one outside: how a person
lifts a mug too wide for the hand) can never hold, whatever the planner does. Its URDF also puts the
centre of mass at the bottom with a 1 kg m^2 placeholder inertia (a thousand times too large).

`hollow_urdf` writes a copy of such a URDF whose collision mesh replaces the solid cylinder with a
hollow one made of convex pieces (a floor disc and a ring of wall segments, each a separate `o`
group, which pybullet turns into a compound of convex hulls), keeps the other pieces (the handle)
as they are, and gives the body the centre of mass and inertia of that shape at the URDF's mass
(uniform density). The visual mesh is the original one, so renders do not change.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import ConvexHull, Delaunay


@dataclass(frozen=True)
class HollowCylinder:
    """How to hollow out one convex part (a cylinder along the mesh's z) of a collision OBJ."""

    part: str
    """Name (`o` line) of the solid cylinder in the collision OBJ."""
    wall_m: float
    """Wall thickness, mesh units before the URDF scale (metres for pybullet_data's mug)."""
    bottom_m: float
    """Floor thickness, same units."""
    segments: int = 32
    """Convex wall pieces around the circumference (and sides of the floor polygon)."""


def read_obj_parts(path: Path | str) -> dict[str, np.ndarray]:
    """Vertices [V,3] of each `o` group of an OBJ file, in file order (faces are not needed:
    pybullet takes the convex hull of each group's vertices)."""
    parts: dict[str, list[list[float]]] = {}
    name = "default"
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("o "):
                name = line.split(maxsplit=1)[1].strip()
                parts.setdefault(name, [])
            elif line.startswith("v "):
                parts.setdefault(name, []).append([float(t) for t in line.split()[1:4]])
    return {k: np.asarray(v, np.float64) for k, v in parts.items() if v}


def hollow_cylinder_parts(vertices: np.ndarray, recipe: HollowCylinder) -> list[np.ndarray]:
    """Convex pieces (vertex arrays) of a hollow cup with the solid cylinder's outer size.

    The cylinder's axis is the mesh's z through the centre of its x-y box; its radius is half the
    box's x-y size. Pieces: a floor disc (`bottom_m` thick) and `segments` wall pieces, each the
    annular sector between the outer and the inner radius, from the floor's top to the rim.
    """
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    centre = 0.5 * (lo[:2] + hi[:2])
    r_out = 0.25 * float((hi[0] - lo[0]) + (hi[1] - lo[1]))
    r_in = r_out - recipe.wall_m
    if not 0.0 < r_in < r_out or not 0.0 < recipe.bottom_m < hi[2] - lo[2]:
        raise ValueError(
            f"cannot hollow {recipe.part!r}: radius {r_out:.4f}, height {hi[2] - lo[2]:.4f}, "
            f"wall {recipe.wall_m}, bottom {recipe.bottom_m}"
        )
    z0, z1, zf = float(lo[2]), float(hi[2]), float(lo[2] + recipe.bottom_m)
    # circumscribe the polygon so the flat pieces never fall inside the round visual surface
    r_poly_out = r_out / np.cos(np.pi / recipe.segments)
    angles = 2.0 * np.pi * np.arange(recipe.segments + 1) / recipe.segments
    ring = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    floor = np.concatenate(
        [np.column_stack([centre + r_poly_out * ring[:-1], np.full(recipe.segments, z)]) for z in (z0, zf)]
    )
    pieces = [floor]
    for k in range(recipe.segments):
        corners = [centre + r * ring[k + j] for r in (r_in, r_poly_out) for j in (0, 1)]
        pieces.append(np.array([[*c, z] for c in corners for z in (zf - 1e-4, z1)]))
    return pieces


def write_obj_parts(path: Path, parts: list[tuple[str, np.ndarray]]) -> None:
    """An OBJ with one `o` group per convex part (vertices and their hull's faces)."""
    lines, offset = [], 1
    for name, verts in parts:
        hull = ConvexHull(verts)
        lines.append(f"o {name}")
        lines.extend(f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in hull.points[hull.vertices])
        index = {int(v): i for i, v in enumerate(hull.vertices)}
        lines.extend("f " + " ".join(str(offset + index[int(v)]) for v in tri) for tri in hull.simplices)
        offset += len(hull.vertices)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def mass_properties(
    parts: list[np.ndarray], mass_kg: float, voxel_m: float = 0.001
) -> tuple[np.ndarray, np.ndarray]:
    """(centre of mass [3], inertia tensor [3,3] about it) of the union of convex parts at uniform
    density, by sampling a `voxel_m` grid (overlaps between parts count once)."""
    lo = np.min([p.min(axis=0) for p in parts], axis=0)
    hi = np.max([p.max(axis=0) for p in parts], axis=0)
    axes = [np.arange(a + 0.5 * voxel_m, b, voxel_m) for a, b in zip(lo, hi)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    inside = np.zeros(len(grid), bool)
    for p in parts:
        plo, phi = p.min(axis=0), p.max(axis=0)
        box = np.all((grid >= plo) & (grid <= phi), axis=1)
        inside[box] |= Delaunay(p).find_simplex(grid[box]) >= 0
    pts = grid[inside]
    if len(pts) == 0:
        raise ValueError("the collision parts enclose no volume at this voxel size")
    com = pts.mean(axis=0)
    d = pts - com
    m = mass_kg / len(pts)
    inertia = m * (np.sum(d * d) * np.eye(3) - d.T @ d)
    return com, inertia


def default_cache_dir() -> Path:
    """Per-user cache for generated collision files: $XDG_CACHE_HOME/m3_grasp/sim_collision (default
    ~/.cache/...). Not the shared system temp dir, where another user could plant a file under the
    predictable content-addressed name before us."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "m3_grasp" / "sim_collision"


def hollow_urdf(urdf_path: Path | str, recipe: HollowCylinder, cache_dir: Path | None = None) -> str:
    """Path of a URDF like `urdf_path` whose collision hollows out `recipe.part` (see the module doc).

    The files go to a content-addressed folder (under the user's cache by default, see
    default_cache_dir), written atomically, so concurrent render workers and repeated runs share them.
    """
    urdf_path = Path(urdf_path)
    tree = ET.parse(urdf_path)
    link = tree.getroot().find("link")
    collision_mesh = link.find("collision/geometry/mesh")
    visual_mesh = link.find("visual/geometry/mesh")
    if collision_mesh is None or visual_mesh is None:
        raise ValueError(f"{urdf_path}: expected one link with a visual and a collision mesh")
    col_path = urdf_path.parent / collision_mesh.get("filename")
    key = hashlib.sha256(
        urdf_path.read_bytes() + col_path.read_bytes() + json.dumps(asdict(recipe)).encode()
    ).hexdigest()[:16]
    folder = (cache_dir or default_cache_dir()) / f"{urdf_path.stem}_{key}"
    out = folder / f"{urdf_path.stem}_hollow.urdf"
    if out.exists():
        return str(out)
    parts = read_obj_parts(col_path)
    if recipe.part not in parts:
        raise ValueError(f"{col_path} has no part {recipe.part!r}; parts: {list(parts)}")
    named = []
    for name, verts in parts.items():
        if name == recipe.part:
            named += [(f"{name}_hollow_{i}", p) for i, p in enumerate(hollow_cylinder_parts(verts, recipe))]
        else:
            named.append((name, verts))
    folder.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=folder))
    write_obj_parts(scratch / f"{urdf_path.stem}_hollow_col.obj", named)
    collision_mesh.set("filename", str(folder / f"{urdf_path.stem}_hollow_col.obj"))
    visual_mesh.set("filename", str((urdf_path.parent / visual_mesh.get("filename")).resolve()))
    inertial = link.find("inertial")
    if inertial is not None:
        scale = np.array([float(s) for s in (collision_mesh.get("scale") or "1 1 1").split()])
        mass = float(inertial.find("mass").get("value"))
        com, inertia = mass_properties([p * scale for _, p in named], mass)
        inertial.find("origin").set("xyz", " ".join(f"{c:.6f}" for c in com))
        tensor = inertial.find("inertia")
        for name, (i, j) in {
            "ixx": (0, 0),
            "ixy": (0, 1),
            "ixz": (0, 2),
            "iyy": (1, 1),
            "iyz": (1, 2),
            "izz": (2, 2),
        }.items():
            tensor.set(name, f"{inertia[i, j]:.8f}")
    tree.write(scratch / out.name)
    # the OBJ first, the URDF last: a URDF that exists always has its mesh
    os.replace(scratch / f"{urdf_path.stem}_hollow_col.obj", folder / f"{urdf_path.stem}_hollow_col.obj")
    os.replace(scratch / out.name, out)
    scratch.rmdir()
    return str(out)
