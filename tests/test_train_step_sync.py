"""The training step without host synchronisation: same losses as before on the CPU, masked losses
equal to the selecting ones, statistics only while densifying, and (GPU) no sync of ours per step."""

from __future__ import annotations

import traceback
import warnings

import pytest
import torch

from m3_core.render.gsplat_backend import intrinsics_matrix
from m3_core.training.densify import Densifier, DensifyConfig
from m3_core.training.losses import (
    SSIMFunction,
    depth_l1,
    depth_l1_masked,
    feature_loss,
    feature_loss_masked,
    ssim,
)
from m3_core.training.trainer import TrainConfig, Trainer
from tests.conftest_memory import one_thread, small_scene  # noqa: F401

# (loss, rgb, depth, language, clip, Gaussians) of the first 8 steps, printed by the trainer before
# the synchronisation-free step (commit b3997c1) on small_scene, seed 0, CPU, one thread.
RECORDED = {
    "points": [
        (1.14799142, 0.0616647005, 0.0216955617, 1.33674192, 0.827233195, 2026),
        (1.14432573, 0.0859801769, 0.0310316999, 1.30631232, 0.797966123, 2026),
        (1.16493189, 0.114103556, 0.044072561, 1.27380323, 0.810224354, 2026),
        (1.1542697, 0.13776955, 0.0652822182, 1.21857738, 0.788310051, 2026),
        (1.05271447, 0.0755721927, 0.0213221516, 1.18815732, 0.757598341, 2026),
        (1.02569962, 0.0807878971, 0.0380750038, 1.09281921, 0.781774402, 2026),
        (1.0207175, 0.109813422, 0.0345352888, 1.05283356, 0.755160451, 2026),
        (1.01469016, 0.0660626069, 0.0159141347, 1.12744212, 0.763447404, 2026),
    ],
    "full": [
        (1.17314506, 0.0854163021, 0.0287062246, 1.33674192, 0.827233195, 2026),
        (1.16376448, 0.0975420251, 0.0334307291, 1.33074999, 0.788322687, 2026),
        (1.11449385, 0.108204685, 0.0355225801, 1.16341937, 0.834949851, 2026),
        (1.10466945, 0.104915619, 0.0350872502, 1.16206408, 0.823408723, 4052),
        (1.05982268, 0.0949445814, 0.0350331403, 1.14976907, 0.765973866, 4052),
        (1.01396441, 0.0923404396, 0.0348087363, 1.06967378, 0.759650588, 4052),
        (1.03722239, 0.0869592577, 0.0348990187, 1.09920633, 0.787360311, 4052),
        (1.02609873, 0.0856274366, 0.0296995789, 1.09179223, 0.777270615, 4052),
    ],
}


def _config(mode: str) -> TrainConfig:
    dens = DensifyConfig(start=4, every=4, reset_every=0, grad_threshold=1e-7)
    return TrainConfig(
        iters=8, train_width=0, render_mode=mode, points_per_view=200, patch_size=12, densify=dens
    )


@pytest.mark.parametrize("mode", ["points", "full"])
def test_cpu_losses_match_the_earlier_step(small_scene, mode: str) -> None:  # noqa: F811
    scene, features = small_scene
    torch.manual_seed(0)
    trainer = Trainer(scene, features, _config(mode), torch.device("cpu"))
    got = []
    for _ in range(8):
        logs = trainer.step()
        got.append([float(logs[k]) for k in ("loss", "rgb", "depth", "language", "clip")] + [logs["n"]])
    want = torch.tensor([row[:5] for row in RECORDED[mode]], dtype=torch.float64)
    torch.testing.assert_close(torch.tensor([row[:5] for row in got], dtype=torch.float64), want,
                               rtol=1e-6, atol=1e-7)  # fmt: skip
    assert [row[5] for row in got] == [row[5] for row in RECORDED[mode]]


@pytest.mark.parametrize("n_valid", [0, 1, 37, 100])
def test_masked_losses_equal_the_selecting_ones(n_valid: int) -> None:
    gen = torch.Generator().manual_seed(n_valid)
    pred = torch.randn(100, 24, generator=gen, requires_grad=True)
    gt = torch.randn(100, 24, generator=gen)
    valid = torch.zeros(100, dtype=torch.bool)
    valid[torch.randperm(100, generator=gen)[:n_valid]] = True
    gt[~valid] = 0.0  # what sample_prepared_grid gives where no feature is
    depth = torch.rand(100, generator=gen, requires_grad=True)
    sensor = torch.where(valid, torch.rand(100, generator=gen) + 0.5, torch.zeros(()))

    for fast, ref, args in (
        (feature_loss_masked, feature_loss, (pred, gt, valid)),
        (depth_l1_masked, depth_l1, (depth, sensor)),
    ):
        leaf = args[0]
        got = fast(*args)
        (got_grad,) = torch.autograd.grad(got, leaf)
        want = ref(*args)
        (want_grad,) = torch.autograd.grad(want, leaf)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-6, atol=1e-7)
        assert torch.isfinite(got_grad).all()


def test_densification_statistics_stop_with_densification(small_scene) -> None:  # noqa: F811
    assert Densifier(DensifyConfig(start=500, stop=1500, every=100), 1.0).collects(1500)
    assert not Densifier(DensifyConfig(start=500, stop=1550, every=100), 1.0).collects(1501)
    assert not Densifier(DensifyConfig(start=500, stop=400, every=100), 1.0).collects(10)
    assert not Densifier(DensifyConfig(enabled=False), 1.0).collects(10)
    scene, features = small_scene
    trainer = Trainer(scene, features, _config("full"), torch.device("cpu"))
    assert trainer.densifier.config.stop == 4
    for _ in range(8):
        trainer.step()
    # the densify step at 4 consumed the statistic; steps 5-8 must not have started a new one
    assert trainer.densifier.grad_sum is None


def test_cached_constants_survive_inference_mode() -> None:
    """The SSIM window and the intrinsics are cached; a first call under inference mode must not
    cache tensors that autograd refuses afterwards."""
    a, b = torch.rand(16, 16, 3), torch.rand(16, 16, 3)
    with torch.inference_mode():
        ssim(a, b, window=7, sigma=1.25)
        K = intrinsics_matrix(100.0, 101.0, 50.5, 40.5, torch.device("cpu"), torch.float32)
    x = a.clone().requires_grad_(True)
    ssim(x, b, window=7, sigma=1.25).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert not K.is_inference() and K.shape == (1, 3, 3) and float(K[0, 0, 2]) == 50.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU on this machine)")
def test_cuda_step_does_not_synchronise(small_scene) -> None:  # noqa: F811
    """torch's sync debug mode warns at every host synchronisation; the only ones allowed in a step
    are gsplat's (it reads the tile-intersection count back to size its buffers)."""
    scene, features = small_scene
    dens = DensifyConfig(start=1000, stop=2000, every=100)  # statistics on, no densify step
    trainer = Trainer(scene, features, TrainConfig(iters=4000, train_width=0, densify=dens),
                      torch.device("cuda"))  # fmt: skip
    assert trainer.optimizer.defaults.get("fused")
    for _ in range(3):  # warm-up: caches, lazy CUDA initialisation
        trainer.step()
    torch.cuda.synchronize()
    seen: list[str] = []

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" in str(message).lower():
            seen.append("".join(traceback.format_stack(limit=12)))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(3):
                trainer.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # gsplat's own (package files) and the notice set_sync_debug_mode itself gives are not ours
    ours = [st for st in seen if "/gsplat/" not in st and "set_sync_debug_mode" not in st]
    assert not ours, "host synchronisations in the training step:\n" + "\n".join(ours)


def test_ssim_closed_form_gradient() -> None:
    """SSIMFunction (used off the CPU): same value as the formula, gradient equal to autograd's
    through it, and a numerically checked gradient in float64."""
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 23, 31, generator=gen, requires_grad=True)
    ref = (img.detach() + 0.1 * torch.randn(1, 3, 23, 31, generator=gen)).clamp(0, 1)
    got = SSIMFunction.apply(img, ref, 11, 1.5)
    (got_grad,) = torch.autograd.grad(got, img)
    want = ssim(img, ref)  # CPU: autograd through the formula
    (want_grad,) = torch.autograd.grad(want, img)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # float32 rounding of cancelling terms: compare at 1e-5 of the largest gradient
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-5 * float(want_grad.abs().max()))
    small = torch.rand(1, 2, 9, 12, dtype=torch.float64, generator=gen, requires_grad=True)
    small_ref = torch.rand(1, 2, 9, 12, dtype=torch.float64, generator=gen)
    assert torch.autograd.gradcheck(lambda x: SSIMFunction.apply(x, small_ref, 7, 1.5), (small,))
