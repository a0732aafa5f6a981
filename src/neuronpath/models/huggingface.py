"""Hugging Face image classifiers: load one (local folder or hub) with its processor config,
and wrap it in an adapter (ViT, DeiT, DeiT-with-teacher, ...)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from torch import nn

from ..engine.adapter import ModelAdapter, find_ffn_activations
from ..engine.tokens import TokenPolicy
from ..io.preprocessing import Preprocess

log = logging.getLogger("neuronpath")


def from_hf_model(model: nn.Module, *, preprocess: Preprocess | None = None,
                  token: TokenPolicy | str | None = None, name: str = "custom") -> ModelAdapter:
    """Adapter for a Hugging Face image classifier (ViT, DeiT, DeiT-with-teacher, ...)."""
    config = model.config
    num_layers = getattr(config, "num_hidden_layers", None)
    sites = find_ffn_activations(model, num_layers)
    distillation = 1 if "deit" in getattr(config, "model_type", "") else None
    if isinstance(token, str):
        token = TokenPolicy.parse(token, distillation_index=distillation)
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    return ModelAdapter(model, sites, token=token or TokenPolicy.cls(), preprocess=preprocess,
                        id2label=id2label, name=name,
                        forward=lambda x: model(pixel_values=x),
                        distillation_index=distillation)


def hf_preprocess(spec: str, local_only: bool, config) -> Preprocess:
    """The model's ``preprocessor_config.json``, or the official pipeline when it has none."""
    from transformers.utils import cached_file

    try:
        path = cached_file(spec, "preprocessor_config.json", local_files_only=local_only,
                           _raise_exceptions_for_missing_entries=False)
    except Exception:  # noqa: BLE001 - any failure means: no processor config available
        path = None
    if path is None:
        size = getattr(config, "image_size", 224)
        log.warning("model %s has no preprocessor_config.json; using the official "
                    "preprocessing (square %d resize, ImageNet mean/std)", spec, size)
        return Preprocess.official(size)
    return Preprocess.from_hf_config(json.loads(Path(path).read_text()))


def load_hf(spec: str, local_only: bool):
    """``AutoModelForImageClassification`` from a folder or hub id, and its preprocessing."""
    from transformers import AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForImageClassification.from_pretrained(spec, local_files_only=local_only)
    return model, hf_preprocess(spec, local_only, model.config)
