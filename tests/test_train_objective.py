"""The step's loss as one module (m3_core/training/objective.py): compiled with torch.compile it gives
the eager losses, gradients and training trajectory to float32 rounding; it is compiled only when
asked for or, by default, on CUDA with Triton."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest
import torch

from m3_core.training.objective import COMPILER_MODULES, compile_available, prefetch_compiler
from m3_core.training.trainer import TrainConfig, Trainer, TrainError
from tests.conftest_memory import one_thread, small_scene  # noqa: F401

STEPS = 4


def _losses(trainer: Trainer, steps: int) -> list[dict[str, float]]:
    out = []
    for _ in range(steps):
        logs = trainer.step()
        out.append({k: float(v) for k, v in logs.items()})
    return out


def _assert_same_run(device: torch.device, small_scene) -> None:  # noqa: F811
    scene, features = small_scene
    config = TrainConfig(iters=100, train_width=0, render_mode="full")
    eager = Trainer(scene, features, replace(config, compile_loss="off"), device)
    compiled = Trainer(scene, features, replace(config, compile_loss="on"), device)
    assert eager.full_image_loss == eager.objective.full_image
    assert compiled.full_image_loss != compiled.objective.full_image  # the torch.compile wrapper
    want, got = _losses(eager, STEPS), _losses(compiled, STEPS)
    for step, (w, g) in enumerate(zip(want, got, strict=True)):
        assert w.keys() == g.keys()
        for key in w:
            # float32 rounding of fused sums (a few 1e-7 relative), compounded over the steps
            assert g[key] == pytest.approx(w[key], rel=2e-5, abs=1e-6), (step, key, w[key], g[key])
    # one step's gradients on the same rendered inputs (the parameters after Adam steps are not a
    # fair comparison: Adam divides by the gradient's running norm, so a 1e-9 gradient differing
    # in its last bits moves a parameter by a whole learning rate)
    view = eager.views[0]
    out = eager_render(eager, view)
    points = torch.tensor([[1, 2], [5, 7], [10, 3], [20, 30]], device=device)
    grids = tuple(eager.prepared_grids[m][view.index] for m in eager.heads)
    grads = []
    for fn in (eager.full_image_loss, compiled.full_image_loss):
        inputs = [t.detach().clone().requires_grad_(True) for t in (out.rgb, out.depth, out.queries)]
        loss, _ = fn(inputs[0], view.rgb, inputs[1], view.depth_m, inputs[2], points, grids)
        grads.append((loss.detach(), torch.autograd.grad(loss, inputs)))
    (l_eager, g_eager), (l_compiled, g_compiled) = grads
    torch.testing.assert_close(l_compiled, l_eager, rtol=1e-5, atol=1e-6)
    for name, a, b in zip(("rgb", "depth", "queries"), g_eager, g_compiled, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * float(a.abs().max()), msg=name)


def eager_render(trainer: Trainer, view):
    from m3_core.model.memory import render_memory

    with torch.no_grad():
        return render_memory(trainer.gaussians, view.world_from_camera, view.camera, background=trainer.background)


def test_compiling_the_loss_is_refused_on_the_cpu(small_scene, one_thread) -> None:  # noqa: F811
    """compile_loss='on' off CUDA is a clear error, not a compiled CPU loss (it gave NaN losses there
    with ATen's AVX2 kernels on an AVX-512 machine)."""
    scene, features = small_scene
    config = TrainConfig(iters=10, train_width=0, render_mode="full", compile_loss="on")
    with pytest.raises(TrainError, match="compile_loss='on' is not available"):
        Trainer(scene, features, config, torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU on this machine)")
def test_compiled_loss_trains_like_the_eager_one_cuda(small_scene) -> None:  # noqa: F811
    ok, why = compile_available(torch.device("cuda"))
    if not ok:
        pytest.skip(why)
    _assert_same_run(torch.device("cuda"), small_scene)


def test_loss_is_compiled_by_default_only_where_it_pays(small_scene, one_thread) -> None:  # noqa: F811
    """auto: eager in points mode and on the CPU (no launch overhead to save there; the CPU keeps its
    recorded losses bit for bit), compiled on CUDA with Triton; a bad value is refused."""
    scene, features = small_scene
    cpu = torch.device("cpu")
    for mode in ("points", "full"):
        t = Trainer(scene, features, TrainConfig(iters=10, train_width=0, render_mode=mode), cpu)
        assert t.full_image_loss == t.objective.full_image, mode
    ok, why = compile_available(cpu)
    assert not ok and "CUDA" in why
    with pytest.raises(ValueError, match="compile_loss"):
        TrainConfig(compile_loss="yes")


def test_the_compiler_import_runs_beside_the_set_up_and_finishes() -> None:
    # The trainer joins this thread before torch.compile: it must end, having imported what
    # torch.compile loads, and never raise in the background.
    thread = prefetch_compiler()
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert all(name in sys.modules for name in COMPILER_MODULES)
