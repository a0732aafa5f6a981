"""The recipe of docs/architecture.md, followed inside a test: a path method with an option of
its own, defined here, runs through find, evaluate and report with no change under src/."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch

from neuronpath.cli import main
from neuronpath.errors import InputError, option
from neuronpath.io.store import read_manifest, read_records
from neuronpath.methods import REGISTRY, MethodOptions, MethodOutput, PathMethod, register
from test_report import page_data

FIND = ["find", "--steps", "3", "--device", "cpu"]


@dataclass(frozen=True)
class DiagonalOptions(MethodOptions):
    """Options of the test method, with their validation and help."""

    offset: int = field(
        default=0,
        metadata={"type": int, "help": "the path neuron of layer l is (l + offset) mod the width"},
    )

    def __post_init__(self):
        if self.offset < 0:
            raise InputError(f"{option('offset')}: expected a number >= 0, got {self.offset}")


def diagonal_path(adapter, pixels, clean, config, k, options):
    """Neurons (l + offset + j) mod width_l, j < K, of every layer l, for every image."""
    n = clean.labels.shape[0]
    path = torch.stack(
        [(torch.arange(k) + l + options.offset) % width for l, width in enumerate(clean.widths)]
    )
    return MethodOutput(path.expand(n, -1, -1).to(adapter.device), {"offset": [options.offset] * n})


DIAGONAL = PathMethod(
    "diagonal",
    "the neuron (layer + offset) of each layer (a test method)",
    diagonal_path,
    options=DiagonalOptions,
    title="diagonal path",
)


@pytest.fixture
def registered():
    register(DIAGONAL)
    yield DIAGONAL
    REGISTRY.pop(DIAGONAL.name)


def test_a_method_defined_in_a_test_runs_through_find_evaluate_and_report(
    registered, tiny_model_dir, image_folder, tmp_path, capsys
):
    run = tmp_path / "run"
    args = [*FIND, "--model", str(tiny_model_dir), "--data", str(image_folder), "--out", str(run)]
    assert main(["-q", *args, "--methods", "jas,diagonal", "--offset", "2"]) == 0
    settings = read_manifest(run)["settings"]
    assert settings["methods"] == ["jas", "diagonal"]
    assert settings["options"]["diagonal"] == {"offset": 2}
    rows = read_records(run, "diagonal")
    assert len(rows) == 12 and all(r["path"] == [2, 3, 4] and r["offset"] == 2 for r in rows)

    assert main(["-q", "evaluate", str(run), "--device", "cpu", "--bootstrap", "20"]) == 0
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())["methods"]
    assert set(metrics) == {"jas", "diagonal", "random"}

    assert (
        main(
            [
                "-q",
                "report",
                str(run),
                "--method",
                "diagonal",
                "--device",
                "cpu",
                "--images",
                "4",
                "--cards",
                "3",
            ]
        )
        == 0
    )
    data = page_data(run / "report" / "index.html")
    assert data["method"] == "diagonal" and "diagonal" in data["methods"]
    assert {(c["layer"], c["neuron"]) for c in data["cards"]} == {(0, 2), (1, 3), (2, 4)}
    assert all(c["count"] == 12 for c in data["cards"])

    capsys.readouterr()
    assert (
        main(
            [
                "-q",
                *[a if a != str(run) else str(tmp_path / "x") for a in args],
                "--methods",
                "diagonal",
                "--offset",
                "-1",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err == "neuronpath: error: --offset: expected a number >= 0, got -1"
    assert not (tmp_path / "x").exists()


def test_its_options_appear_in_help_under_its_name(registered, capsys):
    with pytest.raises(SystemExit):
        main(["find", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "diagonal options: --offset OFFSET the path neuron of layer l" in text
    assert "diagonal: the neuron (layer + offset) of each layer (a test method)" in text


def test_a_clashing_option_or_name_is_refused(registered):
    clash = PathMethod("other", "x", diagonal_path, options=DiagonalOptions)
    with pytest.raises(
        ValueError, match="option 'offset' of 'other' is already an option of 'diagonal'"
    ):
        register(clash)
    with pytest.raises(ValueError, match="exists already"):
        register(DIAGONAL)


def test_the_registry_is_untouched_outside_the_test():
    out = subprocess.run(
        [sys.executable, "-c", "from neuronpath.methods import REGISTRY; print(sorted(REGISTRY))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "diagonal" not in out.stdout and "diagonal" not in REGISTRY
