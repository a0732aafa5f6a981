"""find and evaluate under torchrun (2 CPU ranks, gloo): the run folder ends up as a single
process leaves it, a corrupt image is reported once, and a rank killed mid-run loses and
duplicates nothing when the run is resumed with another number of ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_LABELS, assert_close_tree, make_image_folder, save_tiny_model
from neuronpath.cli import main
from neuronpath.io.store import RECORDS, read_manifest, read_records

FIND = ["find", "--steps", "3", "--device", "cpu", "--methods", "jas,activation"]


def torchrun(ranks: int, args: list[str], **kwargs) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={ranks}",
        "-m",
        "neuronpath.cli",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs
    )


def finish(process: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def by_key(records):
    return {(r["image"], r["method"]): r for r in records}


def assert_same_records(run, reference, keys=("path",)):
    got, want = read_records(run), read_records(reference)
    assert len(got) == len({(r["image"], r["method"]) for r in got})  # no duplicates
    assert set(by_key(got)) == set(by_key(want))
    for key, record in by_key(want).items():
        for field in keys:
            assert by_key(got)[key][field] == record[field], (key, field)
        for field in ("jas", "prob", "base_prob", "remove_prob", "enhance_prob"):
            if record.get(field) is not None:
                assert by_key(got)[key][field] == pytest.approx(record[field], rel=1e-5, abs=1e-7)


@pytest.fixture
def setup(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    data = make_image_folder(tmp_path / "images", per_class=5)
    (data / "cat" / "zz-broken.png").write_bytes(b"not an image")
    return model, data


def test_find_and_evaluate_under_two_ranks_equal_one_process(setup, tmp_path):
    model, data = setup
    common = ["--model", str(model), "--data", str(data), "--batch-size", "2"]
    code, out, err = finish(torchrun(2, ["-q", *FIND, *common, "--out", str(tmp_path / "two")]))
    assert code == 0, err
    assert out.count("records:") == 1  # only the main rank prints
    assert err.count("zz-broken.png: cannot read image") == 1  # reported once, not per rank
    assert main(["-q", *FIND, *common, "--out", str(tmp_path / "one")]) == 0

    two, one = tmp_path / "two", tmp_path / "one"
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert [(r["image"], r["method"]) for r in read_records(two)] == [
        (r["image"], r["method"]) for r in read_records(one)
    ]  # the same order too
    assert_same_records(two, one)
    assert (
        read_manifest(two)["skipped"].keys()
        == read_manifest(one)["skipped"].keys()
        == {"cat/zz-broken.png"}
    )

    code, out, err = finish(
        torchrun(
            2,
            [
                "-q",
                "evaluate",
                str(two),
                "--device",
                "cpu",
                "--bootstrap",
                "20",
                "--batch-size",
                "3",
                "--causal",
            ],
        )
    )
    assert code == 0, err
    assert (
        main(["-q", "evaluate", str(one), "--device", "cpu", "--bootstrap", "20", "--causal"]) == 0
    )
    assert_same_records(
        two / "evaluation",
        one / "evaluation",
        keys=("path", "base_pred", "remove_pred", "enhance_pred"),
    )
    assert_same_records(two / "causal", one / "causal", keys=("path",))
    assert_close_tree(
        json.loads((two / "causal" / "metrics.json").read_text()),
        json.loads((one / "causal" / "metrics.json").read_text()),
    )
    assert (two / "evaluation" / "metrics.json").is_file()
    assert not list(two.glob("**/*.rank*"))  # shards and progress files merged and removed

    study = ["--ablation", "mean,resample", "--reference-split", "3", "--bootstrap", "20"]
    code, out, err = finish(
        torchrun(2, ["-q", "evaluate", str(two), "--device", "cpu", "--batch-size", "2", *study])
    )
    assert code == 0, err
    assert main(["-q", "evaluate", str(one), "--device", "cpu", *study]) == 0
    for ablation in ("mean", "resample"):
        got = by_key(read_records(two / "evaluation" / "faithfulness" / ablation))
        want = by_key(read_records(one / "evaluation" / "faithfulness" / ablation))
        # jas, activation, random and both matched controls x (15 images - 3 reference)
        assert got.keys() == want.keys() and len(want) == 5 * 12
        for key, record in want.items():
            assert got[key]["path"] == record["path"] and got[key].get("donor") == record.get(
                "donor"
            )
            assert_close_tree(got[key]["prob"], record["prob"])
    assert_close_tree(
        json.loads((two / "evaluation" / "faithfulness.json").read_text()),
        json.loads((one / "evaluation" / "faithfulness.json").read_text()),
    )


def _child_with_rank(parent: int, rank: int) -> int | None:
    children = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    for pid in children:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_a_rank_killed_mid_run_loses_and_duplicates_nothing_when_resumed_on_other_ranks(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    data = make_image_folder(tmp_path / "images", per_class=40)
    common = ["--model", str(model), "--data", str(data), "--batch-size", "1"]
    run = tmp_path / "run"
    process = torchrun(2, ["-q", *FIND, *common, "--out", str(run)])
    shard = run / "records.rank1.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (shard.is_file() and shard.read_text().count("\n") >= 4):
        time.sleep(0.01)
    victim = _child_with_rank(process.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    code, _, _ = finish(process)
    assert code != 0
    partial = read_records(run)  # readable with no extra step, shards included
    assert 0 < len(partial) < 2 * 120

    code, _, err = finish(torchrun(3, ["-q", *FIND, *common, "--out", str(run)]))
    assert code == 0, err
    assert main(["-q", *FIND, *common, "--out", str(tmp_path / "one")]) == 0
    assert_same_records(run, tmp_path / "one")
    assert len(read_records(run)) == 2 * 120
    assert (run / RECORDS).read_text().count("\n") == 2 * 120
    assert not list(run.glob("*.rank*"))
    kept = {(r["image"], r["method"]): r for r in partial}
    for key, record in by_key(read_records(run)).items():  # finished records were not redone
        if key in kept:
            assert record == kept[key]
    assert json.loads((run / "manifest.json").read_text())["skipped"] == {}


def test_background_decoding_workers_give_the_same_records_and_skip_bad_images(setup, tmp_path):
    model, data = setup
    common = [*FIND, "--model", str(model), "--data", str(data), "--batch-size", "3"]
    assert main(["-q", *common, "--out", str(tmp_path / "w0"), "--workers", "0"]) == 0
    assert main(["-q", *common, "--out", str(tmp_path / "w2"), "--workers", "2"]) == 0
    assert [(r["image"], r["method"], r["path"]) for r in read_records(tmp_path / "w2")] == [
        (r["image"], r["method"], r["path"]) for r in read_records(tmp_path / "w0")
    ]
    assert read_manifest(tmp_path / "w2")["skipped"].keys() == {"cat/zz-broken.png"}


def _page_data(page: Path) -> dict:
    text = page.read_text()
    start = text.index('id="data">') + len('id="data">')
    return json.loads(text[start : text.index("</script>", start)])


def test_report_under_two_ranks_equals_one_process(setup, tmp_path):
    """The activation pass of ``report`` split over two ranks (each keeping its own running top
    images per card, merged by the main rank) gives the page of one process."""
    import shutil

    model, data = setup
    one = tmp_path / "one"
    assert main(["-q", *FIND, "--model", str(model), "--data", str(data), "--out", str(one)]) == 0
    two = tmp_path / "two"
    shutil.copytree(one, two)
    page = ["--device", "cpu", "--cards", "8", "--images", "10"]
    code, _, err = finish(torchrun(2, ["-q", "report", str(two), *page, "--batch-size", "2"]))
    assert code == 0, err
    assert main(["-q", "report", str(one), *page, "--batch-size", "5"]) == 0
    got, want = _page_data(two / "report" / "index.html"), _page_data(one / "report" / "index.html")
    assert got == want
    assert len(want["cards"]) == 8 and all(card["top"] for card in want["cards"])
    assert not list((two / "report").glob("**/*.rank*.jsonl"))


def test_prune_under_two_ranks_equals_one_process(setup, tmp_path):
    """The ranks share the probe paths and the pruning grid; the main rank's results equal a
    single process's, and the corrupt image is reported once."""
    model, data = setup
    args = [
        "prune",
        "--model",
        str(model),
        "--data",
        str(data),
        "--keep",
        "1,2",
        "--mask",
        "0.5,1",
        "--steps",
        "3",
        "--device",
        "cpu",
        "--bootstrap",
        "50",
    ]
    code, out, err = finish(torchrun(2, ["-q", *args, "--out", str(tmp_path / "two")]))
    assert code == 0, err
    assert err.count("zz-broken.png: cannot read image") == 1
    assert out.count("results.json") == 1  # only the main rank prints the table
    assert main(["-q", *args, "--out", str(tmp_path / "one")]) == 0
    two, one = (
        json.loads((tmp_path / name / "results.json").read_text()) for name in ("two", "one")
    )
    for key in ("split", "kept", "test_images"):
        assert two[key] == one[key], key
    for key in ("results", "comparisons"):  # float32 sums over other batches: equal to 1e-6
        assert_close_tree(two[key], one[key])
    assert not list((tmp_path / "two").glob("**/*.rank*"))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_head_paths_under_two_ranks_survive_a_killed_rank_and_equal_one_process(tmp_path):
    """find --units heads: a rank killed mid-run, the job resumed on two ranks, gives the
    records of one uninterrupted process, none lost, none redone, none twice."""
    model = save_tiny_model(tmp_path / "model")
    data = make_image_folder(tmp_path / "images", per_class=12)
    heads = [*FIND, "--units", "heads", "--model", str(model), "--data", str(data)]
    common = [*heads, "--batch-size", "1"]
    run = tmp_path / "run"
    process = torchrun(2, ["-q", *common, "--out", str(run)])
    shard = run / "records.rank1.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (shard.is_file() and shard.read_text().count("\n") >= 4):
        time.sleep(0.01)
    victim = _child_with_rank(process.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    assert finish(process)[0] != 0
    partial = by_key(read_records(run))
    assert 0 < len(partial) < 2 * 36

    code, _, err = finish(torchrun(2, ["-q", *common, "--out", str(run)]))
    assert code == 0, err
    assert main(["-q", *heads, "--out", str(tmp_path / "one")]) == 0
    assert_same_records(run, tmp_path / "one")
    records = read_records(run)
    assert len(records) == 2 * 36 and not list(run.glob("*.rank*"))
    assert all(r["units"] == "heads" and r["path"][0][0] == "head" for r in records)
    for key, record in by_key(records).items():  # finished records were not redone
        if key in partial:
            assert record == partial[key]


def test_every_rank_lists_what_is_done_before_any_rank_writes(tmp_path):
    # The resume race: a rank that listed the done images after another rank's first write
    # took its share of a different list (one image skipped, another done twice). work_through
    # must meet the other ranks before it hands the first batch to be written.
    import torch

    from neuronpath.experiments.common import Execution
    from neuronpath.experiments.ranks import Ranks, work_through
    from neuronpath.io.images import scan_image_folder
    from neuronpath.io.store import RunStore

    events = []

    class Logged(Ranks):
        def barrier(self) -> None:
            events.append("barrier")

    folder = make_image_folder(tmp_path / "images", per_class=2)
    items = scan_image_folder(folder, TINY_LABELS).items
    store = RunStore(tmp_path / "run", {"settings": {"what": "test"}})
    work_through(
        Logged(),
        store,
        items,
        lambda image: torch.zeros(3, 4, 4),
        Execution("cpu", batch_size=2, workers=0, progress=False),
        lambda batch: events.append("write"),
        [it.id for it in items],
        "test",
    )
    assert "write" in events and events.index("barrier") < events.index("write")


def test_saved_scores_and_curves_under_two_ranks_equal_one_process(setup, tmp_path):
    from neuronpath.io.scores import SavedScores

    model, data = setup
    common = ["--model", str(model), "--data", str(data), "--batch-size", "2", "--save-scores"]
    code, _, err = finish(torchrun(2, ["-q", *FIND, *common, "--out", str(tmp_path / "two")]))
    assert code == 0, err
    assert main(["-q", *FIND, *common, "--out", str(tmp_path / "one")]) == 0
    two, one = tmp_path / "two", tmp_path / "one"
    images = sorted({r["image"] for r in read_records(one)})
    for method in ("jas", "activation"):
        got, want = SavedScores(two).get(method, images), SavedScores(one).get(method, images)
        assert got.shape == want.shape and abs(got - want).max() <= 1e-5 * abs(want).max()
    curves = ["--curves", "--ablation", "resample", "--reference-split", "3"]
    curves += ["--bootstrap", "20", "--metrics", "prob,kl"]
    code, _, err = finish(
        torchrun(2, ["-q", "evaluate", str(two), "--device", "cpu", "--batch-size", "2", *curves])
    )
    assert code == 0, err
    assert main(["-q", "evaluate", str(one), "--device", "cpu", *curves]) == 0
    got = by_key(read_records(two / "evaluation" / "curves" / "resample"))
    want = by_key(read_records(one / "evaluation" / "curves" / "resample"))
    assert got.keys() == want.keys() and len(want) == 2 * (15 - 3)
    for key, record in want.items():
        assert got[key]["donor"] == record["donor"]
        assert_close_tree(got[key]["prob"], record["prob"])
    assert_close_tree(
        json.loads((two / "evaluation" / "curves.json").read_text()),
        json.loads((one / "evaluation" / "curves.json").read_text()),
    )
    assert not list(two.glob("**/*.rank*"))
