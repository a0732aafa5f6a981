"""``--preprocess model`` is the model's own image processor, exactly: for every processor config
the families ship, ``load_model(DIR).preprocess`` equals ``AutoImageProcessor.from_pretrained(DIR)``
on photographs of odd sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, ViTConfig, ViTForImageClassification

from conftest import SHARED, TINY_LABELS
from neuronpath.io.images import load_image
from neuronpath.models.loading import load_model

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
PROCESSORS = {  # as shipped by the families' checkpoints
    "fixed resize, no crop (ViT, DeiT, BEiT, SigLIP)": {
        "image_processor_type": "ViTImageProcessor",
        "size": {"height": 224, "width": 224},
        "resample": 2,
        "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3,
    },
    "shortest edge 224 + centre crop 224, bicubic (CLIP)": {
        "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": 224},
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "resample": 3,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "do_convert_rgb": True,
    },
    "shortest edge 256 + centre crop 224, bicubic (DINOv2)": {
        "image_processor_type": "BitImageProcessor",
        "size": {"shortest_edge": 256},
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "resample": 3,
        **IMAGENET,
    },
    "shortest edge + crop_pct (ConvNeXt-style)": {
        "image_processor_type": "ConvNextImageProcessor",
        "size": {"shortest_edge": 224},
        "crop_pct": 0.875,
        "resample": 3,
        **IMAGENET,
    },
}


def photographs():
    rng = np.random.default_rng(0)
    sizes = {
        "portrait": (317, 100),
        "landscape": (211, 640),
        "tiny": (7, 5),
        "huge": (2000, 3000),
        "square": (224, 224),
    }
    images = {
        name: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for name, (h, w) in sizes.items()
    }
    data = SHARED / "data" / "imagenet20-dev"
    if data.is_dir():  # real photographs: Imagewoof's 320-px shortest side, Imagenette's 224
        for folder in ("n02099601", "n03028079"):
            path = sorted((data / folder).iterdir())[0]
            images[f"real {folder}"] = load_image(path)
    return images


@pytest.mark.parametrize("name", list(PROCESSORS))
def test_preprocess_is_the_models_own_processor(name, tmp_path):
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=224,
        patch_size=16,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=12,
        num_labels=3,
        id2label=TINY_LABELS,
        label2id={v: k for k, v in TINY_LABELS.items()},
    )
    ViTForImageClassification(config).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(PROCESSORS[name]))
    adapter = load_model(str(tmp_path))
    reference = AutoImageProcessor.from_pretrained(str(tmp_path))
    assert adapter.preprocess.to_dict()["config"] == PROCESSORS[name]
    for label, image in photographs().items():
        ours = adapter.preprocess(image)
        theirs = reference(images=image, return_tensors="pt")["pixel_values"][0]
        assert ours.shape == theirs.shape == (3, 224, 224), label
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5, msg=label)


def test_a_folder_without_processor_config_gets_the_official_pipeline(tmp_path, caplog):
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=16,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=12,
        num_labels=3,
    )
    ViTForImageClassification(config).save_pretrained(tmp_path)
    adapter = load_model(str(tmp_path))
    assert adapter.preprocess.name == "official" and adapter.preprocess.resize == (32, 32)
    assert "no preprocessor_config.json" in caplog.text
