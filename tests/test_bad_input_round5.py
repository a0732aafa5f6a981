"""Bad input, round 5 (the commands added last): numbers that are not finite or overflow a
model's float type, and empty option values, each refused in one line before any work."""

from __future__ import annotations

import pytest

from neuronpath.cli import main
from neuronpath.errors import InputError
from neuronpath.experiments.plant import PlantOptions
from neuronpath.experiments.sae_train import SAETrainOptions
from neuronpath.methods.learned import LearnedOptions
from neuronpath.models.sae_files import load_sae_spec

MODEL = ["--model", "M", "--data", "D", "--out", "O"]


@pytest.mark.parametrize(
    "argv",
    [
        ["sae", "train", *MODEL, "--lr", "inf"],
        ["sae", "train", *MODEL, "--lr", "nan"],
        ["sae", "train", *MODEL, "--save-every", "1e39"],
        ["find", *MODEL, "--methods", "learned", "--learned-lr", "1e300"],
        ["evaluate", "RUN", "--enhance-factor", "nan"],
        ["plant", *MODEL, "--level=-inf"],
        ["plant", *MODEL, "--trigger-size", "NaN"],
        ["prune", *MODEL, "--mask", "0.5,nan"],
        ["classes", "RUN", "--fraction", "inf"],
    ],
)
def test_a_number_that_is_not_finite_is_refused_in_one_line(argv, capsys):
    assert main(argv) == 2  # before any work: the model M does not exist
    err = capsys.readouterr().err.strip()
    flag = next(a for a in reversed(argv) if a.startswith("--")).split("=")[0]
    assert err.startswith(f"neuronpath: error: {flag}: expected a"), err
    assert "number no larger than 3.4e+38" in err, err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: LearnedOptions(learned_lr=1e300),
        lambda: LearnedOptions(learned_lr=float("nan")),
        lambda: SAETrainOptions(lr=float("inf")),
        lambda: SAETrainOptions(lr=float("nan")),
    ],
)
def test_the_python_options_refuse_them_too(make):
    with pytest.raises(InputError):
        make()


@pytest.mark.parametrize(
    "argv",
    [
        ["plant", *MODEL, "--layers", ""],
        ["plant", *MODEL, "--layers", ","],
        ["sae", "train", *MODEL, "--layers", ""],
        ["sae", "train", *MODEL, "--layers", " , "],
    ],
)
def test_an_empty_layer_list_is_refused_before_any_work(argv, capsys):
    assert main(argv) == 2  # the model M does not exist: the layers are refused first
    err = capsys.readouterr().err.strip()
    assert err == "neuronpath: error: --layers: expected comma-separated layers, got none"


def test_an_sae_listing_that_names_no_sae_is_refused(tmp_path):
    listing = tmp_path / "saes.txt"
    listing.write_text("# layer path\n\n")
    with pytest.raises(InputError, match="names no SAE"):
        load_sae_spec(str(listing))
    assert PlantOptions(layers=None).layers is None  # the default is not an empty list


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from conftest import make_image_folder, save_tiny_model

    root = tmp_path_factory.mktemp("round5")
    model = save_tiny_model(root / "model")
    data = make_image_folder(root / "images", per_class=1)
    run = root / "run"
    find = ["-q", "find", "--model", str(model), "--data", str(data), "--out", str(run)]
    assert main([*find, "--methods", "activation", "--device", "cpu"]) == 0
    return run


def _damaged(small_run, tmp_path, manifest=None, records=None):
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    if manifest is not None:
        data = json.loads((run / "manifest.json").read_text())
        manifest(data)
        (run / "manifest.json").write_text(json.dumps(data))
    if records is not None:
        with open(run / "records.jsonl", "a") as handle:
            handle.write(records + "\n")
    return run


def _pop(section, key):
    return lambda m: m[section].pop(key)


def _set(section, key, value):
    return lambda m: m[section].__setitem__(key, value(m) if callable(value) else value)


@pytest.mark.parametrize(
    "manifest, records, expected",
    [
        (_set("model", "units_per_site", lambda m: m["model"]["units_per_site"][:-1]), None,
         "model.site_blocks"),
        (_pop("model", "site_blocks"), None, "model.site_blocks is missing"),
        (_set("settings", "options", "jas"), None, "settings.options is 'jas'"),
        (_set("model", "widths", [4]), None, "model.widths is [4]"),
        (None, '{"foo": 1}', "line 4 is damaged (expected a record with an image"),
        (None, "[1, 2]", "line 4 is damaged (expected a record with an image"),
        (None, '{"image": "x.png", "method": "activation", "path": [1], "label": 0}',
         "record 4 (x.png, activation) is damaged: expected a path of 3 entries"),
        (None, '{"image": "x.png", "method": "activation", "path": [1, 2, 3], "label": 0}',
         "record 4 (x.png, activation) is damaged: pred is None; expected a number"),
    ],
)  # fmt: skip
def test_the_python_run_names_the_damaged_file_and_key(
    small_run, tmp_path, capsys, manifest, records, expected
):
    from neuronpath import Run
    from neuronpath.errors import RunFormatError

    run = _damaged(small_run, tmp_path, manifest, records)
    with pytest.raises(RunFormatError) as error:
        opened = Run.open(run)
        opened.sites, opened.records()
    assert expected in str(error.value) and str(run) in str(error.value), error.value
    assert main(["summary", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err


def test_find_refuses_a_reference_holding_a_copy_of_a_run_image(tmp_path, capsys):
    """Identity by content: a run image copied into the reference under another name is
    refused, as evaluate --reference refuses it."""
    import shutil

    from conftest import make_image_folder, save_tiny_model

    model = save_tiny_model(tmp_path / "model")
    data = make_image_folder(tmp_path / "images", per_class=1)
    reference = make_image_folder(tmp_path / "reference", per_class=2, seed=7)
    copied = next(p for p in sorted(data.rglob("*")) if p.is_file())
    shutil.copy(copied, reference / "cat" / f"renamed{copied.suffix}")
    argv = ["find", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "run")]
    argv += ["--methods", "jas-mean", "--reference", str(reference), "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--reference: 1 of its images are images of the run" in err, err
    assert "renamed" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def _sae_argv(tmp_path, out):
    from conftest import make_image_folder, save_tiny_model

    model, data = tmp_path / "model", tmp_path / "images"
    if not model.exists():
        save_tiny_model(model)
        make_image_folder(data, per_class=1)
    argv = ["sae", "train", "--model", str(model), "--data", str(data), "--out", str(out)]
    return [
        *argv,
        "--latents",
        "24",
        "--k",
        "4",
        "--epochs",
        "1",
        "--layers",
        "0",
        "--device",
        "cpu",
    ]


def test_damaged_sae_files_are_one_line(tmp_path, capsys):
    """A garbage state.pt, a truncated report.json, a cfg.json whose k exceeds its latents:
    each refused with one line naming the file, by the command that reads it."""
    out = tmp_path / "sae"
    out.mkdir()
    (out / "state.pt").write_bytes(b"not a pickle at all")
    argv = _sae_argv(tmp_path, out)
    capsys.readouterr()  # the tiny model's own writing
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"{out / 'state.pt'} is damaged" in err and len(err.splitlines()) == 1, err
    (out / "state.pt").unlink()
    assert main(["-q", *_sae_argv(tmp_path, out)]) == 0
    report = (out / "report.json").read_text()
    (out / "report.json").write_text(report[: len(report) // 2])
    capsys.readouterr()
    assert main(_sae_argv(tmp_path, out)) == 2
    err = capsys.readouterr().err.strip()
    assert f"{out / 'report.json'} is damaged" in err and len(err.splitlines()) == 1, err
    import json

    whole = json.loads(report)
    for damaged in ({**whole, "layers": {"0": {"fvu": 0.1}}}, {**whole, "clean": "x"}):
        (out / "report.json").write_text(json.dumps(damaged))
        assert main(_sae_argv(tmp_path, out)) == 2
        err = capsys.readouterr().err.strip()
        assert f"{out / 'report.json'} is damaged" in err and len(err.splitlines()) == 1, err
    cfg = json.loads((out / "layer00" / "cfg.json").read_text())
    (out / "layer00" / "cfg.json").write_text(json.dumps({**cfg, "k": 1000}))
    model, data = tmp_path / "model", tmp_path / "images"
    argv = ["find", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "run")]
    argv += ["--units", "sae", "--sae", f"0={out / 'layer00'}", "--methods", "activation"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "its k (1000) exceeds its 24 latents" in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    "store, extra",
    [
        ("evaluation", []),
        ("evaluation/faithfulness/zero", ["--ablation", "zero"]),
    ],
)
def test_an_evaluation_store_in_use_is_refused(small_run, tmp_path, capsys, store, extra):
    """One writer per store: while another process holds the store's lock, evaluate is
    refused in one line and writes nothing."""
    import shutil

    from neuronpath.io.store import RunLock

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    (run / store).mkdir(parents=True)
    held = RunLock(run / store)  # as another process holds it (flock: per open file)
    try:
        assert main(["evaluate", str(run), "--device", "cpu", "--bootstrap", "0", *extra]) == 2
    finally:
        held.release()
    err = capsys.readouterr().err.strip()
    assert "is in use by another neuronpath process" in err and len(err.splitlines()) == 1, err


def test_an_sae_folder_in_use_is_refused(tmp_path, capsys):
    from neuronpath.io.store import RunLock

    out = tmp_path / "sae"
    out.mkdir()
    argv = _sae_argv(tmp_path, out)
    held = RunLock(out)
    try:
        capsys.readouterr()
        assert main(argv) == 2
    finally:
        held.release()
    err = capsys.readouterr().err.strip()
    assert "is in use by another neuronpath process" in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_saved_scores_of_the_wrong_shape_are_one_line(tmp_path, capsys):
    import numpy as np

    from conftest import make_image_folder, save_tiny_model

    model = save_tiny_model(tmp_path / "model")
    data = make_image_folder(tmp_path / "images", per_class=1)
    run = tmp_path / "run"
    find = ["-q", "find", "--model", str(model), "--data", str(data), "--out", str(run)]
    assert main([*find, "--methods", "activation", "--save-scores", "--device", "cpu"]) == 0
    (saved,) = sorted((run / "scores").glob("*.npz"))
    arrays = dict(np.load(saved))
    arrays["activation"] = arrays["activation"][:, 0]  # one layer's scores only
    np.savez(saved, **arrays)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--curves", "--device", "cpu", "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{saved} is damaged ('activation' holds shape" in err, err
    assert len(err.splitlines()) == 1


def _at_once(*argvs, timeout=600):
    """Start the commands together (one thread each); their (exit code, stderr)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "neuronpath.cli", "-q", *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for argv in argvs
    ]
    return [(p.wait(timeout=timeout), p.stderr.read()) for p in started]


def test_two_evaluations_and_two_sae_trainings_started_at_once(tmp_path):
    """One writer per folder, two processes started together: one does the work, the other is
    refused as the folder is in use (or, started after it finished, finds it done); the result
    is whole."""
    from conftest import make_image_folder, save_tiny_model
    from neuronpath.io.store import read_records

    model = save_tiny_model(tmp_path / "model")
    data = make_image_folder(tmp_path / "images", per_class=30)  # some seconds of work each
    run = tmp_path / "run"
    find = ["find", "--model", str(model), "--data", str(data), "--out", str(run)]
    assert main(["-q", *find, "--methods", "activation", "--device", "cpu"]) == 0
    evaluate = ["evaluate", str(run), "--device", "cpu", "--bootstrap", "0", "--batch-size", "1"]
    out = tmp_path / "sae"
    sae = ["sae", "train", "--model", str(model), "--data", str(data), "--out", str(out)]
    sae += ["--latents", "24", "--k", "4", "--epochs", "3", "--device", "cpu", "--batch-size", "2"]
    for argv, check in (
        (evaluate, lambda: len(read_records(run / "evaluation")) == 90 * 2),  # and random
        (sae, lambda: (out / "report.json").is_file() and not (out / "state.pt").exists()),
    ):
        done = _at_once(argv, argv)
        codes = sorted(code for code, _ in done)
        assert codes[0] == 0 and codes[1] in (0, 2), done
        for code, err in done:
            if code == 2:
                assert "is in use by another neuronpath process" in err, err
                assert len(err.strip().splitlines()) == 1, err
        assert check(), argv[0]


def test_a_command_renames_a_parameter_by_its_name_not_by_text():
    """prune names K --keep: within options_named(topk="keep") --topk becomes --keep and
    --topk-mode stays itself (a text replacement turned it into --keep-mode)."""
    from neuronpath.errors import command_line_options, option, options_named

    with command_line_options(), options_named(topk="keep"):
        assert (option("topk"), option("topk_mode")) == ("--keep", "--topk-mode")
    with command_line_options():
        assert option("topk") == "--topk"
