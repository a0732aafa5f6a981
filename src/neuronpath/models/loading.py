"""Load a model by name: the built-in demo, a local Hugging Face folder, or a hub id."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from PIL import Image

from ..engine.adapter import ModelAdapter
from ..errors import CheckpointError, ModelLoadError, option
from ..io.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .huggingface import from_hf_model, load_hf

DEMO = "demo"
PREPROCESS_CHOICES = ("model", "official")


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep != "/" and os.sep in spec


def load_model(spec: str = DEMO, *, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, token: str | None = None,
               preprocess: str = "model", image_size: int | None = None,
               fc_norm_twice: bool = False, classes: str | None = None,
               prompt: str | None = None) -> ModelAdapter:
    """Load a model and wrap it in an adapter.

    ``spec`` is ``"demo"`` (a small ViT trained on scikit-learn's digits on first use), a
    local Hugging Face model folder, a Hugging Face hub id (needs network the first time),
    a Google ViT ``.npz`` or MAE ``.pth`` checkpoint file (run at ``image_size``, default 224
    as in the official code; ``fc_norm_twice`` reproduces the official MAE quirk), or
    ``timm:NAME`` (needs timm).  The token policy is where the model's head reads (checked by
    a gradient probe); ``token`` overrides it within those positions (``cls``,
    ``distillation``, ``patches``, ``all``, an index, or several joined by ``+``).  ``classes``
    (a file of lines ``label<TAB>class name``) turns a CLIP or SigLIP model into a zero-shot
    classifier over those classes, with ``prompt`` (default ``"a photo of a {}."``).
    ``preprocess='official'`` uses the authors' preprocessing (spec §9).
    """
    if preprocess not in PREPROCESS_CHOICES:
        raise ValueError(f"{option('preprocess')}: expected one of {PREPROCESS_CHOICES}, got {preprocess!r}")
    spec = str(spec)
    kwargs: dict = {}
    if spec == DEMO:
        from .demo import demo_model_dir  # trains the demo model on first use

        model, prep, kwargs = load_hf(str(demo_model_dir()), True)
    elif Path(spec).expanduser().is_dir():
        model, prep, kwargs = load_hf(str(Path(spec).expanduser()), True, classes, prompt)
    elif spec.startswith("timm:"):
        from .timm_models import load_timm

        adapter = load_timm(spec[len("timm:"):], token=token)
        if preprocess == "official":
            adapter.preprocess = Preprocess.official(image_size or 224)
        return adapter.to(device=device, dtype=dtype)
    elif Path(spec).expanduser().is_file():
        model, prep = _load_checkpoint(Path(spec).expanduser(), image_size or 224, fc_norm_twice)
    elif _looks_like_path(spec):
        raise ModelLoadError(f"{option('model')}: no such folder {spec}")
    else:
        model, prep, kwargs = _load_from_hub(spec, classes, prompt)
    if classes is not None and not kwargs.get("details"):
        raise ModelLoadError(f"{option('classes')}: zero-shot classification needs a CLIP or "
                             f"SigLIP model folder or hub id, not {spec}")
    if preprocess == "official":
        prep = Preprocess.official(getattr(model.config, "image_size", 224))
    adapter = from_hf_model(model, preprocess=prep, token=token, name=spec, **kwargs)
    return adapter.to(device=device, dtype=dtype)


def _load_checkpoint(path: Path, image_size: int, fc_norm_twice: bool):
    """A paper checkpoint file -> (model, its correct preprocessing)."""
    from .checkpoints import load_google_npz, load_mae_pth

    try:
        if path.suffix == ".npz":  # Google ViT: inputs in [-1, 1]
            prep = Preprocess("model", (image_size, image_size), None, None,
                              int(Image.Resampling.BILINEAR), 1 / 255, (0.5,) * 3, (0.5,) * 3)
            return load_google_npz(path, image_size), prep
        if path.suffix in (".pth", ".pt"):  # MAE: resize 256, centre crop 224, ImageNet stats
            prep = Preprocess("model", None, round(image_size / 0.875), (image_size, image_size),
                              int(Image.Resampling.BICUBIC), 1 / 255, IMAGENET_MEAN, IMAGENET_STD)
            return load_mae_pth(path, image_size, fc_norm_twice), prep
    except CheckpointError as error:
        raise ModelLoadError(f"{option('model')}: {error}") from error
    raise ModelLoadError(f"{option('model')}: {path} is a file but not a .npz (Google ViT) or .pth (MAE) "
                         f"checkpoint; pass a Hugging Face model folder, hub id or checkpoint")


def _load_from_hub(spec: str, classes: str | None, prompt: str | None):
    try:
        return load_hf(spec, True, classes, prompt)  # already in the local cache?
    except OSError:
        pass
    if not _hub_reachable():
        raise ModelLoadError(
            f"model: {spec!r} is not a local folder and the Hugging Face Hub cannot be reached "
            f"(no network, or HF_HUB_OFFLINE is set). On a machine with network, download it "
            f"with `hf download {spec} --local-dir DIR` (or "
            f"`AutoModelForImageClassification.from_pretrained('{spec}').save_pretrained(DIR)` "
            f"plus its image processor), copy DIR here and pass {option('model', 'DIR')}.")
    try:
        return load_hf(spec, False, classes, prompt)
    except OSError as error:
        raise ModelLoadError(f"{option('model')}: could not load {spec!r} from the Hugging Face Hub: {error}. "
                             f"Pass a local model folder: {option('model', 'DIR')}.") from error
