"""Image folders, label mapping, image modes and unreadable files."""

import numpy as np
import pytest
import torch
from PIL import Image

from neuronpath.errors import ImageReadError
from neuronpath.io.images import interleave_classes, load_image, scan_image_folder
from neuronpath.io.labels import map_labels
from neuronpath.io.preprocessing import Preprocess


def test_label2id_mapping_is_used_when_every_folder_matches():
    mapping, how = map_labels(["dog", "cat"], {0: "cat", 1: "dog", 2: "fish"})
    assert how == "label2id" and mapping == {"cat": 0, "dog": 1}


def test_a_name_the_model_gives_two_labels_is_refused_naming_both():
    """ImageNet checkpoints call both 134 and 517 "crane": a folder of that name names no
    single class (it was once mapped to the last id silently)."""
    id2label = {i: f"class {i}" for i in range(600)} | {0: "cat", 134: "crane", 200: "dog"}
    id2label[517] = "crane"
    with pytest.raises(ValueError, match=r"'crane' is the model's label 134 and 517") as error:
        map_labels(["cat", "crane"], id2label)
    assert "label-ids" in str(error.value) and "\n" not in str(error.value)
    assert map_labels(["cat", "dog"], id2label) == ({"cat": 0, "dog": 200}, "label2id")
    assert map_labels(["134", "517"], id2label, "label-ids")[0] == {"134": 134, "517": 517}


def test_imagenet_synsets_map_to_imagenet_ids():
    id2label = {i: f"name {i}" for i in range(1000)}
    mapping, how = map_labels(["n01440764", "n02099601", "n03888257"], id2label)
    assert how == "imagenet-synsets"
    assert mapping == {"n01440764": 0, "n02099601": 207, "n03888257": 701}


def test_sorted_folder_order_when_nothing_matches():
    mapping, how = map_labels(["b", "a"], {0: "x", 1: "y"})
    assert how == "sorted-folders" and mapping == {"b": 0, "a": 1}


def test_partial_matches_and_too_many_folders_are_errors():
    with pytest.raises(ValueError, match="sorted-folders"):
        map_labels(["cat", "zebra"], {0: "cat", 1: "dog"})
    with pytest.raises(ValueError, match="only 1 classes"):
        map_labels(["a", "b"], {0: "x"})
    mapping, how = map_labels(["cat", "zebra"], {0: "cat", 1: "dog"}, "sorted-folders")
    assert mapping == {"cat": 0, "zebra": 1}


def test_scan_sorts_and_interleave_balances(image_folder):
    folder = scan_image_folder(image_folder, {0: "cat", 1: "dog", 2: "fish"})
    assert [i.id for i in folder.items][:2] == ["cat/img00.png", "cat/img01.png"]
    order = interleave_classes(folder.items)
    assert [i.folder for i in order[:6]] == ["cat", "dog", "fish"] * 2


def test_scan_errors_name_the_input(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        scan_image_folder(tmp_path / "missing", {})
    with pytest.raises(ValueError, match="no class sub-folders"):
        scan_image_folder(tmp_path, {})
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        scan_image_folder(tmp_path, {0: "cat"})


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "RGB"])
def test_every_mode_is_read_as_rgb(tmp_path, mode):
    array = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(array, "RGB")
    image = image.convert("L").convert("I;16") if mode == "I;16" else image.convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (7, 5)


def test_corrupt_and_truncated_images_raise_image_read_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        load_image(bad)
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(good)
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageReadError):
        load_image(truncated)


def test_preprocess_matches_hand_computation():
    prep = Preprocess("model", (4, 6), None, None, 0, 1 / 255, (0.5,) * 3, (0.25,) * 3)
    image = Image.fromarray(np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3))
    out = prep(image)
    expected = (torch.arange(72, dtype=torch.float32).reshape(4, 6, 3) / 255 - 0.5) / 0.25
    torch.testing.assert_close(out, expected.permute(2, 0, 1))


def test_official_preprocess_and_shortest_edge_crop():
    official = Preprocess.official(224)
    assert official.resize == (224, 224) and official.mean == (0.485, 0.456, 0.406)
    prep = Preprocess(
        "model", None, 8, (8, 8), 2, 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    )
    out = prep(Image.new("RGB", (30, 15)))
    assert out.shape == (3, 8, 8)
