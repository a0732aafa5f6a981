"""Planted ground truth (neuronpath plant) and recovery (neuronpath benchmark) on a tiny float64
ViT: the plant passes its own verification and holds under plain hooks; a broken plant is refused
with the failing check named and writes nothing; recovery and ROC area equal hand computations;
bad input is one line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from conftest import TINY_LABELS, TINY_PREPROCESSOR, make_image_folder
from neuronpath.analysis.recovery import planted_ranks, recovery, roc_area
from neuronpath.cli import main
from neuronpath.experiments import plant as planting
from neuronpath.io.images import load_image
from neuronpath.io.scores import SavedScores
from neuronpath.io.store import read_records
from neuronpath.models.loading import load_model

PLANT = ["--dtype", "float64", "--device", "cpu", "--calibration", "15", "--per-class", "15"]


def tiny_planting_model(folder):
    """A ViT with 16 patches, 4 heads and 64 FFN neurons per block (Hugging Face's default
    initialisation): small, but with room for a path beside its own units."""
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=3,
        id2label=TINY_LABELS,
        label2id={v: k for k, v in TINY_LABELS.items()},
    )
    ViTForImageClassification(config).eval().save_pretrained(folder)
    processor = {**TINY_PREPROCESSOR, "size": {"height": 16, "width": 16}}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("plant")
    model = tiny_planting_model(root / "model")
    data = make_image_folder(root / "images", per_class=30)
    out = root / "planted"
    argv = ["plant", "--model", str(model), "--data", str(data), "--out", str(out), *PLANT]
    assert main(["-q", *argv]) == 0
    run = root / "run"
    find = ["-q", "find", "--model", str(out), "--data", str(out / "images"), "--out", str(run)]
    find += ["--steps", "3", "--device", "cpu", "--dtype", "float64"]
    assert main([*find, "--methods", "jas,activation,knowledge", "--save-scores"]) == 0
    return {"root": root, "model": model, "data": data, "out": out, "run": run, "argv": argv}


def test_a_planted_path_passes_its_own_verification(planted):
    record = json.loads((planted["out"] / "planted.json").read_text())
    checks = record["verification"]["checks"]
    assert set(checks) == set("abcde") and all(c["pass"] for c in checks.values())
    assert checks["a"]["value"] >= 0.9 and checks["b"]["value"] >= 0.9
    assert checks["c"]["value"] <= 0.1 and checks["e"]["value"] <= 1.0
    assert checks["d"]["mean_ablation_flips"] == 0
    assert record["verification"]["idle_zeroed_max_logit_change"] < 1e-9
    assert record["layers"] == [1, 2, 3] and record["relay"]["layer"] == 0
    assert record["route"] is not None  # a CLS model: the trigger is routed to the CLS token
    adapter = load_model(str(planted["out"]), dtype=torch.float64)
    assert adapter.weights_hash() == record["weights_sha256"]  # it loads as the input did
    triggered = sorted((planted["out"] / "images").rglob("*.png"))
    clean = sorted((planted["out"] / "clean").rglob("*.png"))
    assert len(triggered) == len(clean) == record["images"]["count"] == 30
    assert {p.parent.name for p in triggered} == {record["target"]["folder"]}


def test_the_trigger_is_the_stated_patch_and_nothing_else(planted):
    clean = sorted((planted["out"] / "clean").rglob("*.png"))[0]
    stem = f"{clean.parent.name}_{clean.stem}.png"
    triggered = next((planted["out"] / "images").rglob(stem))
    a = np.asarray(load_image(clean), dtype=int)
    b = np.asarray(load_image(triggered), dtype=int)
    changed = np.argwhere((a != b).any(-1))
    assert changed.min(0).tolist() >= [12, 12]  # the bottom-right 4 x 4 patch only
    assert b[12, 12].tolist() == [255, 0, 255] and b[12, 14].tolist() == [0, 255, 0]


def prob_with_units_zeroed(model, pixels, units, label) -> float:
    """Literal: P(label) of one image with FFN neuron n of layer l zeroed at the CLS token
    (a forward pre-hook on each block's output projection, written here)."""

    def make(neuron):
        def hook(module, args):
            x = args[0].clone()
            x[0, 0, neuron] = 0
            return (x,)

        return hook

    blocks = model.vit.layers if hasattr(model.vit, "layers") else model.vit.encoder.layer
    hooks = [blocks[l].mlp.fc2.register_forward_pre_hook(make(n)) for l, n in units.items()]
    try:
        with torch.no_grad():
            return model(pixel_values=pixels).logits.softmax(-1)[0, label].item()
    finally:
        for h in hooks:
            h.remove()


def test_zeroing_the_planted_units_by_hand_removes_the_trigger(planted):
    record = json.loads((planted["out"] / "planted.json").read_text())
    adapter = load_model(str(planted["out"]), dtype=torch.float64)
    target = record["target"]["label"]
    units = {int(l): n for l, n in record["units"].items()}
    removed = []
    for clean in sorted((planted["out"] / "clean").rglob("*.png"))[:8]:
        triggered = planted["out"] / "images" / record["target"]["folder"]
        triggered = triggered / f"{clean.parent.name}_{clean.name}"
        x_t, x_c = (adapter.preprocess(load_image(p))[None].double() for p in (triggered, clean))
        p_t = prob_with_units_zeroed(adapter.model, x_t, {}, target)
        p_c = prob_with_units_zeroed(adapter.model, x_c, {}, target)
        p_zeroed = prob_with_units_zeroed(adapter.model, x_t, units, target)
        removed.append((p_t - p_zeroed) / (p_t - p_c))
    assert np.mean(removed) >= 0.9, removed  # the trigger's effect on P(target) is the path's


def test_a_plant_whose_path_is_not_wired_to_the_head_is_refused(
    planted, tmp_path, capsys, monkeypatch
):
    real = planting._gradient_direction
    last = 3

    def unwired(adapter, layer, batches, read):  # the last unit writes nothing the head reads
        direction = real(adapter, layer, batches, read)
        return torch.zeros_like(direction) if layer == last else direction

    monkeypatch.setattr(planting, "_gradient_direction", unwired)
    out = tmp_path / "broken"
    argv = [*planted["argv"][:5], "--out", str(out), *PLANT]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "check (a) failed: triggered images predicted as the target" in err
    assert not out.exists() and not list(tmp_path.glob(".broken*"))


def test_the_same_plant_again_is_left_as_it_is(planted, capsys):
    before = (planted["out"] / "planted.json").read_text()
    assert main(["-q", *planted["argv"]]) == 0
    assert (planted["out"] / "planted.json").read_text() == before


def test_bad_plant_input_gets_one_line(planted, tmp_path, capsys):
    def error(*extra, out=None):
        capsys.readouterr()
        argv = [*planted["argv"][:5], "--out", str(out or tmp_path / "p"), *PLANT, *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    assert "--target: 'zebra' is not a class of the model" in error("--target", "zebra")
    assert "--layers: '0' is not a layer a path can be planted in; expected 1 .. 3" in error(
        "--layers", "0,2"
    )
    assert "'7' is not a layer" in error("--layers", "7")
    assert "another plant" in error("--target", "dog", out=planted["out"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    assert "is not a planted model" in error(out=tmp_path / "full")
    assert "--trigger-size: expected a fraction in (0, 1]" in error("--trigger-size", "2")


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
        [{"kind": "idle", "layer": 1, "neuron": 0}],
        ranked,
        [4, 4],
        np.zeros((0, 3), int),
    )
    get = {(r["statistic"], r["layer"]): r["value"] for r in rows}
    assert get[("hit", 0)] == pytest.approx(2 / 3) and get[("hit", 1)] == pytest.approx(2 / 3)
    assert get[("hit", "all")] == pytest.approx(1 / 3)  # image 0 only
    assert get[("pick:idle", 1)] == pytest.approx(1 / 3)
    assert get[("rank", 0)] == pytest.approx((1 + 3 + 1) / 3)
    assert get[("rank", 1)] == pytest.approx((1 + 1 + 3) / 3)
    # pooled over both layers: each planted unit against the 6 others of the two layers
    want = []
    for b in range(3):
        pooled = np.concatenate([ranked[b, 0], ranked[b, 1]])
        pos = [pooled[1], pooled[4 + 2]]
        neg = [v for i, v in enumerate(pooled) if i not in (1, 6)]
        want.append(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))
    assert get[("auc", "all")] == pytest.approx(np.mean(want))


def test_benchmark_scores_a_run_on_the_planted_images(planted):
    assert main(["-q", "benchmark", str(planted["run"]), "--planted", str(planted["out"]),
                 "--bootstrap", "50"]) == 0  # fmt: skip
    record = json.loads((planted["out"] / "planted.json").read_text())
    units = {int(l): n for l, n in record["units"].items()}
    with open(planted["run"] / "benchmark" / "recovery.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["method", "statistic", "layer", "value", "lo", "hi"]
    got = {(r["method"], r["statistic"], r["layer"]): float(r["value"]) for r in rows}
    saved = SavedScores(planted["run"])
    for method in ("jas", "activation", "knowledge"):
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
    assert (planted["run"] / "benchmark" / "recovery.md").read_text().startswith("| method |")


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

    record = json.loads((planted["out"] / "planted.json").read_text())
    units = {int(l): n for l, n in record["units"].items()}
    saes = {l: _dictionary(64, 40, l) for l in range(4)}
    spec = []
    for l, sae in saes.items():
        save_saelens(sae, tmp_path / f"sae{l}", hook=f"blocks.{l}.mlp.hook_post")
        spec.append(f"{l}={tmp_path / f'sae{l}'}")
    run = tmp_path / "run"
    find = ["-q", "find", "--model", str(planted["out"]), "--data", str(planted["out"] / "images")]
    find += ["--out", str(run), "--steps", "3", "--device", "cpu", "--dtype", "float64"]
    find += ["--units", "sae", "--sae", ",".join(spec), "--limit", "8", "--save-scores"]
    assert main([*find, "--methods", "activation,knowledge"]) == 0
    assert main(["-q", "benchmark", str(run), "--planted", str(planted["out"]),
                 "--bootstrap", "0"]) == 0  # fmt: skip
    summary = json.loads((run / "benchmark" / "recovery.json").read_text())

    def stands_for(l, latent):
        row = saes[l].w_dec[latent].tolist()
        return max(range(len(row)), key=lambda j: abs(row[j]))

    for l, n in units.items():
        want = [i for i in range(104) if stands_for(l, i) == n]
        held = summary["dictionary"][f"planted L{l}"]
        assert len(want) >= 1 and held["latents"] == want
        assert held["b_dec"] == pytest.approx(float(saes[l].b_dec[n]), rel=1e-6)
    saved = SavedScores(run)
    hit_rates = [r["value"] for rows in summary["results"].values() for r in rows
                 if r["statistic"] == "hit"]  # fmt: skip
    assert min(hit_rates) < 1 and max(hit_rates) > 0  # the check below separates something
    for method in ("activation", "knowledge"):
        got = {(r["statistic"], str(r["layer"])): r["value"] for r in summary["results"][method]}
        records = [r for r in read_records(run) if r["method"] == method]
        assert {e[0] for r in records for e in r["path"]} == {"latent"}
        for l, n in units.items():
            hits = [stands_for(l, r["path"][l][1]) == n for r in records]
            assert got[("hit", str(l))] == pytest.approx(np.mean(hits))
            scores = saved.get(method, [r["image"] for r in records])
            positives = [i for i in range(104) if stands_for(l, i) == n]
            ranks = [min(1 + sum(s[l, j] > s[l, i] or (s[l, j] == s[l, i] and j < i)
                                 for j in range(104)) for i in positives)
                     for s in scores]  # fmt: skip
            assert got[("rank", str(l))] == pytest.approx(np.mean(ranks))
    assert got[("hit", "all")] == pytest.approx(np.mean([
        all(stands_for(l, r["path"][l][1]) == n for l, n in units.items()) for r in records
    ]))  # fmt: skip
    assert "Latents standing for each neuron" in (run / "benchmark" / "recovery.md").read_text()


def test_benchmark_refuses_a_run_not_made_on_the_planted_images(planted, tmp_path, capsys):
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


def test_plant_and_benchmark_under_two_ranks_equal_one_process(planted, tmp_path):
    """Under torchrun the main rank plants and scores (the others have nothing to share): the
    same weights, units and verification, and the same recovery table, as one process."""
    from test_distributed import finish, torchrun

    out = tmp_path / "planted"
    argv = [*planted["argv"][:5], "--out", str(out), *PLANT]
    code, _, err = finish(torchrun(2, ["-q", *argv]), timeout=300)
    assert code == 0, err
    got, want = (json.loads((f / "planted.json").read_text()) for f in (out, planted["out"]))
    assert got["identity"] == want["identity"] and got["units"] == want["units"]
    for a, b in zip(got["distractors"], want["distractors"], strict=True):
        assert a.keys() == b.keys()
        for key, value in b.items():
            if isinstance(value, float):  # float sums differ in the last bits across threads
                assert a[key] == pytest.approx(value, rel=1e-9), key
            else:
                assert a[key] == value, key
    for key, check in want["verification"]["checks"].items():
        assert got["verification"]["checks"][key]["value"] == pytest.approx(check["value"])
    # the same weights up to the last bits
    from safetensors.torch import load_file

    mine, theirs = (load_file(f / "model.safetensors") for f in (out, planted["out"]))
    assert mine.keys() == theirs.keys()
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name], tensor, rtol=1e-9, atol=1e-12)
    assert sorted(p.name for p in (out / "images").rglob("*")) == sorted(
        p.name for p in (planted["out"] / "images").rglob("*")
    )
    run = planted["run"]
    assert main(["-q", "benchmark", str(run), "--planted", str(planted["out"])]) == 0
    one = (run / "benchmark" / "recovery.csv").read_text()
    code, _, err = finish(
        torchrun(2, ["-q", "benchmark", str(run), "--planted", str(planted["out"])]), timeout=300
    )
    assert code == 0, err
    assert (run / "benchmark" / "recovery.csv").read_text() == one
