"""Attention heads as units: the engine against attention written out by hand (tests/literal.py)
on tiny float64 models of a CLS ViT, a mean-pooled BEiT and a windowed Swin."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import literal
from families import build
from neuronpath.engine.attribution import (
    AttributionConfig,
    clean_pass,
    integrated_gradients,
    joint_attribution_score,
)
from neuronpath.engine.interventions import scale_neurons
from neuronpath.errors import InputError
from neuronpath.methods import find_paths
from neuronpath.models.huggingface import from_hf_model

# family -> the positions a head is read at (the head's readout), and whether layers share tokens
READS = {"vit": ([0], True), "beit": ([1, 2, 3, 4], True), "swin": (None, False)}


def _setup(family):
    model = build(family)
    adapter = from_hf_model(model, units="heads")
    size = 16 if family == "swin" else 8
    x = torch.randn(
        2, 3, size, size, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    return model, adapter, x


def _positions(family, model, x1):
    positions, aligned = READS[family]
    if positions is None:  # Swin: every token of every window
        positions = list(range(literal.clean_heads(model, x1)[0].shape[1]))
    return positions, aligned


@pytest.mark.parametrize("family", READS)
def test_the_adapter_finds_each_blocks_heads(family):
    model, adapter, _ = _setup(family)
    assert adapter.kinds == ("head",) * adapter.num_layers
    modules = literal.attention_modules(model)
    assert adapter.widths() == [literal._heads_count(m) for m in modules]
    assert [adapter.units(l).size for l in range(adapter.num_layers)] == [
        m.head_dim for m in modules
    ]


@pytest.mark.parametrize("family", READS)
def test_scaling_a_head_equals_hand_written_attention_with_its_output_scaled(family):
    model, adapter, x = _setup(family)
    x1 = x[:1]
    positions, _ = _positions(family, model, x1)
    for layer, head, alpha in ((0, 1, 0.3), (adapter.num_layers - 1, 0, 0.0), (1, 0, 2.0)):

        def edit(heads, h=head, a=alpha):
            heads = heads.clone()
            heads[:, positions, h] = a * heads[:, positions, h]
            return heads

        want = literal.logits_with_heads_edited(model, x1, {layer: edit})
        with torch.no_grad(), scale_neurons(adapter, {layer: torch.tensor([head])}, alpha):
            got = adapter.logits(x1)[0]
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
        plain = literal.logits_with_heads_edited(model, x1, {})
        assert not torch.allclose(got, plain)  # the edit did something


@pytest.mark.parametrize("family", READS)
def test_the_jas_of_a_head_set_equals_a_plain_per_alpha_loop(family):
    model, adapter, x = _setup(family)
    steps = 3
    for b in range(2):
        x1, label = x[b : b + 1], b
        positions, aligned = _positions(family, model, x1)
        heads = {0: 1, adapter.num_layers - 1: b % 2}
        got = joint_attribution_score(
            adapter, x1, torch.tensor([label]), heads, AttributionConfig(steps=steps)
        )
        want = literal.head_set_jas(model, x1, label, heads, steps, positions, aligned)
        assert float(got[0]) == pytest.approx(want, rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("family", READS)
def test_zeroing_the_last_head_of_a_head_path_moves_p_label(family):
    model, adapter, x = _setup(family)
    labels = torch.tensor([0, 1])
    result = find_paths(adapter, x, labels, ["jas"], AttributionConfig(steps=4))
    positions, _ = _positions(family, model, x[:1])
    for b in range(2):
        head = int(result.paths["jas"][b, -1])

        def zero(heads, h=head):
            heads = heads.clone()
            heads[:, positions, h] = 0.0
            return heads

        last = adapter.num_layers - 1
        before = literal.logits_with_heads_edited(model, x[b : b + 1], {}).softmax(-1)
        after = literal.logits_with_heads_edited(model, x[b : b + 1], {last: zero}).softmax(-1)
        assert abs(float(after[labels[b]] - before[labels[b]])) > 1e-6


@pytest.mark.parametrize("family", ("vit", "swin"))
def test_head_and_neuron_scores_are_shares_of_the_same_completeness_budget(family):
    """Scaling a whole site by alpha, the integrated-gradient contributions of its units sum to
    F(alpha=1) - F(alpha=0) for heads as for neurons (fine grid): a head's score and a neuron's
    are contributions to the same F, so the mixed search may compare them."""
    model, _, x = _setup(family)
    config = AttributionConfig(steps=400, alphas="midpoint")
    for units in ("heads", "neurons"):
        adapter = from_hf_model(model, units=units)
        clean = clean_pass(adapter, x, torch.tensor([0, 1]), config)
        layer = adapter.num_layers - 1
        ones = torch.ones(2, adapter.widths()[layer], dtype=torch.float64)
        grads = integrated_gradients(adapter, x, clean, {layer: ones}, config)[layer]
        total = (clean.acts[layer] * grads).sum((1, 2))
        with (
            torch.no_grad(),
            scale_neurons(adapter, {layer: torch.arange(ones.shape[1])[None].expand(2, -1)}, 0.0),
        ):
            zeroed = adapter.logits(x).softmax(-1)[[0, 1], [0, 1]]
        full = clean.probs[[0, 1], [0, 1]].double()
        torch.testing.assert_close(total, full - zeroed, rtol=1e-4, atol=1e-7)


def test_a_block_without_locatable_heads_is_refused_naming_the_model():
    model = build("vit")
    for module in literal.attention_modules(model):
        del module.num_attention_heads
    with pytest.raises(
        InputError, match=r"^ViTForImageClassification: the head count of .* cannot be read"
    ):
        from_hf_model(model, units="heads")

    class Mixer(torch.nn.Module):  # blocks with an FFN and no attention module
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(
                torch.nn.ModuleDict(
                    {
                        "mlp": torch.nn.Sequential(
                            torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 4)
                        )
                    }
                )
                for _ in range(2)
            )
            self.head = torch.nn.Linear(4, 3)

        def forward(self, x):
            h = x.flatten(2).transpose(1, 2)[..., :4]
            for block in self.blocks:
                h = h + block["mlp"](h)
            return self.head(h.mean(1))

    from neuronpath.engine.sites import find_ffn_sites, unit_sites

    mixer = Mixer().double()
    sites = find_ffn_sites(mixer, mixer, (4, 2, 2))
    with pytest.raises(InputError, match=r"^Mixer: no attention module .* heads cannot be located"):
        unit_sites(mixer, mixer, (4, 2, 2), sites, "heads")


def _mixed(family="vit"):
    model = build(family)
    return model, from_hf_model(model, units="neurons+heads"), from_hf_model(model)


def test_a_mixed_search_restricted_to_neurons_is_the_neuron_path_with_the_same_scores():
    """Heads excluded by construction: the mixed search scores its neuron sites with the very
    numbers the neuron search uses, and returns the neuron path."""
    model, mixed, neurons = _mixed()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    labels, config = torch.tensor([0, 1, 2]), AttributionConfig(steps=4)
    from neuronpath.methods.jas import jas_path, layer_scores, mixed_jas_path

    clean_m, clean_n = clean_pass(mixed, x, labels, config), clean_pass(neurons, x, labels, config)
    want = jas_path(neurons, x, clean_n, config)[..., 0]
    got = mixed_jas_path(mixed, x, clean_m, config, kinds=("neuron",))[..., 0]
    assert torch.equal(got[:, 1::2], want) and (got[:, 0::2] == -1).all()
    for t in range(neurons.num_layers):
        prefix_n = {l: want[:, l : l + 1] for l in range(t)}
        prefix_m = {2 * l + s: got[:, 2 * l + s : 2 * l + s + 1] for l in range(t) for s in (0, 1)}
        torch.testing.assert_close(
            layer_scores(mixed, x, clean_m, config, prefix_m, 2 * t + 1),
            layer_scores(neurons, x, clean_n, config, prefix_n, t),
            rtol=0,
            atol=0,
        )


def test_a_mixed_path_has_one_unit_per_block_and_its_jas_equals_a_plain_loop():
    model, mixed, _ = _mixed()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    labels, steps = torch.tensor([0, 1, 2, 0]), 3
    result = find_paths(mixed, x, labels, ["jas"], AttributionConfig(steps=steps))
    path = result.paths["jas"]
    assert path.shape == (4, 2 * 3)
    per_block = (path.reshape(4, 3, 2) != -1).sum(-1)
    assert (per_block == 1).all()  # one unit per block, of one kind
    kinds = []
    for b in range(4):
        units = {}
        for block in range(3):
            head, neuron = path[b, 2 * block].item(), path[b, 2 * block + 1].item()
            units[block] = ("head", head) if head != -1 else ("neuron", neuron)
        kinds += [kind for kind, _ in units.values()]
        want = literal.mixed_set_jas(model, x[b : b + 1], int(labels[b]), units, steps)
        assert float(result.scores["jas"][b]) == pytest.approx(want, rel=1e-8, abs=1e-12)
    assert set(kinds) == {"neuron", "head"}  # this model's paths mix both kinds


def test_the_mixed_path_does_not_depend_on_the_unit_a_heads_value_is_read_in():
    """A head's value read as |z| / sqrt(d) instead of |z| leaves every unit's own integrated
    gradient unchanged, so it must leave the mixed path and its JAS unchanged too.  With the
    official product of sums taken across kinds, the cross terms neuron value x head gradient
    changed with the scale and flipped the choice between kinds."""
    model, mixed, _ = _mixed()
    size = next(mixed.units(l).size for l in range(mixed.num_layers) if not mixed.units(l).identity)
    scaled = copy.copy(mixed)
    scaled._units = [
        dataclasses.replace(u, scale=size**-0.5) if u.kind == "head" else u for u in mixed._units
    ]
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    labels, config = torch.tensor([0, 1, 2, 0, 1, 2]), AttributionConfig(steps=3)
    one = find_paths(mixed, x, labels, ["jas"], config)
    other = find_paths(scaled, x, labels, ["jas"], config)
    assert torch.equal(one.paths["jas"], other.paths["jas"])
    torch.testing.assert_close(one.scores["jas"], other.scores["jas"], rtol=1e-10, atol=1e-13)
    path = one.paths["jas"]
    for b in range(2):
        units = {}
        for block in range(path.shape[1] // 2):
            head, neuron = path[b, 2 * block].item(), path[b, 2 * block + 1].item()
            units[block] = ("head", head) if head != -1 else ("neuron", neuron)
        want = literal.mixed_set_jas(model, x[b : b + 1], int(labels[b]), units, 3, size**-0.5)
        assert float(other.scores["jas"][b]) == pytest.approx(want, rel=1e-8, abs=1e-12)
    clean = clean_pass(scaled, x, labels, config)
    heads = [l for l in range(scaled.num_layers) if scaled.units(l).kind == "head"]
    torch.testing.assert_close(  # the scale is really in the values
        clean.acts[heads[0]] * size**0.5, clean_pass(mixed, x, labels, config).acts[heads[0]]
    )


def test_methods_not_defined_for_mixed_paths_are_refused():
    _, mixed, _ = _mixed()
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    for name in ("activation", "influence-pattern", "knowledge", "influence-pattern-lu"):
        with pytest.raises(InputError, match=f"{name} is not defined for neurons\\+heads paths"):
            find_paths(mixed, x, torch.tensor([0]), [name])
    with pytest.raises(InputError, match="one unit per block"):
        find_paths(mixed, x, torch.tensor([0]), ["jas"], k=2)


@pytest.mark.parametrize("units", ["heads", "neurons+heads"])
def test_head_and_mixed_runs_go_through_every_command(units, tmp_path, capsys):
    from conftest import make_image_folder, save_tiny_model
    from neuronpath.cli import main
    from neuronpath.io.store import read_records

    model = save_tiny_model(tmp_path / "model")
    data = make_image_folder(tmp_path / "images")
    run = tmp_path / "run"
    common = ["--model", str(model), "--data", str(data), "--device", "cpu", "--units", units]
    assert main(["-q", "find", *common, "--out", str(run), "--steps", "3"]) == 0
    records = read_records(run)
    methods = {"jas", "activation"} if units == "heads" else {"jas"}  # the defaults defined
    assert {r["method"] for r in records} == methods and len(records) == 12 * len(methods)
    for r in records:
        assert r["units"] == units and len(r["path"]) == 3
        assert all(kind in ("head", "neuron") and isinstance(i, int) for kind, i in r["path"])
        if units == "heads":
            assert all(kind == "head" and 0 <= i < 2 for kind, i in r["path"])
    assert main(["-q", "evaluate", str(run), "--device", "cpu", "--bootstrap", "20"]) == 0
    assert {r["method"] for r in read_records(run / "evaluation")} == methods | {"random"}
    for r in read_records(run / "evaluation"):  # the random control keeps one unit per layer
        assert len(r["path"]) == 3 and r["units"] == units
    assert main(["-q", "classes", str(run), "--permutations", "20"]) == 0
    assert main(["-q", "summary", str(run)]) == 0
    assert main(["-q", "report", str(run), "--device", "cpu", "--images", "3", "--cards", "2"]) == 0
    page = (run / "report" / "index.html").read_text()
    assert '"name":"L' in page and '"kind":"head"' in page
    if units == "heads":
        assert '"attention":{"q"' in page  # a head card's attention pattern
        study = ["--ablation", "mean", "--reference-split", "3", "--bootstrap", "20"]
        assert main(["-q", "evaluate", str(run), "--device", "cpu", *study]) == 0
        prune = ["--keep", "1", "--mask", "1.0", "--bootstrap", "20", "--steps", "3"]
        out = tmp_path / "prune"
        assert main(["-q", "prune", *common, "--out", str(out), *prune]) == 0
    else:
        capsys.readouterr()
        assert main(["evaluate", str(run), "--device", "cpu", "--causal"]) == 2
        assert "mixed (neurons+heads) paths" in capsys.readouterr().err


def test_lus_influence_pattern_over_heads_equals_a_plain_loop():
    model, adapter, x = _setup("vit")
    labels, steps = torch.tensor([0, 2]), 2
    result = find_paths(
        adapter, x, labels, ["influence-pattern-lu"], AttributionConfig(steps=steps)
    )
    for b in range(2):
        path, scores = literal.lu_head_path(model, x[b : b + 1], int(labels[b]), steps)
        assert result.paths["influence-pattern-lu"][b].tolist() == path
        influence = result.extras["influence-pattern-lu"]["influence"][b]
        assert influence == pytest.approx(scores[-1][path[-1]], rel=1e-8, abs=1e-12)
