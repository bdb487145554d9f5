"""Losses and metrics shared by the trainer and the evaluator (tensors in, tensors out).

- RGB: 0.8 L1 + 0.2 (1 - SSIM) as in 3DGS; SSIM with an 11x11 Gaussian window (sigma 1.5),
  computed on whatever image patch the caller renders (a full image on CUDA, crops on CPU).
- Features: the ground truth is a coarse grid [h, w, d] laid over the image (cell (i, j) centred at
  pixel x = (j + 0.5) W / w - 0.5); it is sampled bilinearly at the rendered pixels. All-zero cells
  mean "no feature": the bilinear weights of such cells are dropped and the rest renormalised; a
  point whose valid weight is below one half is masked out.
- Feature distances (paper Table 1): cosine distance 1 - cos and the L2 distance |r - g|.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F  # noqa: N812 (the usual name)

from m3_core.render import cpu_kernels

RGB_L1_WEIGHT = 0.8
RGB_DSSIM_WEIGHT = 0.2


@lru_cache(maxsize=16)
def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    """The SSIM window (cached: building it is six kernel launches per step on CUDA). Read-only.
    Built outside inference mode so that a first call under it does not cache a tensor autograd
    refuses later."""
    with torch.inference_mode(False), torch.no_grad():
        x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
        g = torch.exp(-(x**2) / (2 * sigma**2))
        g = g / g.sum()
        return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(img: torch.Tensor, ref: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two images [H, W, C] (or [B, C, H, W]) in [0, 1]; the window is zero-padded at
    the borders, as in the 3DGS implementation. Off the CPU, when only img needs a gradient, the
    gradient comes from SSIMFunction's closed-form backward (same forward)."""
    if img.ndim == 3:
        img, ref = img.permute(2, 0, 1)[None], ref.permute(2, 0, 1)[None]
    if img.device.type != "cpu" and torch.is_grad_enabled() and img.requires_grad and not ref.requires_grad:
        return SSIMFunction.apply(img, ref, window, sigma)
    return _ssim_terms(img, ref, window, sigma)[0].mean()


def _ssim_terms(img: torch.Tensor, ref: torch.Tensor, window: int, sigma: float) -> tuple[torch.Tensor, ...]:
    """(SSIM map, mu1, mu2, A1 = 2 mu1 mu2 + c1, A2 = 2 s12 + c2, B1, B2) of [B, C, H, W] images."""
    c = img.shape[1]
    # The five local means in one grouped convolution (per channel the same sums as five separate
    # calls, bit for bit; one call instead of five is 2.3x faster on the CPU trainer's 24x24 patch).
    win = _gaussian_window(window, sigma, 5 * c, img.device, img.dtype)
    stacked = torch.cat([img, ref, img * img, ref * ref, img * ref], dim=1)
    mu1, mu2, e11, e22, e12 = F.conv2d(stacked, win, padding=window // 2, groups=5 * c).split(c, dim=1)
    s11 = e11 - mu1 * mu1
    s22 = e22 - mu2 * mu2
    s12 = e12 - mu1 * mu2
    c1, c2 = 0.01**2, 0.03**2
    a1, a2 = 2 * mu1 * mu2 + c1, 2 * s12 + c2
    b1, b2 = mu1 * mu1 + mu2 * mu2 + c1, s11 + s22 + c2
    return (a1 * a2) / (b1 * b2), mu1, mu2, a1, a2, b1, b2


class SSIMFunction(torch.autograd.Function):
    """Mean SSIM with a closed-form gradient for img (ref is a constant): autograd through the
    formula is ~115 small kernels per step on a 640x480 image, this backward ~15, which matters
    when the step is bound by kernel launches (BENCHMARKS.md, training floor).

    With S = A1 A2 / (B1 B2), s11 = e11 - mu1^2, s12 = e12 - mu1 mu2 and G the (self-adjoint)
    window convolution: dS/dx = G(dS/dmu1) + 2 x G(dS/de11) + y G(dS/de12), where
    dS/dmu1 = 2 (mu2 (A2 - A1) + mu1 S (B1 - B2)) / (B1 B2), dS/de11 = -S / B2,
    dS/de12 = 2 A1 / (B1 B2)."""

    @staticmethod
    def forward(ctx, img: torch.Tensor, ref: torch.Tensor, window: int, sigma: float) -> torch.Tensor:
        smap, mu1, mu2, a1, a2, b1, b2 = _ssim_terms(img, ref, window, sigma)
        ctx.save_for_backward(img, ref, smap, mu1, mu2, a1, a2, b1, b2)
        ctx.window, ctx.sigma = window, sigma
        return smap.mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        img, ref, smap, mu1, mu2, a1, a2, b1, b2 = ctx.saved_tensors
        c = img.shape[1]
        g = grad / smap.numel()
        inv = g / (b1 * b2)
        d_mu1 = 2 * inv * (mu2 * (a2 - a1) + mu1 * smap * (b1 - b2))
        d_e11 = -g * smap / b2
        d_e12 = 2 * inv * a1
        win = _gaussian_window(ctx.window, ctx.sigma, 3 * c, img.device, img.dtype)
        stacked = torch.cat([d_mu1, d_e11, d_e12], dim=1)
        g_mu1, g_e11, g_e12 = F.conv2d(stacked, win, padding=ctx.window // 2, groups=3 * c).split(c, dim=1)
        return g_mu1 + 2 * img * g_e11 + ref * g_e12, None, None, None


def rgb_loss(rgb: torch.Tensor, target: torch.Tensor, with_ssim: bool = True) -> torch.Tensor:
    """0.8 L1 + 0.2 D-SSIM on an image patch [H, W, 3]; L1 only for unordered points [P, 3]."""
    l1 = (rgb - target).abs().mean()
    if not with_ssim:
        return l1
    return RGB_L1_WEIGHT * l1 + RGB_DSSIM_WEIGHT * (1.0 - ssim(rgb, target))


def psnr(img: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1]."""
    mse = float(((img.float() - ref.float()) ** 2).mean())
    return float("inf") if mse == 0 else -10.0 * torch.log10(torch.tensor(mse)).item()


def prepare_grid(grid: torch.Tensor) -> torch.Tensor:
    """A feature grid [h, w, d] (zeros = none) -> [1, d + 1, h, w] for sample_prepared_grid: invalid cells
    zeroed, their validity as the last channel. Constant per view: the trainer prepares it once."""
    valid_cells = (grid.abs().amax(dim=-1) > 0).to(grid.dtype)  # [h, w]
    stacked = torch.cat([grid * valid_cells[..., None], valid_cells[..., None]], dim=-1)
    # On the CPU the channels stay last in memory (a strided [1, d + 1, h, w] view): each sample then
    # reads its four cells' features as four contiguous rows, not d + 1 reads h * w apart. Same values
    # bit for bit; grid_sample took 23-30 ms of a ~100 ms CPU step at 385 channels, 4-15 ms this way.
    nchw = stacked.permute(2, 0, 1)[None]
    return nchw if grid.device.type == "cpu" else nchw.contiguous()


def sample_prepared_grid(
    prepared: torch.Tensor,  # [1, d + 1, h, w] from prepare_grid
    pixels: torch.Tensor,  # [P, 2] (row, col) in pixels of an image of size image_hw
    image_hw: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """sample_grid on a grid already passed through prepare_grid."""
    H, W = image_hw
    hwc = prepared[0].permute(1, 2, 0)  # prepare_grid's CPU layout: [h, w, d + 1] in memory
    if prepared.device.type == "cpu" and hwc.is_contiguous() and cpu_kernels.available():
        out = cpu_kernels.bilinear_points(hwc, pixels, image_hw)
        weight = out[:, -1]
        return out[:, :-1] / weight.clamp_min(1e-6)[:, None], weight >= 0.5
    rows, cols = pixels[:, 0].float(), pixels[:, 1].float()
    # grid_sample with align_corners=False: -1 is the left edge of cell 0 and of pixel 0 alike
    gx = (cols + 0.5) / W * 2 - 1
    gy = (rows + 0.5) / H * 2 - 1
    coords = torch.stack([gx, gy], dim=-1).to(prepared.dtype)[None, None]  # [1, 1, P, 2]
    out = F.grid_sample(prepared, coords, mode="bilinear", padding_mode="border", align_corners=False)[
        0, :, 0
    ].T  # [P, d + 1]
    weight = out[:, -1]
    valid = weight >= 0.5
    return out[:, :-1] / weight.clamp_min(1e-6)[:, None], valid


def sample_grid(
    grid: torch.Tensor,  # [h, w, d] ground-truth features (zeros = none)
    pixels: torch.Tensor,  # [P, 2] (row, col) in pixels of an image of size image_hw
    image_hw: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear samples of the grid at pixel positions -> (features [P, d], valid [P] bool)."""
    return sample_prepared_grid(prepare_grid(grid), pixels, image_hw)


def feature_distances(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point cosine distance 1 - cos(pred, gt) and L2 distance |pred - gt| (each [P])."""
    cos = F.cosine_similarity(pred, gt, dim=-1, eps=1e-8)
    return 1.0 - cos, (pred - gt).norm(dim=-1)


def feature_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance + mean L2 distance over valid points (0 when none is valid).

    Off the CPU this is feature_loss_masked. On the CPU rows are selected (no synchronisation to
    avoid there, fewer rows to compute, and the sums of the earlier code bit for bit)."""
    if pred.device.type != "cpu":
        return feature_loss_masked(pred, gt, valid)
    keep = valid.nonzero().squeeze(1)
    if keep.numel() == 0:
        return pred.sum() * 0.0
    # index_select, not boolean indexing: the same rows, several times faster on CPU
    cos_d, l2_d = feature_distances(pred.index_select(0, keep), gt.index_select(0, keep))
    return cos_d.mean() + l2_d.mean()


def feature_loss_masked(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """feature_loss with the mask as a weight: selecting rows (nonzero, boolean indexing) needs
    their count on the host, a CUDA synchronisation every step. Invalid rows add exact zeros."""
    count = valid.to(pred.dtype).sum().clamp_min(1.0)
    cos_d, l2_d = feature_distances(pred, gt)
    zero = pred.new_zeros(())
    return torch.where(valid, cos_d, zero).sum() / count + torch.where(valid, l2_d, zero).sum() / count


def depth_l1(depth: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |depth - target| over pixels with target > 0 (sensor depth, 0 = invalid); 0 when none
    is. Off the CPU this is depth_l1_masked (see feature_loss)."""
    if depth.device.type != "cpu":
        return depth_l1_masked(depth, target)
    valid = target > 0
    if not bool(valid.any()):
        return depth.sum() * 0.0
    return (depth[valid] - target[valid]).abs().mean()


def depth_l1_masked(depth: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """depth_l1 with the validity as a weight (no host synchronisation)."""
    valid = target > 0
    count = valid.to(depth.dtype).sum().clamp_min(1.0)
    return torch.where(valid, (depth - target).abs(), depth.new_zeros(())).sum() / count
