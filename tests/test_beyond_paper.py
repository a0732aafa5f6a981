"""Beyond the paper: Alg. 1 as written (candidates re-scored exactly) and causal checks of paths,
against literal loops."""

from __future__ import annotations

import json

import pytest
import torch

import literal
from conftest import tiny_vit
from neuronpath.cli import main
from neuronpath.engine.attribution import AttributionConfig, clean_pass
from neuronpath.io.images import load_image
from neuronpath.io.store import read_manifest, read_records
from neuronpath.methods import jas_path
from neuronpath.models.huggingface import from_hf_model
from neuronpath.models.loading import load_model

STEPS = 4


@pytest.fixture(scope="module")
def setup():
    model = tiny_vit(layers=3, ffn=12, seed=7)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.tensor([1, 4])
    adapter = from_hf_model(model)
    config = AttributionConfig(steps=STEPS)
    return model, adapter, x, y, config, clean_pass(adapter, x, y, config)


def test_rerank_all_is_the_argmax_of_every_candidates_own_jas(setup):
    model, adapter, x, y, config, clean = setup
    path = jas_path(adapter, x, clean, config, rerank="all")[..., 0]
    for b in range(2):
        assert path[b].tolist() == literal.reranked_jas_path(model, x[b : b + 1], int(y[b]), STEPS)


@pytest.mark.parametrize("count", [1, 3])
def test_rerank_c_re_ranks_the_official_top_c_literally(setup, count):
    model, adapter, x, y, config, clean = setup
    path = jas_path(adapter, x, clean, config, rerank=count)[..., 0]
    for b in range(2):
        assert path[b].tolist() == literal.reranked_jas_path(
            model, x[b : b + 1], int(y[b]), STEPS, candidates=count
        )


def test_rerank_one_is_the_official_path_and_reranking_can_change_it(setup):
    model, adapter, x, y, config, clean = setup
    official = jas_path(adapter, x, clean, config)
    assert torch.equal(jas_path(adapter, x, clean, config, rerank=1), official)
    assert not torch.equal(jas_path(adapter, x, clean, config, rerank="all"), official)


def test_topk_with_rerank_keeps_the_k_best_exact_candidates(setup):
    model, adapter, x, y, config, clean = setup
    path = jas_path(adapter, x, clean, config, k=2, rerank="all")
    points, weights = [k / STEPS for k in range(STEPS)], [1 / STEPS] * STEPS
    for b in range(2):
        x1, label, chosen = x[b : b + 1], int(y[b]), []
        for t in range(3):
            exact = [
                literal.set_jas(
                    model, x1, label, {**dict(enumerate(chosen)), t: [w]}, points, weights
                )
                for w in range(12)
            ]
            chosen.append(sorted(range(12), key=lambda w: (-exact[w], w))[:2])
        assert path[b].tolist() == chosen


def test_rerank_options_are_checked(setup):
    model, adapter, x, y, config, clean = setup
    with pytest.raises(ValueError, match="rerank"):
        jas_path(adapter, x, clean, config, rerank=-1)
    with pytest.raises(ValueError, match="at least K = 3"):
        jas_path(adapter, x, clean, config, k=3, rerank=2)


def test_find_records_rerank_in_the_manifest(tiny_model_dir, image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "-q",
                "find",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(image_folder),
                "--out",
                str(out),
                "--steps",
                "3",
                "--rerank",
                "4",
                "--limit",
                "3",
            ]
        )
        == 0
    )
    manifest = read_manifest(out)
    assert manifest["settings"]["options"]["jas"] == {"rerank": 4, "topk_mode": "all"}
    assert len(read_records(out)) == 6
    assert (
        main(
            [
                "find",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(image_folder),
                "--out",
                str(tmp_path / "x"),
                "--rerank",
                "some",
            ]
        )
        == 2
    )
    assert "--rerank: expected 0, a number of candidates or 'all'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_causal_checks_equal_literal_interventions(tiny_model_dir, image_folder, tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            [
                "-q",
                "find",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(image_folder),
                "--out",
                str(out),
                "--steps",
                "3",
                "--limit",
                "4",
                "--dtype",
                "float64",
            ]
        )
        == 0
    )
    assert main(["-q", "evaluate", str(out), "--causal", "--bootstrap", "20"]) == 0
    records = read_records(out / "causal")
    assert {r["method"] for r in records} == {"jas", "activation", "random"}
    adapter = load_model(str(tiny_model_dir), dtype=torch.float64)
    metrics = json.loads((out / "causal" / "metrics.json").read_text())["methods"]
    for r in records:
        x1 = adapter.preprocess(load_image(image_folder / r["image"]))[None].double()
        path = [p[0] if isinstance(p, list) else p for p in r["path"]]
        removed = {
            l: torch.ones(12, dtype=torch.float64).index_fill_(0, torch.tensor([p]), 0)
            for l, p in enumerate(path)
        }
        only = {
            l: torch.zeros(12, dtype=torch.float64).index_fill_(0, torch.tensor([p]), 1)
            for l, p in enumerate(path)
        }

        def prob(m):
            return literal.prob_with_cls_multiplied(adapter.model, x1, r["label"], m)

        assert r["base_prob"] == pytest.approx(prob({}), rel=1e-9)
        assert r["path_removed_prob"] == pytest.approx(prob(removed), rel=1e-9)
        assert r["each_removed_prob"] == pytest.approx(
            [prob({l: removed[l]}) for l in range(3)], rel=1e-9
        )
        assert r["only_path_prob"] == pytest.approx(prob(only), rel=1e-9)
    jas = [r for r in records if r["method"] == "jas"]
    assert metrics["jas"]["path_removed"] == pytest.approx(
        sum(r["path_removed_prob"] / r["base_prob"] - 1 for r in jas) / len(jas)
    )
    assert (out / "causal" / "causal.md").is_file() and (out / "causal" / "layers.png").is_file()
