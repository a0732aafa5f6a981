"""Hugging Face image classifiers: load one (local folder or hub) with its processor config,
and wrap it in an adapter -- the family table that names what each family's head reads and
states where its tokens sit in the image (ViT, DeiT, BEiT, CLIP, SigLIP, DINOv2, Swin, CvT,
PVT, Hiera, ...)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..engine.adapter import ModelAdapter
from ..engine.layout import TokenLayout
from ..engine.sites import ATTENTION_NAME_PARTS, find_ffn_sites, unit_sites
from ..engine.tokens import TokenPolicy
from ..errors import InputError, ModelLoadError, option
from ..io.preprocessing import Preprocess

log = logging.getLogger("neuronpath")


def _vision_config(config):
    return getattr(config, "vision_config", None) or config


def stage_depths(config) -> list[int] | None:
    """Blocks per stage of a hierarchical image tower (Swin, Hiera, PVT: ``depths``; CvT:
    ``depth``), else None."""
    config = _vision_config(config)
    depths = getattr(config, "depths", None) or getattr(config, "depth", None)
    return list(depths) if isinstance(depths, (list, tuple)) else None


def num_blocks(config) -> int | None:
    """Transformer blocks of the image tower: the sum of the stage depths for hierarchical
    models, else ``num_hidden_layers``."""
    depths = stage_depths(config)
    return sum(depths) if depths else getattr(_vision_config(config), "num_hidden_layers", None)


def input_shape(config) -> tuple[int, int, int] | None:
    """(channels, height, width) the image tower expects, from its config."""
    config = _vision_config(config)
    size = getattr(config, "image_size", None)
    if size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return (getattr(config, "num_channels", 3), height, width)


def hf_readout(model: nn.Module) -> tuple[TokenPolicy, str] | None:
    """What a Hugging Face classifier's head reads, by its class and config: the name and the
    reason the adapter gives the gradient probe's finding (the probe decides; None: a model this
    table does not know)."""
    name, config = type(model).__name__, model.config
    kind = getattr(config, "model_type", "")
    if kind in ("cvt", "pvt"):
        return TokenPolicy.cls(), "the CLS token of the last stage"
    if stage_depths(config):
        return TokenPolicy.all(), "the average of all tokens of the last stage (hierarchical)"
    if name == "DeiTForImageClassificationWithTeacher":
        return (
            TokenPolicy.parse("cls+distillation", distillation_index=1),
            "the CLS and distillation tokens (mean of the two heads)",
        )
    if kind in ("beit", "data2vec-vision"):
        if getattr(config, "use_mean_pooling", False):
            return TokenPolicy.patches(1), "the mean of the patch tokens (use_mean_pooling)"
        return TokenPolicy.cls(), "the CLS token (use_mean_pooling is off)"
    if name == "CLIPForImageClassification":
        return TokenPolicy.patches(1), "the mean of the patch tokens"
    if name == "SiglipForImageClassification":
        return TokenPolicy.all(), "the mean of all tokens (SigLIP has no CLS token)"
    if kind == "dinov2":
        return (
            TokenPolicy.parse("cls+patches:1"),
            "the CLS token and the mean of the patch tokens, concatenated",
        )
    if kind == "dinov2_with_registers":
        prefix = 1 + int(getattr(config, "num_register_tokens", 0))
        return (
            TokenPolicy.parse(f"cls+patches:{prefix}"),
            f"the CLS token and the mean of the patch tokens (not the "
            f"{prefix - 1} register tokens), concatenated",
        )
    if name == "GlobalPoolViT":
        return TokenPolicy.patches(1), "the mean of the patch tokens (MAE global pool)"
    if kind in ("vit", "deit", "vit_msn"):
        return TokenPolicy.cls(), "the CLS token"
    return None


def hf_layout(model: nn.Module, shape: tuple[int, int, int]) -> Callable[[int, int], TokenLayout]:
    """Where each block's tokens sit in an image of ``shape``, by family: special tokens then
    the patch grid in raster order (single-stage towers); per stage, a raster grid (Swin), after
    a CLS token in the stages that have one (CvT, PVT), or Hiera's unrolled order."""
    config = _vision_config(model.config)
    kind = getattr(config, "model_type", "")
    depths = stage_depths(config)
    image = shape[1:]
    if depths is None:
        patch = getattr(config, "patch_size", None)
        if patch is None:
            return _no_layout(f"{type(model).__name__}'s config gives no patch size")
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
        height, width = image[0] // ph, image[1] // pw
        return lambda layer, tokens: (
            TokenLayout.grid(tokens - height * width, height, width)
            if tokens >= height * width
            else TokenLayout.none(f"{tokens} tokens, fewer than its {height}x{width} patches")
        )
    stage = [s for s, depth in enumerate(depths) for _ in range(depth)]
    if kind == "hiera":
        return lambda layer, tokens: hiera_layout(config, stage[layer])
    if kind in ("swin", "swinv2", "donut-swin", "cvt", "pvt"):
        cls_stages = (
            list(getattr(config, "cls_token", []))
            if kind == "cvt"
            else ([False] * (len(depths) - 1) + [True] if kind == "pvt" else [False] * len(depths))
        )
        return lambda layer, tokens: TokenLayout.raster(
            tokens, int(cls_stages[stage[layer]]), image
        )
    return _no_layout(f"no token layout is stated for {type(model).__name__}")


def hf_attention(model: nn.Module, site_names: Sequence[str], forward) -> Callable:
    """``weights(pixels, sites)``: each head site's attention weights (rows, heads, queries,
    keys), read off its attention module's output in one forward with transformers' eager
    attention (the fused kernels compute no weights), the model's attention implementation
    restored after."""
    modules = dict(model.named_modules())

    def owner(name: str) -> nn.Module:
        parts = name.split(".")
        for end in range(len(parts) - 1, 0, -1):
            if parts[end - 1].lower() in ATTENTION_NAME_PARTS:
                return modules[".".join(parts[:end])]
        return modules[".".join(parts[:-1])]

    def weights(pixels: torch.Tensor, sites: list[int]) -> dict:
        found: dict[int, torch.Tensor] = {}

        def keep(site):
            def hook(module, args, output):
                if isinstance(output, tuple) and len(output) > 1 and torch.is_tensor(output[1]):
                    found[site] = output[1].detach()

            return hook

        from transformers.utils import logging as hf_logging

        handles = [owner(site_names[s]).register_forward_hook(keep(s)) for s in sites]
        previous, verbosity = model.config._attn_implementation, hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # not its notes on sub-configs it has no model for
        try:
            model.set_attn_implementation("eager")
            with torch.inference_mode():
                forward(pixels)
        except (ValueError, NotImplementedError):  # a family that cannot switch: no weights
            found.clear()
        finally:
            model.set_attn_implementation(previous)
            hf_logging.set_verbosity(verbosity)
            for handle in handles:
                handle.remove()
        return found

    return weights


def _no_layout(why: str) -> Callable[[int, int], TokenLayout]:
    return lambda layer, tokens: TokenLayout.none(why)


def hiera_layout(config, stage: int) -> TokenLayout:
    """Hiera's tokens at ``stage``: the patch grid, pooled ``stage`` times (at most
    ``num_query_pool``), in the "unrolled" order its model puts them in -- each pooling
    window's tokens strided apart so that a pooling step is a max over contiguous chunks."""
    size = [i // s for i, s in zip(config.image_size, config.patch_stride)]
    strides = [tuple(config.query_stride)] * (len(config.depths) - 1)
    pooled = min(stage, config.num_query_pool)
    for _ in range(pooled):
        size = [i // s for i, s in zip(size, config.query_stride)]
    return TokenLayout.grid(0, size[0], size[1], unrolled_order(size, strides[pooled:]))


def unrolled_order(size: Sequence[int], schedule: Sequence[Sequence[int]]) -> list[int]:
    """The raster cell of each token of a ``size`` grid after Hiera's unroll with ``schedule``:
    for each stride (sh, sw) in turn, the (i, j) offsets within every sh x sw window move in
    front of the window positions, so the tokens at one offset of all windows are contiguous."""
    height, width = size
    cells = torch.arange(height * width).reshape(1, height, width)
    for sh, sw in schedule:
        height, width = height // sh, width // sw
        cells = (
            cells.reshape(-1, height, sh, width, sw)
            .permute(0, 2, 4, 1, 3)
            .reshape(-1, height, width)
        )
    return cells.reshape(-1).tolist()


def from_hf_model(
    model: nn.Module,
    *,
    preprocess: Preprocess | None = None,
    token: TokenPolicy | str | None = None,
    name: str = "custom",
    forward=None,
    id2label: dict[int, str] | None = None,
    readout: tuple[TokenPolicy, str] | None = None,
    details: dict | None = None,
    units: str = "neurons",
) -> ModelAdapter:
    """Adapter for a Hugging Face image classifier: one site per block of the image tower (the
    input of its FFN output projection, :mod:`neuronpath.engine.sites`; with ``units`` heads,
    of its attention output projection; both for ``neurons+heads``), every site's token
    policy where the gradient probe finds the head reads (``hf_readout`` names it; ``token``
    narrows it within those positions), and the family's token layout."""
    config = model.config
    forward = forward or (lambda x: model(pixel_values=x))
    shape = input_shape(config)
    if preprocess is not None:  # what the model will be shown (CvT's config gives no size)
        from PIL import Image

        shape = tuple(preprocess(Image.new("RGB", (32, 32))).shape)
    if shape is None:
        raise InputError(
            f"{type(model).__name__}: neither its config nor its preprocessing gives "
            f"an image size, so no probe input can be built; build a ModelAdapter "
            f"with input_shape=..."
        )
    sites = find_ffn_sites(model, forward, shape, num_blocks(config))
    sites = unit_sites(model, forward, shape, sites, units)
    if id2label is None:
        id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    family = {
        "family_readout": readout or hf_readout(model),
        "layout": hf_layout(model, shape),
        "distillation_index": 1 if "deit" in getattr(config, "model_type", "") else None,
    }
    run = {"preprocess": preprocess, "id2label": id2label, "name": name, "forward": forward}
    if units != "neurons" and hasattr(model, "set_attn_implementation"):
        family["attention"] = hf_attention(model, sites["ffn_inputs"], forward)
    adapter = ModelAdapter(model, token=token, input_shape=shape, **sites, **family, **run)
    adapter.details = dict(details or {})
    return adapter


class HFProcessor:
    """A model's own Hugging Face image processor as a preprocessing callable: PIL image ->
    (3, H, W) tensor, exactly what ``AutoImageProcessor.from_pretrained(DIR)(image)`` gives
    (transformers runs its PIL backend where torchvision is absent)."""

    name = "model"

    def __init__(self, processor, config: dict):
        self.processor = processor
        self.config = config  # the preprocessor_config.json it was made from

    def __call__(self, image) -> torch.Tensor:
        return self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    def _normalisation(self, key: str):
        """The processor's ``image_mean`` / ``image_std``, or None where it does not normalise."""
        normalises = getattr(self.processor, "do_normalize", True)
        return getattr(self.processor, key, None) if normalises else None

    @property
    def mean(self):
        return self._normalisation("image_mean")

    @property
    def std(self):
        return self._normalisation("image_std")

    def to_dict(self) -> dict:
        """What identifies the pipeline (part of a run's settings): the processor class and the
        config file it was built from."""
        return {"name": self.name, "class": type(self.processor).__name__, "config": self.config}

    def describe(self) -> dict:
        """The processor's full resolved config (for the manifest)."""
        return {
            "class": type(self.processor).__name__,
            "config": json.loads(self.processor.to_json_string()),
        }


def hf_preprocess(spec: str, local_only: bool, config) -> HFProcessor | Preprocess:
    """The model's own image processor, or the official pipeline when it has no
    ``preprocessor_config.json`` (said in a warning)."""
    from transformers import AutoImageProcessor
    from transformers.utils import cached_file
    from transformers.utils import logging as hf_logging

    try:
        path = cached_file(
            spec,
            "preprocessor_config.json",
            local_files_only=local_only,
            _raise_exceptions_for_missing_entries=False,
        )
    except Exception:  # noqa: BLE001 - any failure means: no processor config available
        path = None
    if path is None:
        size = getattr(config, "image_size", 224)
        log.warning(
            "model %s has no preprocessor_config.json; using the official "
            "preprocessing (square %d resize, ImageNet mean/std)",
            spec,
            size,
        )
        return Preprocess.official(size)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # not its note that it falls back to PIL without torchvision
    try:
        settings = json.loads(Path(path).read_text())
        processor = AutoImageProcessor.from_pretrained(spec, local_files_only=local_only)
    except (ValueError, OSError) as error:
        raise ModelLoadError(
            f"{option('model')}: {path} is not an image processor config transformers can "
            f"load ({error})"
        ) from error
    finally:
        hf_logging.set_verbosity(verbosity)
    return HFProcessor(processor, settings)


def load_hf(
    spec: str, local_only: bool, classes: str | None = None, prompt: str | None = None
) -> tuple[nn.Module, Preprocess, dict]:
    """A Hugging Face classifier from a folder or hub id, its preprocessing, and the keyword
    arguments ``from_hf_model`` needs for it.  With ``classes``, a CLIP or SigLIP model becomes a
    zero-shot classifier over those classes.  A model whose classifier head is not in the
    checkpoint (transformers would initialise it at random) is refused."""
    from transformers import AutoConfig, AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    from .zero_shot import DEFAULT_PROMPT, build_zero_shot, contrastive_family, zero_shot_readout

    hf_logging.disable_progress_bar()
    config_file = Path(spec) / "config.json"
    if config_file.is_file():
        try:
            json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ModelLoadError(
                f"{option('model')}: {config_file} is not valid JSON ({error}); expected the "
                f"config.json that save_pretrained writes"
            ) from error
    try:
        config = AutoConfig.from_pretrained(spec, local_files_only=local_only)
    except ValueError as error:  # a config transformers does not know
        raise ModelLoadError(
            f"{option('model')}: {spec} is not a model transformers can load ({error})"
        ) from error
    architectures = list(getattr(config, "architectures", None) or [])
    classifier = any(a.endswith("ForImageClassification") for a in architectures)
    contrastive = contrastive_family(config) is not None and not classifier
    if classes is not None:
        if not contrastive:
            raise ModelLoadError(
                f"{option('classes')}: zero-shot classification needs a CLIP or "
                f"SigLIP model; {spec} is a {', '.join(architectures) or config.model_type}"
            )
        model, id2label, details = build_zero_shot(
            spec, classes, prompt or DEFAULT_PROMPT, local_only
        )
        kwargs = {
            "id2label": id2label,
            "details": details,
            "readout": zero_shot_readout(details["zero_shot"]["family"]),
        }
        return model, hf_preprocess(spec, local_only, config.vision_config), kwargs
    if contrastive:
        raise ModelLoadError(
            f"{option('model')}: {spec} is a {', '.join(architectures) or config.model_type}, "
            f"a contrastive image-text model without a classifier head; pass "
            f"{option('classes', 'FILE')} (lines 'label<TAB>class name') for "
            f"zero-shot classification"
        )
    model, info = AutoModelForImageClassification.from_pretrained(
        spec, local_files_only=local_only, output_loading_info=True
    )
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ModelLoadError(
            f"{option('model')}: {spec} ({type(model).__name__}) lacks weights for "
            f"{missing[:4]}{' ...' if len(missing) > 4 else ''}; transformers "
            f"would initialise them at random, so every path would be "
            f"meaningless. Pass a model whose checkpoint has its classifier"
        )
    return model, hf_preprocess(spec, local_only, config), {}
