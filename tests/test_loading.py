"""Loading models: local folders, hub ids without network, files, the built-in demo."""

import time

import pytest
import torch
from PIL import Image

from neuronpath.errors import ModelLoadError, command_line_options
from neuronpath.io.images import load_image, scan_image_folder
from neuronpath.models.loading import load_model


def test_local_folder_loads_with_its_preprocessing_and_labels(tiny_model_dir):
    adapter = load_model(str(tiny_model_dir), dtype=torch.float64)
    assert adapter.num_layers == 3 and adapter.dtype == torch.float64
    assert adapter.id2label == {0: "cat", 1: "dog", 2: "fish"}
    assert adapter.preprocess.config["size"] == {"height": 8, "width": 8}
    assert tuple(adapter.preprocess.mean) == (0.5, 0.5, 0.5)
    assert adapter.preprocess(Image.new("RGB", (13, 7))).shape == (3, 8, 8)
    official = load_model(str(tiny_model_dir), preprocess="official")
    assert official.preprocess.mean == (0.485, 0.456, 0.406) and official.preprocess.resize == (
        8,
        8,
    )


def test_folder_without_processor_config_falls_back_to_official(tiny_model_dir, caplog):
    (tiny_model_dir / "preprocessor_config.json").unlink()
    adapter = load_model(str(tiny_model_dir))
    assert adapter.preprocess.name == "official"
    assert "no preprocessor_config.json" in caplog.text


@pytest.mark.parametrize("env", [{"HF_ENDPOINT": "http://127.0.0.1:9"}, {"HF_HUB_OFFLINE": "1"}])
def test_hub_id_without_network_fails_fast_and_clearly(monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    start = time.time()
    with pytest.raises(ModelLoadError) as error, command_line_options():
        load_model("neuronpath-tests/no-such-vit")
    assert time.time() - start < 15
    message = str(error.value)
    assert "neuronpath-tests/no-such-vit" in message and "--model DIR" in message
    assert "cannot be reached" in message


def test_library_errors_name_parameters_and_the_cli_names_flags(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as error:
        load_model("neuronpath-tests/no-such-vit")
    assert "model='DIR'" in str(error.value) and "--model" not in str(error.value)


def test_files_and_missing_paths_are_explained(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_model(str(tmp_path / "missing" / "model"))
    with pytest.raises(ValueError, match="preprocess"):
        load_model(str(tmp_path), preprocess="imagenet")


def test_demo_model_training_learns_digits(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURONPATH_CACHE", str(tmp_path))
    from neuronpath.models.demo import TRAINING_PREPROCESS, demo_data_dir, train_demo_model

    data = demo_data_dir()
    assert sum(1 for _ in (data / "test").rglob("*.png")) == 355
    assert sum(1 for _ in (data / "train").rglob("*.png")) == 1797 - 355
    model = train_demo_model(data / "train", epochs=10, lr=5e-3, batch=32)  # short schedule
    folder = scan_image_folder(data / "test", model.config.id2label)
    prep = TRAINING_PREPROCESS
    x = torch.stack([prep(load_image(item.path)) for item in folder.items])
    y = torch.tensor([item.label for item in folder.items])
    with torch.no_grad():
        accuracy = (model(pixel_values=x).logits.argmax(-1) == y).float().mean().item()
    assert accuracy > 0.3  # chance is 0.1; the full 40-epoch demo model reaches about 0.98
