"""Data sources: a flat folder with each labels-file format and a Hugging Face dataset (a
save_to_disk folder, parquet) give the records of the ImageFolder run on the same images; bad
labels files and datasets get one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import TINY_PREPROCESSOR, make_image_folder, tiny_vit
from neuronpath.cli import main
from neuronpath.io.store import read_manifest, read_records

SYNSETS = {0: "n01440764", 1: "n02102040", 2: "n02979186"}
DEVKIT_IDS = {"n01440764": 449, "n02102040": 217, "n02979186": 482}  # not sorted order
FIND = ["-q", "find", "--steps", "2", "--device", "cpu", "--methods", "jas,activation"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A synset-labelled tiny model, an ImageFolder of synset folders, and the same images as
    one flat folder named like ImageNet's validation set."""
    root = tmp_path_factory.mktemp("sources")
    model = tiny_vit(dtype=torch.float32, id2label=SYNSETS)
    model.save_pretrained(root / "model")
    (root / "model" / "preprocessor_config.json").write_text(json.dumps(TINY_PREPROCESSOR))
    names = make_image_folder(root / "named", per_class=3)
    folder = root / "folder"
    for c, name in enumerate(("cat", "dog", "fish")):  # the synset of each class's folder
        shutil.copytree(names / name, folder / SYNSETS[c])
    flat, same = root / "flat", {}
    flat.mkdir()
    images = sorted(p for p in folder.rglob("*") if p.is_file())
    for n, path in enumerate(images, start=1):
        name = f"ILSVRC2012_val_{n:08d}{path.suffix}"
        shutil.copy(path, flat / name)
        same[path.relative_to(folder).as_posix()] = name
    run = root / "run-folder"
    assert (
        main([*FIND, "--model", str(root / "model"), "--data", str(folder), "--out", str(run)]) == 0
    )
    return {
        "root": root,
        "model": root / "model",
        "folder": folder,
        "flat": flat,
        "same": same,
        "run": run,
    }


def _assert_same_records(run, reference, rename):
    got = {(r["image"], r["method"]): r for r in read_records(run)}
    want = read_records(reference)
    assert len(got) == len(want)
    for r in want:
        other = got[(rename[r["image"]], r["method"])]
        for key in ("label", "pred", "path", "jas", "prob", "label_name"):
            assert other[key] == r[key], (r["image"], key)


def _labels_files(world):
    same = world["same"]
    synset = {name: key.split("/")[0] for key, name in same.items()}
    tab = world["root"] / "labels.tsv"
    tab.write_text("".join(f"{n}\t{s}\n" for n, s in sorted(synset.items())))
    comma = world["root"] / "labels.csv"
    comma.write_text("path,label\n" + "".join(f"{n},{s}\n" for n, s in sorted(synset.items())))
    ids = world["root"] / "ids.tsv"  # the model's label ids themselves
    by_synset = {s: i for i, s in SYNSETS.items()}
    ids.write_text("".join(f"{n}\t{by_synset[s]}\n" for n, s in sorted(synset.items())))
    loc = world["root"] / "LOC_val_solution.csv"
    loc.write_text(
        "ImageId,PredictionString\n"
        + "".join(
            f"{n.split('.')[0]},{s} 1 2 30 40 {s} 3 4 5 6\n" for n, s in sorted(synset.items())
        )
    )
    devkit = world["root"] / "devkit"
    devkit.mkdir(exist_ok=True)
    gt = devkit / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("".join(f"{DEVKIT_IDS[synset[n]]}\n" for n in sorted(synset)))
    from scipy.io import savemat

    table = {i: f"n9{i:07d}" for i in range(1, 1001)}
    table.update({i: s for s, i in DEVKIT_IDS.items()})
    rows = np.zeros(1000, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
    for k, i in enumerate(sorted(table)):
        rows[k] = (i, table[i])
    savemat(devkit / "meta.mat", {"synsets": rows})
    return {"tab": tab, "csv": comma, "ids": ids, "loc": loc, "devkit": gt}


@pytest.mark.parametrize("form", ["tab", "csv", "ids", "loc", "devkit"])
def test_a_flat_folder_with_a_labels_file_gives_the_imagefolder_records(world, form, tmp_path):
    labels = _labels_files(world)[form]
    run = tmp_path / "run"
    args = [
        "--model",
        str(world["model"]),
        "--data",
        str(world["flat"]),
        "--labels-file",
        str(labels),
    ]
    assert main([*FIND, *args, "--out", str(run)]) == 0
    _assert_same_records(run, world["run"], world["same"])
    settings = read_manifest(run)["settings"]
    assert (
        settings["data_source"]["kind"] == "flat"
        and len(settings["data_source"]["labels_file_sha256"]) == 64
    )
    assert main(["-q", "evaluate", str(run), "--device", "cpu", "--bootstrap", "10"]) == 0


def _dataset(world, tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = world["folder"]
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    features = datasets.Features(
        {"picture": datasets.Image(), "class": datasets.ClassLabel(names=list(SYNSETS.values()))}
    )
    ds = datasets.Dataset.from_dict(
        {
            "picture": [{"bytes": p.read_bytes(), "path": None} for p in files],
            "class": [list(SYNSETS.values()).index(p.parent.name) for p in files],
        },
        features=features,
    )
    rename = {p.relative_to(folder).as_posix(): f"{i:06d}" for i, p in enumerate(files)}
    return ds, rename


def test_a_saved_dataset_and_parquet_files_give_the_imagefolder_records(world, tmp_path):
    ds, rename = _dataset(world, tmp_path)
    saved = tmp_path / "saved"
    ds.save_to_disk(str(saved))
    parquet = tmp_path / "parquet"
    parquet.mkdir()
    ds.to_parquet(str(parquet / "part-0.parquet"))
    for spec in (f"hf:{saved}", f"hf:{parquet}", f"hf:{parquet / 'part-0.parquet'}"):
        run = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
        assert main([*FIND, "--model", str(world["model"]), "--data", spec, "--out", str(run)]) == 0
        _assert_same_records(run, world["run"], rename)
        source = read_manifest(run)["settings"]["data_source"]
        assert source["image_column"] == "picture" and source["label_column"] == "class"
        assert source["fingerprint"]
    # the commands after find read the dataset's rows
    assert main(["-q", "evaluate", str(run), "--device", "cpu", "--bootstrap", "10"]) == 0
    assert main(["-q", "report", str(run), "--device", "cpu", "--images", "3", "--cards", "2"]) == 0
    assert main(["-q", "neurons", str(run), "--data", spec, "--device", "cpu"]) == 0
    # --limit takes the same round-robin sample of every source
    a, b = tmp_path / "limit-folder", tmp_path / "limit-dataset"
    assert (
        main(
            [
                *FIND,
                "--model",
                str(world["model"]),
                "--data",
                str(world["folder"]),
                "--out",
                str(a),
                "--limit",
                "4",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                *FIND,
                "--model",
                str(world["model"]),
                "--data",
                f"hf:{saved}",
                "--out",
                str(b),
                "--limit",
                "4",
            ]
        )
        == 0
    )
    assert sorted(rename[r["image"]] for r in read_records(a)) == sorted(
        r["image"] for r in read_records(b)
    )


def test_bad_labels_files_and_datasets_get_one_line(world, tmp_path, capsys):
    def error(*args):
        capsys.readouterr()
        assert (
            main(
                [
                    "find",
                    "--model",
                    str(world["model"]),
                    "--out",
                    str(tmp_path / "x"),
                    "--device",
                    "cpu",
                    *args,
                ]
            )
            == 2
        )
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    flat = ["--data", str(world["flat"])]
    names = sorted(world["same"].values())
    missing = tmp_path / "missing.tsv"
    missing.write_text("".join(f"{n}\tn01440764\n" for n in names[1:]))
    assert f"1 images of the folder have no label in {missing}, e.g. {names[0]}" in error(
        *flat, "--labels-file", str(missing)
    )
    unknown = tmp_path / "unknown.tsv"
    unknown.write_text(
        "".join(f"{n}\t{'n09999999' if i == 0 else 'n01440764'}\n" for i, n in enumerate(names))
    )
    assert "n09999999" in error(*flat, "--labels-file", str(unknown))
    twice = tmp_path / "twice.tsv"
    twice.write_text("".join(f"{n}\tn01440764\n" for n in names + names[:1]))
    assert f"labels {names[0]} twice" in error(*flat, "--labels-file", str(twice))
    ghost = tmp_path / "ghost.tsv"
    ghost.write_text("".join(f"{n}\tn01440764\n" for n in names + ["nowhere.png"]))
    assert "names 1 images that are not in the folder, e.g. nowhere.png" in error(
        *flat, "--labels-file", str(ghost)
    )
    gt = tmp_path / "gt" / "ILSVRC2012_validation_ground_truth.txt"
    gt.parent.mkdir()
    gt.write_text("1\n" * len(names))
    assert "its meta.mat" in error(*flat, "--labels-file", str(gt))
    flat_error = error(*flat)
    assert "no class sub-folders" in flat_error and "directly" in flat_error
    assert "--labels-file FILE" in flat_error
    datasets = pytest.importorskip("datasets")
    plain = datasets.Dataset.from_dict({"x": [1, 2], "label": [0, 1]})
    plain.save_to_disk(str(tmp_path / "noimage"))
    assert "has no image column" in error("--data", f"hf:{tmp_path / 'noimage'}")
    ds, _ = _dataset(world, tmp_path)
    ds.remove_columns("class").save_to_disk(str(tmp_path / "nolabel"))
    assert "has no label column" in error("--data", f"hf:{tmp_path / 'nolabel'}")
    assert "the Hugging Face Hub cannot be reached" in error(
        "--data", "hf:someone/imagenet-1k:validation"
    )
