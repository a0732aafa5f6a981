"""The ViT-Slim baseline of prune (Table 2): the L1 term empties the mask of a neuron the model
does not use and keeps one it needs; masks stay gates (never negative) and are ranked signed;
prune --baselines vit-slim keeps each class's largest masks, saves them, writes Table 2,
resumes, and refuses what it cannot do."""

from __future__ import annotations

import json

import numpy as np
import torch

from conftest import make_image_folder, save_tiny_model, tiny_vit
from neuronpath.cli import main
from neuronpath.engine.interventions import multiply_neurons
from neuronpath.engine.slimming import SlimOptions, kept_by_mask, train_masks
from neuronpath.io.store import read_records
from neuronpath.models.huggingface import from_hf_model

PRUNE = [
    "prune",
    "--steps",
    "3",
    "--device",
    "cpu",
    "--keep",
    "1,2",
    "--mask",
    "1.0",
    "--bootstrap",
    "20",
    "--table-keep",
    "2",
]


def _ce_gradients(adapter, x, y):
    masks = [torch.ones(n, dtype=torch.float64, requires_grad=True) for n in adapter.widths()]
    with (
        torch.enable_grad(),
        multiply_neurons(adapter, {l: m[None].expand(len(x), -1) for l, m in enumerate(masks)}),
    ):
        loss = torch.nn.functional.cross_entropy(adapter.logits(x), y)
    return torch.autograd.grad(loss, masks)


def test_l1_empties_an_unused_neurons_mask_and_keeps_a_needed_one():
    model = tiny_vit(layers=2, seed=4)
    adapter = from_hf_model(model)
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.tensor([1, 1, 1, 1, 1, 1])
    fc2 = dict(model.named_modules())[adapter.site_names[0]]
    with torch.no_grad():
        fc2.weight[:, 5] = 0  # neuron 5 of layer 0 reaches nothing: no gradient but L1's
    grads = _ce_gradients(adapter, x, y)
    assert grads[0][5] == 0
    needed = int(grads[1].argmin())  # raising its mask lowers the loss most
    masks = train_masks(adapter, x, y, SlimOptions(steps=200, lr=0.05, l1=1e-3))
    assert abs(masks[0][5].item()) < 0.1
    assert masks[1][needed].item() > 0.5
    assert needed in kept_by_mask(masks, 3)[1] and 5 not in kept_by_mask(masks, 3)[0]
    again = train_masks(adapter, x, y, SlimOptions(steps=200, lr=0.05, l1=1e-3))
    assert all(torch.equal(a, b) for a, b in zip(masks, again))  # nothing random


def test_masks_stay_gates_and_are_ranked_signed():
    """A mask is a gate in [0, inf): without the projection about half of the masks end below
    zero under Adam (the L1 term's sign flips around zero every step), and ranking by |mask|
    would keep a neuron the search wanted flipped."""
    model = tiny_vit(layers=2, seed=4)
    adapter = from_hf_model(model)
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.tensor([1, 1, 2, 2, 3, 3])
    masks = train_masks(adapter, x, y, SlimOptions(steps=100, lr=0.05, l1=1e-2))
    assert all(bool((m >= 0).all()) for m in masks)
    assert any(bool((m == 0).any()) for m in masks)  # the L1 term closes some gates for good
    # signed ranking: a large negative mask is the least kept, not the most
    assert kept_by_mask([torch.tensor([-2.0, 0.5, 0.1, 0.5])], 2) == [[1, 3]]


def test_prune_with_vit_slim_writes_table_2_and_resumes(tmp_path, monkeypatch, capsys):
    import neuronpath.experiments.prune as prune

    model = save_tiny_model(tmp_path / "model")
    data = make_image_folder(tmp_path / "images", per_class=5)
    args = [
        *PRUNE,
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--baselines",
        "vit-slim",
        "--slim-steps",
        "20",
    ]
    real, calls = prune.train_masks, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(prune, "train_masks", interrupted)
    assert main(["-q", *args]) == 130
    assert len(read_records(tmp_path / "run" / "slim")) == 1  # the first class was kept
    calls.clear()
    monkeypatch.setattr(prune, "train_masks", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["-q", *args]) == 0
    assert len(calls) == 2  # the other two classes only
    report = json.loads((tmp_path / "run" / "results.json").read_text())
    assert report["methods"] == ["jas", "activation", "vit-slim", "random"]
    slim = {r["image"]: r for r in read_records(tmp_path / "run" / "slim")}
    for name, by_t in report["kept"]["vit-slim"].items():
        values = slim[name]["values"]
        saved = np.load(tmp_path / "run" / "slim" / slim[name]["masks"])  # every trained mask
        assert slim[name]["masks"] == f"masks/{name}.npz"
        for layer, kept in enumerate(by_t["2"]):  # the two largest signed masks of the layer
            mask = saved[f"layer{layer}"]
            assert kept == sorted(slim[name]["top"][layer][:2])
            assert (
                list(slim[name]["top"][layer])
                == sorted(range(len(mask)), key=lambda i: (-mask[i], i))[:2]
            )
            assert values[layer] == [float(mask[i]) for i in slim[name]["top"][layer]]
            assert slim[name]["positive"][layer] == int((mask > 0).sum())
            assert (mask >= 0).all()
    table = (tmp_path / "run" / "table2.md").read_text()
    assert "| vit-slim |" in table and "| unpruned |" in table and "| jas |" in table
    assert (tmp_path / "run" / "table2.csv").read_text().startswith("rule,keep,mask,depth")


def test_bad_baseline_options_get_one_line(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "model")
    data = make_image_folder(tmp_path / "images", per_class=2)
    base = [*PRUNE, "--model", str(model), "--data", str(data), "--out", str(tmp_path / "run")]

    def error(*extra):
        capsys.readouterr()
        assert main(base + list(extra)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    assert "--baselines: unknown ['slim']; expected some of vit-slim" in error(
        "--baselines", "slim"
    )
    assert "--slim-steps: expected 1 to 100000 steps, got 0" in error(
        "--baselines", "vit-slim", "--slim-steps", "0"
    )
    assert "--slim-lambda: expected an L1 weight in [0, 1000], got -1.0" in error(
        "--baselines", "vit-slim", "--slim-lambda", "-1"
    )
    err = error("--baselines", "vit-slim", "--methods", "random")
    assert "at least 2; too few in {'cat': 1, 'dog': 1, 'fish': 1}" in err
