"""Behaviour unchanged by refactoring: a small find -> evaluate (with a faithfulness study) ->
prune (with ViT-Slim) on a tiny float64 model gives the records and results stored in
``tests/golden/outputs.json``.  Paths, labels and every other integer or string must be equal;
numbers equal to 1e-9 (relative), the rounding a different CPU's kernels may add.

The stored outputs were made with the code before the command options became dataclasses and
the run type owned the manifest; regenerate them only for a change that is meant to change
results, with ``NEURONPATH_REGENERATE_GOLDEN=1 pytest tests/test_unchanged.py`` (and say why in
the commit).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_LABELS, save_tiny_model
from neuronpath.cli import main
from neuronpath.io.store import read_records

GOLDEN = Path(__file__).parent / "golden" / "outputs.json"
COMMON = ["--device", "cpu", "--dtype", "float64"]
VOLATILE = {"find_run", "data", "created", "versions", "elapsed", "command"}


def png_folder(root: Path, per_class: int = 4) -> Path:
    """RGB PNG images only (no JPEG, whose decoding may differ between library versions)."""
    rng = np.random.default_rng(5)
    for name in TINY_LABELS.values():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = (int(rng.integers(6, 20)), int(rng.integers(6, 20)))
            array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(array, "RGB").save(root / name / f"img{i:02d}.png")
    return root


def _records(folder: Path) -> list:
    rows = [{k: v for k, v in r.items() if k not in VOLATILE} for r in read_records(folder)]
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


def _json(path: Path):
    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k not in VOLATILE}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return clean(json.loads(path.read_text()))


def outputs(tmp_path: Path) -> dict:
    model = save_tiny_model(tmp_path / "model")
    data = png_folder(tmp_path / "images")
    run = tmp_path / "run"
    methods = "jas,activation,influence-pattern,knowledge,influence-pattern-lu"
    find = ["find", "--model", str(model), "--data", str(data), "--out", str(run)]
    assert main(["-q", *find, *COMMON, "--steps", "3", "--methods", methods]) == 0
    study = ["--ablation", "mean", "--metrics", "prob,kl", "--reference-split", "3"]
    evaluate = ["evaluate", str(run), "--device", "cpu", "--bootstrap", "20", *study]
    assert main(["-q", *evaluate]) == 0
    prune_dir = tmp_path / "prune"
    prune = ["prune", "--model", str(model), "--data", str(data), "--out", str(prune_dir)]
    prune += ["--steps", "2", "--keep", "1,2", "--mask", "0.5,1.0", "--bootstrap", "20"]
    prune += ["--table-keep", "2", "--baselines", "vit-slim", "--slim-steps", "5"]
    assert main(["-q", *prune, *COMMON]) == 0
    evaluation = run / "evaluation"
    found = {
        "find": _records(run),
        "evaluate": _records(evaluation),
        "metrics": _json(evaluation / "metrics.json"),
        "faithfulness mean": _records(evaluation / "faithfulness" / "mean"),
        "faithfulness": _json(evaluation / "faithfulness.json"),
        "prune paths": _records(prune_dir / "find"),
        "prune grid": _records(prune_dir / "grid"),
        "vit-slim": _records(prune_dir / "slim"),
        "prune": _json(prune_dir / "results.json"),
    }
    return json.loads(json.dumps(found).replace(str(tmp_path), "TMP"))  # no machine's paths


def assert_same(got, want, where="") -> None:
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), where
        for key in want:
            assert_same(got[key], want[key], f"{where}/{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12, nan_ok=True), where
    else:
        assert got == want, where


def test_a_small_run_gives_the_stored_outputs(tmp_path):
    got = outputs(tmp_path)
    if os.environ.get("NEURONPATH_REGENERATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, sort_keys=True, indent=1) + "\n")
    assert_same(got, json.loads(GOLDEN.read_text()))
