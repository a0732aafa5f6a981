"""Class-level analysis on hand-made path records, degenerate inputs, and the command."""

import json

import numpy as np
import pytest

from neuronpath.analysis.classes import (
    class_paths,
    cosine_similarity,
    group_coherence,
    intra_class_clustering,
    kde_mode,
    modal_neurons,
    most_and_least_similar,
    neuron_counts,
    utilisation,
)
from neuronpath.cli import main


def records():
    rows = {"A": [[0, 1], [0, 2], [1, 2]], "B": [[3, 3], [3, 3]], "C": [[0, 1]]}
    out = []
    for label, (name, paths) in enumerate(rows.items()):
        for i, path in enumerate(paths):
            out.append(
                {
                    "image": f"{name}/{i}.png",
                    "label": label,
                    "label_name": name,
                    "method": "jas",
                    "path": path,
                }
            )
            out.append(
                {
                    "image": f"{name}/{i}.png",
                    "label": label,
                    "label_name": name,
                    "method": "activation",
                    "path": [0, 0],
                }
            )
    return out


def test_utilisation_modal_similarity_and_lists_equal_hand_values():
    cp = class_paths(records(), "jas", width=4)
    assert cp.names == ["A", "B", "C"]
    m = utilisation(neuron_counts(cp))
    np.testing.assert_allclose(m[0], [[2 / 3, 1 / 3, 0, 0], [0, 1 / 3, 2 / 3, 0]])
    np.testing.assert_allclose(m[1], [[0, 0, 0, 1], [0, 0, 0, 1]])
    np.testing.assert_allclose(m[2], [[1, 0, 0, 0], [0, 1, 0, 0]])
    np.testing.assert_allclose(m.sum(axis=2), 1)
    assert modal_neurons(neuron_counts(cp)).tolist() == [[0, 2], [3, 3], [0, 1]]
    s = cosine_similarity(m)
    np.testing.assert_allclose(
        s, [[1, 0, 3 / np.sqrt(20)], [0, 1, 0], [3 / np.sqrt(20), 0, 1]], atol=1e-12
    )
    lists = most_and_least_similar(s, fraction=0.5)
    assert lists[0] == {"top": [(2, pytest.approx(3 / np.sqrt(20)))], "bottom": [(1, 0.0)]}
    assert lists[1] == {"top": [(0, 0.0)], "bottom": [(0, 0.0)]}  # tie -> lower index, no self
    assert lists[2]["top"][0][0] == 0 and lists[2]["bottom"][0][0] == 1


def test_intra_class_clustering_equals_hand_count():
    result = intra_class_clustering(class_paths(records(), "jas", width=4), shuffles=3)
    # layer 0: A hits 2 of 3 (leave-one-out), B 2 of 2, C has no other image -> 4 / 5
    # layer 1: A 0 of 3 (ties go to the lower index), B 2 of 2 -> 2 / 5
    assert result["share_modal"] == pytest.approx([0.8, 0.4])
    assert result["chance"] == 0.25 and len(result["shuffled_labels"]) == 2


def test_group_coherence_and_permutation_p_value():
    s = np.array(
        [[1.0, 0.9, 0.1, 0.2], [0.9, 1.0, 0.3, 0.1], [0.1, 0.3, 1.0, 0.8], [0.2, 0.1, 0.8, 1.0]]
    )
    result = group_coherence(s, ["x", "x", "y", "y"], permutations=20000, seed=1)
    assert result["within_mean"] == pytest.approx(0.85)
    assert result["between_mean"] == pytest.approx(0.175)
    assert result["difference"] == pytest.approx(0.675)
    # 3 equally likely partitions of 4 classes into 2+2, ours has the largest statistic
    assert result["p_value"] == pytest.approx(1 / 3, abs=0.015)
    with pytest.raises(ValueError, match="two groups"):
        group_coherence(s, ["x"] * 4)


def test_kde_mode_and_its_degenerate_case():
    assert kde_mode(np.array([7, 7, 7])) == 7.0  # the official code crashes here
    values = np.concatenate([np.full(30, 100), np.arange(0, 500, 25)])
    assert abs(kde_mode(values) - 100) < 30


def test_classes_command_end_to_end(tiny_model_dir, image_folder, tmp_path, capsys):
    run = tmp_path / "run"
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
                str(run),
                "--steps",
                "3",
                "--device",
                "cpu",
                "--methods",
                "jas,knowledge",
            ]
        )
        == 0
    )
    groups = tmp_path / "groups.tsv"
    groups.write_text("cat\tpet\ndog\tpet\nfish\tother\n")
    names = tmp_path / "names.tsv"
    names.write_text("cat\tHouse cat\ndog\tDog\nfish\tFish\n")
    assert (
        main(
            [
                "classes",
                str(run),
                "--groups",
                str(groups),
                "--class-names",
                str(names),
                "--plot-classes",
                "cat,fish",
                "--kde-mode",
                "--permutations",
                "200",
            ]
        )
        == 0
    )
    out = run / "classes-jas"
    for name in ("figure4", "similarity", "figure5", "figure2"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
        assert (out / f"{name}.svg").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["coherence"]["group_sizes"] == {"other": 1, "pet": 2}
    assert len(report["knowledge_layer_distribution"]) == 3
    data = np.load(out / "utilisation.npz")
    assert data["utilisation"].shape == (3, 3, 12)
    assert list(data["class_names"]) == ["cat", "dog", "fish"]
    similar = json.loads((out / "similar.json").read_text())
    assert set(similar) == {"cat", "dog", "fish"} and len(similar["cat"]["top"]) == 1
    assert "group coherence" in capsys.readouterr().out
    assert main(["classes", str(run), "--plot-classes", "zebra"]) == 2
    assert "--plot-classes: ['zebra'] are not classes of the run" in capsys.readouterr().err
    assert main(["classes", str(run), "--method", "influence-pattern"]) == 2
    assert "--method: the run has no records of 'influence-pattern'" in capsys.readouterr().err
    # the old name still works, with a line saying it moved
    assert main(["-q", "classes", str(run), "--classes", "dog", "--permutations", "10"]) == 0
    assert "--classes is now --plot-classes" in capsys.readouterr().err


def test_violin_figure_with_a_layer_where_every_image_agrees(tmp_path):
    from neuronpath.report.figures import neuron_violins

    paths = {
        "one image": np.array([[3, 5, 7]]),
        "agree": np.array([[1, 4, 9], [1, 6, 9], [1, 2, 9]]),
    }
    modes = {"one image": np.array([3, 5, 7]), "agree": np.array([1, 2, 9])}
    png, _ = neuron_violins(paths, modes, 12, tmp_path / "violins")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_clustering_matches_a_brute_force_leave_one_out():
    from neuronpath.analysis.classes import ClassPaths

    rng = np.random.default_rng(0)
    paths = {c: rng.integers(0, 5, (int(rng.integers(2, 9)), 4, 1)) for c in range(6)}
    cp = ClassPaths(list(paths), [str(c) for c in paths], paths, {}, width=5)
    hits, total = np.zeros(4), 0
    for c, p in paths.items():
        for i in range(len(p)):
            others = np.delete(p[:, :, 0], i, axis=0)
            for l in range(4):
                hits[l] += np.bincount(others[:, l], minlength=5).argmax() == p[i, l, 0]
        total += len(p)
    assert intra_class_clustering(cp, shuffles=0)["share_modal"] == pytest.approx(hits / total)
