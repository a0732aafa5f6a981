"""Bad input, round 3: the commands after ``find``, damaged run folders, zero-shot label files
and models that cannot be read -- each gets one line naming the input and what was expected,
exit code 2, and leaves the run folder as it was."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil

import pytest
import transformers as T

from conftest import make_image_folder, save_tiny_model
from families import save_family
from neuronpath.cli import main
from neuronpath.errors import InputError
from neuronpath.models.huggingface import from_hf_model

FIND = ["-q", "find", "--steps", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad3")
    model = save_tiny_model(root / "model")
    data = make_image_folder(root / "images", per_class=3)
    run = root / "run"
    assert main([*FIND, "--model", str(model), "--data", str(data), "--out", str(run)]) == 0
    return {"root": root, "model": model, "data": data, "run": run}


def snapshot(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def refused(capsys, *args, folder=None):
    before = snapshot(folder) if folder else None
    capsys.readouterr()
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    if folder is not None:
        assert snapshot(folder) == before  # a refusal changes nothing
    return err


def test_zero_shot_class_files_must_name_the_image_classes(world, tmp_path, capsys):
    clip = save_family("clip-zero-shot", tmp_path / "clip")
    data = world["data"]

    def find(text):
        classes = tmp_path / "classes.tsv"
        classes.write_text(text)
        args = ["--model", str(clip), "--classes", str(classes), "--data", str(data)]
        return refused(capsys, *FIND[1:], *args, "--out", str(tmp_path / "zs"))

    assert "has no line for the image classes ['cat', 'dog', 'fish']" in find(
        "puppy\tdog\nkitty\tcat\n"
    )
    assert "has no line for the image classes ['fish']" in find("cat\tcat\ndog\tdog\n")
    assert "lists the label 'cat' on lines 1, 3" in find("cat\tcat\nfish\tfish\ncat\tdog\n")
    assert not (tmp_path / "zs").exists()


def test_class_names_files_must_name_the_runs_classes(world, tmp_path, capsys):
    run = world["run"]
    swapped = tmp_path / "swapped.tsv"
    swapped.write_text("kitty\tcat\npuppy\tdog\n")
    err = refused(capsys, "classes", str(run), "--class-names", str(swapped), folder=run)
    assert "'kitty'" in err and "are not classes of the run or labels of its model" in err
    binary = tmp_path / "binary.tsv"
    binary.write_bytes(b"\xff\xfe\x00bad")
    for command in (["classes", str(run)], ["report", str(run), "--device", "cpu"]):
        err = refused(capsys, *command, "--class-names", str(binary), folder=run)
        assert "cannot read" in err and "as a UTF-8 text file" in err
    twice = tmp_path / "twice.tsv"
    twice.write_text("cat\tkitty\ncat\tcat\n")
    assert "lists the label 'cat' on lines 1, 2" in refused(
        capsys, "classes", str(run), "--class-names", str(twice), folder=run
    )
    superset = tmp_path / "names.tsv"  # more labels than the run's classes are fine
    superset.write_text("cat\tKitty\ndog\tPuppy\nfish\tFish\n")
    assert (
        main(["-q", "classes", str(run), "--class-names", str(superset), "--permutations", "5"])
        == 0
    )


DAMAGE = {
    "no methods": (lambda m: m["settings"].pop("methods"), "settings.methods is missing"),
    "no weights hash": (
        lambda m: m["settings"].pop("weights_sha256"),
        "settings.weights_sha256 is missing",
    ),
    "settings a list": (
        lambda m: m.update(settings=[1, 2]),
        "expected an object with a 'settings' object",
    ),
    "methods one string": (
        lambda m: m["settings"].update(methods="jas,activation"),
        "settings.methods is 'jas,activation'",
    ),
    "a number as a string": (lambda m: m["settings"].update(steps="2"), "settings.steps is '2'"),
    "no layers": (lambda m: m.pop("model"), "model.num_layers is missing"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_manifest_is_one_line_for_every_command(world, damage, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    manifest = json.loads((run / "manifest.json").read_text())
    change, expected = DAMAGE[damage]
    change(manifest)
    (run / "manifest.json").write_text(json.dumps(manifest))
    commands = [
        ["evaluate", str(run), "--device", "cpu"],
        ["evaluate", str(run), "--device", "cpu", "--causal"],
        ["report", str(run), "--device", "cpu"],
        ["classes", str(run)],
        ["summary", str(run)],
        ["neurons", str(run), "--data", str(world["data"])],
        [
            "prune",
            "--model",
            str(world["model"]),
            "--data",
            str(world["data"]),
            "--out",
            str(tmp_path / "prune"),
            "--find-run",
            str(run),
            "--device",
            "cpu",
            "--keep",
            "1",
        ],
    ]
    for command in commands:
        err = refused(capsys, *command, folder=run)
        assert expected in err and "manifest.json" in err, (command, err)


def test_numbers_are_checked_before_any_work(world, tmp_path, capsys):
    run = world["run"]
    common = ["--model", str(world["model"]), "--data", str(world["data"])]
    assert "--memory-budget: expected a size such as 2GiB" in refused(
        capsys, *FIND[1:], *common, "--out", str(tmp_path / "x"), "--memory-budget", "1.2.3GiB"
    )
    assert not (tmp_path / "x").exists()
    assert "--bootstrap: expected a number of resamples >= 0, got -5" in refused(
        capsys, "evaluate", str(run), "--bootstrap", "-5", folder=run
    )
    assert "--batch-size: expected a positive integer, got 0" in refused(
        capsys, "evaluate", str(run), "--batch-size", "0", folder=run
    )
    assert "--fraction: expected a share in (0, 1], got 2.0" in refused(
        capsys, "classes", str(run), "--fraction", "2", folder=run
    )
    assert "--permutations: expected a count >= 0" in refused(
        capsys, "classes", str(run), "--permutations", "-1", folder=run
    )
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert main(["-q", "evaluate", str(copy), "--device", "cpu", "--bootstrap", "0"]) == 0
    table = (copy / "evaluation" / "table.md").read_text()
    assert (
        "[" not in table.split("Cells")[0] and "no intervals: evaluated with --bootstrap 0" in table
    )


def test_a_damaged_metrics_file_names_itself(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    (run / "evaluation").mkdir()
    (run / "evaluation" / "metrics.json").write_text('{"model": "x", "meth')
    err = refused(capsys, "table", str(run), "--out", str(tmp_path / "t"))
    assert "evaluation/metrics.json is damaged (not valid JSON" in err


def test_a_model_that_folds_tokens_into_the_batch_is_refused_naming_it():
    config = T.MobileViTConfig(
        image_size=32,
        hidden_sizes=[16, 24, 32],
        neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
        num_labels=3,
        patch_size=2,
    )
    model = T.MobileViTForImageClassification(config).double().eval()
    with pytest.raises(
        InputError, match=r"^MobileViTForImageClassification: .* folds tokens into the batch"
    ):
        from_hf_model(model)


def test_housekeeping_stale_progress_files_go_and_empty_classes_are_reported(
    world, tmp_path, caplog
):
    data = tmp_path / "images"
    shutil.copytree(world["data"], data)
    shutil.rmtree(data / "fish")
    (data / "fish").mkdir()  # a class folder with no images
    run = tmp_path / "run"
    args = [
        *FIND,
        "--model",
        str(world["model"]),
        "--data",
        str(data),
        "--out",
        str(run),
        "--limit",
        "2",
    ]
    with caplog.at_level(logging.WARNING, logger="neuronpath"):
        assert main(args) == 0
    assert any("fish has no images" in r.getMessage() for r in caplog.records)
    (run / "progress.rank1.json").write_text('{"done": 1, "finished": false}')  # a killed job's
    (run / "progress.rank2.json").write_text('{"done": 1, "finished": true}')
    assert main([*args[:-2], "--limit", "4"]) == 0
    assert not list(run.glob("progress.rank*"))
