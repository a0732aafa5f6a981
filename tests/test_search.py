"""The searched JAS / Activation paths and their final JAS equal a literal loop of
docs/official-code.md#jas-search."""

import pytest
import torch

import literal
from conftest import tiny_vit
from neuronpath.engine.attribution import AttributionConfig, row_bytes, rows_per_chunk
from neuronpath.methods import find_paths
from neuronpath.models.huggingface import from_hf_model


@pytest.mark.parametrize("steps, batch_size", [(5, 3), (20, 2)])
def test_paths_and_final_jas_equal_literal_loop(steps, batch_size):
    model = tiny_vit(layers=4, seed=2)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(4, 3, 8, 8, generator=generator, dtype=torch.float64)
    y = torch.tensor([1, 0, 4, 2])
    adapter = from_hf_model(model)
    config = AttributionConfig(steps=steps)
    for start in range(0, len(y), batch_size):
        part = slice(start, start + batch_size)
        result = find_paths(adapter, x[part], y[part], ["jas", "activation"], config)
        for row, b in enumerate(range(len(y))[part]):
            x1, label = x[b : b + 1], int(y[b])
            jas = literal.jas_path(model, x1, label, steps)
            act = literal.activation_path(model, x1)
            assert result.paths["jas"][row].tolist() == jas
            assert result.paths["activation"][row].tolist() == act
            assert result.scores["jas"][row].item() == pytest.approx(
                literal.final_jas(model, x1, label, jas, steps), rel=1e-9, abs=1e-14
            )
            assert result.scores["activation"][row].item() == pytest.approx(
                literal.final_jas(model, x1, label, act, steps), rel=1e-9, abs=1e-14
            )


def test_jas_path_differs_from_activation_path_somewhere():
    # guards against a search that silently returns the activation argmax
    model = tiny_vit(layers=4, seed=2)
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    result = find_paths(
        from_hf_model(model), x, torch.arange(6) % 5, config=AttributionConfig(steps=4)
    )
    assert not torch.equal(result.paths["jas"], result.paths["activation"])


def test_search_is_independent_of_chunking(vit64, batch64):
    x, y = batch64
    adapter = from_hf_model(vit64)
    whole = find_paths(adapter, x, y, config=AttributionConfig(steps=6))
    one_row = find_paths(adapter, x, y, config=AttributionConfig(steps=6, memory_budget=1))
    for method in whole.paths:
        assert torch.equal(whole.paths[method], one_row.paths[method])
        torch.testing.assert_close(whole.scores[method], one_row.scores[method], rtol=1e-12, atol=0)


def test_chunk_size_counts_what_each_row_adds_not_the_shared_weights():
    # an FFN of 512 neurons on 5 tokens: the weights (saved by reference for every backward)
    # are far larger than one row's activations; counting them made every chunk one row
    model = tiny_vit(layers=2, hidden=32, ffn=512)
    adapter = from_hf_model(model)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def saved(rows):  # every byte autograd saves for a forward of ``rows`` rows, literally
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(pixel_values=x[:rows].clone().requires_grad_(True))
        return total

    per_row = saved(2) - saved(1)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert weights > 5 * per_row  # the case that matters
    assert row_bytes(adapter, x) == pytest.approx(per_row, rel=0.05)
    assert rows_per_chunk(adapter, x, int(10 * 1.5 * row_bytes(adapter, x))) == 10


def test_unknown_method_is_rejected(vit64, batch64):
    with pytest.raises(ValueError, match="methods"):
        find_paths(from_hf_model(vit64), *batch64, methods=["nope"])


def test_bfloat16_autocast_runs_and_stays_close():
    model = tiny_vit(layers=3, dtype=torch.float32)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 1, 2])
    adapter = from_hf_model(model)
    exact = find_paths(adapter, x, y, config=AttributionConfig(steps=4))
    fast = find_paths(adapter, x, y, config=AttributionConfig(steps=4, autocast=torch.bfloat16))
    assert fast.paths["jas"].shape == (3, 3) and torch.isfinite(fast.scores["jas"]).all()
    # the activation path comes from the clean pass, which bf16 barely perturbs
    assert (fast.paths["activation"] == exact.paths["activation"]).float().mean() >= 2 / 3
    torch.testing.assert_close(
        fast.scores["activation"], exact.scores["activation"], rtol=0.3, atol=0.02
    )  # bf16 keeps ~3 significant digits
