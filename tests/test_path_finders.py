"""The path finders added to be judged against ground truth: JAS from the reference mean
(``jas-mean``), the causal search (``causal``) and the learned path (``learned``), each against a
deliberately literal loop on a tiny float64 ViT (plain forward hooks written here, one image,
one candidate and one alpha at a time), their saved rankings, every downstream command, and bad
input."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_image_folder, save_tiny_model
from neuronpath.cli import main
from neuronpath.io.images import load_image
from neuronpath.io.scores import SavedScores
from neuronpath.io.store import read_records
from neuronpath.models.loading import load_model
from test_faithfulness import hidden, logits_with, reference_means

STEPS = 3
CANDIDATES = 4
LEARNED_STEPS = 12


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("finders")
    model = save_tiny_model(root / "model")
    data = make_image_folder(root / "images", per_class=2)
    reference = make_image_folder(root / "reference", per_class=2, seed=7)
    find = ["-q", "find", "--model", str(model), "--data", str(data), "--device", "cpu"]
    find += ["--steps", str(STEPS), "--dtype", "float64", "--save-scores"]
    with_reference = ["--reference", str(reference)]
    made = {
        "jas-mean": ["--methods", "jas,jas-mean", *with_reference],
        "causal-mean": [
            "--methods", "causal", "--causal-prior", "activation", "--causal-candidates",
            str(CANDIDATES), *with_reference,
        ],
        "learned-mean": [
            "--methods", "learned", "--learned-steps", str(LEARNED_STEPS), *with_reference,
        ],
        "causal-zero": [
            "--methods", "knowledge,causal", "--causal-ablation", "zero", "--causal-score",
            "necessity", "--causal-candidates", str(CANDIDATES),
        ],
    }  # fmt: skip
    for name, extra in made.items():
        assert main([*find, "--out", str(root / name), *extra]) == 0, name
    adapter = load_model(str(model), dtype=torch.float64)
    return {
        "root": root,
        "adapter": adapter,
        "data": data,
        "reference": reference,
        "means": reference_means(adapter, reference),
        "find": find,
    }


def paths_of(run, method):
    return {r["image"]: r["path"] for r in read_records(run) if r["method"] == method}


def prob_with(adapter, image, values, label) -> float:
    return logits_with(adapter, image, values).softmax(-1)[label].item()


def forward_with(adapter, image, replacements):
    """Literal: logits of one image with layer l's CLS FFN hidden row replaced by
    ``replacements[l]`` (a vector that may require grad)."""
    modules = dict(adapter.model.named_modules())

    def make(vector):
        def hook(module, args):
            x = args[0].clone()
            x[0, 0] = vector
            return (x,)

        return hook

    hooks = [
        modules[adapter.site_names[l]].register_forward_pre_hook(make(v))
        for l, v in replacements.items()
    ]
    try:
        return adapter.logits(adapter.preprocess(load_image(image))[None])[0]
    finally:
        for h in hooks:
            h.remove()


def literal_mean_baseline_scores(adapter, image, label, means, path):
    """Alg. 1's whole-layer scores of layer t = len(path) with every integral run from the
    reference mean b: u = b + alpha (h - b) for the path units and the whole layer t (the
    official left grid, one autograd call per layer and alpha), values h - b."""
    h = hidden(adapter, image)
    t = len(path)
    grads = [torch.zeros_like(h[l]) for l in range(t + 1)]
    for k in range(STEPS):
        alpha = k / STEPS
        reps = {}
        for l in range(t):
            u = h[l].clone()
            u[path[l]] = means[l][path[l]] + alpha * (h[l][path[l]] - means[l][path[l]])
            reps[l] = u.requires_grad_(True)
        reps[t] = (means[t] + alpha * (h[t] - means[t])).requires_grad_(True)
        p = forward_with(adapter, image, reps).softmax(-1)[label]
        for l in range(t + 1):
            (g,) = torch.autograd.grad(p, reps[l], retain_graph=True)
            grads[l] += g / STEPS
    delta = [h[l] - means[l] for l in range(t + 1)]
    value = sum((delta[l][path[l]] for l in range(t)), torch.zeros(()))
    grad = sum((grads[l][path[l]] for l in range(t)), torch.zeros(()))
    return (delta[t] + value) * (grads[t] + grad)


def test_jas_from_the_mean_equals_a_literal_search_and_saves_its_scores(runs):
    adapter, run = runs["adapter"], runs["root"] / "jas-mean"
    saved = SavedScores(run)
    records = {r["image"]: r for r in read_records(run) if r["method"] == "jas-mean"}
    assert len(records) == 6
    for image, record in records.items():
        path, rows = [], []
        for _ in range(adapter.num_layers):
            scores = literal_mean_baseline_scores(
                adapter, runs["data"] / image, record["label"], runs["means"], path
            )
            rows.append(scores)
            path.append(int(torch.argmax(scores)))
        assert record["path"] == path
        got = torch.from_numpy(saved.get("jas-mean", [image])[0])
        want = torch.stack(rows).float()  # stored compactly, in float32
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["settings"]["reference"]["images"] == 6
    assert len(manifest["settings"]["reference"]["sha256"]) == 64


def test_the_mean_baseline_moves_the_path_off_the_zero_baseline_on_some_image(runs):
    """Not a tautology: starting from the mean changes what is chosen."""
    run = runs["root"] / "jas-mean"
    zero, mean = paths_of(run, "jas"), paths_of(run, "jas-mean")
    assert any(zero[i] != p for i, p in mean.items())


def literal_causal(adapter, image, label, values, candidates_of, score):
    """The causal search for one image, one forward per (candidate, side): ``values[l]`` what
    an ablated unit of layer l takes, ``candidates_of(t, path)`` layer t's candidates in prior
    order; returns the path and each layer's ranking of its candidates."""
    path, rankings = [], []
    for t in range(adapter.num_layers):
        width = len(values[t])
        results = []
        for c in candidates_of(t, path):
            units = [*path, c]
            removed = prob_with(
                adapter, image, {l: {units[l]: values[l][units[l]].item()} for l in range(t + 1)},
                label,
            )  # fmt: skip
            kept = prob_with(
                adapter,
                image,
                {
                    l: {j: values[l][j].item() for j in range(width) if j != units[l]}
                    for l in range(t + 1)
                },
                label,
            )
            results.append(
                {"both": kept - removed, "necessity": -removed, "sufficiency": kept}[score]
            )
        pool = candidates_of(t, path)
        order = sorted(range(len(pool)), key=lambda i: (-results[i], i))
        rankings.append([pool[i] for i in order])
        path.append(rankings[-1][0])
    return path, rankings


def test_causal_search_with_mean_ablation_equals_a_literal_loop(runs):
    adapter, run = runs["adapter"], runs["root"] / "causal-mean"
    saved = SavedScores(run)
    for image, record in {r["image"]: r for r in read_records(run)}.items():
        file = runs["data"] / image
        h = hidden(adapter, file)

        def by_activation(t, path, h=h):
            return sorted(range(len(h[t])), key=lambda j: (-h[t][j].item(), j))[:CANDIDATES]

        path, rankings = literal_causal(
            adapter, file, record["label"], runs["means"], by_activation, "both"
        )
        assert record["path"] == path
        scores = saved.get("causal", [image])[0]
        for t, ranking in enumerate(rankings):  # the candidates first, in causal order
            top = sorted(range(scores.shape[1]), key=lambda j: -scores[t, j])[:CANDIDATES]
            assert top == ranking
            assert sorted(scores[t]) == [-(i + 1) for i in reversed(range(scores.shape[1]))]


def test_causal_search_with_zero_ablation_ranks_the_knowledge_candidates(runs):
    adapter, run = runs["adapter"], runs["root"] / "causal-zero"
    saved = SavedScores(run)
    zeros = [torch.zeros(w) for w in adapter.widths()]
    causal = {r["image"]: r for r in read_records(run) if r["method"] == "causal"}
    for image, record in causal.items():
        prior = saved.get("knowledge", [image])[0]

        def by_knowledge(t, path, prior=prior):
            return sorted(range(prior.shape[1]), key=lambda j: (-prior[t, j], j))[:CANDIDATES]

        path, _ = literal_causal(
            adapter, runs["data"] / image, record["label"], zeros, by_knowledge, "necessity"
        )
        assert record["path"] == path


def soft_forward(adapter, image, label, theta, means, side):
    """Literal: F of one image with every layer's CLS FFN row x (as the forward computes it)
    replaced by b + s (x - b) (kept) or x - s (x - b) (removed), s = softmax(theta[l])."""
    modules = dict(adapter.model.named_modules())

    def make(l):
        def hook(module, args):
            x = args[0].clone()
            s, row = theta[l].softmax(-1), x[0, 0]
            x[0, 0] = (
                means[l] + s * (row - means[l]) if side == "kept" else row - s * (row - means[l])
            )
            return (x,)

        return hook

    hooks = [
        modules[n].register_forward_pre_hook(make(l)) for l, n in enumerate(adapter.site_names)
    ]
    try:
        logits = adapter.logits(adapter.preprocess(load_image(image))[None])[0]
    finally:
        for h in hooks:
            h.remove()
    return logits.softmax(-1)[label]


def test_the_learned_path_equals_a_literal_training_loop(runs):
    """The objective F(kept) - F(removed) by plain hooks, one image at a time, trained with the
    same optimiser from theta = 0: the saved logits are the library's, the path their argmax."""
    adapter, run, means = runs["adapter"], runs["root"] / "learned-mean", runs["means"]
    saved = SavedScores(run)
    for image, record in {r["image"]: r for r in read_records(run)}.items():
        theta = [torch.zeros(w, dtype=torch.float64, requires_grad=True) for w in adapter.widths()]
        optimiser = torch.optim.Adam(theta, lr=0.1)
        for _ in range(LEARNED_STEPS):
            file, label = runs["data"] / image, record["label"]
            kept = soft_forward(adapter, file, label, theta, means, "kept")
            removed = soft_forward(adapter, file, label, theta, means, "removed")
            optimiser.zero_grad()
            (removed - kept).backward()
            optimiser.step()
        want = torch.stack([t.detach() for t in theta]).float()
        got = torch.from_numpy(saved.get("learned", [image])[0])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        assert record["path"] == [int(t.argmax()) for t in theta]
        assert any(t.abs().max() > 0.5 for t in theta)  # it did move off the uniform start


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--methods", "causal"], "--reference: causal's options start from"),
        (["--methods", "jas-mean"], "--reference: jas-mean's options start from"),
        (["--methods", "jas", "--reference", "REF"], "--reference: none of the methods jas"),
        (["--methods", "causal", "--causal-candidates", "0"], "--causal-candidates: expected a"),
        (["--methods", "causal", "--causal-ablation", "zero", "--causal-candidates", "2",
          "--topk", "3"], "--causal-candidates: expected at least K = 3"),
        (["--methods", "jas-mean", "--reference", "DATA"],
         "--reference: 6 of its images are images of the run"),
        (["--methods", "causal", "--causal-ablation", "zero", "--units", "heads"],
         "--methods: causal is not defined for heads paths"),
        (["--methods", "jas-mean", "--reference", "REF", "--units", "heads"],
         "--methods: jas-mean is not defined for heads paths"),
        (["--methods", "learned", "--learned-ablation", "zero", "--learned-steps", "0"],
         "--learned-steps: expected a positive integer"),
        (["--methods", "learned", "--learned-ablation", "zero", "--learned-lr", "-1"],
         "--learned-lr: expected a positive number"),
        (["--methods", "learned"], "--reference: learned's options start from"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(runs, tmp_path, capsys, extra, expected):
    extra = [{"REF": str(runs["reference"]), "DATA": str(runs["data"])}.get(e, e) for e in extra]
    assert main([*runs["find"][1:], "--out", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_every_downstream_command_reads_a_causal_run(runs, tmp_path):
    run, reference = runs["root"] / "causal-mean", str(runs["reference"])
    evaluate = ["-q", "evaluate", str(run), "--device", "cpu", "--bootstrap", "10"]
    assert main([*evaluate, "--ablation", "mean", "--reference", reference]) == 0
    assert main([*evaluate, "--curves", "--ablation", "mean", "--reference", reference]) == 0
    for table in ("faithfulness.csv", "cpr_cmd.csv"):
        rows = (run / "evaluation" / table).read_text().splitlines()
        assert any(r.startswith("causal,") for r in rows), table
    assert main(["-q", "report", str(run), "--device", "cpu"]) == 0
    assert main(["-q", "classes", str(run), "--method", "causal"]) == 0
    model_and_data = runs["find"][2:8]  # --model M --data D --device cpu
    prune = ["-q", "prune", *model_and_data, "--out", str(tmp_path / "prune"), "--steps", "3"]
    prune += ["--methods", "causal", "--keep", "1,2", "--causal-candidates", "3"]
    assert main([*prune, "--reference", reference]) == 0
    assert (tmp_path / "prune" / "results.json").is_file()


def test_knowledge_and_causal_together_compute_the_integrated_gradients_once(runs, monkeypatch):
    """find --methods knowledge,causal: the causal search's knowledge prior is the knowledge
    path's own attribution, computed once per batch (counted at integrated_gradients), and
    each method's result is what it is when run alone."""
    from neuronpath.engine.attribution import AttributionConfig
    from neuronpath.methods import find_paths, knowledge
    from neuronpath.methods.causal import CausalOptions

    adapter = runs["adapter"]
    images = sorted(runs["data"].rglob("*.png"))[:3]
    x = torch.stack([adapter.preprocess(load_image(p)) for p in images]).double()
    y = torch.tensor([0, 1, 2])
    config = AttributionConfig(steps=STEPS)
    calls = []
    counted = knowledge.integrated_gradients

    def counting(*args, **kwargs):
        calls.append(1)
        return counted(*args, **kwargs)

    monkeypatch.setattr(knowledge, "integrated_gradients", counting)
    alone = {}
    for method in ("knowledge", "causal"):
        calls.clear()
        asked = {method: CausalOptions(causal_ablation="zero") if method == "causal" else None}
        alone[method] = (find_paths(adapter, x, y, asked, config), len(calls))
    calls.clear()
    both = find_paths(
        adapter, x, y, {"knowledge": None, "causal": CausalOptions(causal_ablation="zero")}, config
    )
    assert alone["knowledge"][1] == alone["causal"][1] == len(calls) == adapter.num_layers
    for method, (result, _) in alone.items():
        assert torch.equal(both.paths[method], result.paths[method])
        torch.testing.assert_close(both.ranked[method], result.ranked[method], rtol=0, atol=0)
