"""On the shared reference model and real dev images (skipped when ../shared is absent)."""

import json
import statistics

import pytest
import torch

from conftest import SHARED
from neuronpath.cli import main
from neuronpath.io.images import load_image, scan_image_folder
from neuronpath.io.store import read_manifest, read_records
from neuronpath.models.loading import load_model

MODEL = SHARED / "models" / "vit-s12-imagenet20"
DATA = SHARED / "data" / "imagenet20-dev"

pytestmark = pytest.mark.skipif(
    not (MODEL.is_dir() and DATA.is_dir()),
    reason="../shared (reference model and dev images) is absent",
)


def test_preprocessing_reproduces_the_documented_dev_accuracy():
    adapter = load_model(str(MODEL))
    folder = scan_image_folder(DATA, adapter.id2label)
    assert folder.mapping == "label2id" and len(folder.items) == 800
    correct = 0
    for start in range(0, 800, 200):
        items = folder.items[start : start + 200]
        x = torch.stack([adapter.preprocess(load_image(i.path)) for i in items])
        with torch.inference_mode():
            predicted = adapter.logits(x).argmax(-1)
        correct += sum(int(p) == i.label for p, i in zip(predicted, items))
    assert correct / 800 == pytest.approx(0.503, abs=0.01)  # shared/README: 50.3 %


@pytest.fixture(scope="module")
def run20(tmp_path_factory):
    out = tmp_path_factory.mktemp("shared") / "run"
    assert (
        main(
            [
                "-q",
                "find",
                "--model",
                str(MODEL),
                "--data",
                str(DATA),
                "--out",
                str(out),
                "--limit",
                "20",
                "--fast",  # half the official grid's points: what the checks need, at half the cost
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return out


def test_find_on_20_images_jas_path_beats_activation_path(run20):
    out = run20
    records = read_records(out)
    assert len(records) == 40
    assert len({r["label"] for r in records}) == 20  # --limit takes one image per class
    jas = statistics.fmean(r["jas"] for r in records if r["method"] == "jas")
    act = statistics.fmean(r["jas"] for r in records if r["method"] == "activation")
    assert jas > act
    assert read_manifest(out)["model"]["num_layers"] == 12


def test_evaluate_and_classes_on_the_20_image_run(run20):
    assert main(["-q", "evaluate", str(run20), "--device", "cpu", "--bootstrap", "100"]) == 0
    metrics = json.loads((run20 / "evaluation" / "metrics.json").read_text())["methods"]
    assert set(metrics) == {"jas", "activation", "random"}
    # removing a JAS path lowers the label probability on average; a random path barely moves it
    assert metrics["jas"]["remove"]["dp_mean"] < -0.02
    assert abs(metrics["random"]["remove"]["dp_mean"]) < abs(metrics["jas"]["remove"]["dp_mean"])
    groups = DATA / "groups.tsv"
    assert (
        main(["-q", "classes", str(run20), "--groups", str(groups), "--permutations", "200"]) == 0
    )
    assert (run20 / "classes-jas" / "figure5.png").exists()
