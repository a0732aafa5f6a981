"""timm Vision Transformers, for users who have timm (an optional extra: ``pip install timm``,
which needs torchvision).  timm is imported only when a ``timm:NAME`` model is loaded; the
adapter itself works on any module with timm's layout (``blocks[i].mlp.fc2``)."""

from __future__ import annotations

import math

from PIL import Image
from torch import nn

from ..engine.adapter import ModelAdapter
from ..engine.layout import TokenLayout
from ..engine.sites import find_ffn_sites, unit_sites
from ..engine.tokens import TokenPolicy
from ..errors import ModelLoadError, option
from ..io.labels import imagenet_synsets
from ..io.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocess

RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def preprocess_from_timm(cfg: dict) -> Preprocess:
    """timm's eval transform written out from a ``pretrained_cfg`` (resize the short side to
    size / crop_pct, centre crop, normalise), for modules in timm's layout when timm itself is
    not installed; ``load_timm`` uses timm's own transform."""
    _, height, width = cfg.get("input_size", (3, 224, 224))
    crop_pct = cfg.get("crop_pct", 0.875)
    resample = RESAMPLE.get(cfg.get("interpolation", "bicubic"), Image.Resampling.BICUBIC)
    return Preprocess(
        "model",
        None,
        math.floor(height / crop_pct),
        (height, width),
        int(resample),
        1 / 255,
        tuple(cfg.get("mean", IMAGENET_MEAN)),
        tuple(cfg.get("std", IMAGENET_STD)),
    )


def timm_readout(model: nn.Module) -> tuple[TokenPolicy, str] | None:
    """What a timm VisionTransformer's head reads, from ``global_pool`` (names the gradient
    probe's finding): ``token`` -> CLS, ``avg``/``avgmax``/``max`` -> the patch tokens (after
    the prefix tokens), ``map`` -> every token (attention pooling); None for anything else."""
    pool = getattr(model, "global_pool", "token")
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    if pool == "token":
        return TokenPolicy.cls(), "the CLS token (global_pool='token')"
    if pool in ("avg", "avgmax", "max"):
        return (
            TokenPolicy.patches(prefix),
            f"the patch tokens after {prefix} prefix tokens (global_pool={pool!r})",
        )
    if pool == "map":
        return TokenPolicy.all(), "all tokens (attention pooling, global_pool='map')"
    return None


def from_timm_model(
    model: nn.Module, *, token: str | None = None, name: str = "timm", units: str = "neurons"
) -> ModelAdapter:
    """Adapter for a timm VisionTransformer: each block's FFN read at the input of ``mlp.fc2``
    (:mod:`neuronpath.engine.sites`), where its head reads (``timm_readout`` names the gradient
    probe's finding), its tokens laid out as ``num_prefix_tokens`` then the patch grid."""
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    num_classes = int(getattr(model, "num_classes", 0))
    names = imagenet_synsets() if num_classes == 1000 else [str(i) for i in range(num_classes)]
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    shape = tuple(cfg.get("input_size", (3, 224, 224)))
    sites = unit_sites(
        model, model, shape, find_ffn_sites(model, model, shape, len(model.blocks)), units
    )

    def layout(layer: int, tokens: int) -> TokenLayout:
        return TokenLayout.raster(tokens, prefix, shape[1:])

    family = {
        "family_readout": timm_readout(model),
        "layout": layout,
        "distillation_index": 1 if prefix >= 2 else None,
    }
    run = {
        "preprocess": preprocess_from_timm(cfg),
        "id2label": dict(enumerate(names)),
        "name": name,
    }
    return ModelAdapter(model, token=token, input_shape=shape, **sites, **family, **run)


def load_timm(name: str, *, token: str | None = None, units: str = "neurons") -> ModelAdapter:
    """``timm.create_model(name, pretrained=True)`` wrapped in an adapter."""
    try:
        import timm
    except ImportError as error:
        raise ModelLoadError(
            f"{option('model')}: timm is not installed; `pip install timm` (it needs "
            "torchvision) to load timm:NAME models"
        ) from error
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as error:  # noqa: BLE001 - network, unknown name, ...
        raise ModelLoadError(
            f"{option('model')}: timm could not create {name!r}: {error}"
        ) from error
    adapter = from_timm_model(model, token=token, name=f"timm:{name}", units=units)
    adapter.preprocess = TimmTransform(timm.data.resolve_data_config({}, model=model))
    return adapter


class TimmTransform:
    """timm's own eval transform for a model (``timm.data.create_transform`` of its resolved
    data config), used where timm is installed."""

    name = "model"

    def __init__(self, config: dict):
        import timm.data

        self.config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}
        self.transform = timm.data.create_transform(**config)
        self.mean, self.std = config.get("mean"), config.get("std")

    def __call__(self, image):
        return self.transform(image.convert("RGB"))

    def to_dict(self) -> dict:
        return {"name": self.name, "class": "timm.data.create_transform", "config": self.config}
