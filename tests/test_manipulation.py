"""Removal / enhancement: literal edited forwards, hand-computed metrics, figure, CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import literal
from conftest import tiny_vit
from neuronpath.analysis.deviations import method_metrics
from neuronpath.cli import main
from neuronpath.engine.editing import manipulate
from neuronpath.io.store import RECORDS, read_manifest, read_records
from neuronpath.methods.controls import random_path
from neuronpath.models.huggingface import from_hf_model
from neuronpath.report.figures import probability_deviation_figure


def edited_probs(model, x1, path, factor):
    """One forward with path neuron l of the CLS row multiplied by factor at every layer."""
    width = model.config.intermediate_size
    multipliers = {
        l: torch.ones(width, dtype=torch.float64).index_fill_(0, torch.tensor([int(p)]), factor)
        for l, p in enumerate(path)
    }
    return literal.probs_with_cls_multiplied(model, x1, multipliers)


def test_manipulation_equals_literal_edited_forwards():
    model = tiny_vit(layers=3, seed=3)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    paths = {
        "a": torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]),
        "b": torch.tensor([[11, 0, 5]] * 4),
    }
    out = manipulate(from_hf_model(model), x, y, paths, max_rows=5)  # chunks cross blocks
    for b in range(4):
        base = edited_probs(model, x[b : b + 1], [0, 0, 0], 1.0)
        assert out["base_prob"][b].item() == pytest.approx(base[y[b]].item(), rel=1e-9)
        assert out["base_pred"][b].item() == int(base.argmax())
        for method, path in paths.items():
            for op, factor in (("remove", 0.0), ("enhance", 2.0)):
                probs = edited_probs(model, x[b : b + 1], path[b].tolist(), factor)
                assert out[f"{method}:{op}_prob"][b].item() == pytest.approx(
                    probs[y[b]].item(), rel=1e-9
                )
                assert out[f"{method}:{op}_pred"][b].item() == int(probs.argmax())
    assert not torch.allclose(out["a:remove_prob"], out["base_prob"])


def test_random_path_is_reproducible_and_distinct_per_layer():
    a = random_path("cat/1.png", 0, 12, 512, k=3)
    assert torch.equal(a, random_path("cat/1.png", 0, 12, 512, k=3))
    assert not torch.equal(a, random_path("cat/2.png", 0, 12, 512, k=3))
    assert not torch.equal(a, random_path("cat/1.png", 1, 12, 512, k=3))
    assert a.shape == (12, 3) and all(len(set(row.tolist())) == 3 for row in a)


def hand_records():
    # class 0: two images, class 1: one image
    return [
        {
            "label": 0,
            "base_prob": 0.5,
            "base_pred": 0,
            "remove_prob": 0.25,
            "remove_pred": 1,
            "enhance_prob": 0.75,
            "enhance_pred": 0,
            "jas": 0.2,
        },
        {
            "label": 0,
            "base_prob": 0.2,
            "base_pred": 1,
            "remove_prob": 0.1,
            "remove_pred": 1,
            "enhance_prob": 0.6,
            "enhance_pred": 0,
            "jas": 0.4,
        },
        {
            "label": 1,
            "base_prob": 0.8,
            "base_pred": 1,
            "remove_prob": 0.4,
            "remove_pred": 0,
            "enhance_prob": 0.8,
            "enhance_pred": 1,
            "jas": 0.6,
        },
    ]


def test_metrics_equal_hand_computed_values():
    m = method_metrics(hand_records(), ["remove", "enhance"], bootstrap=200)
    assert m["images"] == 3 and m["mean_jas"] == pytest.approx(0.4)
    assert m["accuracy"] == pytest.approx(2 / 3)
    # removal: preds 1,1,0 vs labels 0,0,1 -> 0/3 correct; before 2/3
    assert m["remove"]["accuracy_deviation"] == pytest.approx(100 * (0 - 2 / 3))
    # enhancement: preds 0,0,1 -> 3/3
    assert m["enhance"]["accuracy_deviation"] == pytest.approx(100 * (1 - 2 / 3))
    # dP/P removal: -0.5, -0.5, -0.5 ; enhancement: +0.5, +2.0, 0.0
    assert m["remove"]["dp_mean"] == pytest.approx(-0.5)
    assert m["enhance"]["dp_mean"] == pytest.approx(2.5 / 3)
    assert m["enhance"]["dp_median"] == pytest.approx(0.5)
    # official: class means 1.25 (class 0) and 0.0 (class 1) -> mean 0.625, median 0.625
    assert m["enhance"]["dp_class_mean"] == pytest.approx(0.625)
    assert m["enhance"]["dp_class_median"] == pytest.approx(0.625)
    low, high = m["enhance"]["dp_mean_ci"]
    assert 0.0 <= low <= m["enhance"]["dp_mean"] <= high <= 2.0


def test_zero_base_probability_is_excluded_from_dp_only():
    rows = hand_records() + [
        {
            "label": 1,
            "base_prob": 0.0,
            "base_pred": 0,
            "remove_prob": 0.0,
            "remove_pred": 1,
            "enhance_prob": 0.1,
            "enhance_pred": 1,
            "jas": 0.0,
        }
    ]
    m = method_metrics(rows, ["enhance"], bootstrap=0)
    assert m["enhance"]["dp_excluded"] == 1
    assert m["enhance"]["dp_mean"] == pytest.approx(2.5 / 3)
    assert m["enhance"]["accuracy_deviation"] == pytest.approx(100 * (4 / 4 - 2 / 4))


def test_figure_is_a_valid_png(tmp_path):
    deviations = {
        "remove": {"jas": np.array([-0.5, -0.2]), "random": np.array([0.0, 0.01])},
        "enhance": {"jas": np.array([0.3, 0.5]), "random": np.array([0.0, -0.01])},
    }
    png, svg = probability_deviation_figure(deviations, tmp_path / "fig3", title="tiny")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        assert image.size[0] > 300 and image.size[1] > 200
    assert "<svg" in svg.read_text()[:500]


def _find(model, data, out, *extra):
    return main(
        [
            "-q",
            "find",
            "--model",
            str(model),
            "--data",
            str(data),
            "--out",
            str(out),
            "--steps",
            "3",
            "--device",
            "cpu",
            *extra,
        ]
    )


def test_evaluate_end_to_end_resume_and_table(tiny_model_dir, image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        _find(tiny_model_dir, image_folder, run, "--methods", "jas,activation,influence-pattern")
        == 0
    )
    assert (
        main(
            [
                "-q",
                "evaluate",
                str(run),
                "--device",
                "cpu",
                "--bootstrap",
                "50",
                "--batch-size",
                "5",
            ]
        )
        == 0
    )
    records = read_records(run / "evaluation")
    assert len(records) == 12 * 4
    assert {r["method"] for r in records} == {"jas", "activation", "influence-pattern", "random"}
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())["methods"]
    assert metrics["random"]["mean_jas"] is None and metrics["jas"]["mean_jas"] is not None
    assert (run / "evaluation" / "figure3.png").read_bytes()[:4] == b"\x89PNG"
    table = (run / "evaluation" / "table.md").read_text()
    assert "Removal accuracy deviation" in table and "influence-pattern" in table
    # resume: drop the last records, re-run, get the same set back
    lines = (run / "evaluation" / RECORDS).read_text().splitlines(keepends=True)
    (run / "evaluation" / RECORDS).write_text("".join(lines[:-6]) + lines[-6][:10])
    assert main(["-q", "evaluate", str(run), "--device", "cpu", "--bootstrap", "50"]) == 0
    again = read_records(run / "evaluation")

    def key(r):
        return (r["image"], r["method"])

    assert sorted(map(key, again)) == sorted(map(key, records))
    for a, b in zip(sorted(again, key=key), sorted(records, key=key)):
        assert a["remove_prob"] == pytest.approx(b["remove_prob"], rel=1e-5)
    assert main(["table", str(run), str(run), "--names", "A,B", "--out", str(tmp_path / "t")]) == 0
    merged = (tmp_path / "t.md").read_text()
    assert "| metric | method | A | B |" in merged


def test_evaluate_errors(tiny_model_dir, image_folder, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    run = tmp_path / "run"
    assert _find(tiny_model_dir, image_folder, run) == 0
    lines = (run / RECORDS).read_text().splitlines(keepends=True)
    (run / RECORDS).write_text("".join(lines[:-4]))  # as if the run was interrupted
    assert main(["evaluate", str(run), "--device", "cpu"]) == 2
    assert "incomplete" in capsys.readouterr().err
    assert _find(tiny_model_dir, image_folder, run) == 0  # finish it
    from conftest import save_tiny_model

    other = save_tiny_model(tmp_path / "other", seed=9)
    assert main(["evaluate", str(run), "--model", str(other), "--device", "cpu"]) == 2
    assert "different model" in capsys.readouterr().err
    assert main(["table", str(run), "--out", str(tmp_path / "t")]) == 2
    assert "not evaluated yet" in capsys.readouterr().err


def test_evaluate_skips_an_image_that_went_bad_and_refuses_a_moved_folder(
    tiny_model_dir, image_folder, tmp_path, capsys, caplog
):
    """After find, one image is damaged: evaluate (and --causal) report it once, list it as
    skipped and evaluate the others; a folder that moved entirely is refused with --data."""
    run = tmp_path / "run"
    assert _find(tiny_model_dir, image_folder, run) == 0
    moved = tmp_path / "moved"
    image_folder.rename(moved)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "none of the run's 12 images to do" in err and "--data DIR" in err

    damaged = sorted((moved / "dog").iterdir())[0]
    damaged.write_bytes(b"not an image any more")
    assert (
        main(
            [
                "-q",
                "evaluate",
                str(run),
                "--device",
                "cpu",
                "--data",
                str(moved),
                "--bootstrap",
                "20",
                "--causal",
            ]
        )
        == 0
    )
    name = f"dog/{damaged.name}"
    warned = [r.getMessage() for r in caplog.records if "cannot read image" in r.getMessage()]
    assert len(warned) == 2 and all(damaged.name in w for w in warned)  # evaluate, --causal
    for folder in ("evaluation", "causal"):
        assert list(read_manifest(run / folder)["skipped"]) == [name]
        images = {r["image"] for r in read_records(run / folder)}
        assert len(images) == 11 and name not in images
