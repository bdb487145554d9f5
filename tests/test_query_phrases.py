"""The forms of a query (m3_core/query/phrases.py) and relevance over several forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m3_core.query import QueryConfig
from m3_core.query.phrases import query_forms
from m3_core.query.relevance import form_count, relevance, relevance_from_products, text_directions


@pytest.mark.parametrize(
    "text, forms",
    [
        ("a red coffee mug", ["a red coffee mug", "coffee mug"]),
        ("A Dark  Grey tray", ["A Dark Grey tray", "tray"]),
        ("mug", ["mug"]),  # nothing to drop
        ("small wooden object", ["small wooden object"]),  # materials stay
        ("red", ["red"]),  # nothing but a colour: the text is its own core
        ("the red one", ["the red one"]),  # "one" names nothing
        ("a red object", ["a red object"]),  # "object" is itself a canonical negative
    ],
)
def test_query_forms(text, forms):
    assert query_forms(text) == forms


def test_query_forms_off_and_custom_words():
    assert query_forms("a red coffee mug", ()) == ["a red coffee mug"]
    assert query_forms("a wooden spoon", ("wooden",)) == ["a wooden spoon", "spoon"]
    with pytest.raises(ValueError, match="single words"):
        QueryConfig(attribute_words=("dark red",))


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_relevance_of_forms_is_the_minimum_over_forms():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(5, 7, 16, generator=gen)
    forms = torch.randn(2, 16, generator=gen)
    negs = torch.randn(3, 16, generator=gen)
    rel, sim = relevance(feats, forms, negs)
    one = [relevance(feats, forms[i], negs) for i in range(2)]
    torch.testing.assert_close(rel, torch.minimum(one[0][0], one[1][0]))
    torch.testing.assert_close(sim, torch.minimum(one[0][1], one[1][1]))
    assert form_count(forms) == 2 and form_count(forms[0]) == 1
    # the products path (what the engine renders) gives the same, forms first in the directions
    dirs = text_directions(forms, negs)
    assert dirs.shape == (5, 16)
    flat = feats.reshape(-1, 16)
    rel_p, sim_p = relevance_from_products(flat @ dirs.T, flat.norm(dim=-1), 0.1, forms=2)
    torch.testing.assert_close(rel_p.reshape(5, 7), rel, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(sim_p.reshape(5, 7), sim, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="forms"):
        relevance_from_products(flat @ dirs.T, flat.norm(dim=-1), 0.1, forms=6)


def test_a_feature_must_match_every_form():
    # a feature on the first form's direction, orthogonal to the second: relevant to the first
    # form alone, not to the query
    basis = torch.eye(4)
    feats = basis[:1]
    negs = basis[3:]
    assert relevance(feats, basis[0], negs)[0].item() > 0.99
    assert relevance(feats, basis[:2], negs)[0].item() == pytest.approx(0.5)  # cos 0 vs negative's 0


def test_regions_keep_the_texts_relevance_only_when_some_part_matches_every_form():
    from m3_core.query.relevance import keep_regions_of_every_form

    rel = np.array([0.9, 0.85, 0.95, 0.9, 0.1])  # two regions relevant to the text, then background
    every = np.array([0.7, 0.82, 0.3, 0.4, 0.05])  # region 0 has one element matching every form
    labels = np.array([0, 0, 1, 1, -1])
    sim, every_sim = rel - 0.3, every - 0.3
    got_rel, got_sim = keep_regions_of_every_form(rel, sim, every, every_sim, labels, 0.8)
    np.testing.assert_allclose(got_rel, [0.9, 0.85, 0.3, 0.4, 0.05])  # region 0 whole, region 1 not
    np.testing.assert_allclose(got_sim, [0.6, 0.55, 0.0, 0.1, -0.25])
