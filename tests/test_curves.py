"""MIB's faithfulness curves (evaluate --curves) and the scores they rank by (find
--save-scores), against literal computations on a tiny float64 ViT: the saved scores are each
method's own ranking, a kept row is a forward with every other unit ablated, keeping 100 %
gives f = 1, CPR and CMD are a plain trapezoid; bad input; resuming."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import literal
from conftest import make_image_folder, save_tiny_model
from neuronpath.analysis.curves import KS, cpr_cmd, curve_statistics, kept_count
from neuronpath.cli import main
from neuronpath.io.images import load_image
from neuronpath.io.scores import SavedScores
from neuronpath.io.store import read_records
from neuronpath.models.loading import load_model
from test_faithfulness import logits_with, reference_means

STEPS = 3
METHODS = "jas,activation,knowledge"


@pytest.fixture(scope="module")
def curves(tmp_path_factory):
    root = tmp_path_factory.mktemp("curves")
    model = save_tiny_model(root / "model")
    data = make_image_folder(root / "images", per_class=2)
    reference = make_image_folder(root / "reference", per_class=2, seed=7)
    run = root / "run"
    find = ["-q", "find", "--model", str(model), "--data", str(data), "--out", str(run)]
    find += ["--steps", str(STEPS), "--device", "cpu", "--dtype", "float64"]
    assert main([*find, "--methods", METHODS, "--save-scores"]) == 0
    plain = root / "plain"
    assert main([*find[:6], "--out", str(plain), *find[8:], "--methods", "activation"]) == 0
    shutil.copytree(run, root / "untouched")
    evaluate = ["-q", "evaluate", str(run), "--device", "cpu", "--bootstrap", "20", "--curves"]
    assert main([*evaluate, "--ablation", "zero,mean", "--metrics", "prob,logit", "--reference",
                 str(reference)]) == 0  # fmt: skip
    adapter = load_model(str(model), dtype=torch.float64)
    return {
        "root": root,
        "run": run,
        "plain": plain,
        "untouched": root / "untouched",
        "data": data,
        "reference": reference,
        "adapter": adapter,
        "find": find,
    }


def pixels(adapter, path) -> torch.Tensor:
    return adapter.preprocess(load_image(path))[None].to(torch.float64)


def test_kept_count_is_the_ceiling_and_at_least_one():
    assert [kept_count(12, k) for k in KS] == [1, 1, 1, 1, 1, 1, 2, 3, 6, 12]
    assert kept_count(1536, 0.1) == 2 and kept_count(1536, 0.5) == 8
    assert kept_count(1000, 0.1) == 1 and kept_count(1000, 50) == 500


def test_cpr_and_cmd_equal_a_plain_trapezoid():
    f = [0.1, -0.2, 0.3, 0.5, 0.4, 0.9, 1.2, 1.0, 0.95, 1.0]
    cpr = cmd = 0.0
    for i in range(len(KS) - 1):
        width = (KS[i + 1] - KS[i]) / 100
        cpr += width * (f[i] + f[i + 1]) / 2
        cmd += width * (abs(1 - f[i]) + abs(1 - f[i + 1])) / 2
    assert cpr_cmd(f) == pytest.approx((cpr, cmd), rel=1e-12)
    assert cpr_cmd([1.0] * len(KS)) == pytest.approx((0.999, 0.0))


def test_the_curve_is_the_ratio_of_means_and_its_intervals_hold_it():
    rng = np.random.default_rng(0)
    clean, none = rng.uniform(0.5, 1, 30), rng.uniform(0, 0.2, 30)
    kept = rng.uniform(0, 1, (30, len(KS)))
    stats = curve_statistics(clean, none, kept, rng.integers(0, 30, (200, 30)))
    for i in range(len(KS)):
        want = (kept[:, i].mean() - none.mean()) / (clean.mean() - none.mean())
        assert stats["f"][i] == pytest.approx(want, rel=1e-12)
        assert stats["f_lo"][i] <= stats["f"][i] <= stats["f_hi"][i]
    assert stats["cpr"]["value"] == pytest.approx(cpr_cmd(stats["f"])[0])
    assert stats["f_abs"] == stats["f"]  # no |score| rows given: the same rows
    flipped = curve_statistics(clean, none, kept, np.zeros((0, 30), int), KS, kept[:, ::-1])
    assert flipped["f"] == stats["f"] and flipped["cpr"] == {**stats["cpr"], "lo": None, "hi": None}
    assert flipped["cmd"]["value"] == pytest.approx(cpr_cmd(flipped["f_abs"])[1], rel=1e-12)
    assert flipped["cmd"]["value"] != pytest.approx(stats["cmd"]["value"])


def test_saved_scores_are_each_methods_own_ranking(curves):
    adapter, run = curves["adapter"], curves["run"]
    model = adapter.model
    saved = SavedScores(run)
    for record in read_records(run):
        x1 = pixels(adapter, curves["data"] / record["image"])
        scores = saved.get(record["method"], [record["image"]])[0]
        assert record["path"] == scores.argmax(-1).tolist()  # the path tops the ranking
        if record["method"] == "activation":
            want = torch.stack(literal.clean_cls(model, x1)[0])
        elif record["method"] == "knowledge":
            want = literal.knowledge_attribution(model, x1, record["target"], STEPS)
        else:  # layer t's scores given the path before it
            want = torch.stack(
                [
                    literal.official_layer_scores(
                        model, x1, record["target"], STEPS, record["path"][:t]
                    )
                    for t in range(len(record["path"]))
                ]
            )
        np.testing.assert_allclose(scores, want.detach().numpy(), rtol=1e-5, atol=1e-7)


def test_a_kept_row_is_a_forward_with_every_other_unit_ablated(curves):
    adapter, run = curves["adapter"], curves["run"]
    saved = SavedScores(run)
    means = reference_means(adapter, curves["reference"])
    widths = adapter.widths()
    differ = 0
    for ablation, source in (("zero", [torch.zeros(n) for n in widths]), ("mean", means)):
        for record in read_records(run / "evaluation" / "curves" / ablation)[:6]:
            scores = saved.get(record["method"], [record["image"]])[0]
            # CPR's rows rank by the signed score, CMD's by |score| (MIB's absolute flag)
            for key, ranked in (("kept", scores), ("kept_absolute", np.abs(scores))):
                for i in (0, 6, 8):  # k = 0.1 % (one unit), 10 % (2 of 12), 50 % (6 of 12)
                    values = {}
                    for l, n in enumerate(widths):
                        order = sorted(range(n), key=lambda j: (-ranked[l, j], j))
                        kept = set(order[: kept_count(n, KS[i])])
                        values[l] = {j: float(source[l][j]) for j in range(n) if j not in kept}
                    logits = logits_with(adapter, curves["data"] / record["image"], values)
                    prob = logits.softmax(-1)[record["label"]].item()
                    assert record["prob"][key][i] == pytest.approx(prob, rel=1e-9, abs=1e-12)
                    assert record["logit"][key][i] == pytest.approx(
                        logits[record["label"]].item(), rel=1e-9, abs=1e-12
                    )
            differ += record["prob"]["kept"] != record["prob"]["kept_absolute"]
            everything = {
                l: {j: float(source[l][j]) for j in range(n)} for l, n in enumerate(widths)
            }
            logits = logits_with(adapter, curves["data"] / record["image"], everything)
            assert record["logit"]["none"] == pytest.approx(
                logits[record["label"]].item(), rel=1e-9
            )
    assert differ  # the two rankings differ somewhere, so the test tells them apart


def test_keeping_every_unit_gives_f_one(curves):
    summary = json.loads((curves["run"] / "evaluation" / "curves.json").read_text())
    assert set(summary["results"]) == set(METHODS.split(","))
    for by_ablation in summary["results"].values():
        assert set(by_ablation) == {"zero", "mean"}
        for by_metric in by_ablation.values():
            for stats in by_metric.values():
                assert stats["f"][-1] == pytest.approx(1.0, abs=1e-9)
                assert stats["f_abs"][-1] == pytest.approx(1.0, abs=1e-9)
                assert stats["cpr"]["value"] == pytest.approx(cpr_cmd(stats["f"])[0], rel=1e-12)
                assert stats["cmd"]["value"] == pytest.approx(cpr_cmd(stats["f_abs"])[1], rel=1e-12)
    rows = (curves["run"] / "evaluation" / "curves.csv").read_text().splitlines()
    assert rows[0] == "method,ablation,metric,ranking,k,f,lo,hi"
    assert len(rows) == 1 + 3 * 2 * 2 * 2 * len(KS)
    areas = (curves["run"] / "evaluation" / "cpr_cmd.csv").read_text().splitlines()
    assert (
        areas[0] == "method,ablation,metric,statistic,value,lo,hi,own_criterion"
        and len(areas) == 1 + 24
    )
    assert (curves["run"] / "evaluation" / "curves.png").stat().st_size > 0


def test_curves_and_saved_scores_refuse_bad_input_in_one_line(curves, tmp_path, capsys):
    def error(argv):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    plain = ["evaluate", str(curves["plain"]), "--device", "cpu", "--curves"]
    assert "was found without --save-scores" in error(plain)
    find = [a for a in curves["find"] if a != "-q"]
    out = ["--out", str(tmp_path / "rerank"), "--methods", "jas", "--rerank", "2"]
    assert "jas has no scores to save: --rerank 2 scores only the best 2" in error(
        [*find[:5], *find[7:], *out, "--save-scores"]
    )
    # a run found without scores is not resumed with them (its identity differs)
    base = [*find[:5], *find[7:], "--methods", "activation"]
    assert "save_scores" in error([*base, "--out", str(curves["plain"]), "--save-scores"])


def test_a_lost_scores_file_is_written_again_on_resume(curves, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(curves["untouched"], run)
    files = sorted((run / "scores").glob("*.npz"))
    lost = files[0]
    ids = [str(i) for i in np.load(lost)["ids"]]
    before = {i: SavedScores(curves["untouched"]).get("jas", [i])[0] for i in ids}
    lost.unlink()
    with pytest.raises(Exception, match="no saved scores"):
        SavedScores(run).get("jas", ids)
    find = [a for a in curves["find"] if a != "-q"]
    args = [*find[:5], *find[7:], "--out", str(run), "--methods", METHODS, "--save-scores"]
    assert main(["-q", *args]) == 0
    again = SavedScores(run)
    for i in ids:
        np.testing.assert_array_equal(again.get("jas", [i])[0], before[i])
    assert len(read_records(run)) == len(read_records(curves["untouched"]))


def test_the_page_shows_the_curves(curves, tmp_path):
    page = tmp_path / "page.html"
    argv = ["-q", "report", str(curves["run"]), "--out", str(page), "--images", "2"]
    assert main([*argv, "--cards", "2", "--device", "cpu"]) == 0
    text = page.read_text()
    assert "<h2>Curves over whole rankings: CPR and CMD</h2>" in text
    assert "<th>CPR</th>" in text and "f(k) per method" in text
