"""Influence Pattern, knowledge attribution, TopK paths and global-pool (MAE-style) models against
literal loops of the official computations (docs/official-code.md#influence-pattern,
docs/official-code.md#mae, docs/official-code.md#knowledge-attribution,
docs/official-code.md#topk-and-pruning)."""

import pytest
import torch

import literal
from conftest import tiny_global_pool, tiny_vit
from neuronpath.analysis.records import layer_distribution
from neuronpath.engine.attribution import AttributionConfig, clean_pass
from neuronpath.engine.tokens import TokenPolicy
from neuronpath.methods import JASOptions, find_paths, jas_path
from neuronpath.methods.knowledge import knowledge_attribution, top_neurons
from neuronpath.models.huggingface import from_hf_model

STEPS = 5


@pytest.fixture
def setup():
    model = tiny_vit(layers=4, seed=2)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    return model, from_hf_model(model), x, torch.tensor([1, 4, 2])


def test_influence_pattern_equals_literal_loop(setup):
    model, adapter, x, y = setup
    result = find_paths(adapter, x, y, ["influence-pattern"], AttributionConfig(steps=STEPS))
    for b in range(3):
        expected = literal.influence_pattern_path(model, x[b : b + 1], int(y[b]), STEPS)
        assert result.paths["influence-pattern"][b].tolist() == expected
        assert result.scores["influence-pattern"][b].item() == pytest.approx(
            literal.final_jas(model, x[b : b + 1], int(y[b]), expected, STEPS), rel=1e-9
        )


def test_influence_pattern_is_per_image(setup):
    model, adapter, x, y = setup
    together = find_paths(adapter, x, y, ["influence-pattern"], AttributionConfig(steps=STEPS))
    for b in range(3):
        alone = find_paths(
            adapter,
            x[b : b + 1],
            y[b : b + 1],
            ["influence-pattern"],
            AttributionConfig(steps=STEPS),
        )
        assert torch.equal(
            alone.paths["influence-pattern"][0], together.paths["influence-pattern"][b]
        )


def test_knowledge_attribution_equals_literal_per_neuron_ig(setup):
    model, adapter, x, y = setup
    config = AttributionConfig(steps=STEPS)
    attribution = knowledge_attribution(adapter, x, clean_pass(adapter, x, y, config), config)
    assert attribution.shape == (3, 4, 12)
    for b in range(3):
        expected = literal.knowledge_attribution(model, x[b : b + 1], int(y[b]), STEPS)
        torch.testing.assert_close(attribution[b], expected, rtol=1e-9, atol=1e-15)


def test_knowledge_top_neurons_and_layer_distribution():
    attribution = torch.zeros(2, 3, 4, dtype=torch.float64)
    attribution[0, 2, 1], attribution[0, 0, 3], attribution[1, 1, 0] = 5, 4, 9
    top = top_neurons(attribution, 2)
    assert top[0] == [(2, 1, 5.0), (0, 3, 4.0)]
    assert top[1][0] == (1, 0, 9.0) and top[1][1][2] == 0.0
    records = [{"method": "knowledge", "top": t} for t in top] + [{"method": "jas"}]
    assert layer_distribution(records, 3, "knowledge") == [2, 1, 1]


def test_knowledge_method_in_find_paths(setup):
    _, adapter, x, y = setup
    result = find_paths(adapter, x, y, ["knowledge"], AttributionConfig(steps=STEPS))
    assert result.paths["knowledge"].shape == (3, 4)
    assert len(result.extras["knowledge"]["top"][0]) == 5


def test_topk_with_k1_equals_the_plain_path(setup):
    _, adapter, x, y = setup
    config = AttributionConfig(steps=STEPS)
    plain = find_paths(adapter, x, y, ["jas", "activation"], config)
    for mode in ("all", "official"):
        one = find_paths(
            adapter, x, y, {"jas": JASOptions(topk_mode=mode), "activation": None}, config, k=1
        )
        for method in plain.paths:
            assert torch.equal(one.paths[method], plain.paths[method])
            torch.testing.assert_close(one.scores[method], plain.scores[method], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["official", "all"])
def test_topk_equals_literal_loop(setup, mode):
    model, adapter, x, y = setup
    result = find_paths(
        adapter, x, y, {"jas": JASOptions(topk_mode=mode)}, AttributionConfig(steps=STEPS), k=3
    )
    assert result.paths["jas"].shape == (3, 4, 3)
    for b in range(3):
        expected = literal.topk_path(model, x[b : b + 1], int(y[b]), STEPS, 3, mode == "official")
        assert result.paths["jas"][b].tolist() == expected
        assert result.scores["jas"][b].item() == pytest.approx(
            literal.topk_final_jas(
                model, x[b : b + 1], int(y[b]), expected, STEPS, mode == "official"
            ),
            rel=1e-9,
        )


def test_topk_modes_differ_and_bad_k_is_rejected(setup):
    _, adapter, x, y = setup
    config = AttributionConfig(steps=STEPS)
    clean = clean_pass(adapter, x, y, config)
    a = jas_path(adapter, x, clean, config, k=4, topk_mode="all")
    b = jas_path(adapter, x, clean, config, k=4, topk_mode="official")
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="topk"):
        jas_path(adapter, x, clean, config, k=13)


def test_global_pool_per_token_scores_equal_literal_loop():
    model = tiny_global_pool(layers=3, seed=4)
    adapter = from_hf_model(model, token=TokenPolicy.patches(1))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.tensor([3, 0])
    result = find_paths(adapter, x, y, ["jas", "activation"], AttributionConfig(steps=STEPS))
    for b in range(2):
        x1, label = x[b : b + 1], int(y[b])
        jas = literal.mae_jas_path(model, x1, label, STEPS)
        act = literal.mae_activation_path(model, x1)
        assert result.paths["jas"][b].tolist() == jas
        assert result.paths["activation"][b].tolist() == act
        assert result.scores["jas"][b].item() == pytest.approx(
            literal.mae_final_jas(model, x1, label, jas, STEPS), rel=1e-9
        )
        assert result.scores["activation"][b].item() == pytest.approx(
            literal.mae_final_jas(model, x1, label, act, STEPS), rel=1e-9
        )


def test_influence_pattern_lu_equals_a_plain_loop_of_one_neuron_derivatives():
    """Eq. 9 / Alg. 2: the method's path and I(x, P) equal a literal loop that takes every
    derivative of one neuron with respect to one neuron (or alpha) by its own autograd call."""
    model = tiny_vit(layers=3, ffn=8, seed=2)
    adapter = from_hf_model(model)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    y, steps = torch.tensor([1, 4]), 2
    result = find_paths(adapter, x, y, ["influence-pattern-lu"], AttributionConfig(steps=steps))
    for b in range(len(y)):
        path, scores = literal.lu_influence_path(model, x[b : b + 1], int(y[b]), steps)
        assert result.paths["influence-pattern-lu"][b].tolist() == path
        influence = result.extras["influence-pattern-lu"]["influence"][b]
        assert influence == pytest.approx(scores[-1][path[-1]], rel=1e-8, abs=1e-12)
    with pytest.raises(ValueError, match="one neuron per layer"):
        find_paths(adapter, x, y, ["influence-pattern-lu"], AttributionConfig(steps=steps), k=2)


def test_influence_pattern_lu_at_several_positions_sums_over_the_paths_of_the_graph():
    """A mean-pooled model reads each neuron at every patch token: Lu et al.'s pattern
    influence is then a sum over every choice of positions of the chain's product, which
    collapsing each factor to a sum over positions before multiplying does not give (a 1-layer
    model would be off by the number of positions).  Path and I(x, P) against a literal loop
    over (position, neuron) nodes."""
    model = tiny_global_pool(layers=3, seed=4)
    adapter = from_hf_model(model, token=TokenPolicy.patches(1))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y, steps = torch.tensor([3, 0]), 2
    result = find_paths(adapter, x, y, ["influence-pattern-lu"], AttributionConfig(steps=steps))
    for b in range(len(y)):
        path, scores = literal.lu_influence_path_positions(
            model, x[b : b + 1], int(y[b]), steps, positions=[1, 2, 3, 4]
        )
        assert result.paths["influence-pattern-lu"][b].tolist() == path
        influence = result.extras["influence-pattern-lu"]["influence"][b]
        assert influence == pytest.approx(scores[-1][path[-1]], rel=1e-8, abs=1e-12)
