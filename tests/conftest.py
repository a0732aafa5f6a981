"""Tiny models and images built by the tests themselves (no files, no network)."""

from __future__ import annotations

import json
import os
from pathlib import Path

# The tests' models are tiny: a second thread per operation costs more than it gives, and the
# processes some tests start (torchrun ranks, CLI runs) would oversubscribe 2 cores. One thread
# unless the caller says otherwise; the processes started inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

SHARED = Path(__file__).resolve().parents[2] / "shared"

TINY_LABELS = {0: "cat", 1: "dog", 2: "fish"}
TINY_PREPROCESSOR = {
    "do_resize": True,
    "size": {"height": 8, "width": 8},
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}


def tiny_vit(
    layers: int = 3,
    hidden: int = 16,
    ffn: int = 12,
    labels: int = 5,
    seed: int = 0,
    image: int = 8,
    patch: int = 4,
    dtype=torch.float64,
    cls=ViTForImageClassification,
    id2label: dict | None = None,
):
    """A randomly initialised ViT small enough for literal float64 loops."""
    torch.manual_seed(seed)
    id2label = id2label or {i: f"class{i}" for i in range(labels)}
    config = ViTConfig(
        image_size=image,
        patch_size=patch,
        num_channels=3,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=ffn,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        initializer_range=0.3,
    )
    return cls(config).to(dtype).eval()


@pytest.fixture
def vit64():
    return tiny_vit()


@pytest.fixture
def batch64():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 8, 8, generator=generator, dtype=torch.float64)
    return x, torch.tensor([0, 3, 4])


def save_tiny_model(
    folder: Path, layers: int = 3, hidden: int = 16, ffn: int = 12, seed: int = 0
) -> Path:
    model = tiny_vit(
        layers=layers, hidden=hidden, ffn=ffn, seed=seed, dtype=torch.float32, id2label=TINY_LABELS
    )
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(TINY_PREPROCESSOR))
    return folder


def make_image_folder(root: Path, per_class: int = 4, seed: int = 0) -> Path:
    """Images of mixed sizes and modes (RGB, L, P, RGBA, CMYK) in cat/dog/fish folders."""
    rng = np.random.default_rng(seed)
    modes = ["RGB", "L", "P", "RGBA", "CMYK"]
    for c, name in TINY_LABELS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (int(rng.integers(6, 20)), int(rng.integers(6, 20)))
            array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            image = Image.fromarray(array, "RGB").convert(modes[(i + c) % len(modes)])
            ext = "jpg" if image.mode == "CMYK" else "png"
            image.save(root / name / f"img{i:02d}.{ext}")
    return root


@pytest.fixture
def tiny_model_dir(tmp_path):
    return save_tiny_model(tmp_path / "model")


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "images")


def tiny_global_pool(
    layers: int = 3,
    seed: int = 0,
    fc_norm_twice: bool = False,
    dtype=torch.float64,
    labels: int = 5,
):
    """A tiny MAE-style classifier (mean of patch tokens -> fc_norm -> head)."""
    from transformers import ViTModel

    from neuronpath.models.checkpoints import GlobalPoolViT

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=12,
        initializer_range=0.3,
        layer_norm_eps=1e-6,
        num_labels=labels,
    )
    model = GlobalPoolViT(ViTModel(config, add_pooling_layer=False), labels, fc_norm_twice)
    with torch.no_grad():
        model.fc_norm.weight.normal_(1, 0.2)
        model.head.weight.normal_(0, 0.5)
    return model.to(dtype).eval()


def assert_close_tree(got, want, where="") -> None:
    """Nested dicts / lists equal in structure, numbers equal up to float32 noise."""
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for key in want:
            assert_close_tree(got[key], want[key], f"{where}/{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close_tree(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7), where
    else:
        assert got == want, where
