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

from m3_core.render import cpu_kernels
from m3_core.render.projection import (
    ALPHA_THRESHOLD,
    EPS2D,
    MAX_EXTEND,
    Projected,
    project_gaussians,
    view_direction_limits,
)

TILE_SIZE = 8  # candidate binning only: any size gives the same image (alpha < 1/255 outside the box)
T_MIN = 1e-4  # gsplat: a pixel is done once its transmittance would fall to this
MAX_ALPHA = 0.999
CHUNK_ELEMS = 1 << 21  # pixels x candidates per compositing block: bounds peak memory
FIRST_BLOCK = 16  # candidates per pixel in the first compositing block (then doubling)
TILE_COMPOSITE = True  # full images without gradients composite by tile; False: per pixel (reference)


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
    cull: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Projected]:
    """Returns (features [P,C], expected depth [P], alpha [P], projection) with P = H*W row-major
    when pixels_xy is None. The returned projection's means2d is [1,N,2] (gsplat's meta shape)."""
    # Gaussians that cannot reach the image are left out before the differentiable projection: a
    # wrist camera sees a part of the scene, and the projection's autograd over all N was a third of
    # a CPU training step. The test is a superset of the projection's own culling, so the image and
    # the gradients are the same; culled Gaussians get radii 0 and zero gradients, as before.
    keep = (
        _frustum_superset(means, scales, opacities, camera_from_world, fx, fy, cx, cy, width, height, near, far)
        if cull
        else None
    )
    if keep is None:
        proj = project_gaussians(
            means, quats, scales, opacities, camera_from_world, fx, fy, cx, cy, width, height, near, far
        )
    else:
        sub = project_gaussians(
            *(t.index_select(0, keep) for t in (means, quats, scales, opacities)),
            camera_from_world, fx, fy, cx, cy, width, height, near, far,
        )
        proj = _scatter_projection(sub, keep, means.shape[0])
    device, dtype = means.device, means.dtype
    full_image = pixels_xy is None
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

    # means2d as [1,N,2] (gsplat's meta shape) inside the graph: callers may retain_grad() it for
    # densification statistics.
    proj.means2d = proj.means2d.unsqueeze(0)
    # Per-Gaussian values per candidate: x, y, conic a/b/c, opacity; features with depth as a channel.
    packed = torch.cat([proj.means2d[0], proj.conics, opacities[:, None]], dim=-1)
    feats = torch.cat([features, proj.depths[:, None]], dim=-1)
    grad = torch.is_grad_enabled() and (packed.requires_grad or feats.requires_grad)
    tiles = TILE_COMPOSITE and full_image and not grad
    # The compiled loops read all N Gaussians through a table of their own indices: no gather of
    # the active ones and no scatter of its gradient back (a tenth of a CPU training step).
    compiled = not tiles and cpu_kernels.runs_on(feats)
    with torch.no_grad():
        pix_tile, table = _tile_candidates(
            proj, active, pixels_xy.detach(), width, height, tile_size, global_ids=compiled
        )
    if compiled:
        rules = (T_MIN, MAX_ALPHA, ALPHA_THRESHOLD)
        out_feat, T = cpu_kernels.CompositeCPU.apply(packed, feats, pixels_xy.detach(), pix_tile, table, rules)
    else:
        # index_select, not [active]: its backward is an index_add, advanced indexing's an index_put
        # that sorts; `active` has no repeats, so the sums are the same.
        packed, feats = packed.index_select(0, active), feats.index_select(0, active)
        if tiles:
            # A full image without gradients (queries, evaluation): tile by tile, 8x cheaper gathers.
            out_feat, T = _composite_tiles(packed.detach(), feats.detach(), table, width, height, tile_size)
        else:
            out_feat, T = _Composite.apply(packed, feats, pixels_xy.detach(), pix_tile, table)
    alpha = 1.0 - T
    depth = out_feat[:, C] / alpha.clamp(min=1e-10)
    return out_feat[:, :C], depth, alpha, proj


CULL_MAX_FRACTION = 0.9  # pre-cull only when it leaves out more than a tenth of the Gaussians
CULL_MARGIN_PX = 2.0  # pixels added to the radius bound: float rounding of the two computations


@torch.no_grad()
def _frustum_superset(
    means: Tensor, scales: Tensor, opacities: Tensor, camera_from_world: Tensor,
    fx: float, fy: float, cx: float, cy: float, width: int, height: int, near: float, far: float,
) -> Tensor | None:
    """Indices [M] of the Gaussians `project_gaussians` might keep (radii > 0), or None when it is
    not worth leaving the others out. A superset of its tests: depth in [near, far] (with a relative
    margin), opacity, and the opacity-aware box bounded from above: the 2D standard deviation along
    x is at most fx / z * sqrt(1 + tan^2) * max scale (the Jacobian's row norm at the clamped view
    direction times the covariance's largest singular value), plus the low-pass filter."""
    R = camera_from_world[:3, :3]
    t = camera_from_world[:3, 3]
    means_c = means.detach() @ R.T + t
    x, y, z = means_c.unbind(-1)
    ok = (z >= near * (1.0 - 1e-4) - 1e-7) & (z <= far * (1.0 + 1e-4)) & (opacities.detach() >= ALPHA_THRESHOLD)
    z = z.clamp(min=near * 0.5)
    s_max = scales.detach().amax(dim=-1)
    lim_x_neg, lim_x_pos, lim_y_neg, lim_y_pos = view_direction_limits(fx, fy, cx, cy, width, height)
    tan_x, tan_y = max(lim_x_neg, lim_x_pos), max(lim_y_neg, lim_y_pos)
    sig_x = torch.sqrt((fx / z * s_max).square_().mul_(1.0 + tan_x * tan_x).add_(EPS2D))
    sig_y = torch.sqrt((fy / z * s_max).square_().mul_(1.0 + tan_y * tan_y).add_(EPS2D))
    rx = sig_x.mul_(MAX_EXTEND).add_(CULL_MARGIN_PX)
    ry = sig_y.mul_(MAX_EXTEND).add_(CULL_MARGIN_PX)
    u = fx * x / z + cx
    v = fy * y / z + cy
    ok &= (u + rx > 0) & (u - rx < width) & (v + ry > 0) & (v - ry < height)
    keep = ok.nonzero().squeeze(1)
    return keep if keep.numel() < CULL_MAX_FRACTION * means.shape[0] else None


def _scatter_projection(sub: Projected, keep: Tensor, n: int) -> Projected:
    """A projection of the Gaussians `keep` as one of all n (the culled ones: radii 0, zeros). The
    rest of the rasterizer reads these full tensors, so means2d stays upstream of the image and a
    caller's retain_grad() on it still collects densification statistics."""
    return Projected(
        means2d=sub.means2d.new_zeros((n, 2)).index_copy(0, keep, sub.means2d),
        conics=sub.conics.new_zeros((n, 3)).index_copy(0, keep, sub.conics),
        depths=sub.depths.new_zeros(n).index_copy(0, keep, sub.depths),
        radii=sub.radii.new_zeros((n, 2)).index_copy(0, keep, sub.radii),
    )


def _tile_candidates(
    proj: Projected, active: Tensor, xy: Tensor, width: int, height: int, tile_size: int,
    global_ids: bool = False,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Per pixel its tile's row in a candidate table [T,K] of depth-ordered indices into `active`
    (-1 pads), built from (tile, Gaussian) intersections restricted to the tiles the pixels use.
    global_ids: the table holds the Gaussians' own indices (active[i]) instead."""
    device, dtype = xy.device, xy.dtype
    tiles_w = (width + tile_size - 1) // tile_size
    tiles_h = (height + tile_size - 1) // tile_size
    # 1-D index_select throughout: the same gathers as advanced indexing, several times faster on CPU.
    m2 = proj.means2d.detach().reshape(-1, 2).index_select(0, active) / tile_size  # [N,2] or [1,N,2]
    r = proj.radii.index_select(0, active).to(dtype) / tile_size
    tx0 = torch.floor(m2[:, 0] - r[:, 0]).clamp(0, tiles_w).long()
    tx1 = torch.ceil(m2[:, 0] + r[:, 0]).clamp(0, tiles_w).long()
    ty0 = torch.floor(m2[:, 1] - r[:, 1]).clamp(0, tiles_h).long()
    ty1 = torch.ceil(m2[:, 1] + r[:, 1]).clamp(0, tiles_h).long()
    ptx = torch.floor(xy[:, 0] / tile_size).clamp(0, tiles_w - 1).long()
    pty = torch.floor(xy[:, 1] / tile_size).clamp(0, tiles_h - 1).long()
    uniq, pix_tile = torch.unique(pty * tiles_w + ptx, return_inverse=True)
    lookup = torch.full((tiles_w * tiles_h,), -1, dtype=torch.long, device=device)
    lookup[uniq] = torch.arange(len(uniq), device=device)

    if device.type == "cpu" and cpu_kernels.available():
        ids = active if global_ids else torch.arange(len(active))
        return pix_tile, cpu_kernels.tile_table(tx0, tx1, ty0, ty1, lookup, tiles_w, len(uniq), ids)
    # Enumerate each Gaussian's tile rectangle (row-major), keep the tiles some pixel lies in.
    nx, ny = tx1 - tx0, ty1 - ty0
    n_tiles = nx * ny
    gauss = torch.repeat_interleave(torch.arange(len(active), device=device), n_tiles)
    start = torch.cumsum(n_tiles, 0) - n_tiles
    k = torch.arange(len(gauss), device=device) - start.index_select(0, gauss)
    nx_g = nx.index_select(0, gauss)
    k_row = torch.div(k, nx_g, rounding_mode="floor")
    first_tile = ty0 * tiles_w + tx0
    tile = first_tile.index_select(0, gauss) + k_row * tiles_w + (k - k_row * nx_g)
    row = lookup.index_select(0, tile)
    hit = (row >= 0).nonzero().squeeze(1)
    row, gauss = row.index_select(0, hit), gauss.index_select(0, hit)
    # gsplat sorts intersections by (tile, depth); `active` is depth-ordered and `gauss` ascending
    # here, so a stable sort by row alone gives that (row, gauss) order.
    order = torch.argsort(row, stable=True)
    row, gauss = row.index_select(0, order), gauss.index_select(0, order)
    counts = torch.bincount(row, minlength=len(uniq))
    K = max(int(counts.max()) if len(counts) else 0, 1)
    offsets = torch.cumsum(counts, 0) - counts
    table = torch.full((len(uniq), K), -1, dtype=torch.long, device=device)
    slot = row * K + torch.arange(len(row), device=device) - offsets.index_select(0, row)
    table.view(-1).index_copy_(0, slot, active.index_select(0, gauss) if global_ids else gauss)
    return pix_tile, table


class _Composite(torch.autograd.Function):
    """Compositing with a hand-written backward (gsplat's, vectorised over contributions).

    Autograd through the per-candidate tensors would keep a dozen [pixels x candidates] buffers per
    block; here only the contributions that count (alpha >= 1/255, before the stop) are kept.
    """

    @staticmethod
    def forward(ctx, packed: Tensor, feats: Tensor, xy: Tensor, pix_tile: Tensor, table: Tensor):
        P, K = xy.shape[0], table.shape[1]
        T = xy.new_ones(P)
        alive = torch.arange(P, device=xy.device)
        # CPU speed (same arithmetic as the plain form, in the same order): the per-Gaussian values as
        # one contiguous row each (a gather then yields contiguous vectors, not stride-6 views),
        # 1-D index_select with flat indices instead of advanced indexing, in-place temporaries.
        cols = packed.detach().t().contiguous()  # [6, A]
        px, py = xy[:, 0].contiguous(), xy[:, 1].contiguous()
        table_flat = table.reshape(-1)
        pix_ids, gauss_ids, alphas, T_befores, clamped = [], [], [], [], []
        k0, block = 0, FIRST_BLOCK
        # Candidates are visited in depth-ordered blocks of growing size; pixels leave once done
        # (T would drop to <= 1e-4) or out of candidates, as gsplat's threads do.
        while k0 < K:
            first = table_flat.index_select(0, pix_tile.index_select(0, alive) * K + k0)
            alive = alive.index_select(0, (first >= 0).nonzero().squeeze(1))
            n = alive.numel()
            if n == 0:
                break
            block = max(1, min(block, CHUNK_ELEMS // n))
            c = table[:, k0 : k0 + block].index_select(0, pix_tile.index_select(0, alive))  # [n, B]
            B = c.shape[1]
            real = c >= 0
            c.clamp_(min=0)
            cf = c.reshape(-1)
            gx, gy, ca, cb, cc, op = cols.index_select(1, cf).view(6, n, B).unbind(0)
            dx = gx.sub_(px.index_select(0, alive)[:, None])
            dy = gy.sub_(py.index_select(0, alive)[:, None])
            # sigma = 0.5 * (ca dx dx + cc dy dy) + cb dx dy
            sigma = ca.mul_(dx).mul_(dx).add_(cc.mul_(dy).mul_(dy)).mul_(0.5).add_(cb.mul_(dx).mul_(dy))
            raw = torch.neg(sigma).exp_().mul_(op)  # opacity * exp(-sigma)
            alpha = raw.clamp(max=MAX_ALPHA)
            keep = real.logical_and_(sigma >= 0).logical_and_(alpha >= ALPHA_THRESHOLD)
            alpha.masked_fill_(~keep, 0.0)
            one_minus = torch.rsub(alpha, 1.0)
            T_alive = T.index_select(0, alive)
            T_after = torch.cumprod(one_minus, dim=1).mul_(T_alive[:, None])
            included = T_after > T_MIN  # T is monotone: the prefix before the stop
            flat = (included & keep).view(-1).nonzero().squeeze(1)
            a = alpha.view(-1).index_select(0, flat)
            pix_ids.append(alive.index_select(0, torch.div(flat, B, rounding_mode="floor")))
            gauss_ids.append(cf.index_select(0, flat))
            alphas.append(a)
            T_befores.append(T_after.view(-1).index_select(0, flat) / (1.0 - a))
            clamped.append(raw.view(-1).index_select(0, flat) > MAX_ALPHA)
            T.index_copy_(0, alive, T_alive * one_minus.masked_fill_(~included, 1.0).prod(dim=1))
            alive = alive.index_select(0, included[:, -1].nonzero().squeeze(1))
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
        v = (w * fg).index_select(0, order).double()
        csum = torch.cumsum(v, 0)
        ps = p.index_select(0, order)
        seg_total = _segment_last(csum, ps, xy.shape[0])
        suffix = torch.empty_like(v).index_copy_(0, order, seg_total.index_select(0, ps) - csum)
        one_minus = 1.0 - a
        d_alpha = (
            Tb * fg - (suffix.to(a.dtype) + T_final.index_select(0, p) * g_T.index_select(0, p)) / one_minus
        )
        d_alpha.masked_fill_(cl, 0.0)
        gx, gy, ca, cb, cc, op = packed.detach().t().contiguous().index_select(1, g).unbind(0)
        dx = gx - xy[:, 0].contiguous().index_select(0, p)
        dy = gy - xy[:, 1].contiguous().index_select(0, p)
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


@torch.no_grad()
def _composite_tiles(
    packed: Tensor, feats: Tensor, table: Tensor, width: int, height: int, tile_size: int
) -> tuple[Tensor, Tensor]:
    """_Composite.forward for a whole image, without what backward needs: the pixels of a tile share
    its candidates, so each block gathers the candidates' values once per tile ([tiles, B]) instead
    of once per pixel, and accumulates the features with one batched product ([S, B] x [B, C+1] per
    tile). Same rules, same depth-ordered blocks; results equal up to float rounding (tests)."""
    device, dtype = packed.device, packed.dtype
    n_tiles, K = table.shape
    tile = torch.arange(n_tiles, device=device)
    prow, pcol, inside = _tile_pixels(n_tiles, width, height, tile_size, device)
    px, py = pcol.to(dtype) + 0.5, prow.to(dtype) + 0.5
    S, C1 = px.shape[1], feats.shape[1]
    T = torch.ones(n_tiles, S, dtype=dtype, device=device)
    done = ~inside
    out = torch.zeros(n_tiles, S, C1, dtype=dtype, device=device)
    cols = packed.t().contiguous()  # [6, A]
    alive = tile
    k0, block = 0, FIRST_BLOCK
    while k0 < K:
        first = table[:, k0].index_select(0, alive)
        alive = alive.index_select(
            0, ((first >= 0) & ~done.index_select(0, alive).all(dim=1)).nonzero().squeeze(1)
        )
        n = alive.numel()
        if n == 0:
            break
        block = max(1, min(block, CHUNK_ELEMS // (n * S)))
        c = table[:, k0 : k0 + block].index_select(0, alive)  # [n, B]
        B = c.shape[1]
        real = c >= 0
        cf = c.clamp(min=0).reshape(-1)
        gx, gy, ca, cb, cc, op = (v[:, None, :] for v in cols.index_select(1, cf).view(6, n, B).unbind(0))
        dx = gx - px.index_select(0, alive)[:, :, None]  # [n, S, B]
        dy = gy - py.index_select(0, alive)[:, :, None]
        # sigma = 0.5 * (ca dx dx + cc dy dy) + cb dx dy, in the per-pixel path's order, in place
        sigma = torch.mul(ca, dx).mul_(dx).add_(torch.mul(cc, dy).mul_(dy)).mul_(0.5)
        sigma.add_(dx.mul_(cb).mul_(dy))
        alpha = torch.neg(sigma).exp_().mul_(op).clamp_(max=MAX_ALPHA)
        keep = (sigma >= 0).logical_and_(alpha >= ALPHA_THRESHOLD).logical_and_(real[:, None, :])
        alpha.masked_fill_(~keep, 0.0)
        one_minus = torch.rsub(alpha, 1.0)
        T_alive = T.index_select(0, alive)
        T_after = torch.cumprod(one_minus, dim=2).mul_(T_alive[:, :, None])
        included = (T_after > T_MIN).logical_and_(~done.index_select(0, alive)[:, :, None])
        weights = T_after.div_(one_minus).mul_(alpha).masked_fill_(~included, 0.0)  # alpha T_before
        out.index_add_(0, alive, torch.bmm(weights, feats.index_select(0, cf).view(n, B, C1)))
        T.index_copy_(0, alive, T_alive * one_minus.masked_fill_(~included, 1.0).prod(dim=2))
        done.index_copy_(0, alive, done.index_select(0, alive) | ~included[:, :, -1])
        k0 += block
        block *= 2
    pixel = (prow * width + pcol)[inside]
    flat_out = torch.empty(height * width, C1, dtype=dtype, device=device)
    flat_out[pixel] = out[inside]
    flat_T = torch.empty(height * width, dtype=dtype, device=device)
    flat_T[pixel] = T[inside]
    return flat_out, flat_T


def _tile_pixels(
    n_tiles: int, width: int, height: int, tile_size: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Row, column [U, S] of each tile's S = tile_size^2 pixels (row-major tiles and pixels), and
    which of them lie inside the image (the last row and column of tiles may stick out)."""
    tiles_w = (width + tile_size - 1) // tile_size
    assert n_tiles == tiles_w * ((height + tile_size - 1) // tile_size), "full image: one row per tile"
    tile = torch.arange(n_tiles, device=device)
    off = torch.arange(tile_size, device=device)
    prow = ((tile // tiles_w) * tile_size)[:, None, None] + off[None, :, None]  # [U, ts, 1]
    pcol = ((tile % tiles_w) * tile_size)[:, None, None] + off[None, None, :]  # [U, 1, ts]
    prow, pcol = (
        prow.expand(-1, -1, tile_size).reshape(n_tiles, -1),
        pcol.expand(-1, tile_size, -1).reshape(n_tiles, -1),
    )
    return prow, pcol, (prow < height) & (pcol < width)


def _segment_last(values: Tensor, segments: Tensor, n: int) -> Tensor:
    """values [E] sorted by segments [E] (non-decreasing) -> [n] the last value of each segment (0 if empty)."""
    out = values.new_zeros(n)
    if values.numel():
        last = torch.ones_like(segments, dtype=torch.bool)
        last[:-1] = segments[1:] != segments[:-1]
        out[segments[last]] = values[last]
    return out


def warm_up_cpu_kernels() -> bool:
    """Compile (or load from numba's cache) the CPU kernels for float32 training by rendering and
    differentiating a few pixels of a tiny scene; False when numba is not installed. The set-up
    script calls this, so that the first training after install does not pay the compilation."""
    if not cpu_kernels.available():
        return False
    g = torch.Generator().manual_seed(0)
    n = 32
    leaves = [
        ((torch.rand(n, 3, generator=g) - 0.5) + torch.tensor([0.0, 0.0, 2.0])).requires_grad_(),
        torch.randn(n, 4, generator=g).requires_grad_(),
        (0.05 + 0.1 * torch.rand(n, 3, generator=g)).requires_grad_(),
        torch.rand(n, generator=g).requires_grad_(),
        torch.rand(n, 4, generator=g).requires_grad_(),
    ]
    xy = torch.rand(16, 2, generator=g) * 32.0
    feat, depth, alpha, _ = rasterize_torch(*leaves, torch.eye(4), 30.0, 30.0, 16.0, 16.0, 32, 32, pixels_xy=xy)
    (feat.sum() + depth.sum() + alpha.sum()).backward()
    return True
