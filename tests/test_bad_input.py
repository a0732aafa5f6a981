"""Bad input, round 2: one clear line for every user mistake, and no two writers in one run
folder (a lock that a killed process cannot leave stuck)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import make_image_folder, save_tiny_model
from neuronpath.cli import main
from neuronpath.io.store import RECORDS, read_manifest, read_records

FIND = ["find", "--steps", "3", "--device", "cpu"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("neuronpath: error:"), err
    return err


def test_a_token_index_beyond_the_models_tokens_is_refused(
    tiny_model_dir, image_folder, tmp_path, capsys
):
    assert (
        main(
            [
                *FIND,
                "--model",
                str(tiny_model_dir),
                "--data",
                str(image_folder),
                "--out",
                str(tmp_path / "run"),
                "--token",
                "99",
            ]
        )
        == 2
    )
    err = one_line_error(capsys)
    assert "99" in err and "5 tokens" in err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_an_unknown_device_is_refused_naming_the_option(
    tiny_model_dir, image_folder, tmp_path, capsys
):
    assert (
        main(
            [
                *FIND[:-2],
                "--model",
                str(tiny_model_dir),
                "--data",
                str(image_folder),
                "--out",
                str(tmp_path / "run"),
                "--device",
                "bogus",
            ]
        )
        == 2
    )
    err = one_line_error(capsys)
    assert "--device" in err and "bogus" in err and "cuda:N" in err


def test_a_config_that_is_not_json_is_named(tiny_model_dir, image_folder, tmp_path, capsys):
    (tiny_model_dir / "config.json").write_text("{ this is not json")
    assert (
        main(
            [
                *FIND,
                "--model",
                str(tiny_model_dir),
                "--data",
                str(image_folder),
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 2
    )
    err = one_line_error(capsys)
    assert "config.json" in err and "not valid JSON" in err


def test_a_damaged_manifest_is_named_with_what_to_do(
    tiny_model_dir, image_folder, tmp_path, capsys
):
    out = tmp_path / "run"
    args = [
        *FIND,
        "--model",
        str(tiny_model_dir),
        "--data",
        str(image_folder),
        "--out",
        str(out),
        "--limit",
        "2",
    ]
    assert main(["-q", *args]) == 0
    (out / "manifest.json").write_text("")
    capsys.readouterr()
    assert main(args) == 2
    err = one_line_error(capsys)
    assert "manifest.json" in err and "damaged" in err and "delete" in err


def test_a_dangling_symbolic_link_is_reported_and_skipped(tiny_model_dir, image_folder, tmp_path):
    (image_folder / "cat" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    out = tmp_path / "run"
    assert (
        main(
            [
                "-q",
                *FIND,
                "--model",
                str(tiny_model_dir),
                "--data",
                str(image_folder),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "cat/gone.png" in read_manifest(out)["skipped"]
    assert "cat/gone.png" not in {r["image"] for r in read_records(out)}


def test_options_are_checked_against_the_model_before_any_work(
    tiny_model_dir, image_folder, tmp_path, capsys
):
    assert (
        main(
            [
                *FIND,
                "--model",
                str(tiny_model_dir),
                "--data",
                str(image_folder),
                "--out",
                str(tmp_path / "run"),
                "--topk",
                "13",
            ]
        )
        == 2
    )
    assert "FFN width" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flag, value, named",
    [
        ("--topk", "13", "--topk"),
        ("--limit", "0", "--limit"),
        ("--steps", "0", "--steps"),
        ("--workers", "-1", "--workers"),
        ("--labels", "label2id", "--data"),
    ],
)
def test_a_library_message_names_the_flag_on_the_command_line(
    tiny_model_dir, image_folder, tmp_path, capsys, flag, value, named
):
    """The library names its parameters (``topk``); the command line names the flag."""
    run = tmp_path / "run"
    args = ["--model", str(tiny_model_dir), "--data", str(image_folder), "--out", str(run)]
    if flag == "--labels":  # the tiny model's labels are not the folder names
        (image_folder / "cat").rename(image_folder / "lion")
    assert main([*FIND, *args, flag, value]) == 2
    assert one_line_error(capsys).startswith(f"neuronpath: error: {named}: ")


def test_a_run_whose_model_folder_now_preprocesses_otherwise_is_refused(
    tiny_model_dir, image_folder, tmp_path, capsys
):
    """Same weights, edited preprocessor_config.json: evaluate would read the paths on inputs
    the run never saw, so it refuses, naming both pipelines."""
    run = tmp_path / "run"
    assert (
        main(
            [
                *FIND,
                "--model",
                str(tiny_model_dir),
                "--data",
                str(image_folder),
                "--out",
                str(run),
                "--limit",
                "3",
            ]
        )
        == 0
    )
    config_file = tiny_model_dir / "preprocessor_config.json"
    config = json.loads(config_file.read_text())
    config["image_mean"] = [0.2, 0.3, 0.4]
    config_file.write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["evaluate", str(run), "--device", "cpu"]) == 2
    err = one_line_error(capsys)
    assert "other image preprocessing" in err and "0.2" in err


@pytest.mark.parametrize("error", [ZeroDivisionError, ValueError, KeyError])
def test_an_unexpected_internal_error_keeps_its_traceback(
    monkeypatch, tiny_model_dir, image_folder, tmp_path, capsys, error
):
    """Only the project's user-error type is one line; a library bug -- a ValueError included --
    prints its traceback and says it is a bug."""
    import neuronpath.experiments.find as find

    def broken(*args, **kwargs):
        raise error("an internal bug")

    monkeypatch.setattr(find, "find_paths", broken)
    assert (
        main(
            [
                "-q",
                *FIND,
                "--model",
                str(tiny_model_dir),
                "--data",
                str(image_folder),
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "an internal bug" in err
    assert err.strip().splitlines()[-1].startswith("neuronpath: this is a bug in neuronpath")


def _find_process(model, data, out, *extra):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "neuronpath.cli",
            "-q",
            *FIND,
            "--model",
            str(model),
            "--data",
            str(data),
            "--out",
            str(out),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # two processes on 2 cores: one thread each
    )


def test_two_finds_started_at_once_on_one_folder(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    data = make_image_folder(tmp_path / "images", per_class=40)  # a run of several seconds
    out = tmp_path / "run"
    first, second = (
        _find_process(model, data, out, "--batch-size", "1", "--steps", "12") for _ in range(2)
    )
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in (first, second)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2).strip()
    assert len(refused.splitlines()) == 1
    assert str(out) in refused and "in use by another neuronpath process" in refused
    assert re.search(r"pid \d+", refused)
    records = read_records(out)
    assert len(records) == 2 * 120 == len({(r["image"], r["method"]) for r in records})
    assert (out / RECORDS).read_text().count("\n") == 2 * 120


def test_a_refused_run_names_the_holder_that_has_just_taken_the_lock(tmp_path):
    # the holder writes its name just after it takes the lock: a run refused in between waits
    # for the name rather than saying "an unknown process" (seen once in CI)
    import fcntl
    import threading

    from neuronpath.errors import RunLockedError
    from neuronpath.io.store import RunLock

    holder = open(tmp_path / ".lock", "a+")
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def write_name():
        time.sleep(0.2)
        holder.write("pid 4242 on somewhere\n")
        holder.flush()

    writer = threading.Thread(target=write_name)
    writer.start()
    try:
        with pytest.raises(RunLockedError, match="pid 4242 on somewhere"):
            RunLock(tmp_path)
    finally:
        writer.join()
        holder.close()


def test_a_lock_left_by_a_killed_process_does_not_block_the_next_run(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    data = make_image_folder(tmp_path / "images", per_class=40)
    out = tmp_path / "run"
    process = _find_process(model, data, out, "--batch-size", "1")
    deadline = time.time() + 120
    while time.time() < deadline and not (
        (out / RECORDS).is_file() and (out / RECORDS).read_text().count("\n") >= 4
    ):
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert len(read_records(out)) < 2 * 120
    assert (
        main(
            [
                "-q",
                *FIND,
                "--model",
                str(model),
                "--data",
                str(data),
                "--out",
                str(out),
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    assert len(read_records(out)) == 2 * 120
    json.loads((out / "manifest.json").read_text())
