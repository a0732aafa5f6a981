"""``neuronpath find`` end to end on generated images: records, resume, kills, bad input."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_image_folder, save_tiny_model
from neuronpath.cli import main
from neuronpath.io.store import RECORDS, read_manifest, read_records

ROOT = Path(__file__).resolve().parents[1]


def find(model, data, out, *extra):
    return main(
        [
            "-q",
            "find",
            "--model",
            str(model),
            "--data",
            str(data),
            "--out",
            str(out),
            "--steps",
            "4",
            "--batch-size",
            "2",
            "--device",
            "cpu",
            *extra,
        ]
    )


def by_key(records):
    return {(r["image"], r["method"]): r for r in records}


def test_find_writes_one_record_per_image_and_method(tiny_model_dir, image_folder, tmp_path):
    assert find(tiny_model_dir, image_folder, tmp_path / "run") == 0
    records = read_records(tmp_path / "run")
    assert len(records) == 12 * 2
    record = records[0]
    assert set(record) >= {"image", "label", "pred", "prob", "path", "jas", "method"}
    assert len(record["path"]) == 3 and record["label_name"] in ("cat", "dog", "fish")
    manifest = read_manifest(tmp_path / "run")
    assert manifest["settings"]["steps"] == 4 and manifest["alpha_grid"]["name"] == "left"
    assert manifest["data"]["mapping"] == "label2id"
    assert manifest["settings"]["preprocess"]["config"]["size"] == {"height": 8, "width": 8}
    assert manifest["settings"]["preprocess"]["class"].startswith("ViTImageProcessor")
    assert len(manifest["settings"]["weights_sha256"]) == 64
    assert manifest["versions"]["torch"]


def test_resume_after_partial_write_loses_nothing(tiny_model_dir, image_folder, tmp_path):
    reference = tmp_path / "reference"
    assert find(tiny_model_dir, image_folder, reference) == 0
    run = tmp_path / "run"
    assert find(tiny_model_dir, image_folder, run, "--limit", "5") == 0
    first = by_key(read_records(run))
    assert len(first) == 10
    with open(run / RECORDS, "a") as handle:  # a kill in the middle of a write
        handle.write('{"image": "cat/img09.png", "meth')
    assert find(tiny_model_dir, image_folder, run) == 0
    records = read_records(run)
    assert len(records) == len(by_key(records)) == 24  # no duplicates, nothing lost
    assert (run / RECORDS).read_text().endswith("}\n")
    for key, record in first.items():
        assert by_key(records)[key] == record  # finished images were not redone
    expected = by_key(read_records(reference))
    for key, record in by_key(records).items():
        assert record["path"] == expected[key]["path"]
        assert record["jas"] == pytest.approx(expected[key]["jas"], rel=1e-5, abs=1e-9)


def test_corrupt_image_is_skipped_and_reported(tiny_model_dir, image_folder, tmp_path, caplog):
    (image_folder / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    assert find(tiny_model_dir, image_folder, tmp_path / "run") == 0
    records = read_records(tmp_path / "run")
    assert "dog/broken.jpg" not in {r["image"] for r in records}
    assert len(records) == 24
    manifest = read_manifest(tmp_path / "run")
    assert "dog/broken.jpg" in manifest["skipped"]
    assert "broken.jpg" in (tmp_path / "run" / "find.log").read_text()
    assert any("broken.jpg" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_conflicting_second_run_is_refused(tiny_model_dir, image_folder, tmp_path, capsys):
    assert find(tiny_model_dir, image_folder, tmp_path / "run", "--limit", "2") == 0
    before = (tmp_path / "run" / RECORDS).read_text()
    assert find(tiny_model_dir, image_folder, tmp_path / "run", "--alphas", "right") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "alphas" in err and "'left' -> 'right'" in err
    assert (tmp_path / "run" / RECORDS).read_text() == before


def test_fast_preset_is_its_named_grid_and_refuses_a_second_grid(
    tiny_model_dir, image_folder, tmp_path, capsys
):
    from neuronpath.engine.grids import PRESETS

    rule, steps = PRESETS["fast"]
    common = ["-q", "find", "--model", str(tiny_model_dir), "--data", str(image_folder)]
    common += ["--batch-size", "4", "--device", "cpu", "--limit", "4"]
    assert main([*common, "--out", str(tmp_path / "fast"), "--fast"]) == 0
    explicit = ["--alphas", rule, "--steps", str(steps)]
    assert main([*common, "--out", str(tmp_path / "explicit"), *explicit]) == 0
    manifest = read_manifest(tmp_path / "fast")
    assert manifest["alpha_grid"]["name"] == rule and manifest["settings"]["steps"] == steps
    assert read_records(tmp_path / "fast") == read_records(tmp_path / "explicit")
    assert main([*common, "--out", str(tmp_path / "default")]) == 0
    official = read_manifest(tmp_path / "default")
    assert official["alpha_grid"]["name"] == "left" and official["settings"]["steps"] == 20
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "both"), "--fast", "--steps", "7"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--fast" in err and "--steps" in err
    assert not (tmp_path / "both").exists()


def test_bad_arguments_get_clear_errors(tiny_model_dir, image_folder, tmp_path, capsys):
    assert find(tiny_model_dir, tmp_path / "nowhere", tmp_path / "run") == 2
    assert "not a folder" in capsys.readouterr().err
    assert find(tiny_model_dir, image_folder, tmp_path / "run", "--batch-size", "0") == 2
    assert "--batch-size: expected a positive integer" in capsys.readouterr().err
    assert find(tiny_model_dir, image_folder, tmp_path / "run", "--methods", "jas,bogus") == 2
    assert "--methods: unknown ['bogus']" in capsys.readouterr().err
    assert (
        find(
            tiny_model_dir,
            image_folder,
            tmp_path / "run",
            "--methods",
            "activation",
            "--rerank",
            "4",
        )
        == 2
    )  # an option of a method that is not run would do nothing
    assert (
        "--rerank: an option of method jas, which is not among --methods" in capsys.readouterr().err
    )
    assert main(["summary", str(tmp_path / "nothing")]) == 2
    assert "not a neuronpath run" in capsys.readouterr().err


def test_find_logs_and_stores_where_the_neuron_is_read(
    tiny_model_dir, image_folder, tmp_path, caplog
):
    caplog.set_level("INFO", logger="neuronpath")
    assert find(tiny_model_dir, image_folder, tmp_path / "run") == 0
    assert any("each neuron is read at token cls: " in r.getMessage() for r in caplog.records)
    assert read_manifest(tmp_path / "run")["settings"]["token"] == "cls"


def test_summary_command(tiny_model_dir, image_folder, tmp_path, capsys):
    assert find(tiny_model_dir, image_folder, tmp_path / "run") == 0
    capsys.readouterr()
    assert main(["summary", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "jas" in out and "activation" in out and "mean JAS" in out


def test_killed_process_resumes_to_the_same_records(tmp_path):
    """SIGKILL a real ``neuronpath find`` mid-run, re-run it, compare with an uninterrupted run."""
    model = save_tiny_model(tmp_path / "model", layers=6, hidden=32, ffn=48)
    data = make_image_folder(tmp_path / "images", per_class=16)
    args = [
        sys.executable,
        "-m",
        "neuronpath.cli",
        "-q",
        "find",
        "--model",
        str(model),
        "--data",
        str(data),
        "--steps",
        "20",
        "--batch-size",
        "1",
        "--device",
        "cpu",
    ]
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # every run on one thread: two fit side by side
    process = subprocess.Popen(
        args + ["--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        path = run / RECORDS
        if path.exists() and path.read_text().count("\n") >= 4:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    partial = by_key(read_records(run))
    assert 4 <= len(partial) < 96
    # the resumed run and an uninterrupted reference, side by side (one core each)
    finishing = [
        subprocess.Popen(
            args + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for out in (run, tmp_path / "reference")
    ]
    for process in finishing:
        assert process.wait(timeout=600) == 0, process.stderr.read()
    resumed = read_records(run)
    reference = by_key(read_records(tmp_path / "reference"))
    assert len(resumed) == len(by_key(resumed)) == len(reference) == 96
    for key, record in by_key(resumed).items():
        assert record["path"] == reference[key]["path"]
        assert record["jas"] == pytest.approx(reference[key]["jas"], rel=1e-5, abs=1e-9)
    for key, record in partial.items():
        assert by_key(resumed)[key] == record


def test_demo_prints_the_readme_block_with_one_thread_and_two(tmp_path, monkeypatch, capsys):
    """The shipped demo weights: ``neuronpath demo`` prints exactly the README's block."""
    monkeypatch.setenv("NEURONPATH_CACHE", str(tmp_path / "cache"))  # the digits, written here
    readme = (ROOT / "README.md").read_text()
    start = readme.index("What the demo prints")
    opening = readme.index("```\n", start) + 4
    block = readme[opening : readme.index("\n```", opening)]
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            capsys.readouterr()
            assert main(["-q", "demo", "--out", str(tmp_path / f"demo{count}")]) == 0
            out = capsys.readouterr().out.splitlines()
            assert out[0].startswith("records: ")
            assert "\n".join(out[1:]) == block, count
    finally:
        torch.set_num_threads(threads)
    assert read_manifest(tmp_path / "demo1")["settings"]["model"] == "demo"


def test_demo_retrain_uses_the_weights_trained_here(tmp_path, monkeypatch, capsys):
    # the cache holds "retrained" weights (a tiny model) and digits-like folders: nothing trains
    from neuronpath.models import demo

    monkeypatch.setenv("NEURONPATH_CACHE", str(tmp_path / "cache"))
    model = save_tiny_model(demo.cache_dir() / f"demo-vit-digits-v{demo.DEMO_VERSION}")
    make_image_folder(demo.cache_dir() / f"digits-v{demo.DEMO_VERSION}" / "test", per_class=2)
    args = ["-q", "demo", "--retrain", "--out", str(tmp_path / "demo"), "--steps", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "mean JAS" in out and "JAS path scores above the Activation path" in out
    manifest = read_manifest(tmp_path / "demo")
    assert (
        manifest["settings"]["model"] == str(model) and len(read_records(tmp_path / "demo")) == 12
    )


def test_all_methods_and_topk_records(tiny_model_dir, image_folder, tmp_path, capsys):
    methods = "jas,activation,influence-pattern,knowledge"
    assert (
        find(tiny_model_dir, image_folder, tmp_path / "run", "--methods", methods, "--limit", "3")
        == 0
    )
    records = read_records(tmp_path / "run")
    assert sorted({r["method"] for r in records}) == sorted(methods.split(","))
    knowledge = [r for r in records if r["method"] == "knowledge"]
    assert all(len(r["top"]) == 5 and len(r["top"][0]) == 3 for r in knowledge)
    capsys.readouterr()
    assert main(["summary", str(tmp_path / "run")]) == 0
    assert "knowledge neurons per layer" in capsys.readouterr().out

    assert (
        find(
            tiny_model_dir,
            image_folder,
            tmp_path / "topk",
            "--topk",
            "2",
            "--topk-mode",
            "official",
            "--limit",
            "2",
        )
        == 0
    )
    records = read_records(tmp_path / "topk")
    assert all(len(r["path"]) == 3 and len(r["path"][0]) == 2 for r in records)
    assert read_manifest(tmp_path / "topk")["settings"]["options"]["jas"]["topk_mode"] == "official"
    assert find(tiny_model_dir, image_folder, tmp_path / "topk", "--topk", "3") == 2
