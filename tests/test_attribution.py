"""JAS of a given neuron set (Eq. 2-3) against literal per-alpha autograd loops."""

import pytest
import torch

import literal
from neuronpath.engine.attribution import (
    AttributionConfig,
    clean_pass,
    integrated_gradients,
    joint_attribution_score,
    joint_attribution_scores,
)
from neuronpath.engine.interventions import replace_neurons
from neuronpath.models.huggingface import from_hf_model

NEURONS = {0: [1, 3], 2: [5]}  # layer 1 is not edited and runs normally


@pytest.mark.parametrize("alphas", ["left", "right", "midpoint", "trapezoid", "gauss-legendre"])
def test_set_jas_equals_literal(vit64, batch64, alphas):
    x, y = batch64
    config = AttributionConfig(steps=7, alphas=alphas)
    scores = joint_attribution_score(from_hf_model(vit64), x, y, NEURONS, config)
    grid = config.grid
    for b in range(len(y)):
        expected = literal.set_jas(
            vit64, x[b : b + 1], int(y[b]), NEURONS, grid.points, grid.weights
        )
        assert scores[b].item() == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_logit_objective_and_predicted_target(vit64, batch64):
    x, y = batch64
    adapter = from_hf_model(vit64)
    config = AttributionConfig(steps=5, objective="logit", target="predicted")
    scores = joint_attribution_score(adapter, x, y, NEURONS, config)
    predicted = vit64(pixel_values=x).logits.argmax(-1)
    for b in range(len(y)):
        expected = literal.set_jas(
            vit64,
            x[b : b + 1],
            int(predicted[b]),
            NEURONS,
            config.grid.points,
            config.grid.weights,
            logit=True,
        )
        assert scores[b].item() == pytest.approx(expected, rel=1e-9)


def test_per_image_neuron_sets(vit64, batch64):
    x, y = batch64
    per_image = {1: torch.tensor([0, 4, 7]), 2: torch.tensor([[1, 2], [3, 4], [5, 6]])}
    scores = joint_attribution_score(
        from_hf_model(vit64), x, y, per_image, AttributionConfig(steps=4)
    )
    grid = AttributionConfig(steps=4).grid
    for b in range(3):
        neurons = {1: [int(per_image[1][b])], 2: per_image[2][b].tolist()}
        expected = literal.set_jas(
            vit64, x[b : b + 1], int(y[b]), neurons, grid.points, grid.weights
        )
        assert scores[b].item() == pytest.approx(expected, rel=1e-9)


def test_sets_on_different_layers_in_one_call(vit64, batch64):
    x, y = batch64
    adapter = from_hf_model(vit64)
    config = AttributionConfig(steps=4)
    clean = clean_pass(adapter, x, y, config)
    a, b, c = joint_attribution_scores(adapter, x, clean, [{0: 1}, {2: [3, 4]}, {0: 2}], config)
    torch.testing.assert_close(a, joint_attribution_score(adapter, x, y, {0: 1}, config))
    torch.testing.assert_close(b, joint_attribution_score(adapter, x, y, {2: [3, 4]}, config))
    torch.testing.assert_close(c, joint_attribution_score(adapter, x, y, {0: 2}, config))


def test_one_backward_equals_per_tensor_gradient_calls(vit64, batch64):
    """Gradients of all replaced tensors from one backward == one autograd.grad per tensor."""
    x, y = batch64
    adapter = from_hf_model(vit64)
    config = AttributionConfig(steps=3)
    clean = clean_pass(adapter, x, y, config)
    masks = {
        0: torch.zeros(3, 12, dtype=torch.float64).index_fill_(1, torch.tensor([2]), 1.0),
        1: torch.ones(3, 12, dtype=torch.float64),
        2: torch.zeros(3, 12, dtype=torch.float64),
    }
    engine = integrated_gradients(adapter, x, clean, masks, config)
    for b in range(3):
        expected = {l: torch.zeros(12, dtype=torch.float64) for l in masks}
        for alpha, weight in zip(config.grid.points, config.grid.weights):
            values = {
                l: (clean.acts[l][b : b + 1] * (1 + (alpha - 1) * masks[l][b])).requires_grad_()
                for l in masks
            }
            with replace_neurons(adapter, values):
                prob = vit64(pixel_values=x[b : b + 1]).logits.softmax(-1)[0, y[b]]
            for l in masks:  # separate calls, as the official code makes them
                (g,) = torch.autograd.grad(prob, values[l], retain_graph=True)
                expected[l] += weight * g[0, 0]
        for l in masks:
            torch.testing.assert_close(engine[l][b, 0], expected[l], rtol=1e-10, atol=1e-16)


def test_bad_neuron_sets_are_rejected(vit64, batch64):
    adapter = from_hf_model(vit64)
    with pytest.raises(ValueError, match="listed twice"):
        joint_attribution_score(adapter, *batch64, {0: [1, 1]})
    with pytest.raises(ValueError, match=r"neurons\[0\]"):
        joint_attribution_score(adapter, *batch64, {0: torch.zeros(2, 1, dtype=torch.long)})
    with pytest.raises(ValueError, match="width 12"):
        joint_attribution_score(adapter, *batch64, {0: [12]})
    with pytest.raises(IndexError, match="layer 7"):
        joint_attribution_score(adapter, *batch64, {7: [0]})


def test_bad_config_and_labels_are_rejected(vit64, batch64):
    with pytest.raises(ValueError, match="alphas"):
        AttributionConfig(alphas="simpson")
    with pytest.raises(ValueError, match="target"):
        AttributionConfig(target="other")
    with pytest.raises(ValueError, match="labels"):
        clean_pass(from_hf_model(vit64), batch64[0], torch.tensor([0, 1, 9]))
