"""Planted ground truth (neuronpath plant) and recovery (neuronpath benchmark) on the built-in
demo ViT (trained on the digits, its weights shipped), in float64: the plant passes its own
verification, and every claim of it holds again under hooks written here; a plant that fails
any check is refused and writes nothing; several seeds resume; recovery statistics equal
literal computations; bad input is one line."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import torch

from neuronpath.analysis.recovery import planted_ranks, recovery, roc_area, wilson_interval
from neuronpath.cli import main
from neuronpath.experiments import plant_checks
from neuronpath.experiments.benchmark import t_quantile
from neuronpath.io.images import load_image
from neuronpath.io.scores import SavedScores
from neuronpath.io.store import read_records
from neuronpath.models.demo import demo_data_dir, shipped_model_dir
from neuronpath.models.loading import load_model

PLANT = ["--dtype", "float64", "--device", "cpu", "--calibration", "8", "--per-class", "6",
         "--trigger-size", "0.5", "--layers", "2,4", "--batch-size", "64"]  # fmt: skip


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("plant")
    before = os.environ.get("NEURONPATH_CACHE")
    os.environ["NEURONPATH_CACHE"] = str(root / "cache")  # the digits, written here
    try:
        data = demo_data_dir() / "test"
    finally:
        if before is None:
            del os.environ["NEURONPATH_CACHE"]
        else:
            os.environ["NEURONPATH_CACHE"] = before
    model = shipped_model_dir()
    out = root / "planted"
    argv = ["plant", "--model", str(model), "--data", str(data), "--out", str(out), *PLANT]
    assert main(["-q", *argv]) == 0
    run = root / "run"
    find = ["-q", "find", "--model", str(out), "--data", str(out / "images"), "--out", str(run)]
    find += ["--steps", "3", "--device", "cpu", "--dtype", "float64", "--limit", "24"]
    find += ["--reference", str(out / "clean"), "--save-scores"]
    assert main([*find, "--methods", "jas,activation,knowledge,delta-activation"]) == 0
    return {"root": root, "model": model, "data": data, "out": out, "run": run, "argv": argv}


def record_of(planted) -> dict:
    return json.loads((planted["out"] / "planted.json").read_text())


def test_a_planted_chain_passes_its_own_verification(planted):
    record = record_of(planted)
    checks = record["verification"]["checks"]
    assert set(checks) == {"a", "b", "links", "c", "distractors", "e", "same", "levels"}
    assert all(c["pass"] for c in checks.values())
    assert set(checks["links"]["by_link"]) == {"relay L1", "router L2", "L2", "L4"}
    for by in checks["links"]["by_link"].values():
        assert set(by) == {"zero", "mean", "resample"} and min(by.values()) >= 0.9
    assert checks["same"]["value"] >= 0.99 and checks["levels"]["value"] <= 1.0
    kinds = sorted((d["kind"], d["layer"]) for d in record["distractors"])
    assert kinds == sorted([(k, l) for k in ("idle", "constant", "echo") for l in (2, 4)]
                           + [("register", 4)])  # fmt: skip
    assert record["layers"] == [2, 4] and record["relay"]["layer"] == 1
    assert record["route"] is not None  # a CLS model: the trigger is routed to the CLS token
    assert record["trigger"]["pattern"].startswith("2 x 2 patches")
    adapter = load_model(str(planted["out"]), dtype=torch.float64)
    assert adapter.weights_hash() == record["weights_sha256"]  # it loads as the input did
    triggered = sorted((planted["out"] / "images").rglob("*.png"))
    clean = sorted((planted["out"] / "clean").rglob("*.png"))
    assert len(triggered) == len(clean) == record["images"]["count"] == 54
    assert {p.parent.name for p in triggered} == {record["target"]["folder"]}
    assert {p.parent.name for p in clean} == {str(d) for d in range(1, 10)}  # every other class
    first = [p.name.split("_")[1] for p in triggered[:9]]  # sorted, the classes take turns
    assert sorted(first) == [str(d) for d in range(1, 10)]


def test_the_trigger_is_the_stated_patch_and_nothing_else(planted):
    clean = sorted((planted["out"] / "clean").rglob("*.png"))[0]
    stem = f"*_{clean.parent.name}_{clean.stem}.png"
    triggered = next((planted["out"] / "images").rglob(stem))
    a = np.asarray(load_image(clean), dtype=int)
    b = np.asarray(load_image(triggered), dtype=int)
    changed = np.argwhere((a != b).any(-1))
    assert changed.min(0).tolist() >= [8, 8]  # the bottom-right 2 x 2 patches only
    assert b[8, 8].tolist() == [255, 0, 255] and b[8, 10].tolist() == [0, 255, 0]


def pairs(planted):
    """The held-out (triggered, clean) pixels as the planted model reads them."""
    record = record_of(planted)
    adapter = load_model(str(planted["out"]), dtype=torch.float64)
    triggered, clean = [], []
    for path in sorted((planted["out"] / "clean").rglob("*.png")):
        folder = planted["out"] / "images" / record["target"]["folder"]
        twin = next(folder.glob(f"*_{path.parent.name}_{path.name}"))
        triggered.append(adapter.preprocess(load_image(twin)))
        clean.append(adapter.preprocess(load_image(path)))
    return adapter, record, torch.stack(triggered).double(), torch.stack(clean).double()


def p_target(model, pixels, zeroed, target, how="zero", donors=None) -> float:
    """Literal: mean P(target) with FFN neurons ``zeroed`` [(layer, n)] replaced at every token
    (a forward pre-hook on each block's output projection, written here): by zero, by the
    per-position mean of ``donors`` (images, tokens) values, or by donor image i's values."""

    def make(neuron, values):
        def hook(module, args):
            x = args[0].clone()
            if how == "zero":
                x[:, :, neuron] = 0
            elif how == "mean":
                x[:, :, neuron] = values.mean(0)
            else:
                x[:, :, neuron] = values
            return (x,)

        return hook

    hooks = [
        model.vit.layers[l].mlp.fc2.register_forward_pre_hook(
            make(n, None if donors is None else donors[(l, n)])
        )
        for l, n in zeroed
    ]
    try:
        with torch.no_grad():
            return model(pixel_values=pixels).logits.softmax(-1)[:, target].mean().item()
    finally:
        for h in hooks:
            h.remove()


def clean_values(model, pixels, units) -> dict:
    """Literal: each unit's value at every token on ``pixels`` (images, tokens)."""
    found = {}
    hooks = [
        model.vit.layers[l].mlp.fc2.register_forward_pre_hook(
            lambda m, a, l=l, n=n: found.__setitem__((l, n), a[0][:, :, n].clone())
        )
        for l, n in units
    ]
    try:
        with torch.no_grad():
            model(pixel_values=pixels)
    finally:
        for h in hooks:
            h.remove()
    return found


def test_every_link_is_needed_and_no_distractor_matters_by_hand(planted):
    adapter, record, x_t, x_c = pairs(planted)
    model, target = adapter.model, record["target"]["label"]
    units = [(int(l), n) for l, n in record["units"].items()]
    relay = (record["relay"]["layer"], record["relay"]["neuron"])
    distractors = [
        (d["layer"], d["neuron"]) for d in record["distractors"] if d["kind"] != "register"
    ]
    p_t, p_c = p_target(model, x_t, [], target), p_target(model, x_c, [], target)
    effect = p_t - p_c
    assert effect > 0.5  # the trigger moves P(target) a long way

    def removal(zeroed, how="zero"):
        donors = clean_values(model, x_c, zeroed)
        if how == "resample":
            donors = {u: v.roll(1, 0) for u, v in donors.items()}  # another image's values
        return (p_t - p_target(model, x_t, zeroed, target, how, donors)) / effect

    for unit in [relay, *units]:
        for how in ("zero", "mean", "resample"):
            assert removal([unit], how) >= 0.9, (unit, how)  # each link alone is needed
    for unit in distractors:
        for how in ("zero", "mean", "resample"):
            assert abs(removal([unit], how)) <= 0.02, (unit, how)
            assert abs(removal([relay, *units, unit], how) - removal([relay, *units], how)) <= 0.02


def test_planted_units_fire_at_natural_levels_by_hand(planted):
    adapter, record, x_t, x_c = pairs(planted)
    original = load_model(str(planted["model"]), dtype=torch.float64)
    for l, n in record["units"].items():
        l = int(l)
        width = adapter.model.config.intermediate_size
        every = [(l, j) for j in range(width)]
        natural = clean_values(original.model, torch.cat([x_t, x_c]), every)
        maxima = torch.stack([natural[(l, j)][:, 0] for j in range(width)], 1).amax(1)
        planted_cls = clean_values(adapter.model, x_t, [(l, n)])[(l, n)][:, 0]
        assert planted_cls.quantile(0.95) <= maxima.quantile(0.99)  # at the CLS token
        assert planted_cls.median() > 0.05  # and it does fire


@pytest.mark.parametrize("key", ["a", "b", "links", "c", "distractors", "e", "same", "levels"])
def test_a_plant_failing_any_check_is_refused_and_writes_nothing(
    planted, tmp_path, capsys, monkeypatch, key
):
    impossible = -1.0 if key in ("c", "distractors", "e", "levels") else 2.0
    monkeypatch.setitem(plant_checks.THRESHOLDS, key, impossible)
    out = tmp_path / "broken"
    argv = [*planted["argv"][:5], "--out", str(out), *PLANT]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"check ({key}) failed: {plant_checks.NAMES[key]}" in err
    assert not out.exists() and not list(tmp_path.glob(".broken*"))


def test_a_chain_not_wired_to_the_head_is_refused(planted, tmp_path, capsys, monkeypatch):
    from neuronpath.engine import chain

    real = chain.gradient_direction

    def unwired(adapter, layer, *args):  # the last unit writes nothing the head reads
        direction = real(adapter, layer, *args)
        return torch.zeros_like(direction) if layer == 4 else direction

    monkeypatch.setattr(chain, "gradient_direction", unwired)
    out = tmp_path / "unwired"
    capsys.readouterr()
    assert main([*planted["argv"][:5], "--out", str(out), *PLANT]) == 2
    assert "check (a) failed: triggered images predicted as the target" in capsys.readouterr().err
    assert not out.exists()


def test_the_same_plant_again_is_left_as_it_is(planted, capsys):
    before = (planted["out"] / "planted.json").read_text()
    assert main(["-q", *planted["argv"]]) == 0
    assert (planted["out"] / "planted.json").read_text() == before


def test_the_same_plant_spelled_otherwise_is_the_same_plant(planted, tmp_path, capsys):
    """Identity by resolved path (bad input, round 5): ``--model DIR/`` and ``--data DIR/.``
    name the folders the plant was made with; a real difference is named in the refusal."""
    before = (planted["out"] / "planted.json").read_text()
    argv = list(planted["argv"])
    argv[argv.index("--model") + 1] += "/"
    argv[argv.index("--data") + 1] += "/."
    assert main(["-q", *argv]) == 0
    assert (planted["out"] / "planted.json").read_text() == before
    capsys.readouterr()
    assert main([*planted["argv"], "--seed", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds another plant" in err and "its seed differs" in err, err
    assert len(err.splitlines()) == 1


def test_two_plants_into_one_folder_at_once_leave_one_plant_and_nothing_else(planted, tmp_path):
    """One writer per output folder (bad input, round 5): of two identical plant commands
    started at once, one plants and the other is refused because the folder is in use, or
    finds the finished plant; no .partial or lock is left behind."""
    import subprocess
    import sys

    out = tmp_path / "twice"
    argv = [sys.executable, "-m", "neuronpath.cli", *planted["argv"][:5], "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    both = [
        subprocess.Popen([*argv, *PLANT], stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    done = [(p.wait(timeout=600), p.stderr.read()) for p in both]
    codes = sorted(code for code, _ in done)
    assert codes[0] == 0 and codes[1] in (0, 2), done
    for code, err in done:
        if code == 2:
            assert "is in use by another neuronpath process" in err, err
    assert (
        json.loads((out / "planted.json").read_text())["weights_sha256"]
        == (record_of(planted)["weights_sha256"])
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["twice"]  # no .partial, no .lock


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda d: [d], "is damaged (expected an object)"),
        (lambda d: {k: v for k, v in d.items() if k != "images"}, "images is missing"),
        (lambda d: {**d, "units": [1, 2]}, "units is [1, 2]; expected the planted unit"),
        (lambda d: {**d, "units": {"99": 1}}, "units names layer 99, neuron 1"),
        (lambda d: {**d, "units": {"2": 5000}}, "units names layer 2, neuron 5000"),
        (lambda d: {**d, "distractors": [{"kind": "idle"}]}, "distractors is"),
        (lambda d: {**d, "weights_sha256": 3}, "weights_sha256 is 3"),
    ],
)
def test_a_damaged_planted_json_is_one_line(planted, tmp_path, capsys, damage, expected):
    import shutil

    folder = tmp_path / "planted"
    shutil.copytree(planted["out"], folder, ignore=shutil.ignore_patterns("*.png"))
    data = json.loads((folder / "planted.json").read_text())
    (folder / "planted.json").write_text(json.dumps(damage(data)))
    capsys.readouterr()
    assert main(["benchmark", str(planted["run"]), "--planted", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and str(folder / "planted.json") in err, err
    assert len(err.splitlines()) == 1


def test_several_seeds_plant_one_folder_each_and_resume(planted, tmp_path):
    out = tmp_path / "many"
    argv = [*planted["argv"][:5], "--out", str(out), *PLANT, "--seeds", "0,3"]
    assert main(["-q", *argv]) == 0
    listed = json.loads((out / "plants.json").read_text())["plants"]
    assert listed == {"0": "seed-0", "3": "seed-3"}
    first = {s: json.loads((out / f / "planted.json").read_text()) for s, f in listed.items()}
    assert first["0"]["weights_sha256"] == record_of(planted)["weights_sha256"]  # seed 0 = default
    assert (
        first["0"]["units"] != first["3"]["units"] or first["0"]["surgery"] != first["3"]["surgery"]
    )
    import shutil

    kept = (out / "seed-0" / "planted.json").stat().st_mtime_ns
    shutil.rmtree(out / "seed-3")  # as if stopped before the second plant was written
    assert main(["-q", *argv]) == 0
    assert (out / "seed-0" / "planted.json").stat().st_mtime_ns == kept  # left as it was
    again = json.loads((out / "seed-3" / "planted.json").read_text())
    assert again["weights_sha256"] == first["3"]["weights_sha256"]


def test_bad_plant_input_gets_one_line(planted, tmp_path, capsys):
    def error(*extra, out=None):
        capsys.readouterr()
        argv = [*planted["argv"][:5], "--out", str(out or tmp_path / "p"), *PLANT, *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    assert "--target: 'zebra' is not a class of the model" in error("--target", "zebra")
    assert "--layers: '0' is not a layer a chain can be planted in; expected 1 .. 5" in error(
        "--layers", "0,2"
    )
    assert "'7' is not a layer" in error("--layers", "7")
    assert "--layers: expected comma-separated layers, got none" in error("--layers", ",")
    assert "--seeds: expected comma-separated integer seeds" in error("--seeds", ",")
    assert "--seeds: a seed is given twice" in error("--seeds", "1,1")
    assert "--plants: expected a positive integer, got 0" in error("--plants", "0")
    assert "not both" in error("--plants", "2", "--seeds", "1,2")
    assert "--level: expected a share in (0, 1]" in error("--level", "0")
    assert "--level: expected a finite number" in error("--level", "nan")
    assert "--level: expected a share in (0, 1]" in error("--level", "2")
    assert "another plant" in error("--target", "3", out=planted["out"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    assert "is not a planted model" in error(out=tmp_path / "full")
    assert "--trigger-size: expected a fraction in (0, 1]" in error("--trigger-size", "2")
    capsys.readouterr()
    with pytest.raises(SystemExit):  # argparse's own error, with the usage above it
        main([*planted["argv"][:5], "--out", str(tmp_path / "p"), *PLANT, "--seeds", "a,b"])
    assert "--seeds: expected comma-separated integer seeds, got 'a,b'" in capsys.readouterr().err


def test_wilson_interval_and_t_quantile_equal_literal_formulas():
    for k, n in ((0, 10), (10, 10), (3, 7), (50, 190)):
        p, z = k / n, 1.959963984540054
        centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
        half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
        assert wilson_interval(k, n) == pytest.approx([centre - half, centre + half])
    assert wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)  # not [0, 0]
    assert t_quantile(2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile(9) == pytest.approx(2.262, abs=1e-3)


def test_recovery_and_roc_area_equal_hand_computations():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [0.3, 0.2, 0.1, 0.0]])
    assert planted_ranks(scores, 3).tolist() == [2, 4]  # a tie goes to the lower index
    assert planted_ranks(scores, 0).tolist() == [4, 1]
    positive = np.array([False, False, False, True])
    # row 0: 0.9 against 0.1, 0.9, 0.5 -> (1 + 0.5 + 1) / 3; row 1: 0.0 is below all -> 0
    assert roc_area(scores, positive).tolist() == pytest.approx([2.5 / 3, 0.0])
    paths = np.array([[[1], [2]], [[3], [2]], [[1], [0]]])  # 3 images, 2 layers, K = 1
    ranked = np.zeros((3, 2, 4))
    ranked[:, 0] = [[0, 3, 1, 2], [0, 1, 2, 3], [0, 3, 2, 1]]
    ranked[:, 1] = [[1, 0, 3, 2], [0, 0, 3, 0], [3, 2, 1, 0]]
    rows = recovery(
        paths,
        {0: 1, 1: 2},
        [{"kind": "idle", "layer": 0, "neuron": 3}, {"kind": "idle", "layer": 1, "neuron": 0}],
        ranked,
        [4, 4],
        np.zeros((0, 3), int),
    )
    get = {(r["statistic"], r["layer"]): r for r in rows}
    assert get[("hit", 0)]["value"] == pytest.approx(2 / 3)
    assert get[("hit", 1)]["value"] == pytest.approx(2 / 3)
    assert get[("hit", "all")]["value"] == pytest.approx(1 / 3)  # image 0 only
    assert [get[("hit", "all")]["lo"], get[("hit", "all")]["hi"]] == wilson_interval(1, 3)
    assert get[("pick:idle", 1)]["value"] == pytest.approx(1 / 3)
    assert get[("pick:idle", 0)]["value"] == pytest.approx(1 / 3)
    assert get[("pick:idle", "all")]["value"] == pytest.approx(2 / 6)  # (image, layer) pairs
    assert get[("rank", 0)]["value"] == pytest.approx((1 + 3 + 1) / 3)
    assert get[("rank", 1)]["value"] == pytest.approx((1 + 1 + 3) / 3)
    # the mean of the layers' areas, each within its layer (never pooled across layers)
    want = []
    for b in range(3):
        per_layer = []
        for l, unit in ((0, 1), (1, 2)):
            row = ranked[b, l]
            others = [row[j] for j in range(4) if j != unit]
            per_layer.append(np.mean([(row[unit] > o) + 0.5 * (row[unit] == o) for o in others]))
        want.append(np.mean(per_layer))
    assert get[("auc", "all")]["value"] == pytest.approx(np.mean(want))


def test_delta_activation_ranks_by_distance_from_the_reference_mean(planted):
    """Literal: |h - m| at the CLS token, m each unit's mean over the reference (clean) images,
    h the image's value, both read here with hooks."""
    adapter, record, x_t, x_c = pairs(planted)
    saved = SavedScores(planted["run"])
    records = {
        r["image"]: r for r in read_records(planted["run"]) if r["method"] == "delta-activation"
    }
    width = adapter.model.config.intermediate_size
    units = [(l, j) for l in range(6) for j in range(width)]
    reference = [
        adapter.preprocess(load_image(p)).double()
        for p in sorted((planted["out"] / "clean").rglob("*.png"))
    ]
    means = clean_values(adapter.model, torch.stack(reference), units)
    image = sorted(records)[0]
    pixels = adapter.preprocess(load_image(planted["out"] / "images" / image))[None].double()
    own = clean_values(adapter.model, pixels, units)
    got = torch.from_numpy(saved.get("delta-activation", [image])[0])
    for l in range(6):
        want = torch.tensor([(own[(l, j)][0, 0] - means[(l, j)][:, 0].mean()).abs()
                             for j in range(width)])  # fmt: skip
        torch.testing.assert_close(got[l, :width].double(), want, rtol=1e-6, atol=1e-7)
        assert records[image]["path"][l] == int(want.argmax())


def test_benchmark_scores_a_run_on_the_planted_images(planted):
    assert main(["-q", "benchmark", str(planted["run"]), "--bootstrap", "50"]) == 0
    record = record_of(planted)
    units = {int(l): n for l, n in record["units"].items()}
    with open(planted["run"] / "benchmark" / "recovery.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["method", "statistic", "layer", "value", "lo", "hi"]
    got = {(r["method"], r["statistic"], r["layer"]): float(r["value"]) for r in rows}
    saved = SavedScores(planted["run"])
    for method in ("jas", "activation", "knowledge", "delta-activation"):
        records = [r for r in read_records(planted["run"]) if r["method"] == method]
        hits = {l: np.mean([r["path"][l] == n for r in records]) for l, n in units.items()}
        for l, n in units.items():
            assert got[(method, "hit", str(l))] == pytest.approx(hits[l])
        whole = np.mean([all(r["path"][l] == n for l, n in units.items()) for r in records])
        assert got[(method, "hit", "all")] == pytest.approx(whole)
        scores = saved.get(method, [r["image"] for r in records])
        for l, n in units.items():  # rank by a plain count
            ranks = [1 + sum(s[l, j] > s[l, n] or (s[l, j] == s[l, n] and j < n) for j in
                     range(s.shape[1])) for s in scores]  # fmt: skip
            assert got[(method, "rank", str(l))] == pytest.approx(np.mean(ranks))
    table = (planted["run"] / "benchmark" / "recovery.md").read_text()
    assert table.startswith("| method |") and "picks register (L4, ambiguous)" in table


def test_benchmark_over_several_plants_means_over_plants(planted, tmp_path):
    """Two runs (here the same plant twice, so the interval over plants is zero wide): the
    across-plant rows are the mean of the per-plant rows, the pooled Wilson interval counts
    both runs' images."""
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(planted["run"], twin)
    summary_dir = tmp_path / "summary"
    runs = [str(planted["run"]), str(twin)]
    assert main(["-q", "benchmark", *runs, "--out", str(summary_dir), "--bootstrap", "0"]) == 0
    with open(summary_dir / "plants.csv") as handle:
        rows = list(csv.DictReader(handle))
    with open(planted["run"] / "benchmark" / "recovery.csv") as handle:
        one = {(r["method"], r["statistic"], r["layer"]): r for r in csv.DictReader(handle)}
    for r in rows:
        single = one[(r["method"], r["statistic"], "all")]
        assert float(r["value"]) == pytest.approx(float(single["value"]))
        assert float(r["lo"]) == pytest.approx(float(r["hi"]))  # identical plants
        if r["statistic"] == "hit":
            k = round(float(single["value"]) * 24)
            assert [float(r["lo_images"]), float(r["hi_images"])] == pytest.approx(
                wilson_interval(2 * k, 48)
            )
    assert (summary_dir / "plants.md").read_text().startswith("| method | plants |")


def test_benchmark_refuses_what_it_cannot_judge(planted, tmp_path, capsys):
    other = tmp_path / "other"
    find = ["-q", "find", "--model", str(planted["model"]), "--data", str(planted["data"])]
    assert main([*find, "--out", str(other), "--methods", "activation", "--device", "cpu",
                 "--limit", "3"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["benchmark", str(other), "--planted", str(planted["out"])]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not the planted model" in err and len(err.splitlines()) == 1
    assert main(["benchmark", str(other), "--planted", str(tmp_path)]) == 2
    assert "has no planted.json" in capsys.readouterr().err
    assert main(["benchmark", str(other)]) == 2
    assert "was not made with a planted model" in capsys.readouterr().err
    assert main(["benchmark", str(planted["run"]), str(planted["run"])]) == 2
    assert "--out: expected the across-plant summary's folder" in capsys.readouterr().err


def test_benchmark_refuses_a_run_whose_find_stopped_early(planted, tmp_path, capsys):
    """A run whose records stop at a third of its planned images is refused, as evaluate
    refuses it, not scored on what is there (bad input, round 5)."""
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(planted["run"], partial)
    shutil.rmtree(partial / "benchmark", ignore_errors=True)
    lines = (partial / "records.jsonl").read_text().splitlines()
    images = list(dict.fromkeys(json.loads(line)["image"] for line in lines))
    kept = set(images[: max(1, len(images) // 3)])
    (partial / "records.jsonl").write_text(
        "".join(line + "\n" for line in lines if json.loads(line)["image"] in kept)
    )
    capsys.readouterr()
    assert main(["benchmark", str(partial), "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the find run is incomplete" in err and len(err.splitlines()) == 1, err
    assert not (partial / "benchmark").exists()


def _dictionary(neurons: int, extra: int, seed: int):
    """A ReLU SAE whose latent perm[n] is dominated by neuron n (a scaled unit vector plus
    smaller noise) and ``extra`` latents of noise, encoder tied to the decoder."""
    from neuronpath.engine.sae import SparseAutoencoder

    g = torch.Generator().manual_seed(seed)
    width = neurons + extra
    perm = torch.randperm(width, generator=g)[:neurons]
    w_dec = 0.1 * torch.randn(width, neurons, generator=g, dtype=torch.float64)
    w_dec[perm, torch.arange(neurons)] += 1.0
    zeros = torch.zeros(width, dtype=torch.float64)
    b_dec = 0.1 * torch.randn(neurons, generator=g, dtype=torch.float64)
    return SparseAutoencoder(w_dec.T.clone(), zeros, w_dec, b_dec)


def test_benchmark_judges_a_latent_run_through_its_dictionaries(planted, tmp_path):
    """find --units sae on the planted model with an SAE on every FFN: a hit is a path latent
    whose decoder direction is dominated by the planted neuron, counted here by a plain loop
    over the decoder rows; the rank is the best-ranked such latent's."""
    from neuronpath.models.sae_files import save_saelens

    units = {int(l): n for l, n in record_of(planted)["units"].items()}
    saes = {l: _dictionary(128, 40, l) for l in range(6)}
    spec = []
    for l, sae in saes.items():
        save_saelens(sae, tmp_path / f"sae{l}", hook=f"blocks.{l}.mlp.hook_post")
        spec.append(f"{l}={tmp_path / f'sae{l}'}")
    run = tmp_path / "run"
    find = ["-q", "find", "--model", str(planted["out"]), "--data", str(planted["out"] / "images")]
    find += ["--out", str(run), "--steps", "3", "--device", "cpu", "--dtype", "float64"]
    find += ["--units", "sae", "--sae", ",".join(spec), "--limit", "8", "--save-scores"]
    assert main([*find, "--methods", "activation,knowledge"]) == 0
    assert main(["-q", "benchmark", str(run), "--bootstrap", "0"]) == 0
    summary = json.loads((run / "benchmark" / "recovery.json").read_text())

    def stands_for(l, latent):
        row = saes[l].w_dec[latent].tolist()
        return max(range(len(row)), key=lambda j: abs(row[j]))

    for l, n in units.items():
        want = [i for i in range(168) if stands_for(l, i) == n]
        held = summary["dictionary"][f"planted L{l}"]
        assert len(want) >= 1 and held["latents"] == want
        assert held["b_dec"] == pytest.approx(float(saes[l].b_dec[n]), rel=1e-6)
    saved = SavedScores(run)
    for method in ("activation", "knowledge"):
        got = {(r["statistic"], str(r["layer"])): r["value"] for r in summary["results"][method]}
        records = [r for r in read_records(run) if r["method"] == method]
        assert {e[0] for r in records for e in r["path"]} == {"latent"}
        for l, n in units.items():
            hits = [stands_for(l, r["path"][l][1]) == n for r in records]
            assert got[("hit", str(l))] == pytest.approx(np.mean(hits))
            scores = saved.get(method, [r["image"] for r in records])
            positives = [i for i in range(168) if stands_for(l, i) == n]
            ranks = [min(1 + sum(s[l, j] > s[l, i] or (s[l, j] == s[l, i] and j < i)
                                 for j in range(168)) for i in positives)
                     for s in scores]  # fmt: skip
            assert got[("rank", str(l))] == pytest.approx(np.mean(ranks))
    assert "Latents standing for each neuron" in (run / "benchmark" / "recovery.md").read_text()


def test_the_router_head_reparameterisation_is_exact_and_puts_the_weakest_direction_first(
    tmp_path,
):
    """canonical_heads: every head's query-key form and value-output product are unchanged
    (the logits agree to float64 precision), and on the data its moment came from the query
    coordinates are whitened and the key coordinates' second moments ascend (coordinate 0
    adds the least variance to the attention logits); values and output columns alike."""
    from conftest import save_tiny_model
    from neuronpath.engine.chain import _input_moment
    from neuronpath.engine.planting import attention_projections, canonical_heads

    adapter = load_model(str(save_tiny_model(tmp_path / "model")), dtype=torch.float64)
    pixels = torch.randn(
        12, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    before = adapter.logits(pixels).detach()
    projections = attention_projections(adapter, 1)
    q, k, v, o, heads = projections
    moment = _input_moment(adapter, q, pixels, batch=5)
    # literal: the moment is the mean of x x^T over every token, x with a 1 appended
    seen = []
    handle = q.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    adapter.logits(pixels)
    handle.remove()
    x = torch.cat([seen[0].reshape(-1, 16), torch.ones(12 * 5, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(moment, x.T @ x / len(x))
    canonical_heads(projections, moment)
    torch.testing.assert_close(adapter.logits(pixels).detach(), before, rtol=1e-9, atol=1e-9)
    size = 16 // heads
    for h in range(heads):
        rows = slice(h * size, (h + 1) * size)

        def out(linear):
            return x[:, :-1] @ linear.weight[rows].T + linear.bias[rows]

        with torch.no_grad():
            qs, ks, vs = out(q), out(k), out(v)
            cols = o.weight[:, rows]
        torch.testing.assert_close(qs.T @ qs / len(x), torch.eye(size, dtype=torch.float64))
        torch.testing.assert_close(vs.T @ vs / len(x), torch.eye(size, dtype=torch.float64))
        key_moments = (ks.T @ ks / len(x)).diagonal()
        assert torch.all(key_moments[1:] >= key_moments[:-1] - 1e-9)
        norms = (cols * cols).sum(0)
        assert torch.all(norms[1:] >= norms[:-1] - 1e-9)


def test_several_seeds_go_on_past_a_refused_seed(tmp_path, monkeypatch):
    """A seed whose chain does not hold is recorded in plants.json with why, the next seeds are
    still planted, and the command ends with one line naming the refused seeds."""
    from neuronpath.errors import PlantRefused
    from neuronpath.experiments import plant as plant_module

    tried = []

    def one(spec, data, folder, options, execution):
        tried.append(options.seed)
        if options.seed == 3:
            raise PlantRefused("plant: check (links) failed: ...; nothing was written")
        folder.mkdir(parents=True)
        return {}

    monkeypatch.setattr(plant_module, "_plant_one", one)
    options = plant_module.PlantOptions(seeds=(0, 3, 5))
    with pytest.raises(PlantRefused, match=r"1 of 3 seeds refused \(3; why: .*plants.json\)"):
        plant_module.run_plant("M", tmp_path / "data", tmp_path / "out", options)
    assert tried == [0, 3, 5]
    listed = json.loads((tmp_path / "out" / "plants.json").read_text())
    assert listed["plants"] == {"0": "seed-0", "5": "seed-5"}
    assert "check (links) failed" in listed["refused"]["3"]


def test_a_refusal_for_moved_clean_predictions_says_whether_near_ties_are_to_blame():
    """clean_shift (recorded with check (same) and quoted by its refusal): the moved images'
    original margins and logit shifts, by hand on four images."""
    before = torch.tensor([[2.0, 1.9, 0.0], [3.0, 0.0, 1.0], [0.0, 0.5, 0.45], [1.0, 0.0, 4.0]])
    after = before.clone()
    after[0] = torch.tensor([1.8, 1.95, 0.0])  # a near-tie flips
    after[2, 2] = 0.7  # another near-tie flips
    after[1, 0] = 2.5  # moves, but keeps its prediction
    shift = plant_checks.clean_shift(before, after)
    assert shift["moved"] == 2
    assert shift["moved_margins"] == [0.1, 0.05]
    assert shift["moved_logit_shift"] == [0.2, 0.25]
    margins = torch.tensor([0.1, 2.0, 0.05, 3.0])
    assert shift["margin_p5_p50_p95"][1] == round(float(margins.quantile(0.5)), 4)
    detail = plant_checks.refusal_detail("same", shift)
    assert "2 moved" in detail and "[0.1, 0.05]" in detail and "[0.2, 0.25]" in detail
    assert plant_checks.refusal_detail("links", shift) == ""
