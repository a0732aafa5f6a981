"""Class-specific pruning: split, aggregation, masks, literal masked forwards, the command."""

import dataclasses
import json

import numpy as np
import pytest
import torch

import literal
from conftest import assert_close_tree, tiny_vit
from neuronpath.analysis.pruning import (
    keep_by_frequency,
    keep_by_slot_mode,
    prune_multipliers,
    split_probe_test,
)
from neuronpath.cli import main
from neuronpath.engine.editing import pruned_predictions
from neuronpath.methods.controls import random_keep
from neuronpath.models.huggingface import from_hf_model


def test_split_is_deterministic_disjoint_and_per_class():
    classes = {"a": [f"a/{i}" for i in range(10)], "b": [f"b/{i}" for i in range(5)]}
    split = split_probe_test(classes, 0.8, seed=3)
    assert split == split_probe_test({k: v[::-1] for k, v in classes.items()}, 0.8, seed=3)
    assert set(split) == set(classes["a"] + classes["b"])
    assert sum(split[i] == "probe" for i in classes["a"]) == 8
    assert sum(split[i] == "probe" for i in classes["b"]) == 4
    assert split != split_probe_test(classes, 0.8, seed=4)
    with pytest.raises(ValueError, match="at least 2 images"):
        split_probe_test({"c": ["c/0"]})


def test_frequency_and_slot_mode_aggregation_equal_hand_sets():
    # 3 probe images, 1 layer, K = 3 ranked slots
    sel = np.array([[[5, 1, 2]], [[5, 2, 7]], [[1, 5, 9]]])
    # pooled first-2 slots: 5 x3, 1 x2, 2 x1 -> top-2 {5, 1}
    assert keep_by_frequency(sel, 2) == [[5, 1]]
    # slot 0 mode: 5 (x2); slot 1 mode: 1, 2, 5 each once -> lowest index 1
    assert keep_by_slot_mode(sel, 2) == [[1, 5]]
    # pooled first-3 slots: 5 x3, 1 x2, 2 x2, 7, 9 -> {5, 1, 2} (tie 1/2 both kept)
    assert keep_by_frequency(sel, 3) == [[5, 1, 2]]
    same = np.array([[[4, 4]], [[4, 4]]])  # the same neuron wins both slots
    assert keep_by_slot_mode(same, 2) == [[4]]
    with pytest.raises(ValueError, match="K = 3"):
        keep_by_frequency(sel, 4)


def test_masks_are_reproducible_and_respect_kept_and_depth():
    kept = [[0, 1], [2], [3]]
    a = prune_multipliers("x.png", 7, kept, 50, 0.5, depth=2)
    assert sorted(a) == [0, 1]
    assert torch.equal(a[0], prune_multipliers("x.png", 7, kept, 50, 0.5, 2)[0])
    assert a[0][[0, 1]].tolist() == [1.0, 1.0] and a[1][2] == 1.0
    assert 10 < int((a[0] == 0).sum()) < 40
    full = prune_multipliers("x.png", 7, kept, 50, 1.0, depth=3)
    assert int(full[2].sum()) == 1
    assert random_keep("c", 1, 3, 50, 4) == random_keep("c", 1, 3, 50, 4)


def test_engine_equals_literal_masked_forward_and_batch_size_does_not_matter():
    model = tiny_vit(layers=3, seed=5)
    adapter = from_hf_model(model)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = torch.tensor([0, 2, 4])
    rows = [prune_multipliers(f"img{b}", 0, [[1], [2], [3]], 12, 0.6, depth=2) for b in range(3)]
    probs, preds = pruned_predictions(adapter, x, y, rows, 12)
    probs1, preds1 = pruned_predictions(adapter, x, y, rows, 12, max_rows=1)
    torch.testing.assert_close(probs, probs1, rtol=1e-12, atol=1e-15)
    assert torch.equal(preds, preds1)
    for b in range(3):
        p = literal.probs_with_cls_multiplied(model, x[b : b + 1], rows[b])
        assert probs[b].item() == pytest.approx(p[y[b]].item(), rel=1e-10)
        assert preds[b].item() == int(p.argmax())
    # p = 0, or p = 1 keeping every neuron, is the unpruned model
    base, _ = pruned_predictions(adapter, x, y, [{}] * 3, 12)
    none = [prune_multipliers(f"img{b}", 0, [[1]] * 3, 12, 0.0, 3) for b in range(3)]
    keep_all = [
        prune_multipliers(f"img{b}", 0, [list(range(12))] * 3, 12, 1.0, 3) for b in range(3)
    ]
    torch.testing.assert_close(pruned_predictions(adapter, x, y, none, 12)[0], base)
    torch.testing.assert_close(pruned_predictions(adapter, x, y, keep_all, 12)[0], base)
    assert not torch.allclose(probs, base)


def test_prune_command_end_to_end(tiny_model_dir, tmp_path, capsys):
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "images", per_class=5)
    out = tmp_path / "prune"
    assert (
        main(
            [
                "-q",
                "prune",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(data),
                "--out",
                str(out),
                "--keep",
                "1,2,12",
                "--mask",
                "0,0.5,1",
                "--depth",
                "1,3",
                "--steps",
                "3",
                "--device",
                "cpu",
                "--table-keep",
                "2",
            ]
        )
        == 0
    )
    report = json.loads((out / "results.json").read_text())
    results, base = report["results"], report["results"]["unpruned"]
    assert report["test_images"] == 3  # one of five per class
    for m in ("jas", "activation", "random"):
        assert results[f"{m}|2|0.0|3"] == base  # nothing masked
        assert results[f"{m}|12|1.0|3"] == base  # everything kept
    assert (out / "figure6.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["summary", str(out)]) == 2  # a prune folder points at its find run
    assert f"its probe paths are the find run {out / 'find'}" in capsys.readouterr().err
    assert (
        main(
            [
                "-q",
                "find",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(data),
                "--out",
                str(out),
                "--steps",
                "3",
                "--device",
                "cpu",
            ]
        )
        == 2
    )  # no find run inside it
    assert "is a prune run folder" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()
    assert "| depth d |" in (out / "table3.md").read_text()
    kept = report["kept"]["jas"]["cat"]["2"]
    assert len(kept) == 3 and all(len(layer) == 2 for layer in kept)
    assert set(report["split"].values()) == {"probe", "test"}
    capsys.readouterr()
    assert (
        main(
            [
                "-q",
                "prune",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "x"),
                "--methods",
                "jas,bogus",
            ]
        )
        == 2
    )  # registry, not strings
    assert (
        "--methods: unknown ['bogus']; expected some of jas, activation" in capsys.readouterr().err
    )


def test_a_reused_find_run_must_match_the_prune_runs_inputs(tiny_model_dir, tmp_path, capsys):
    """prune --find-run evaluates the kept neurons on the inputs it is given: a find run made
    with another image pipeline (or label mapping) is refused, and the same options are
    accepted."""
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "images", per_class=5)
    found = tmp_path / "found"
    assert (
        main(
            [
                "-q",
                "find",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(data),
                "--out",
                str(found),
                "--methods",
                "jas,activation",
                "--topk",
                "2",
                "--steps",
                "3",
                "--device",
                "cpu",
                "--preprocess",
                "official",
                "--labels",
                "sorted-folders",
            ]
        )
        == 0
    )
    capsys.readouterr()
    prune = [
        "-q",
        "prune",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(data),
        "--keep",
        "1,2",
        "--mask",
        "1",
        "--device",
        "cpu",
        "--find-run",
        str(found),
    ]
    assert main(prune + ["--out", str(tmp_path / "p1")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other inputs" in err
    assert "preprocess: official" in err
    assert "labels: 'sorted-folders' there, 'label2id' here" in err
    assert not (tmp_path / "p1" / "results.json").exists()
    assert (
        main(
            prune
            + [
                "--out",
                str(tmp_path / "p2"),
                "--preprocess",
                "official",
                "--labels",
                "sorted-folders",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "p2" / "results.json").read_text())
    assert report["find_run"] == str(found)
    # the search settings recorded are the find run's, not prune's own defaults
    assert report["search"]["steps"] == 3 and report["search"]["topk"] == 2
    # the report of that prune run finds its paths in the reused find run
    assert main(["-q", "report", str(tmp_path / "p2"), "--device", "cpu", "--cards", "4"]) == 0
    page = (tmp_path / "p2" / "report" / "index.html").read_text()
    assert "depth d" in page
    assert f"neuronpath evaluate {found}" in page  # the hint names the run that has the paths
    assert main(prune[:-2] + ["--out", str(tmp_path / "p3"), "--methods", "random"]) == 0
    capsys.readouterr()
    assert main(["-q", "report", str(tmp_path / "p3"), "--device", "cpu"]) == 2
    assert "no paths to show" in capsys.readouterr().err


def test_prune_streams_the_test_images_in_chunks_without_changing_a_number(
    tiny_model_dir, tmp_path, monkeypatch
):
    """The test images are evaluated a batch at a time (ImageNet-scale test sets do not fit in
    memory at once); batches of 2 give exactly the numbers of one batch."""
    import neuronpath.experiments.prune as prune
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "images", per_class=10)
    args = [
        "-q",
        "prune",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(data),
        "--keep",
        "1,3",
        "--mask",
        "0.5,1",
        "--depth",
        "2,3",
        "--steps",
        "3",
        "--device",
        "cpu",
    ]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    monkeypatch.setattr(prune, "GRID_BATCH", 2)
    assert (
        main(
            args
            + ["--out", str(tmp_path / "chunked"), "--find-run", str(tmp_path / "whole" / "find")]
        )
        == 0
    )
    whole, chunked = (
        json.loads((tmp_path / name / "results.json").read_text()) for name in ("whole", "chunked")
    )
    assert whole["test_images"] == chunked["test_images"] == 6
    assert_close_tree(chunked["results"], whole["results"])
    assert_close_tree(chunked["comparisons"], whole["comparisons"])


def test_an_interrupted_pruning_grid_resumes_without_redoing_finished_images(
    tiny_model_dir, tmp_path, monkeypatch
):
    """The grid is a run folder (OUT/grid): an interrupted prune keeps the test images it had
    finished, and the re-run computes only the others, to the same numbers."""
    import neuronpath.experiments.prune as prune
    from conftest import make_image_folder
    from neuronpath.io.store import read_records

    data = make_image_folder(tmp_path / "images", per_class=10)
    from neuronpath.analysis.pruning import PruneSettings
    from neuronpath.engine.attribution import AttributionConfig
    from neuronpath.experiments.common import Execution

    options = prune.PruneOptions(
        settings=PruneSettings(keep=[1, 3], mask=[0.5, 1.0], depth=[3]),
        config=AttributionConfig(steps=3),
    )
    execution = Execution("cpu", progress=False)
    reference = prune.run_prune(str(tiny_model_dir), data, tmp_path / "ref", options, execution)
    settings = 1 + 3 * 2 * 2  # unpruned + methods x keep x mask
    monkeypatch.setattr(prune, "GRID_BATCH", 2)
    calls = []
    real = prune.pruned_predictions

    def interrupted_after_one_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) > settings:
            raise RuntimeError("interrupted")
        return real(*args, **kwargs)

    reused = dataclasses.replace(options, find_run=tmp_path / "ref" / "find")
    monkeypatch.setattr(prune, "pruned_predictions", interrupted_after_one_batch)
    with pytest.raises(RuntimeError, match="interrupted"):
        prune.run_prune(str(tiny_model_dir), data, tmp_path / "run", reused, execution)
    assert len(read_records(tmp_path / "run" / "grid")) == 2  # the first batch was kept

    calls.clear()
    monkeypatch.setattr(
        prune, "pruned_predictions", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    resumed = prune.run_prune(str(tiny_model_dir), data, tmp_path / "run", reused, execution)
    assert len(calls) == settings * 2  # the other 4 of 6 test images, in batches of 2
    assert resumed["test_images"] == reference["test_images"] == 6
    assert_close_tree(resumed["results"], reference["results"])
