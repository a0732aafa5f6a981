"""Hook interventions: correct edits, and hooks always removed (also on exceptions)."""

import pytest
import torch

import literal
from neuronpath.engine.interventions import record_neurons, replace_neurons, scale_neurons
from neuronpath.models.huggingface import from_hf_model


def _hook_count(adapter):
    return sum(
        len(adapter.site(l)._forward_hooks) + len(adapter.site(l)._forward_pre_hooks)
        for l in range(adapter.num_layers)
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda a, x: record_neurons(a),
        lambda a, x: replace_neurons(a, {1: torch.zeros(len(x), 1, 12, dtype=torch.float64)}),
        lambda a, x: scale_neurons(
            a, {0: torch.tensor([1, 2, 3]), 2: torch.tensor([0, 0, 5])}, 2.0
        ),
    ],
)
def test_hooks_are_removed_after_an_exception(vit64, batch64, make):
    x, _ = batch64
    adapter = from_hf_model(vit64)
    before = vit64(pixel_values=x).logits
    with pytest.raises(RuntimeError, match="boom"):
        with make(adapter, x):
            assert _hook_count(adapter) > 0
            vit64(pixel_values=x)
            raise RuntimeError("boom")
    assert _hook_count(adapter) == 0
    torch.testing.assert_close(vit64(pixel_values=x).logits, before, rtol=0, atol=0)


def test_record_reads_the_cls_post_gelu_row(vit64, batch64):
    x, _ = batch64
    adapter = from_hf_model(vit64)
    with record_neurons(adapter) as store:
        vit64(pixel_values=x)
    for b in range(len(x)):
        h, _ = literal.clean_cls(vit64, x[b : b + 1])
        for l in range(3):
            assert store[l].shape == (3, 1, 12)
            torch.testing.assert_close(store[l][b, 0], h[l], rtol=1e-12, atol=1e-14)


def test_scale_equals_a_hand_edited_forward(vit64, batch64):
    x, _ = batch64
    adapter = from_hf_model(vit64)
    neurons = {0: torch.tensor([[1, 2], [3, 4], [5, 6]]), 2: torch.tensor([[0], [7], [11]])}
    for factor in (0.0, 2.0):
        with scale_neurons(adapter, neurons, factor):
            got = vit64(pixel_values=x).logits.softmax(-1)
        for b in range(len(x)):
            h, _ = literal.clean_cls(vit64, x[b : b + 1])
            # edit layer 0 first, then read layer 2 from a forward with layer 0 edited
            u0 = h[0].clone()
            u0[neurons[0][b]] *= factor
            found = {}
            site2 = literal.sites(vit64)[2]
            handle = site2.register_forward_hook(
                lambda m, i, o: found.__setitem__("h2", o[0, 0].detach().clone())
            )
            with torch.no_grad():
                literal.logits_with_cls_replaced(vit64, x[b : b + 1], {0: u0})
            handle.remove()
            u2 = found["h2"].clone()
            u2[neurons[2][b]] *= factor
            with torch.no_grad():
                expected = literal.logits_with_cls_replaced(vit64, x[b : b + 1], {0: u0, 2: u2})
            torch.testing.assert_close(got[b], expected.softmax(-1), rtol=1e-12, atol=1e-14)


def test_replace_lets_gradients_flow_and_checks_rows(vit64, batch64):
    x, y = batch64
    adapter = from_hf_model(vit64)
    value = torch.zeros(3, 1, 12, dtype=torch.float64, requires_grad=True)
    with replace_neurons(adapter, {1: value}):
        vit64(pixel_values=x).logits.softmax(-1)[torch.arange(3), y].sum().backward()
    assert value.grad is not None and value.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="2 rows"):
        with replace_neurons(adapter, {1: value[:2]}):
            vit64(pixel_values=x)
    assert _hook_count(adapter) == 0
