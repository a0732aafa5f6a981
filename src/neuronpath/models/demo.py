"""The built-in default: a small ViT trained on scikit-learn's bundled digits, no network.

On first use the 1,797 8x8 digit images that ship with scikit-learn are written as PNG files
(an ImageFolder with ``train/`` and ``test/``, every fifth image of each class in ``test/``) and
cached under ``$NEURONPATH_CACHE`` (default ``~/.cache/neuronpath``).  The model is a 6-layer ViT
trained on ``train/``; it has real learned structure, unlike random weights, so its neuron paths
mean something.

**Its weights ship with the package** (``demo_weights/``, 0.8 MB), so the demo prints the same
figures on every machine: training depends on the machine (thread count, BLAS kernels) and on
the versions an install resolves, so weights trained at first use made every user's first output
differ from the README's.  ``neuronpath demo --retrain`` (:func:`train_demo_model`) trains them
again into the cache, as they were made, for anyone who wants to see that step.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..io.images import load_image, scan_image_folder
from ..io.preprocessing import Preprocess

log = logging.getLogger("neuronpath")

DEMO_VERSION = 1
PREPROCESSOR = {
    "do_resize": True,
    "size": {"height": 16, "width": 16},
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "image_processor_type": "ViTImageProcessor",
}
# the same pipeline written out, for training (inference uses the saved processor itself)
TRAINING_PREPROCESS = Preprocess("demo", (16, 16), None, None, 2, 1 / 255, (0.5,) * 3, (0.5,) * 3)


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "neuronpath"
    return Path(os.environ.get("NEURONPATH_CACHE", default)).expanduser()


def _atomic_dir(final: Path, build) -> Path:
    """Build a folder in a temporary sibling and rename it into place (no half-built cache)."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=final.parent))
    try:
        build(tmp)
        try:
            tmp.rename(final)
        except OSError:  # another process finished first
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def demo_data_dir() -> Path:
    """The digits as an ImageFolder (``train/<digit>/*.png``, ``test/<digit>/*.png``)."""

    def build(tmp: Path):
        from sklearn.datasets import load_digits

        digits = load_digits()
        seen: dict[int, int] = {}
        for i, (image, label) in enumerate(zip(digits.images, digits.target)):
            rank = seen[label] = seen.get(label, -1) + 1
            split = "test" if rank % 5 == 4 else "train"
            folder = tmp / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(image * (255 / 16), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "L").save(folder / f"{i:04d}.png")

    return _atomic_dir(cache_dir() / f"digits-v{DEMO_VERSION}", build)


def shipped_model_dir() -> Path:
    """The demo ViT's weights as the package ships them (Hugging Face format)."""
    return Path(str(resources.files("neuronpath.models").joinpath("demo_weights")))


def demo_model_dir(retrain: bool = False) -> Path:
    """The demo ViT in Hugging Face format: the shipped weights, or with ``retrain`` weights
    trained here (once, then cached; they depend on the machine)."""
    if not retrain:
        return shipped_model_dir()

    def build(tmp: Path):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        log.info("training the demo ViT on scikit-learn digits (once, then cached)...")
        model = train_demo_model(demo_data_dir() / "train")
        model.save_pretrained(tmp)
        (tmp / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))

    return _atomic_dir(cache_dir() / f"demo-vit-digits-v{DEMO_VERSION}", build)


def train_demo_model(
    train_dir: Path, epochs: int = 40, seed: int = 0, lr: float = 2e-3, batch: int = 64
):
    """Train a ViT (6 layers, width 64, 128 FFN neurons, 16x16 input, 4x4 patches)."""
    from transformers import ViTConfig, ViTForImageClassification

    labels = {i: str(i) for i in range(10)}
    folder = scan_image_folder(train_dir, labels)
    prep = TRAINING_PREPROCESS
    x = torch.stack([prep(load_image(item.path)) for item in folder.items])
    y = torch.tensor([item.label for item in folder.items])
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=10,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    model = ViTForImageClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = (len(y) + batch - 1) // batch
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, lr, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch):
            rows = order[start : start + batch]
            images = x[rows]
            shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
            images = torch.roll(images, shifts=shift, dims=(2, 3))  # small translations
            loss = torch.nn.functional.cross_entropy(
                model(pixel_values=images).logits, y[rows], label_smoothing=0.05
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()
