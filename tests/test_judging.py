"""Judging a method by a criterion it did not select on: find records the selection criterion
of causal and learned, evaluate marks the faithfulness rows judged by it and leaves them out
of the leaders, and ``neuronpath matrix`` (selection x judging) equals a literal
recomputation with plain hooks on a tiny float64 ViT."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_image_folder, save_tiny_model
from neuronpath.analysis.faithfulness import LEADER_STATISTICS
from neuronpath.cli import main
from neuronpath.io.store import read_records
from neuronpath.models.loading import load_model
from test_faithfulness import logits_with, reference_means

FIND = ["--steps", "3", "--dtype", "float64", "--device", "cpu", "--causal-candidates", "3"]
FIND += ["--learned-steps", "8", "--methods", "knowledge,causal,learned", "--save-scores"]
STUDY = ["--ablation", "zero,mean,resample", "--metrics", "prob,logit,logit-diff,kl"]
SELECTING = ("causal", "learned")


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    root = tmp_path_factory.mktemp("judging")
    model = save_tiny_model(root / "model")
    data = make_image_folder(root / "images", per_class=2)
    reference = make_image_folder(root / "reference", per_class=2, seed=7)
    find = ["-q", "find", "--model", str(model), "--data", str(data), *FIND]
    runs = {
        "mean": [*find, "--reference", str(reference)],
        "zero": [*find, "--causal-ablation", "zero", "--learned-ablation", "zero"],
    }
    for name, command in runs.items():
        assert main([*command, "--out", str(root / name)]) == 0, name
        evaluate = ["-q", "evaluate", str(root / name), "--device", "cpu", "--bootstrap", "20"]
        assert main([*evaluate, *STUDY, "--reference", str(reference)]) == 0, name
        curves = ["--curves", "--ablation", "zero,mean", "--reference", str(reference)]
        assert main([*evaluate, *curves]) == 0, name
    return {
        "root": root,
        "data": data,
        "reference": reference,
        "adapter": load_model(str(model), dtype=torch.float64),
    }


def summary_of(run) -> dict:
    return json.loads((run / "evaluation" / "faithfulness.json").read_text())


def test_find_records_what_causal_and_learned_selected_on(judged):
    manifest = json.loads((judged["root"] / "mean" / "manifest.json").read_text())
    digest = manifest["settings"]["reference"]["sha256"]
    for method in SELECTING:
        assert manifest["selection"][method] == {
            "ablation": "mean",
            "statistic": "both",
            "metric": "prob",
            "reference": digest,
        }
    assert "knowledge" not in manifest["selection"]  # an attribution ranks, it does not intervene
    zero = json.loads((judged["root"] / "zero" / "manifest.json").read_text())["selection"]
    assert {m: c["ablation"] for m, c in zero.items()} == {"causal": "zero", "learned": "zero"}
    assert all(c["reference"] is None for c in zero.values())


@pytest.mark.parametrize(
    "run, own_ablations",
    [("mean", {"mean", "resample"}), ("zero", {"zero"})],
)
def test_rows_judged_by_their_own_criterion_are_marked_and_left_out_of_the_leaders(
    judged, run, own_ablations
):
    summary = summary_of(judged["root"] / run)
    marked = {(r["method"], r["ablation"], r["metric"]) for r in summary["own_criterion"]}
    assert marked == {
        (m, a, metric)
        for m in SELECTING
        for a in own_ablations
        for metric in ("prob", "logit")  # one family: the target's output, what F is
    }
    results = summary["results"]
    for metric in ("prob", "logit", "logit-diff", "kl"):
        for ablation in ("zero", "mean", "resample"):
            own = ablation in own_ablations and metric in ("prob", "logit")
            fair = ["knowledge"] if own else ["knowledge", *SELECTING]
            for statistic, better in LEADER_STATISTICS.items():
                leader = summary["leaders"][metric][ablation][statistic]
                assert leader["excluded"] == (list(SELECTING) if own else [])
                values = {m: results[m][ablation][metric][statistic]["value"] for m in fair}
                pick = min if better == "lower" else max
                assert leader["method"] == pick(values, key=values.get)
    table = (judged["root"] / run / "evaluation" / "faithfulness.md").read_text()
    for method in SELECTING:
        for ablation in ("zero", "mean", "resample"):
            line = f"| {method} (own criterion) | {ablation} |"
            assert (line in table) == (ablation in own_ablations), line
    csv = (judged["root"] / run / "evaluation" / "faithfulness.csv").read_text().splitlines()
    owned = {tuple(r.split(",")[:3]) for r in csv[1:] if r.endswith(",True")}
    assert owned == marked


@pytest.mark.parametrize("run, own_ablation", [("mean", "mean"), ("zero", "zero")])
def test_curve_rows_judged_by_their_own_criterion_are_marked(judged, run, own_ablation):
    folder = judged["root"] / run / "evaluation"
    curves = json.loads((folder / "curves.json").read_text())
    marked = {(r["method"], r["ablation"], r["metric"]) for r in curves["own_criterion"]}
    assert marked == {(m, own_ablation, "prob") for m in SELECTING}
    rows = (folder / "cpr_cmd.csv").read_text().splitlines()
    assert rows[0].endswith(",own_criterion")
    owned = {tuple(r.split(",")[:3]) for r in rows[1:] if r.endswith(",True")}
    assert owned == marked
    assert (
        f"| causal (own criterion) | {own_ablation} | prob |" in (folder / "curves.md").read_text()
    )


def literal_f(adapter, data, rows, values, metric):
    """Normalised necessity and sufficiency at k = L of each row's path, by plain hooks:
    ``values[l]`` what an ablated neuron of layer l takes (a tensor over the layer)."""
    per = {"clean": [], "removed": [], "kept": [], "ablated": []}
    for record in rows:
        path = [p[0] if isinstance(p, list) else p for p in record["path"]]
        image, target = data / record["image"], record["label"]
        width = [len(v) for v in values]
        every = {l: {j: values[l][j].item() for j in range(width[l])} for l in range(len(width))}
        edits = {
            "clean": {},
            "removed": {l: {j: values[l][j].item()} for l, j in enumerate(path)},
            "kept": {l: {j: v for j, v in every[l].items() if j != path[l]} for l in every},
            "ablated": every,
        }
        clean = logits_with(adapter, image, {})
        others = clean.clone()
        others[target] = -torch.inf
        rival = int(others.argmax())
        for name, edit in edits.items():
            out = logits_with(adapter, image, edit)
            if metric == "prob":
                per[name].append(out.softmax(-1)[target].item())
            else:
                per[name].append((out[target] - out[rival]).item())
    mean = {k: sum(v) / len(v) for k, v in per.items()}
    span = mean["clean"] - mean["ablated"]
    return (
        (mean["removed"] - mean["ablated"]) / span,
        (mean["kept"] - mean["ablated"]) / span,
    )


def test_the_matrix_equals_a_literal_recomputation(judged, tmp_path, capsys):
    root, adapter = judged["root"], judged["adapter"]
    runs = [str(root / "mean"), str(root / "zero")]
    out = tmp_path / "matrix"
    assert (
        main(["matrix", *runs, "--baseline", "knowledge", "--bootstrap", "30", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "judged: zero" in printed and "(own)" in printed
    matrix = json.loads((out / "matrix.json").read_text())
    cells = {(r["run"], r["method"], r["judged"], r["metric"]): r for r in matrix["rows"]}
    # every selecting method of both runs, judged by three ablations and four metrics
    assert len(cells) == 2 * 2 * 3 * 4
    means = reference_means(adapter, judged["reference"])
    zeros = [torch.zeros_like(m) for m in means]
    moved = 0  # cells where the method's path is not the baseline's: the check has teeth
    for run in runs:
        for ablation, values in (("zero", zeros), ("mean", means)):
            folder = f"{run}/evaluation/faithfulness/{ablation}"
            by = {}
            for r in read_records(folder):
                by.setdefault(r["method"], []).append(r)
            for metric in ("prob", "logit-diff"):
                order = lambda rows: sorted(rows, key=lambda r: r["image"])  # noqa: E731
                base = literal_f(adapter, judged["data"], order(by["knowledge"]), values, metric)
                for method in SELECTING:
                    ours = literal_f(adapter, judged["data"], order(by[method]), values, metric)
                    cell = cells[(run, method, ablation, metric)]
                    assert cell["necessity"]["value"] == pytest.approx(ours[0] - base[0], abs=1e-9)
                    assert cell["sufficiency"]["value"] == pytest.approx(
                        ours[1] - base[1], abs=1e-9
                    )
                    moved += abs(ours[0] - base[0]) > 1e-6
                    lo, hi = cell["necessity"]["lo"], cell["necessity"]["hi"]
                    assert lo <= hi
                    selected = "mean" if run.endswith("mean") else "zero"
                    assert cell["own"] == (selected == ablation and metric == "prob")
    assert moved >= 4
    rows = (out / "matrix.csv").read_text().splitlines()
    assert len(rows) == 1 + len(cells) * 2  # necessity and sufficiency of every cell


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--baseline", "jas"], "--baseline: 'jas' is not a method of"),
        (["--methods", "activation"], "--methods: 'activation' is not a method of"),
        (["--bootstrap", "-1"], "--bootstrap: expected an integer >= 0"),
    ],
)
def test_bad_input_is_one_line(judged, tmp_path, capsys, extra, expected):
    run = str(judged["root"] / "mean")
    assert main(["matrix", run, "--out", str(tmp_path / "m"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err


def test_a_run_without_a_study_is_refused_in_one_line(tmp_path, capsys, judged):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(judged["root"] / "mean", run)
    shutil.rmtree(run / "evaluation")
    assert main(["matrix", str(run), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no faithfulness study" in err and len(err.splitlines()) == 1, err
