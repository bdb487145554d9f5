"""Training closes the loop on a synthetic scene; bad scenes and features fail clearly."""

from __future__ import annotations

import shutil

import pytest
import torch

from m3_core.features.cache import SceneFeatures
from m3_core.model.attention import MemoryAttention
from m3_core.model.gaussians import GaussianModel
from m3_core.model.linear import LinearDecoder, latent_dim_for_budget
from m3_core.scene import load_scene
from m3_core.training.densify import Densifier, DensifyConfig
from m3_core.training.eval import evaluate_memory
from m3_core.training.trainer import (
    TrainConfig,
    Trainer,
    TrainError,
    heldout_indices,
    train_memory,
)
from tests.conftest_memory import make_scene, one_thread, small_memory, small_scene  # noqa: F401

TINY = TrainConfig(iters=3, train_width=0, points_per_view=100, patch_size=12)


def test_heldout_split() -> None:
    assert heldout_indices(20, 8) == [0, 8, 16]
    assert heldout_indices(20, 0) == [] and heldout_indices(1, 8) == []


def test_training_fits_the_scene(small_scene) -> None:  # noqa: F811
    scene, features = small_scene
    trainer = Trainer(scene, features, TrainConfig(iters=60, train_width=0, points_per_view=300, patch_size=16),
                      torch.device("cpu"))  # fmt: skip
    before, _ = evaluate_memory(trainer.memory(), scene, features)
    logs = [trainer.step() for _ in range(60)]
    after, _ = evaluate_memory(trainer.memory(), scene, features)
    first = sum(float(entry["loss"]) for entry in logs[:10]) / 10
    last = sum(float(entry["loss"]) for entry in logs[-10:]) / 10
    assert last < 0.7 * first
    assert after["psnr"] > before["psnr"] + 1.0
    assert after["features"]["language"]["cosine"] < 0.5 * before["features"]["language"]["cosine"]
    assert after["features"]["clip"]["cosine"] < before["features"]["clip"]["cosine"]
    # PSC were built from training views only and are a real reduction of them
    stats = trainer.psc_stats["language"]
    assert 1 <= stats["psc_size"] < stats["raw_features"]


def test_linear_head_same_budget(small_scene) -> None:  # noqa: F811
    scene, features = small_scene
    m3 = Trainer(scene, features, TINY, torch.device("cpu"))
    base = Trainer(scene, features, TrainConfig(iters=3, train_width=0, points_per_view=100, patch_size=12,
                                                head="linear"), torch.device("cpu"))  # fmt: skip
    assert isinstance(m3.heads["clip"], MemoryAttention) and isinstance(base.heads["clip"], LinearDecoder)

    def budget(t: Trainer) -> int:
        n = t.gaussians.num_gaussians
        return sum(n * t.gaussians.query_dims[m] + sum(p.numel() for p in h.state_dict().values())
                   for m, h in t.heads.items())  # fmt: skip

    assert abs(budget(base) - budget(m3)) / budget(m3) < 0.1
    base.step()
    mem = base.memory()
    assert mem.manifest["head"] == "linear" and "kind" not in mem.manifest
    assert latent_dim_for_budget(1000, 10, 512, 16) == round((1000 * 16 + 10 * 512 + 16 * 512 - 512) / 1512)


def test_no_valid_depth_is_refused(tmp_path, one_thread) -> None:  # noqa: F811
    scene, features = make_scene(tmp_path / "s", n_frames=4, width=24, height=18, depth=False)
    out = tmp_path / "mem"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(TrainError, match="no valid depth"):
        train_memory(load_scene(tmp_path / "s"), features, TINY, out_dir=out)
    assert (out / "keep.txt").read_text() == "old"


def test_bad_features_are_refused(small_scene) -> None:  # noqa: F811
    scene, features = small_scene
    lang = features["language"]
    short = SceneFeatures("language", lang.model_id, lang.dim, lang.names[:-1], lang.grids[:-1], False)
    with pytest.raises(TrainError, match="do not match the scene's frames.*frame_000011"):
        Trainer(scene, {"language": short}, TINY, torch.device("cpu"))
    clip = features["clip"]
    grids = clip.grids.clone()
    grids[3] = 0
    empty = SceneFeatures("clip", clip.model_id, clip.dim, clip.names, grids, True)
    with pytest.raises(TrainError, match="frame_000003.*all zero"):
        Trainer(scene, {"clip": empty}, TINY, torch.device("cpu"))
    with pytest.raises(ValueError, match="at least one"):
        Trainer(scene, {}, TINY, torch.device("cpu"))


def test_densifier_clones_splits_and_prunes() -> None:
    g = GaussianModel.from_points(
        torch.rand(6, 3), torch.rand(6, 3), {"m": 2}, init_scale=0.01, init_opacity=0.5
    )
    with torch.no_grad():
        g.log_scales[3:] = torch.log(torch.tensor(0.5))  # large ones
        g.opacity_logits[5] = -10.0  # transparent one
    opt = torch.optim.Adam(g.parameters(), lr=1e-3)
    dens = Densifier(DensifyConfig(start=1, every=1, reset_every=0, grad_threshold=0.1), scene_scale=1.0)
    means2d = torch.zeros(6, 2, requires_grad=True)
    (
        means2d * torch.tensor([[1.0, 0.0]] * 2 + [[0.0, 0.0]] + [[1.0, 0.0]] + [[0.0, 0.0]] * 2)
    ).sum().backward()
    dens.accumulate(means2d, torch.ones(6, 2, dtype=torch.int32), width=2, height=2)
    done = dens.step(1, g, opt)
    assert done == {"cloned": 2, "split": 1, "pruned": 1}
    assert g.num_gaussians == 6 + 2 + 1 - 1
    assert all(p is q for p, q in zip(opt.param_groups[0]["params"], g.parameters()))


def test_checkpoints_and_output(small_scene, tmp_path) -> None:  # noqa: F811
    scene, features = small_scene
    cfg = TrainConfig(iters=4, train_width=0, points_per_view=100, patch_size=12, checkpoint_every=2)
    result = train_memory(scene, {"language": features["language"]}, cfg, out_dir=tmp_path / "mem")
    assert (tmp_path / "mem" / "memory.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "mem-checkpoints").iterdir()) == ["iter_000002", "iter_000004"]
    assert result.stats["num_gaussians"] == result.memory.gaussians.num_gaussians
    shutil.rmtree(tmp_path / "mem")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU on this machine)")
def test_cuda_full_mode_with_densification(small_scene) -> None:  # noqa: F811
    scene, features = small_scene
    dens = DensifyConfig(start=20, every=20, reset_every=0, grad_threshold=1e-6)
    cfg = TrainConfig(iters=60, train_width=0, densify=dens)
    trainer = Trainer(scene, features, cfg, torch.device("cuda"))
    assert trainer.mode == "full"
    n0 = trainer.gaussians.num_gaussians
    logs = [trainer.step() for _ in range(60)]
    assert trainer.gaussians.num_gaussians != n0  # densification ran on gsplat's means2d gradients
    assert float(logs[-1]["loss"]) < float(logs[0]["loss"])
    summary, _ = evaluate_memory(trainer.memory(), scene, features)
    assert summary["psnr"] > 15 and summary["features"]["language"]["cosine"] < 0.5


def test_full_mode_on_cpu_densifies(small_scene) -> None:  # noqa: F811
    """The full-image path (the CUDA default) with the torch rasterizer: SSIM on whole images and
    densification from screen-space gradients."""
    scene, features = small_scene
    dens = DensifyConfig(start=4, every=4, reset_every=0, grad_threshold=1e-7)
    cfg = TrainConfig(iters=8, train_width=0, render_mode="full", points_per_view=200, densify=dens)
    trainer = Trainer(scene, features, cfg, torch.device("cpu"))
    n0 = trainer.gaussians.num_gaussians
    logs = [trainer.step() for _ in range(8)]
    assert trainer.gaussians.num_gaussians > n0
    assert all(torch.isfinite(entry["loss"]) for entry in logs)


def test_no_densify_or_opacity_reset_in_the_second_half(small_scene) -> None:  # noqa: F811
    scene, features = small_scene
    dens = DensifyConfig(start=2, every=2, reset_every=8, grad_threshold=1e-7)
    cfg = TrainConfig(iters=8, train_width=0, render_mode="full", points_per_view=100, densify=dens)
    trainer = Trainer(scene, features, cfg, torch.device("cpu"))
    assert trainer.densifier.config.stop == 4
    for _ in range(8):
        trainer.step()
    # a reset at step 8 (= iters) would clamp every opacity to 2 * prune_opacity = 0.01
    assert float(trainer.gaussians.opacities.detach().max()) > 0.1
