"""The faithfulness study (evaluate --ablation ...) against literal computations on a tiny
float64 ViT: mean ablation, resample ablation, the matched control's bins, the metrics, the
curves' ends; zero ablation leaves Table 1 as it was; an interrupted study resumes; bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import make_image_folder, save_tiny_model
from neuronpath.analysis.faithfulness import metric_values, normalised, rival_classes
from neuronpath.cli import main
from neuronpath.io.images import IMAGE_EXTENSIONS, load_image
from neuronpath.io.store import read_records
from neuronpath.models.loading import load_model

STUDY = ["--ablation", "zero,mean,resample", "--metrics", "prob,logit,logit-diff,kl"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("faithfulness")
    model = save_tiny_model(root / "model")
    data = make_image_folder(root / "images", per_class=3)
    reference = make_image_folder(root / "reference", per_class=2, seed=7)
    run = root / "run"
    assert (
        main(
            [
                "-q",
                "find",
                "--model",
                str(model),
                "--data",
                str(data),
                "--out",
                str(run),
                "--steps",
                "3",
                "--device",
                "cpu",
                "--dtype",
                "float64",
                "--methods",
                "jas,activation",
            ]
        )
        == 0
    )
    plain = root / "plain"
    shutil.copytree(run, plain)
    assert main(["-q", "evaluate", str(plain), "--device", "cpu", "--bootstrap", "20"]) == 0
    assert (
        main(
            [
                "-q",
                "evaluate",
                str(run),
                "--device",
                "cpu",
                "--bootstrap",
                "20",
                *STUDY,
                "--reference",
                str(reference),
            ]
        )
        == 0
    )
    adapter = load_model(str(model), dtype=torch.float64)
    return {"run": run, "plain": plain, "reference": reference, "adapter": adapter, "data": data}


def hidden(adapter, path) -> list[torch.Tensor]:
    """Literal: every layer's FFN hidden state (the input of its output projection) at the
    CLS token, for one image file."""
    found = {}
    modules = dict(adapter.model.named_modules())
    hooks = [
        modules[n].register_forward_pre_hook(
            lambda m, args, l=l: found.__setitem__(l, args[0][0, 0].clone())
        )
        for l, n in enumerate(adapter.site_names)
    ]
    try:
        with torch.no_grad():
            adapter.logits(adapter.preprocess(load_image(path))[None])
    finally:
        for h in hooks:
            h.remove()
    return [found[l] for l in range(adapter.num_layers)]


def logits_with(adapter, path, values: dict[int, dict[int, float]]) -> torch.Tensor:
    """Literal: the logits of one image with neuron j of layer l at the CLS token set to
    ``values[l][j]``."""
    modules = dict(adapter.model.named_modules())

    def make(layer):
        def hook(module, args):
            x = args[0].clone()
            for j, v in values.get(layer, {}).items():
                x[0, 0, j] = v
            return (x,)

        return hook

    hooks = [
        modules[n].register_forward_pre_hook(make(l)) for l, n in enumerate(adapter.site_names)
    ]
    try:
        with torch.no_grad():
            return adapter.logits(adapter.preprocess(load_image(path))[None])[0]
    finally:
        for h in hooks:
            h.remove()


def reference_means(adapter, folder) -> list[torch.Tensor]:
    """Literal: each neuron's mean at the CLS token over the reference images, a plain loop."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    total = None
    for path in files:
        h = hidden(adapter, path)
        total = h if total is None else [a + b for a, b in zip(total, h)]
    return [t / len(files) for t in total]


def records(run, ablation, method):
    return {
        r["image"]: r
        for r in read_records(run / "evaluation" / "faithfulness" / ablation)
        if r["method"] == method
    }


def test_mean_ablation_equals_a_forward_with_the_plain_loop_means(study):
    adapter, means = study["adapter"], reference_means(study["adapter"], study["reference"])
    for image, record in records(study["run"], "mean", "jas").items():
        path = [p[0] if isinstance(p, list) else p for p in record["path"]]
        want = logits_with(
            adapter, study["data"] / image, {l: {j: means[l][j].item()} for l, j in enumerate(path)}
        )
        prob = want.softmax(-1)[record["label"]].item()
        assert record["prob"]["removed"] == pytest.approx(prob, rel=1e-9, abs=1e-12)
        everything = {
            l: {j: means[l][j].item() for j in range(len(means[l]))} for l in range(len(means))
        }
        ablated = logits_with(adapter, study["data"] / image, everything)
        assert record["logit"]["ablated"] == pytest.approx(
            ablated[record["label"]].item(), rel=1e-9, abs=1e-12
        )


def test_resample_ablation_copies_the_recorded_donors_values(study):
    adapter = study["adapter"]
    labels = {r["image"]: r["label"] for r in read_records(study["run"])}
    for image, record in records(study["run"], "resample", "activation").items():
        donor = record["donor"]
        assert labels[donor] != record["label"]  # another class
        values = hidden(adapter, study["data"] / donor)
        path = [p[0] for p in record["path"]]
        want = logits_with(
            adapter,
            study["data"] / image,
            {l: {j: values[l][j].item()} for l, j in enumerate(path)},
        )
        assert record["prob"]["removed"] == pytest.approx(
            want.softmax(-1)[record["label"]].item(), rel=1e-9, abs=1e-12
        )


def test_every_methods_matched_control_draws_among_the_nearest_levels(study):
    """The default match: each path neuron's partner is one of the 8 other neurons of its layer
    whose level on the image is nearest (never a path neuron, never twice), for every method's
    path; each record holds the level pairs, and the achieved match in faithfulness.json/.csv is
    their quantiles."""
    adapter = study["adapter"]
    summary = json.loads((study["run"] / "evaluation" / "faithfulness.json").read_text())
    assert summary["match"] == "nearest" and summary["match_window"] == 8
    for method in ("jas", "activation"):
        own = {r["image"]: r["path"] for r in read_records(study["run"], method)}
        pairs = []
        for image, record in records(study["run"], "zero", f"matched-random:{method}").items():
            h = hidden(adapter, study["data"] / image)
            assert len(record["path"]) == 3  # three seeds, pooled
            for path in record["path"]:
                for l, (chosen,) in enumerate(path):
                    mine = own[image][l]
                    others = [j for j in range(len(h[l])) if j != mine]
                    distance = {j: abs(h[l][j].item() - h[l][mine].item()) for j in others}
                    nearest = sorted(others, key=lambda j: (distance[j], j))[:8]
                    assert chosen in nearest
                    pairs.append([h[l][mine].item(), h[l][chosen].item()])
            assert record["unmatched"] == 0
            np.testing.assert_allclose(
                np.array(record["levels"]), np.array(pairs[-len(record["levels"]) :]), rtol=1e-9
            )
        pairs = np.array(pairs)
        active = pairs[pairs[:, 0] > 0]
        ratio = active[:, 1] / active[:, 0]
        got = summary["matched_levels"][f"matched-random:{method}"]["zero"]
        assert got["pairs"] == len(pairs) and got["active_pairs"] == len(active)
        assert got["ratio_q50"] == pytest.approx(float(np.median(ratio)), rel=1e-9)
        assert got["below_half"] == pytest.approx(float((ratio < 0.5).mean()))
    rows = (study["run"] / "evaluation" / "faithfulness.csv").read_text().splitlines()
    assert any(r.startswith("matched-random:jas,zero,match,ratio_q50,") for r in rows)
    assert "**Achieved match**" in (study["run"] / "evaluation" / "faithfulness.md").read_text()


def test_the_binned_match_falls_in_the_bins_of_the_path_neurons(study, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(study["plain"], run)
    extra = ["--controls", "matched-random", "--match", "bins", "--reference"]
    args = ["-q", "evaluate", str(run), "--device", "cpu", "--bootstrap", "0", *extra]
    assert main([*args, str(study["reference"])]) == 0
    adapter = study["adapter"]
    files = sorted(p for p in study["reference"].rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    levels = [torch.stack(v) for v in zip(*(hidden(adapter, p) for p in files))]
    edges = [np.quantile(level.numpy().ravel(), np.linspace(0, 1, 11)[1:-1]) for level in levels]
    stored = np.load(run / "evaluation" / "faithfulness" / "reference.npz")
    for l, e in enumerate(edges):  # the bins are the reference's quantiles (all values kept)
        np.testing.assert_allclose(stored[f"edges{l}"], e, rtol=1e-12)
    jas = {r["image"]: r["path"] for r in read_records(run, "jas")}
    for image, record in records(run, "zero", "matched-random:jas").items():
        h = hidden(adapter, study["data"] / image)
        misses = 0
        for path in record["path"]:
            for l, (chosen,) in enumerate(path):
                own = jas[image][l]
                assert chosen != own
                bucket = np.searchsorted(
                    edges[l], [h[l][chosen].item(), h[l][own].item()], side="left"
                )
                misses += bucket[0] != bucket[1]
        assert misses == record["unmatched"]


def test_a_stored_reference_is_not_reused_with_other_bins(study, tmp_path):
    """``--bins`` shapes the stored reference (its edges): deleting an ablation's records as the
    docs advise and re-running with other bins recomputes it, never reuses the old edges
    under records that claim the new bins."""
    run = tmp_path / "run"
    shutil.copytree(study["plain"], run)
    base = ["-q", "evaluate", str(run), "--device", "cpu", "--bootstrap", "0"]
    base += ["--controls", "matched-random", "--match", "bins"]
    base += ["--reference", str(study["reference"])]
    assert main([*base, "--bins", "10"]) == 0
    folder = run / "evaluation" / "faithfulness"
    assert len(np.load(folder / "reference.npz")["edges0"]) == 9
    shutil.rmtree(folder / "zero")
    assert main([*base, "--bins", "4"]) == 0
    assert len(np.load(folder / "reference.npz")["edges0"]) == 3


def test_logit_diff_and_kl_equal_hand_computations():
    generator = torch.Generator().manual_seed(3)
    clean = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    edited = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    targets = torch.tensor([0, 4, 2, 2])
    rivals = rival_classes(clean, targets)
    got = metric_values(edited, clean, targets, rivals)
    for r in range(4):
        others = [c for c in range(5) if c != targets[r]]
        rival = max(others, key=lambda c: clean[r, c].item())
        assert rivals[r] == rival
        assert got["logit-diff"][r] == pytest.approx(
            (edited[r, targets[r]] - edited[r, rival]).item()
        )
        p = np.exp(clean[r].numpy()) / np.exp(clean[r].numpy()).sum()
        q = np.exp(edited[r].numpy()) / np.exp(edited[r].numpy()).sum()
        assert got["kl"][r] == pytest.approx(float(np.sum(p * np.log(p / q))))
        assert got["prob"][r] == pytest.approx(q[targets[r]])


def test_curves_are_one_for_the_clean_model_and_zero_all_ablated(study):
    curves = json.loads((study["run"] / "evaluation" / "faithfulness.json").read_text())["curves"]
    for metric, by_ablation in curves.items():
        for ablation, by_method in by_ablation.items():
            for method, both in by_method.items():
                assert both["necessity"][0] == 1.0, (metric, ablation, method)
                assert both["sufficiency"][0] == 0.0, (metric, ablation, method)
    clean, ablated = np.array([1.0, 3.0]), np.array([0.5, 1.0])
    assert normalised(clean, clean, ablated) == 1.0 and normalised(ablated, clean, ablated) == 0.0


def test_zero_ablation_leaves_table_1_as_it_was_and_matches_its_removal(study):
    run, plain = study["run"], study["plain"]
    got = json.loads((run / "evaluation" / "metrics.json").read_text())
    want = json.loads((plain / "evaluation" / "metrics.json").read_text())
    assert got == want
    table = {(r["image"], r["method"]): r for r in read_records(plain / "evaluation")}
    for method in ("jas", "activation", "random"):
        for image, record in records(run, "zero", method).items():
            assert record["prob"]["removed"] == pytest.approx(
                table[(image, method)]["remove_prob"], rel=1e-9
            )
            assert record["prob"]["enhanced"] == pytest.approx(
                table[(image, method)]["enhance_prob"], rel=1e-9
            )
    rows = (run / "evaluation" / "faithfulness.csv").read_text().splitlines()
    assert rows[0] == "method,ablation,metric,statistic,value,lo,hi,own_criterion"
    # methods and controls x ablations x metrics x statistics, then the two matched controls'
    # achieved match (nine numbers per ablation)
    assert len(rows) == 1 + 5 * 3 * 4 * 6 + 2 * 3 * 9


def test_an_interrupted_study_resumes_without_redoing_finished_images(study, tmp_path, monkeypatch):
    import neuronpath.experiments.faithfulness as faithfulness

    run = tmp_path / "run"
    shutil.copytree(study["plain"], run)
    args = [
        "-q",
        "evaluate",
        str(run),
        "--device",
        "cpu",
        "--bootstrap",
        "20",
        "--batch-size",
        "3",
        "--ablation",
        "mean,resample",
        "--reference",
        str(study["reference"]),
    ]
    real, calls = faithfulness._run_rows, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) > 2:  # two calls per batch: the first batch of the mean pass is kept
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(faithfulness, "_run_rows", interrupted)
    assert main(args) == 130
    assert len(read_records(run / "evaluation" / "faithfulness" / "mean")) == 3 * 5
    calls.clear()
    monkeypatch.setattr(faithfulness, "_run_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(args) == 0
    assert len(calls) == 2 * 2 + 2 * 3  # mean: 2 batches left; resample: all 3
    for ablation in ("mean", "resample"):
        got = {
            (r["image"], r["method"]): r
            for r in read_records(run / "evaluation" / "faithfulness" / ablation)
        }
        want = {
            (r["image"], r["method"]): r
            for r in read_records(study["run"] / "evaluation" / "faithfulness" / ablation)
        }
        assert got.keys() == want.keys()
        for key, record in want.items():
            for field, value in record["prob"].items():
                assert got[key]["prob"][field] == pytest.approx(value, rel=1e-9), (key, field)


def test_bad_study_options_get_one_line(study, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(study["plain"], run)

    def error(*extra):
        capsys.readouterr()
        assert main(["evaluate", str(run), "--device", "cpu", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    assert "--ablation: expected some of zero, mean, resample, got ones" in error(
        "--ablation", "ones"
    )
    assert "--metrics: expected some of prob, logit, logit-diff, kl" in error("--metrics", "acc")
    assert "mean ablation needs a reference set" in error("--ablation", "mean")
    assert "the matched control's bins (--match bins) needs a reference set" in error(
        "--controls", "matched-random", "--match", "bins"
    )
    assert "--match-window: expected an integer >= 1, got 0" in error(
        "--controls", "matched-random", "--match-window", "0"
    )
    assert "images of the run" in error("--ablation", "mean", "--reference", str(study["data"]))
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "a" / "broken.png").write_bytes(b"not an image")
    assert "none of its 1 images can be read" in error(
        "--ablation", "mean", "--reference", str(empty)
    )
    assert "--reference-split: 9 of the run's 9 images would leave none" in error(
        "--ablation", "mean", "--reference-split", "9"
    )
    capsys.readouterr()
    assert (
        main(
            [
                "-q",
                "evaluate",
                str(run),
                "--device",
                "cpu",
                "--bootstrap",
                "0",
                "--ablation",
                "mean",
                "--reference",
                str(study["data"]),
                "--allow-overlap",
            ]
        )
        == 0
    )


def test_a_bin_without_a_partner_is_stated(study, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(study["plain"], run)
    assert (
        main(
            [
                "-q",
                "evaluate",
                str(run),
                "--device",
                "cpu",
                "--bootstrap",
                "0",
                "--controls",
                "matched-random",
                "--match",
                "bins",
                "--reference-split",
                "3",
                "--bins",
                "40",
            ]
        )
        == 0
    )
    share = json.loads((run / "evaluation" / "faithfulness.json").read_text())[
        "matched_unmatched_share"
    ]["zero"]["matched-random:jas"]
    assert share > 0 and "found no other neuron in their activation bin" in caplog.text


def test_the_page_shows_the_study(study, tmp_path):
    page = tmp_path / "page.html"
    assert (
        main(
            [
                "-q",
                "report",
                str(study["run"]),
                "--out",
                str(page),
                "--images",
                "2",
                "--cards",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    text = page.read_text()
    assert "<h2>Faithfulness" in text and "sufficiency area" in text
    assert "necessity (solid) and sufficiency (dashed) curves" in text


def test_the_curves_take_the_path_in_order_of_its_neurons_single_effects(study):
    """The path's order puts first the neuron whose removal alone lowers P(label) most, and a
    necessity step ablates the first k of that order (checked against the record's own
    single-neuron values and a literal forward)."""
    adapter = study["adapter"]
    for image, record in records(study["run"], "zero", "jas").items():
        alone = record["prob"]["alone"]
        order = record["order"]
        assert [alone[l] for l in order] == sorted(alone)
        path = [p[0] for p in record["path"]]
        first = {order[0]: {path[order[0]]: 0.0}}
        want = logits_with(adapter, study["data"] / image, first).softmax(-1)[record["label"]]
        assert record["prob"]["necessity"][0] == pytest.approx(want.item(), rel=1e-9)
