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

# (loss, rgb, depth, language, clip, Gaussians) of the first 8 steps of the step before the
# synchronisation-free one (commit 20d516e~1) on small_scene, seed 0, CPU, one thread, per ATen CPU
# capability: torch's vectorised kernels (and torch.randn for the densify split) round differently
# with AVX-512, AVX2 and the scalar build, by 1e-6 before the first densification and by a few per
# cent after it (a CI runner with AVX2 failed against AVX-512 figures). Recorded with
# ATEN_CPU_CAPABILITY=avx512 / avx2 / default on one machine.
RECORDED = {
    "AVX512": {
        "points": [
            (1.1479907, 0.0616646335, 0.0216956809, 1.33674073, 0.827233195, 2026),
            (1.14432609, 0.0859804153, 0.0310315639, 1.30631232, 0.797966301, 2026),
            (1.16493249, 0.114104368, 0.044072479, 1.273803, 0.810224414, 2026),
            (1.15427053, 0.137769654, 0.0652822405, 1.21857882, 0.788309991, 2026),
            (1.05271399, 0.0755722299, 0.0213222019, 1.18815637, 0.757598281, 2026),
            (1.02569985, 0.080788143, 0.0380748101, 1.09281874, 0.781774879, 2026),
            (1.02071452, 0.109813273, 0.0345356315, 1.05282819, 0.755160213, 2026),
            (1.01469016, 0.0660626292, 0.0159141161, 1.12744212, 0.763447285, 2026),
        ],
        "full": [
            (1.17314517, 0.0854169279, 0.0287063029, 1.33674073, 0.827233195, 2026),
            (1.16376948, 0.0975469574, 0.0334315263, 1.33074975, 0.788322628, 2026),
            (1.1144979, 0.108204275, 0.0355224833, 1.16342831, 0.834950089, 2026),
            (1.10466802, 0.104915172, 0.0350870863, 1.16206193, 0.823408961, 4052),
            (1.07097793, 0.0947368145, 0.0351503119, 1.17222381, 0.766198337, 4052),
            (1.0130949, 0.0920497179, 0.0349194594, 1.06854033, 0.759582281, 4052),
            (1.03764343, 0.0906865373, 0.0348702893, 1.09477139, 0.785194159, 4052),
            (1.03278828, 0.0886847228, 0.0298653189, 1.09909046, 0.777170658, 4052),
        ],
    },
    "AVX2": {
        "points": [
            (1.1479907, 0.0616646335, 0.0216956809, 1.33674073, 0.827233195, 2026),
            (1.14432609, 0.0859804153, 0.0310315639, 1.30631232, 0.797966301, 2026),
            (1.16493249, 0.114104368, 0.044072479, 1.273803, 0.810224414, 2026),
            (1.15427053, 0.137769654, 0.0652822405, 1.21857882, 0.788309991, 2026),
            (1.05271399, 0.0755722299, 0.0213222019, 1.18815637, 0.757598281, 2026),
            (1.02569985, 0.080788143, 0.0380748101, 1.09281874, 0.781774879, 2026),
            (1.02071452, 0.109813273, 0.0345356315, 1.05282819, 0.755160213, 2026),
            (1.01469016, 0.0660626292, 0.0159141161, 1.12744212, 0.763447285, 2026),
        ],
        "full": [
            (1.17314517, 0.0854169279, 0.0287063029, 1.33674073, 0.827233195, 2026),
            (1.16376948, 0.0975469574, 0.0334315263, 1.33074975, 0.788322628, 2026),
            (1.1144979, 0.108204275, 0.0355224833, 1.16342831, 0.834950089, 2026),
            (1.10466802, 0.104915172, 0.0350870863, 1.16206193, 0.823408961, 4052),
            (1.07097793, 0.0947368145, 0.0351503119, 1.17222381, 0.766198337, 4052),
            (1.0130949, 0.0920497179, 0.0349194594, 1.06854033, 0.759582281, 4052),
            (1.03764343, 0.0906865373, 0.0348702893, 1.09477139, 0.785194159, 4052),
            (1.03278828, 0.0886847228, 0.0298653189, 1.09909046, 0.777170658, 4052),
        ],
    },
    "DEFAULT": {
        "points": [
            (1.1479907, 0.0616646335, 0.0216956809, 1.33674049, 0.827233195, 2026),
            (1.14432597, 0.0859804153, 0.0310315806, 1.30631208, 0.797966242, 2026),
            (1.16493237, 0.114104137, 0.0440724529, 1.27380311, 0.810224354, 2026),
            (1.15427029, 0.137769431, 0.0652822554, 1.21857882, 0.788309991, 2026),
            (1.05271363, 0.0755720958, 0.0213222671, 1.18815601, 0.757598281, 2026),
            (1.02569997, 0.0807882622, 0.0380749069, 1.09281874, 0.781774759, 2026),
            (1.02071488, 0.109813526, 0.0345353372, 1.05282831, 0.755160272, 2026),
            (1.01468956, 0.0660625547, 0.0159141365, 1.12744105, 0.763447344, 2026),
        ],
        "full": [
            (1.17314506, 0.0854169279, 0.0287063029, 1.33674061, 0.827233195, 2026),
            (1.16376948, 0.0975469798, 0.03343153, 1.33074975, 0.788322568, 2026),
            (1.11449814, 0.10820429, 0.0355225019, 1.16342843, 0.834950089, 2026),
            (1.10466826, 0.10491515, 0.0350871831, 1.16206241, 0.823408961, 4052),
            (1.07091403, 0.09467116, 0.0351475626, 1.17225754, 0.766169071, 4052),
            (1.01311183, 0.0919846818, 0.0349186733, 1.06870306, 0.759583771, 4052),
            (1.03770959, 0.090687193, 0.0348695926, 1.09485269, 0.785244226, 4052),
            (1.03283823, 0.0886730924, 0.0298663154, 1.09922707, 0.777156711, 4052),
        ],
    },
}


def _config(mode: str) -> TrainConfig:
    dens = DensifyConfig(start=4, every=4, reset_every=0, grad_threshold=1e-7)
    return TrainConfig(
        iters=8, train_width=0, render_mode=mode, points_per_view=200, patch_size=12, densify=dens
    )


@pytest.mark.parametrize("mode", ["points", "full"])
def test_cpu_losses_match_the_earlier_step(small_scene, mode: str) -> None:  # noqa: F811
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in RECORDED:
        pytest.skip(f"losses are recorded for ATen CPU capabilities {sorted(RECORDED)}, not {capability}")
    recorded = RECORDED[capability][mode]
    scene, features = small_scene
    torch.manual_seed(0)
    trainer = Trainer(scene, features, _config(mode), torch.device("cpu"))
    got = []
    for _ in range(8):
        logs = trainer.step()
        got.append([float(logs[k]) for k in ("loss", "rgb", "depth", "language", "clip")] + [logs["n"]])
    want = torch.tensor([row[:5] for row in recorded], dtype=torch.float64)
    got_t = torch.tensor([row[:5] for row in got], dtype=torch.float64)
    # Since the compiled CPU kernels (m3_core/render/cpu_kernels.py: float64 scalars inside) and
    # fused Adam on the CPU the step rounds differently from the recorded one: within 2e-6 before
    # the first densification (step 4 in full mode). After it, the split Gaussians start with zero
    # Adam moments and gradients near zero, where eps=1e-15 turns a rounding difference into a
    # different step (up to 6e-4 here; the recorded AVX-512 and scalar figures differ by 7e-5 there).
    before = 3 if mode == "full" else 8
    torch.testing.assert_close(got_t[:before], want[:before], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got_t[before:], want[before:], rtol=2e-3, atol=1e-6)
    assert [row[5] for row in got] == [row[5] for row in recorded]


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
