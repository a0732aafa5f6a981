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
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    flag = next(a for a in reversed(argv) if a.startswith("--")).split("=")[0]
    assert "finite number" in last and f"argument {flag}:" in last, last


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
