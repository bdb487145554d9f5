"""Pure-PyTorch CPU rasterizer with gsplat's compositing rules, for whole images or chosen pixels.

Per pixel, the Gaussians whose tile range (from gsplat's opacity-aware bounding box) covers the
pixel's tile are composited front to back in depth order (stable: ties keep Gaussian order):
alpha = min(0.999, opacity * exp(-sigma)); contributions with sigma < 0 or alpha < 1/255 are
skipped; compositing stops before the Gaussian that would take the transmittance T to <= 1e-4.
The expected depth is the composited camera z divided by max(alpha, 1e-10) (gsplat's "ED").
Outside its opacity-aware box a Gaussian's alpha is below 1/255, so the tile size only changes the
work, not the image: the CPU uses 8 px tiles (fewer wasted candidates than gsplat's 16).

Candidates are processed in blocks so that (pixels x candidates) stays bounded; only the requested
pixels are touched, which is what makes CPU training with a point-based loss cheap. The backward
pass is written by hand (gsplat's, vectorised over the contributions that count).
"""

from __future__ import annotations

import torch
from torch import Tensor

from m3_core.render.projection import ALPHA_THRESHOLD, Projected, project_gaussians

TILE_SIZE = 8  # candidate binning only: any size gives the same image (alpha < 1/255 outside the box)
T_MIN = 1e-4  # gsplat: a pixel is done once its transmittance would fall to this
MAX_ALPHA = 0.999
CHUNK_ELEMS = 1 << 21  # pixels x candidates per compositing block: bounds peak memory
FIRST_BLOCK = 16  # candidates per pixel in the first compositing block (then doubling)


def rasterize_torch(
    means: Tensor,  # [N,3]
    quats: Tensor,  # [N,4] wxyz
    scales: Tensor,  # [N,3] activated
    opacities: Tensor,  # [N] activated
    features: Tensor,  # [N,C] rendered linearly (RGB, queries, ...)
    camera_from_world: Tensor,  # [4,4]
    fx: float,
    fy: float,
    cx: float,  # gsplat convention (image edge at 0)
    cy: float,
    width: int,
    height: int,
    pixels_xy: Tensor | None = None,  # [P,2] gsplat coordinates (pixel centre = col + 0.5, row + 0.5)
    near: float = 0.01,
    far: float = 100.0,
    tile_size: int = TILE_SIZE,
) -> tuple[Tensor, Tensor, Tensor, Projected]:
    """Returns (features [P,C], expected depth [P], alpha [P], projection) with P = H*W row-major
    when pixels_xy is None. The returned projection's means2d is [1,N,2] (gsplat's meta shape)."""
    proj = project_gaussians(
        means, quats, scales, opacities, camera_from_world, fx, fy, cx, cy, width, height, near, far
    )
    device, dtype = means.device, means.dtype
    if pixels_xy is None:
        rows, cols = torch.meshgrid(
            torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
        )
        pixels_xy = torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=-1).to(dtype) + 0.5
    P, C = pixels_xy.shape[0], features.shape[1]
    if P == 0:
        proj.means2d = proj.means2d.unsqueeze(0)
        return features.new_zeros((0, C)), features.new_zeros(0), features.new_zeros(0), proj

    # Active Gaussians in depth order with their tile ranges (gsplat's intersect_tile arithmetic).
    active = ((proj.radii[:, 0] > 0) & (proj.radii[:, 1] > 0)).nonzero().squeeze(1)
    active = active[torch.argsort(proj.depths.detach()[active], stable=True)]
    with torch.no_grad():
        pix_tile, table = _tile_candidates(proj, active, pixels_xy.detach(), width, height, tile_size)

    # means2d as [1,N,2] (gsplat's meta shape) inside the graph: callers may retain_grad() it for
    # densification statistics.
    proj.means2d = proj.means2d.unsqueeze(0)
    # Per-Gaussian values gathered per candidate: x, y, conic a/b/c, opacity.
    packed = torch.cat([proj.means2d[0], proj.conics, opacities[:, None]], dim=-1)[active]
    feats = torch.cat([features, proj.depths[:, None]], dim=-1)[active]  # depth rides as a channel
    out_feat, T = _composite(packed, feats, pixels_xy, pix_tile, table)
    alpha = 1.0 - T
    depth = out_feat[:, C] / alpha.clamp(min=1e-10)
    return out_feat[:, :C], depth, alpha, proj


def _tile_candidates(
    proj: Projected, active: Tensor, xy: Tensor, width: int, height: int, tile_size: int
) -> tuple[Tensor, Tensor]:
    """Per pixel its tile's row in a candidate table [T,K] of depth-ordered indices into `active`
    (-1 pads), built from (tile, Gaussian) intersections restricted to the tiles the pixels use."""
    device, dtype = xy.device, xy.dtype
    tiles_w = (width + tile_size - 1) // tile_size
    tiles_h = (height + tile_size - 1) // tile_size
    m2 = proj.means2d.detach()[active] / tile_size
    r = proj.radii[active].to(dtype) / tile_size
    tx0 = torch.floor(m2[:, 0] - r[:, 0]).clamp(0, tiles_w).long()
    tx1 = torch.ceil(m2[:, 0] + r[:, 0]).clamp(0, tiles_w).long()
    ty0 = torch.floor(m2[:, 1] - r[:, 1]).clamp(0, tiles_h).long()
    ty1 = torch.ceil(m2[:, 1] + r[:, 1]).clamp(0, tiles_h).long()
    ptx = torch.floor(xy[:, 0] / tile_size).clamp(0, tiles_w - 1).long()
    pty = torch.floor(xy[:, 1] / tile_size).clamp(0, tiles_h - 1).long()
    uniq, pix_tile = torch.unique(pty * tiles_w + ptx, return_inverse=True)
    lookup = torch.full((tiles_w * tiles_h,), -1, dtype=torch.long, device=device)
    lookup[uniq] = torch.arange(len(uniq), device=device)

    # Enumerate each Gaussian's tile rectangle (row-major), keep the tiles some pixel lies in.
    nx, ny = tx1 - tx0, ty1 - ty0
    n_tiles = nx * ny
    gauss = torch.repeat_interleave(torch.arange(len(active), device=device), n_tiles)
    start = torch.cumsum(n_tiles, 0) - n_tiles
    k = torch.arange(len(gauss), device=device) - start[gauss]
    tile = (ty0[gauss] + k // nx[gauss]) * tiles_w + tx0[gauss] + k % nx[gauss]
    row = lookup[tile]
    hit = row >= 0
    row, gauss = row[hit], gauss[hit]
    # gsplat sorts intersections by (tile, depth); `active` is depth-ordered, so by (row, gauss).
    order = torch.argsort(row * max(len(active), 1) + gauss)
    row, gauss = row[order], gauss[order]
    counts = torch.bincount(row, minlength=len(uniq))
    K = max(int(counts.max()) if len(counts) else 0, 1)
    offsets = torch.cumsum(counts, 0) - counts
    table = torch.full((len(uniq), K), -1, dtype=torch.long, device=device)
    table[row, torch.arange(len(row), device=device) - offsets[row]] = gauss
    return pix_tile, table


def _composite(
    packed: Tensor, feats: Tensor, xy: Tensor, pix_tile: Tensor, table: Tensor
) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing -> (features [P,C+1], final transmittance T [P]); differentiable in
    packed [A,6] (x, y, conic a/b/c, opacity) and feats [A,C+1]."""
    return _Composite.apply(packed, feats, xy.detach(), pix_tile, table)


class _Composite(torch.autograd.Function):
    """Compositing with a hand-written backward (gsplat's, vectorised over contributions).

    Autograd through the per-candidate tensors would keep a dozen [pixels x candidates] buffers per
    block; here only the contributions that count (alpha >= 1/255, before the stop) are kept.
    """

    @staticmethod
    def forward(ctx, packed: Tensor, feats: Tensor, xy: Tensor, pix_tile: Tensor, table: Tensor):
        P = xy.shape[0]
        T = xy.new_ones(P)
        alive = torch.arange(P, device=xy.device)
        pix_ids, gauss_ids, alphas, T_befores, clamped = [], [], [], [], []
        k0, block, K = 0, FIRST_BLOCK, table.shape[1]
        # Candidates are visited in depth-ordered blocks of growing size; pixels leave once done
        # (T would drop to <= 1e-4) or out of candidates, as gsplat's threads do.
        while k0 < K:
            alive = alive[table[pix_tile[alive], k0] >= 0]
            if alive.numel() == 0:
                break
            block = max(1, min(block, CHUNK_ELEMS // alive.numel()))
            c = table[pix_tile[alive], k0 : k0 + block]
            real = c >= 0
            c.clamp_(min=0)
            # index_select: much faster than advanced indexing for row gathers on CPU
            gx, gy, ca, cb, cc, op = packed.index_select(0, c.reshape(-1)).view(*c.shape, 6).unbind(-1)
            dx = gx - xy[alive, None, 0]
            dy = gy - xy[alive, None, 1]
            sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
            raw = op * torch.exp(-sigma)
            alpha = raw.clamp(max=MAX_ALPHA)
            keep = real & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
            alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
            one_minus = 1.0 - alpha
            T_after = T[alive][:, None] * torch.cumprod(one_minus, dim=1)
            included = T_after > T_MIN  # T is monotone: the prefix before the stop
            p_idx, k_idx = (included & keep).nonzero(as_tuple=True)
            a = alpha[p_idx, k_idx]
            pix_ids.append(alive[p_idx])
            gauss_ids.append(c[p_idx, k_idx])
            alphas.append(a)
            T_befores.append(T_after[p_idx, k_idx] / (1.0 - a))
            clamped.append(raw[p_idx, k_idx] > MAX_ALPHA)
            T[alive] *= torch.where(included, one_minus, torch.ones_like(one_minus)).prod(dim=1)
            alive = alive[included[:, -1]]
            k0 += block
            block *= 2
        if not pix_ids:  # no candidates at all
            empty = torch.zeros(0, dtype=torch.long, device=xy.device)
            pix_ids, gauss_ids, alphas, T_befores, clamped = (
                [empty],
                [empty],
                [xy[:0, 0]],
                [xy[:0, 0]],
                [empty > 0],
            )
        p, g, a = torch.cat(pix_ids), torch.cat(gauss_ids), torch.cat(alphas)
        Tb, cl = torch.cat(T_befores), torch.cat(clamped)
        out = feats.new_zeros((P, feats.shape[1])).index_add_(
            0, p, (a * Tb)[:, None] * feats.index_select(0, g)
        )
        ctx.save_for_backward(packed, feats, xy, p, g, a, Tb, cl, T)
        return out, T

    @staticmethod
    def backward(ctx, g_out: Tensor, g_T: Tensor):
        packed, feats, xy, p, g, a, Tb, cl, T_final = ctx.saved_tensors
        if g_out is None:
            g_out = feats.new_zeros((xy.shape[0], feats.shape[1]))
        if g_T is None:
            g_T = xy.new_zeros(xy.shape[0])
        w = a * Tb
        go = g_out.index_select(0, p)  # [E, C]
        fg = (feats.index_select(0, g) * go).sum(1)
        d_feats = torch.zeros_like(feats).index_add_(0, g, w[:, None] * go)
        # Suffix sums over each pixel's later contributions: sort by pixel (stable keeps depth order),
        # then a float64 cumulative sum minus its running value within the segment.
        order = torch.argsort(p, stable=True)
        v = (w * fg)[order].double()
        csum = torch.cumsum(v, 0)
        ps = p[order]
        seg_total = _segment_last(csum, ps, xy.shape[0])
        suffix = torch.empty_like(v)
        suffix[order] = seg_total[ps] - csum
        one_minus = 1.0 - a
        d_alpha = Tb * fg - (suffix.to(a.dtype) + T_final[p] * g_T[p]) / one_minus
        d_alpha = torch.where(cl, torch.zeros_like(d_alpha), d_alpha)
        gx, gy, ca, cb, cc, op = packed.index_select(0, g).unbind(-1)
        pxy = xy.index_select(0, p)
        dx, dy = gx - pxy[:, 0], gy - pxy[:, 1]
        e = a / op  # exp(-sigma) where not clamped
        d_op = d_alpha * e
        d_sigma = -d_alpha * a
        d_packed = torch.stack(
            [
                d_sigma * (ca * dx + cb * dy),
                d_sigma * (cb * dx + cc * dy),
                d_sigma * 0.5 * dx * dx,
                d_sigma * dx * dy,
                d_sigma * 0.5 * dy * dy,
                d_op,
            ],
            dim=-1,
        )
        d_packed = torch.zeros_like(packed).index_add_(0, g, d_packed)
        return d_packed, d_feats, None, None, None


def _segment_last(values: Tensor, segments: Tensor, n: int) -> Tensor:
    """values [E] sorted by segments [E] (non-decreasing) -> [n] the last value of each segment (0 if empty)."""
    out = values.new_zeros(n)
    if values.numel():
        last = torch.ones_like(segments, dtype=torch.bool)
        last[:-1] = segments[1:] != segments[:-1]
        out[segments[last]] = values[last]
    return out
