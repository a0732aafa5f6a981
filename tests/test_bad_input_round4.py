"""Bad input, round 4: the atlas, the faithfulness study, heads, the data sources and prune's
baselines.  Each case is one line naming the input and what was expected (exit 2) and leaves the
run folder as it was -- or, where the input is meaningful, gives the right result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import TINY_PREPROCESSOR, make_image_folder, save_tiny_model, tiny_vit
from neuronpath.cli import main
from neuronpath.experiments.neurons import read_atlas
from neuronpath.io.store import read_records
from test_bad_input_downstream import refused, snapshot

FIND = ["-q", "find", "--steps", "2", "--device", "cpu"]
SYNSETS = {0: "n01440764", 1: "n02102040", 2: "n02979186"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad4")
    model = save_tiny_model(root / "model")
    data = make_image_folder(root / "images", per_class=3)
    run = root / "run"
    assert main([*FIND, "--model", str(model), "--data", str(data), "--out", str(run)]) == 0
    return {"root": root, "model": model, "data": data, "run": run}


def test_neurons_with_a_run_and_units_describes_those_units_of_the_runs_model(
    world, tmp_path, capsys
):
    run, data = world["run"], world["data"]
    out = tmp_path / "atlas"
    args = ["-q", "neurons", str(run), "--data", str(data), "--device", "cpu"]
    assert main([*args, "--select", "1:2", "--out", str(out)]) == 0
    assert set(read_atlas(out).units) == {(1, "neuron", 2)}  # not the run's path units
    before = snapshot(run)
    err = refused(capsys, *args[1:], "--select", "1:h1", "--out", str(tmp_path / "h"))
    assert "--select: 1:h1 names heads, and the run's model is read for neurons" in err
    err = refused(capsys, *args[1:], "--select", "1:2", "--methods", "jas")
    assert "--select and --methods: each names the units to describe; give one" in err
    assert snapshot(run) == before and not (tmp_path / "h").exists()


def _flat(world, tmp_path):
    """The images as one flat folder named like ImageNet's validation set, and a synset model
    with a devkit for them."""
    flat = tmp_path / "flat"
    flat.mkdir()
    images = sorted(p for p in world["data"].rglob("*") if p.is_file())
    classes = {}
    for n, path in enumerate(images, start=1):
        name = f"ILSVRC2012_val_{n:08d}{path.suffix}"
        shutil.copy(path, flat / name)
        classes[name] = ("cat", "dog", "fish").index(path.parent.name)
    model = tiny_vit(dtype=torch.float32, id2label=SYNSETS)
    model.save_pretrained(tmp_path / "synset-model")
    (tmp_path / "synset-model" / "preprocessor_config.json").write_text(
        json.dumps(TINY_PREPROCESSOR)
    )
    return flat, classes, tmp_path / "synset-model"


def _devkit(folder, ids):
    from scipy.io import savemat

    rows = np.zeros(1000, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
    for k in range(1000):
        rows[k] = (k + 1, SYNSETS.get(k, f"n9{k:07d}"))
    folder.mkdir(exist_ok=True)
    savemat(folder / "meta.mat", {"synsets": rows})
    gt = folder / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("".join(f"{i + 1}\n" for i in ids))
    return gt


def test_line_numbered_label_files_keep_line_n_for_image_n(world, tmp_path, capsys):
    flat, classes, model = _flat(world, tmp_path)
    ids = [classes[n] for n in sorted(classes)]
    common = ["--model", str(model), "--data", str(flat)]
    gt = _devkit(tmp_path / "devkit", ids)
    lines = gt.read_text().splitlines()
    gt.write_text("\n".join(lines[:3] + [""] + lines[4:]) + "\n")  # image 4's label missing
    err = refused(
        capsys, *FIND[1:], *common, "--labels-file", str(gt), "--out", str(tmp_path / "a")
    )
    assert f"line 4 of {gt} is ''; expected one ILSVRC2012_ID" in err
    assert not (tmp_path / "a").exists()
    names = sorted(classes)
    tab = tmp_path / "labels.tsv"  # a byte-order mark, a blank line, then a malformed line 4
    rows = [f"{n}\t{SYNSETS[classes[n]]}" for n in names]
    tab.write_text("\ufeff" + rows[0] + "\n" + rows[1] + "\n\n" + names[2] + "\n")
    err = refused(
        capsys, *FIND[1:], *common, "--labels-file", str(tab), "--out", str(tmp_path / "b")
    )
    assert f"line 4 of {tab} is not 'path<TAB>label'" in err
    tab.write_text("\ufeff" + "\n".join(rows) + "\n")  # the mark is not part of the first path
    assert main([*FIND, *common, "--labels-file", str(tab), "--out", str(tmp_path / "c")]) == 0
    labels = {r["image"]: r["label"] for r in read_records(tmp_path / "c")}
    assert labels == {n: classes[n] for n in names}


def test_labels_that_are_not_classes_of_the_model_are_refused(world, tmp_path, capsys):
    flat, classes, model = _flat(world, tmp_path)
    names = sorted(classes)
    readable = tmp_path / "names.tsv"  # class names on a synset-labelled model
    readable.write_text(
        "".join(f"{n}\t{('beagle', 'springer', 'tape')[classes[n]]}\n" for n in names)
    )
    common = ["--model", str(model), "--data", str(flat), "--labels-file", str(readable)]
    err = refused(capsys, *FIND[1:], *common, "--out", str(tmp_path / "a"))
    assert "are not classes of the model" in err and "--labels sorted-folders" in err
    assert "sorted-labels" not in err
    ordered = [*FIND, *common, "--labels", "sorted-folders", "--out", str(tmp_path / "b")]
    assert main(ordered) == 0  # asked for: numbered in sorted order
    unknown = tmp_path / "unknown.tsv"
    unknown.write_text("".join(f"{n}\tn09999999\n" for n in names))
    err = refused(
        capsys,
        *FIND[1:],
        "--model",
        str(model),
        "--data",
        str(flat),
        "--labels-file",
        str(unknown),
        "--out",
        str(tmp_path / "c"),
    )
    assert "sorted-labels" not in err and "n09999999" in err
    partly = tmp_path / "partly.tsv"  # the model's names but one: the hint to number them
    partly.write_text(
        "".join(f"{n}\t{'n09999999' if i == 0 else SYNSETS[classes[n]]}\n"
                for i, n in enumerate(names))
    )  # fmt: skip
    err = refused(
        capsys, *FIND[1:], "--model", str(model), "--data", str(flat), "--labels-file",
        str(partly), "--out", str(tmp_path / "d"),
    )  # fmt: skip
    assert "are not; rename them, or pass --labels sorted-folders" in err


def test_a_dataset_changed_under_a_run_is_refused_by_every_later_command(world, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    files = sorted(p for p in world["data"].rglob("*") if p.is_file())
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "fish"])}
    )
    rows = {
        "image": [{"bytes": p.read_bytes(), "path": None} for p in files],
        "label": [["cat", "dog", "fish"].index(p.parent.name) for p in files],
    }
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(saved))
    run = tmp_path / "run"
    assert (
        main([*FIND, "--model", str(world["model"]), "--data", f"hf:{saved}", "--out", str(run)])
        == 0
    )
    shuffled = datasets.Dataset.from_dict(rows, features=features).shuffle(seed=1)
    shutil.rmtree(saved)
    shuffled.flatten_indices().save_to_disk(str(saved))  # the same path, its rows in another order
    before = snapshot(run)
    for command in (["evaluate", str(run)], ["report", str(run)], ["classes", str(run)]):
        err = (
            refused(capsys, *command, "--device", "cpu")
            if command[0] != "classes"
            else refused(capsys, *command)
        )
        assert "is not the dataset the run was made on" in err, command
    assert snapshot(run) == before
    strings = tmp_path / "strings"  # a column of path strings, named as the image column
    datasets.Dataset.from_dict(
        {"file": [str(p) for p in files], "label": rows["label"]}
    ).save_to_disk(str(strings))
    err = refused(
        capsys,
        *FIND[1:],
        "--model",
        str(world["model"]),
        "--data",
        f"hf:{strings}",
        "--image-column",
        "file",
        "--out",
        str(tmp_path / "none"),
    )
    assert "column 'file'" in err and "not images" in err


def test_damaged_state_files_are_named_with_what_to_do(world, tmp_path, capsys):
    run, data = tmp_path / "run", world["data"]
    shutil.copytree(world["run"], run)
    args = ["neurons", str(run), "--data", str(data), "--device", "cpu", "--batch-size", "3"]
    assert main(["-q", *args]) == 0
    state = run / "neurons" / "state.rank0.npz"
    state.write_bytes(state.read_bytes()[:200])  # cut short
    err = refused(capsys, *args)
    assert f"{state} is damaged" in err and "delete it and run the same command again" in err
    (run / "neurons" / "atlas.npz").write_bytes(b"garbage")
    with pytest.raises(Exception, match="atlas.npz is damaged"):
        read_atlas(run / "neurons")
    study = [
        "evaluate",
        str(run),
        "--device",
        "cpu",
        "--ablation",
        "mean",
        "--reference-split",
        "3",
    ]
    assert main(["-q", *study, "--bootstrap", "0"]) == 0
    reference = run / "evaluation" / "faithfulness" / "reference.npz"
    reference.write_bytes(b"not an npz")
    err = refused(capsys, *study, "--bootstrap", "0")
    assert f"{reference} is damaged" in err and "delete it" in err


def test_a_reference_split_study_resumes_under_another_hash_seed_and_a_refused_one_changes_nothing(
    world, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    study = ["-q", "evaluate", str(run), "--device", "cpu", "--bootstrap", "0"]
    study += ["--ablation", "mean", "--reference-split", "3"]
    for seed in ("1", "2"):  # a set's order differs between processes; the identity must not
        done = subprocess.run(
            [sys.executable, "-m", "neuronpath.cli", *study],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
    folder = run / "evaluation" / "faithfulness"
    before = snapshot(folder)
    err = refused(capsys, *study[1:], "--enhance-factor", "3")
    assert "already holds a run with other settings" in err
    assert snapshot(folder) == before  # the reference was not rewritten before the refusal
    err = refused(capsys, *study[1:], "--enhance-factor", "inf")
    assert "--enhance-factor: expected a finite number" in err


def test_prune_names_its_own_flags_and_refuses_options_that_would_do_nothing(
    world, tmp_path, capsys
):
    base = [
        "prune",
        "--model",
        str(world["model"]),
        "--data",
        str(world["data"]),
        "--device",
        "cpu",
    ]
    out = ["--out", str(tmp_path / "p")]
    err = refused(capsys, *base, *out, "--methods", "influence-pattern-lu", "--keep", "1,3")
    assert err.startswith("neuronpath: error: --keep:") and "--topk" not in err
    err = refused(capsys, *base, *out, "--slim-lambda", "0.01")
    assert (
        "--slim-lambda: the ViT-Slim search's options, which act only with --baselines vit-slim"
        in err
    )
    err = refused(capsys, *base, *out, "--units", "heads", "--baselines", "vit-slim", "--keep", "1")
    assert "vit-slim trains soft masks on the FFN neurons" in err
    assert not (tmp_path / "p").exists()
    err = refused(capsys, "evaluate", str(world["run"]), "--bins", "4")
    assert "--bins: an option of --match bins" in err


def test_a_damaged_optional_manifest_key_is_one_line(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["run"]["planned_images"] = "nine"
    (run / "manifest.json").write_text(json.dumps(manifest))
    err = refused(capsys, "evaluate", str(run), "--device", "cpu", folder=run)
    assert "run.planned_images is 'nine'; expected the number of images" in err
