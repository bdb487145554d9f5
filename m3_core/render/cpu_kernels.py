"""The CPU training path's hot loops, compiled with numba: projection, tile table, compositing
(and the bilinear sampling of the feature grids at the step's points).

CPU training renders ~2600 chosen pixels a step against ~50k Gaussians. As whole-tensor PyTorch
operations (torch_backend's reference forms) that step was ~70 ms on 2 cores, most of it in three
places: the projection's ~60 elementwise ops and their autograd backward over every Gaussian; the
tile table (an enumeration of every (tile, Gaussian) pair and a stable sort); and compositing as
padded candidate blocks gathered, kept and scattered again. Here each is a loop:
- ProjectCPU: one iteration per Gaussian, forward and gsplat's hand-written backward (proj_vjp,
  covar-to-conic and quaternion-scale vector-Jacobian products) on scalars;
- tile_table: a counting sort of the intersections by tile (Gaussians visited in depth order, so
  rows come out depth-ordered with no sort);
- CompositeCPU: one loop per pixel that stops where gsplat's thread stops; the backward walks the
  same contributions back to front (transmittance recovered by division, the features behind a
  contribution as a running sum), so nothing is stored per contribution.
The scalar arithmetic runs in float64: float64 inputs give the reference's results to 1e-9 and
float32 inputs agree to float32 rounding (tests/test_render_torch.py checks both against the tensor
forms, which are themselves checked against a brute-force renderer).

numba is optional: without it (or for tensors off the CPU, or a camera that needs a gradient) the
tensor forms run. The first call compiles the kernels (about 30 s on 2 cores); numba caches them
next to this file (__pycache__), so later processes load them in a fraction of a second.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

try:
    import numba
    from numba import njit, prange
except ImportError:  # the tensor path of the torch backend is used instead
    numba = None


ENABLED = True  # False: the tensor forms everywhere (the reference the kernels are tested against)


def available() -> bool:
    """Whether the compiled kernels run here: numba importable and ENABLED."""
    return ENABLED and numba is not None


def runs_on(t: Tensor) -> bool:
    """Whether the kernels take tensors like t: on the CPU, float32 or float64, kernels available."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and available()


if numba is not None:

    @njit(cache=True)
    def _sigma(packed, g, px, py):
        dx = packed[g, 0] - px
        dy = packed[g, 1] - py
        sigma = 0.5 * (packed[g, 2] * dx * dx + packed[g, 4] * dy * dy) + packed[g, 3] * dx * dy
        return dx, dy, sigma, packed[g, 5] * math.exp(-sigma)

    @njit(cache=True)
    def _forward_pixel(p, packed, feats, xy, pix_tile, table, rules, out, t_final, last):
        t_min, max_alpha, alpha_min = rules[0], rules[1], rules[2]
        row, px, py = pix_tile[p], xy[p, 0], xy[p, 1]
        T = 1.0
        n = 0
        for k in range(table.shape[1]):
            g = table[row, k]
            if g < 0:
                break
            _, _, sigma, raw = _sigma(packed, g, px, py)
            alpha = min(raw, max_alpha)
            if sigma < 0.0 or alpha < alpha_min:
                continue
            t_after = T * (1.0 - alpha)
            if t_after <= t_min:
                break
            w = alpha * T
            for ch in range(feats.shape[1]):
                out[p, ch] += w * feats[g, ch]
            T = t_after
            n = k + 1
        t_final[p] = T
        last[p] = n

    @njit(parallel=True, cache=True)
    def _forward(packed, feats, xy, pix_tile, table, rules, out, t_final, last):
        for p in prange(xy.shape[0]):
            _forward_pixel(p, packed, feats, xy, pix_tile, table, rules, out, t_final, last)

    @njit(cache=True)
    def _backward_pixel(p, packed, feats, xy, pix_tile, table, rules, t_final, last, g_out, g_t, d_packed, d_feats):
        max_alpha, alpha_min = rules[1], rules[2]
        row, px, py = pix_tile[p], xy[p, 0], xy[p, 1]
        T = t_final[p]
        behind = 0.0  # sum of w * (feature . g_out) over the contributions behind this one
        tail = t_final[p] * g_t[p]
        for k in range(last[p] - 1, -1, -1):
            g = table[row, k]
            dx, dy, sigma, raw = _sigma(packed, g, px, py)
            alpha = min(raw, max_alpha)
            if sigma < 0.0 or alpha < alpha_min:
                continue
            one_minus = 1.0 - alpha
            t_before = T / one_minus
            w = alpha * t_before
            fg = 0.0
            for ch in range(feats.shape[1]):
                fg += feats[g, ch] * g_out[p, ch]
                d_feats[g, ch] += w * g_out[p, ch]
            d_alpha = 0.0 if raw > max_alpha else t_before * fg - (behind + tail) / one_minus
            d_sigma = -d_alpha * alpha
            d_packed[g, 0] += d_sigma * (packed[g, 2] * dx + packed[g, 3] * dy)
            d_packed[g, 1] += d_sigma * (packed[g, 3] * dx + packed[g, 4] * dy)
            d_packed[g, 2] += d_sigma * 0.5 * dx * dx
            d_packed[g, 3] += d_sigma * dx * dy
            d_packed[g, 4] += d_sigma * 0.5 * dy * dy
            d_packed[g, 5] += d_alpha * alpha / packed[g, 5]
            behind += w * fg
            T = t_before

    @njit(parallel=True, cache=True)
    def _backward(packed, feats, xy, pix_tile, table, rules, t_final, last, g_out, g_t, d_packed, d_feats):
        # One accumulation buffer per chunk of pixels (no atomics on the CPU); summed by the caller.
        n_chunks, P = d_packed.shape[0], xy.shape[0]
        for c in prange(n_chunks):
            for p in range(c * P // n_chunks, (c + 1) * P // n_chunks):
                _backward_pixel(
                    p, packed, feats, xy, pix_tile, table, rules, t_final, last, g_out, g_t, d_packed[c], d_feats[c]
                )


    @njit(cache=True)
    def _scan_intersections(tx0, tx1, ty0, ty1, lookup, tiles_w, ids, cursor, table):
        """Each (used tile, Gaussian) intersection in Gaussian order: counted per row into cursor
        when table is empty, else the Gaussian's id written at table[row, cursor[row]]."""
        count_only = table.shape[0] == 0
        for a in range(tx0.shape[0]):
            for ty in range(ty0[a], ty1[a]):
                for tx in range(tx0[a], tx1[a]):
                    row = lookup[ty * tiles_w + tx]
                    if row >= 0:
                        if not count_only:
                            table[row, cursor[row]] = ids[a]
                        cursor[row] += 1

    @njit(cache=True)
    def _tile_table(tx0, tx1, ty0, ty1, lookup, tiles_w, n_rows, ids):
        # Counting sort of the intersections by tile: Gaussians are visited in their (depth) order,
        # so each row comes out depth-ordered without a sort.
        counts = np.zeros(n_rows, np.int64)
        _scan_intersections(tx0, tx1, ty0, ty1, lookup, tiles_w, ids, counts, np.empty((0, 1), np.int64))
        table = np.full((n_rows, max(1, counts.max()) if n_rows else 1), -1, np.int64)
        _scan_intersections(tx0, tx1, ty0, ty1, lookup, tiles_w, ids, np.zeros(n_rows, np.int64), table)
        return table

    # The projection below works on scalars and tuples only: a small numpy array per Gaussian is a
    # heap allocation, which made the loops several times slower than the arithmetic.

    @njit(cache=True)
    def _rotation(quats, i):
        """Unit quaternion (w, x, y, z), its norm and the row-major rotation matrix (9-tuple)."""
        w, x, y, z = quats[i, 0], quats[i, 1], quats[i, 2], quats[i, 3]
        norm = math.sqrt(w * w + x * x + y * y + z * z)
        w, x, y, z = w / norm, x / norm, y / norm, z / norm
        rot = (
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        )  # fmt: skip
        return (w, x, y, z), norm, rot

    @njit(cache=True)
    def _camera_terms(means, scales, i, R, t, rot):
        """Camera-frame centre (x, y, z) and Mc = R_cam rot S (row-major 9-tuple) of Gaussian i."""
        x = R[0, 0] * means[i, 0] + R[0, 1] * means[i, 1] + R[0, 2] * means[i, 2] + t[0]
        y = R[1, 0] * means[i, 0] + R[1, 1] * means[i, 1] + R[1, 2] * means[i, 2] + t[1]
        z = R[2, 0] * means[i, 0] + R[2, 1] * means[i, 1] + R[2, 2] * means[i, 2] + t[2]
        s0, s1, s2 = scales[i, 0], scales[i, 1], scales[i, 2]
        mc = (
            (R[0, 0] * rot[0] + R[0, 1] * rot[3] + R[0, 2] * rot[6]) * s0,
            (R[0, 0] * rot[1] + R[0, 1] * rot[4] + R[0, 2] * rot[7]) * s1,
            (R[0, 0] * rot[2] + R[0, 1] * rot[5] + R[0, 2] * rot[8]) * s2,
            (R[1, 0] * rot[0] + R[1, 1] * rot[3] + R[1, 2] * rot[6]) * s0,
            (R[1, 0] * rot[1] + R[1, 1] * rot[4] + R[1, 2] * rot[7]) * s1,
            (R[1, 0] * rot[2] + R[1, 1] * rot[5] + R[1, 2] * rot[8]) * s2,
            (R[2, 0] * rot[0] + R[2, 1] * rot[3] + R[2, 2] * rot[6]) * s0,
            (R[2, 0] * rot[1] + R[2, 1] * rot[4] + R[2, 2] * rot[7]) * s1,
            (R[2, 0] * rot[2] + R[2, 1] * rot[5] + R[2, 2] * rot[8]) * s2,
        )
        return x, y, z, mc

    @njit(cache=True)
    def _jacobian_rows(x, y, z_raw, mc, cam):
        """Safe z, 1/z, x/z, y/z, the clamped tx, ty and the rows JM0, JM1 of J Mc (3-tuples)."""
        fx, fy, lxn, lxp, lyn, lyp = cam[0], cam[1], cam[4], cam[5], cam[6], cam[7]
        z = z_raw if abs(z_raw) > 1e-8 else 1e-8
        rz = 1.0 / z
        u, v = x * rz, y * rz
        tx = z * min(max(u, -lxn), lxp)
        ty = z * min(max(v, -lyn), lyp)
        k0, k1, k2, k3 = fx * rz, fx * tx * rz * rz, fy * rz, fy * ty * rz * rz
        JM0 = (k0 * mc[0] - k1 * mc[6], k0 * mc[1] - k1 * mc[7], k0 * mc[2] - k1 * mc[8])
        JM1 = (k2 * mc[3] - k3 * mc[6], k2 * mc[4] - k3 * mc[7], k2 * mc[5] - k3 * mc[8])
        return z, rz, u, v, tx, ty, JM0, JM1

    @njit(cache=True)
    def _dot3(p, q):
        return p[0] * q[0] + p[1] * q[1] + p[2] * q[2]

    @njit(parallel=True, cache=True)
    def _project(means, quats, scales, R, t, cam, eps2d, means2d, conics, depth, acd):
        for i in prange(means.shape[0]):
            rot = _rotation(quats, i)[2]
            x, y, z_raw, mc = _camera_terms(means, scales, i, R, t, rot)
            z, rz, _, _, _, _, JM0, JM1 = _jacobian_rows(x, y, z_raw, mc, cam)
            a = _dot3(JM0, JM0) + eps2d
            b = _dot3(JM0, JM1)
            c = _dot3(JM1, JM1) + eps2d
            det = a * c - b * b
            d = det if det > 0 else 1.0
            means2d[i, 0] = cam[0] * x * rz + cam[2]
            means2d[i, 1] = cam[1] * y * rz + cam[3]
            conics[i, 0], conics[i, 1], conics[i, 2] = c / d, -b / d, a / d
            depth[i] = z
            acd[i, 0], acd[i, 1], acd[i, 2] = a, c, det

    @njit(cache=True)
    def _conic_vjp(g0, g1, g2, JM0, JM1, eps2d):
        """Gradients with respect to the rows JM0, JM1 of the conic's gradient (g0, g1, g2)."""
        a = _dot3(JM0, JM0) + eps2d
        b = _dot3(JM0, JM1)
        c = _dot3(JM1, JM1) + eps2d
        det = a * c - b * b
        d = det if det > 0 else 1.0
        g_d = -(g0 * c - g1 * b + g2 * a) / (d * d) if det > 0 else 0.0
        g_a = g2 / d + g_d * c
        g_b = -g1 / d - 2.0 * g_d * b
        g_c = g0 / d + g_d * a
        g_JM0 = (2.0 * g_a * JM0[0] + g_b * JM1[0], 2.0 * g_a * JM0[1] + g_b * JM1[1], 2.0 * g_a * JM0[2] + g_b * JM1[2])
        g_JM1 = (2.0 * g_c * JM1[0] + g_b * JM0[0], 2.0 * g_c * JM1[1] + g_b * JM0[1], 2.0 * g_c * JM1[2] + g_b * JM0[2])
        return g_JM0, g_JM1

    @njit(cache=True)
    def _quat_vjp(G, norm, q):
        """Gradient with respect to the unnormalised quaternion of the gradient G (row-major 9-tuple)
        with respect to its rotation matrix."""
        w, x, y, z = q
        gw = 2 * (x * (G[7] - G[5]) + y * (G[2] - G[6]) + z * (G[3] - G[1]))
        gx = 2 * (-2 * x * (G[4] + G[8]) + y * (G[1] + G[3]) + z * (G[2] + G[6]) + w * (G[7] - G[5]))
        gy = 2 * (x * (G[1] + G[3]) - 2 * y * (G[0] + G[8]) + z * (G[5] + G[7]) + w * (G[2] - G[6]))
        gz = 2 * (x * (G[2] + G[6]) + y * (G[5] + G[7]) - 2 * z * (G[0] + G[4]) + w * (G[3] - G[1]))
        dot = w * gw + x * gx + y * gy + z * gz
        return (gw - w * dot) / norm, (gx - x * dot) / norm, (gy - y * dot) / norm, (gz - z * dot) / norm

    @njit(cache=True)
    def _rt_col(R, g_Mc, r, col):
        """(R^T g_Mc)[r, col] for g_Mc a row-major 9-tuple."""
        return R[0, r] * g_Mc[col] + R[1, r] * g_Mc[3 + col] + R[2, r] * g_Mc[6 + col]

    @njit(cache=True)
    def _mc_vjp(g_Mc, R, rot, scales, i):
        """Gradients with respect to the scales (3-tuple) and rot (row-major 9-tuple) of g_Mc, the
        gradient of Mc = R_cam rot S (scalars only: lists would be heap allocations)."""
        g00, g01, g02 = _rt_col(R, g_Mc, 0, 0), _rt_col(R, g_Mc, 0, 1), _rt_col(R, g_Mc, 0, 2)
        g10, g11, g12 = _rt_col(R, g_Mc, 1, 0), _rt_col(R, g_Mc, 1, 1), _rt_col(R, g_Mc, 1, 2)
        g20, g21, g22 = _rt_col(R, g_Mc, 2, 0), _rt_col(R, g_Mc, 2, 1), _rt_col(R, g_Mc, 2, 2)
        s0, s1, s2 = scales[i, 0], scales[i, 1], scales[i, 2]
        g_s = (
            g00 * rot[0] + g10 * rot[3] + g20 * rot[6],
            g01 * rot[1] + g11 * rot[4] + g21 * rot[7],
            g02 * rot[2] + g12 * rot[5] + g22 * rot[8],
        )
        G = (g00 * s0, g01 * s1, g02 * s2, g10 * s0, g11 * s1, g12 * s2, g20 * s0, g21 * s1, g22 * s2)
        return g_s, G

    @njit(cache=True)
    def _project_vjp_one(i, means, quats, scales, R, t, cam, eps2d, g_m2d, g_con, g_z, g_means, g_quats, g_scales):
        fx, fy, lxn, lxp, lyn, lyp = cam[0], cam[1], cam[4], cam[5], cam[6], cam[7]
        q, norm, rot = _rotation(quats, i)
        x, y, z_raw, mc = _camera_terms(means, scales, i, R, t, rot)
        z, rz, u, v, tx, ty, JM0, JM1 = _jacobian_rows(x, y, z_raw, mc, cam)
        g_JM0, g_JM1 = _conic_vjp(g_con[i, 0], g_con[i, 1], g_con[i, 2], JM0, JM1, eps2d)
        row2 = (mc[6], mc[7], mc[8])
        d0_2, d1_2 = _dot3(g_JM0, row2), _dot3(g_JM1, row2)
        rz2 = rz * rz
        k0, k1, k2, k3 = fx * rz, fy * rz, fx * tx * rz2, fy * ty * rz2
        g_Mc = (
            k0 * g_JM0[0], k0 * g_JM0[1], k0 * g_JM0[2],
            k1 * g_JM1[0], k1 * g_JM1[1], k1 * g_JM1[2],
            -k2 * g_JM0[0] - k3 * g_JM1[0], -k2 * g_JM0[1] - k3 * g_JM1[1], -k2 * g_JM0[2] - k3 * g_JM1[2],
        )  # fmt: skip
        g_rz = (fx * _dot3(g_JM0, (mc[0], mc[1], mc[2])) - 2 * fx * tx * rz * d0_2
                + fy * _dot3(g_JM1, (mc[3], mc[4], mc[5])) - 2 * fy * ty * rz * d1_2)  # fmt: skip
        g_tx, g_ty = -fx * rz2 * d0_2, -fy * rz2 * d1_2
        g_u = fx * g_m2d[i, 0] + (g_tx * z if -lxn <= u <= lxp else 0.0)
        g_v = fy * g_m2d[i, 1] + (g_ty * z if -lyn <= v <= lyp else 0.0)
        g_zs = g_z[i] + g_tx * min(max(u, -lxn), lxp) + g_ty * min(max(v, -lyn), lyp)
        g_zs -= (g_rz + g_u * x + g_v * y) * rz2
        gc0, gc1, gc2 = g_u * rz, g_v * rz, (g_zs if abs(z_raw) > 1e-8 else 0.0)
        for k in range(3):  # means_c = R means + t
            g_means[i, k] = R[0, k] * gc0 + R[1, k] * gc1 + R[2, k] * gc2
        g_s, G = _mc_vjp(g_Mc, R, rot, scales, i)
        g_scales[i, 0], g_scales[i, 1], g_scales[i, 2] = g_s
        g_quats[i, 0], g_quats[i, 1], g_quats[i, 2], g_quats[i, 3] = _quat_vjp(G, norm, q)

    @njit(parallel=True, cache=True)
    def _project_vjp(means, quats, scales, R, t, cam, eps2d, g_m2d, g_con, g_z, g_means, g_quats, g_scales):
        for i in prange(means.shape[0]):
            _project_vjp_one(i, means, quats, scales, R, t, cam, eps2d, g_m2d, g_con, g_z, g_means, g_quats, g_scales)


    @njit(parallel=True, cache=True)
    def _bilinear_points(grid, rows, cols, H, W, out):
        h, w = grid.shape[0], grid.shape[1]
        for p in prange(rows.shape[0]):
            # grid_sample's bilinear, align_corners=False, border padding: cell centres at
            # (i + 0.5) * W / w - 0.5 in pixels, coordinates clipped to the outermost centres
            x = min(max((cols[p] + 0.5) * w / W - 0.5, 0.0), w - 1.0)
            y = min(max((rows[p] + 0.5) * h / H - 0.5, 0.0), h - 1.0)
            x0, y0 = int(math.floor(x)), int(math.floor(y))
            x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
            fx, fy = x - x0, y - y0
            w00, w01, w10, w11 = (1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy
            for c in range(grid.shape[2]):
                out[p, c] = w00 * grid[y0, x0, c] + w01 * grid[y0, x1, c] + w10 * grid[y1, x0, c] + w11 * grid[y1, x1, c]


def bilinear_points(grid_hwc: Tensor, pixels: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """Bilinear samples [P, C] of a feature grid [h, w, C] (row-major, channels last) at pixels
    [P, 2] (row, col) of an image of size image_hw: grid_sample(mode="bilinear", padding_mode="border",
    align_corners=False) of the same grid, as one loop (the CPU training step samples a 385-channel
    grid at 2000 points; grid_sample took ~4 ms of a ~45 ms step)."""
    grid = _np(grid_hwc)
    out = np.empty((pixels.shape[0], grid.shape[2]), dtype=grid.dtype)
    rows, cols = (_np(pixels[:, i].to(torch.float64)) for i in (0, 1))
    _bilinear_points(grid, rows, cols, int(image_hw[0]), int(image_hw[1]), out)
    return torch.from_numpy(out)


def tile_table(
    tx0: Tensor, tx1: Tensor, ty0: Tensor, ty1: Tensor, lookup: Tensor, tiles_w: int, n_rows: int, ids: Tensor
) -> Tensor:
    """Candidate table [n_rows, K] (-1 pads): per used tile (lookup: tile -> row or -1) the ids[a] of
    the Gaussians a (in the order given, i.e. by depth) whose tile rectangle [tx0, tx1) x [ty0, ty1)
    covers it; what torch_backend._tile_candidates builds with a stable sort."""
    arrays = [_np(t.to(torch.int64)) for t in (tx0, tx1, ty0, ty1, lookup)]
    return torch.from_numpy(_tile_table(*arrays, int(tiles_w), int(n_rows), _np(ids.to(torch.int64))))


class ProjectCPU(torch.autograd.Function):
    """projection.projection_terms' outputs (means2d [N,2], conics [N,3], depth [N]; a, c, det [N]
    without gradient) as compiled per-Gaussian loops with gsplat's vector-Jacobian products.
    Differentiable in means, quats and scales; the camera is a constant."""

    @staticmethod
    def forward(ctx, means, quats, scales, R, t, intrinsics, lims, eps2d):
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        arrays = tuple(_np(x.detach().to(means.dtype)) for x in (means, quats, scales, R, t))
        dtype = arrays[0].dtype
        cam = np.asarray([*intrinsics, *lims], dtype=np.float64)
        n = means.shape[0]
        means2d, conics = np.empty((n, 2), dtype), np.empty((n, 3), dtype)
        depth, acd = np.empty(n, dtype), np.empty((n, 3), dtype)
        _project(*arrays, cam, float(eps2d), means2d, conics, depth, acd)
        ctx.arrays, ctx.cam, ctx.eps2d = arrays, cam, float(eps2d)
        acd_t = torch.from_numpy(acd)
        a, c, det = acd_t[:, 0], acd_t[:, 1], acd_t[:, 2]
        ctx.mark_non_differentiable(a, c, det)
        return torch.from_numpy(means2d), torch.from_numpy(conics), torch.from_numpy(depth), a, c, det

    @staticmethod
    def backward(ctx, g_m2d, g_con, g_z, _ga, _gc, _gdet):
        means = ctx.arrays[0]
        n, dtype = means.shape[0], means.dtype
        g_m2d = _np(g_m2d.to(torch.float64)) if g_m2d is not None else np.zeros((n, 2))
        g_con = _np(g_con.to(torch.float64)) if g_con is not None else np.zeros((n, 3))
        g_z = _np(g_z.to(torch.float64)) if g_z is not None else np.zeros(n)
        g_means, g_quats, g_scales = np.empty((n, 3), dtype), np.empty((n, 4), dtype), np.empty((n, 3), dtype)
        _project_vjp(*ctx.arrays, ctx.cam, ctx.eps2d, g_m2d, g_con, g_z, g_means, g_quats, g_scales)
        return torch.from_numpy(g_means), torch.from_numpy(g_quats), torch.from_numpy(g_scales), None, None, None, None, None


class CompositeCPU(torch.autograd.Function):
    """`_Composite` of the torch backend as compiled per-pixel loops: (features [P,C+1], final
    transmittance T [P]), differentiable in packed [N,6] (x, y, conic a/b/c, opacity) and feats
    [N,C+1]; the table's entries index their rows directly (no gather of the visible ones)."""

    @staticmethod
    def forward(ctx, packed: Tensor, feats: Tensor, xy: Tensor, pix_tile: Tensor, table: Tensor, rules: tuple):
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        arrays = _arrays(packed, feats, xy, pix_tile, table)
        rules_np = np.asarray(rules, dtype=np.float64)
        P, C1 = xy.shape[0], feats.shape[1]
        dt = arrays[1].dtype
        out = np.zeros((P, C1), dtype=dt)
        t_final = np.empty(P, dtype=dt)
        last = np.empty(P, dtype=np.int64)
        _forward(*arrays, rules_np, out, t_final, last)
        ctx.arrays, ctx.rules, ctx.t_final, ctx.last = arrays, rules_np, t_final, last
        ctx.shapes = (packed.shape, feats.shape, packed.dtype)
        return torch.from_numpy(out), torch.from_numpy(t_final)

    @staticmethod
    def backward(ctx, g_out: Tensor | None, g_t: Tensor | None):
        packed_shape, feats_shape, dtype = ctx.shapes
        P = ctx.t_final.shape[0]
        g_out_np = _np(g_out.to(dtype)) if g_out is not None else np.zeros((P, feats_shape[1]), ctx.t_final.dtype)
        g_t_np = _np(g_t.to(dtype)) if g_t is not None else np.zeros(P, ctx.t_final.dtype)
        n_chunks = numba.get_num_threads()
        d_packed = np.zeros((n_chunks, *packed_shape), dtype=ctx.t_final.dtype)
        d_feats = np.zeros((n_chunks, *feats_shape), dtype=ctx.t_final.dtype)
        _backward(*ctx.arrays, ctx.rules, ctx.t_final, ctx.last, g_out_np, g_t_np, d_packed, d_feats)
        d_packed_t = torch.from_numpy(d_packed).sum(0) if n_chunks > 1 else torch.from_numpy(d_packed[0])
        d_feats_t = torch.from_numpy(d_feats).sum(0) if n_chunks > 1 else torch.from_numpy(d_feats[0])
        return d_packed_t, d_feats_t, None, None, None, None


def _np(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().numpy())


def _arrays(packed: Tensor, feats: Tensor, xy: Tensor, pix_tile: Tensor, table: Tensor) -> tuple[np.ndarray, ...]:
    """numpy views (copies only where not contiguous) in the features' dtype (float32 or float64)."""
    dtype = feats.dtype
    return (
        _np(packed.to(dtype)),
        _np(feats),
        _np(xy.to(dtype)),
        np.ascontiguousarray(pix_tile.detach().to(torch.int64).numpy()),
        np.ascontiguousarray(table.detach().to(torch.int64).numpy()),
    )
