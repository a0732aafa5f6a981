"""One model spec: which model a run reads and how it is shown the images.

:class:`ModelSpec` is a frozen value built once (from the command line, or by a Python caller)
and handed to every experiment.  It is written into a run's manifest by
:meth:`ModelSpec.settings` and read back by :meth:`ModelSpec.from_settings` -- the one place
where the manifest's model keys are named -- and :func:`model_differences` compares two runs'
model keys (a reused find run must have read the same neurons).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..engine.sae import SAE_SITES
from ..errors import InputError, option
from ..io.labels import LABEL_MAPPINGS
from ..pathformat import UNIT_SETS

# name -> (model weights dtype, autocast dtype or None); "tf32" is float32 with TF32 matmuls on CUDA
DTYPES = {
    "float32": (torch.float32, None),
    "float64": (torch.float64, None),
    "tf32": (torch.float32, None),
    "bfloat16": (torch.float32, torch.bfloat16),
    "float16": (torch.float32, torch.float16),
}
PREPROCESS_CHOICES = ("model", "official")
DEMO = "demo"


@dataclass(frozen=True)
class ModelSpec:
    """The model and how it reads images (each field's ``help`` is its command-line help)."""

    model: str = field(
        default=DEMO,
        metadata={
            "help": "HF model folder, hub id, Google .npz, MAE .pth or timm:NAME (default: the "
            f"built-in {DEMO})"
        },
    )
    dtype: str = field(
        default="float32",
        metadata={
            "choices": tuple(DTYPES),
            "help": "float32/float64 convert the model; tf32: float32 with TF32 matmuls (CUDA); "
            "bfloat16/float16 run it under autocast (see the README on when reduced "
            "precision is safe)",
        },
    )
    preprocess: str = field(
        default="model",
        metadata={
            "choices": PREPROCESS_CHOICES,
            "help": "the model's own image processor, or the official code's pipeline "
            "(docs/official-code.md#preprocessing)",
        },
    )
    token: str | None = field(
        default=None,
        metadata={
            "help": "token policy of the last stage (default: where the model's head reads, found "
            "by a gradient probe: cls for ViT, patches for mean-pooled heads, all for "
            "SigLIP and Swin): cls, distillation, patches[:PREFIX], all, a token index, or "
            "several joined by '+'"
        },
    )
    labels: str = field(
        default="auto",
        metadata={
            "choices": LABEL_MAPPINGS,
            "help": "how class folders map to label ids (default: auto)",
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "type": int,
            "help": "input size for .npz/.pth checkpoints (default 224, as the official code; "
            "position embeddings are resized when the grid differs)",
        },
    )
    fc_norm_twice: bool = field(
        default=False,
        metadata={
            "help": "MAE checkpoints: apply fc_norm twice, as the official code does "
            "(docs/official-code.md#mae)"
        },
    )
    classes: str | None = field(
        default=None,
        metadata={
            "help": "zero-shot CLIP / SigLIP: a file of lines 'label<TAB>class name' (labels are "
            "the image folder names)"
        },
    )
    prompt: str | None = field(
        default=None, metadata={"help": "zero-shot prompt template (default: 'a photo of a {}.')"}
    )
    units: str = field(
        default="neurons",
        metadata={
            "choices": UNIT_SETS,
            "help": "what a path is made of: FFN neurons (the paper's), attention heads (one "
            "per layer), neurons+heads (per layer the best unit of either kind), or sae "
            "(sparse-autoencoder latents where --sae gives an SAE, neurons elsewhere)",
        },
    )
    sae: str | None = field(
        default=None,
        metadata={
            "help": "--units sae: LAYER=PATH[,LAYER=PATH...] (layers from 0), or a file of lines "
            "'LAYER PATH'; PATH a SAELens folder (cfg.json + sae_weights.safetensors, as "
            "SAELens and `neuronpath sae train` write it) or a saev checkpoint (any schema)"
        },
    )
    sae_site: str | None = field(
        default=None,
        metadata={
            "choices": SAE_SITES,
            "help": "where the SAEs read: ffn (the FFN hidden state, the neurons' site) or "
            "resid (the residual stream after the block); default: what each file says",
        },
    )

    def __post_init__(self):
        if isinstance(self.dtype, torch.dtype):  # a Python caller's torch dtype
            names = {v[0]: k for k, v in DTYPES.items() if v[1] is None and k != "tf32"}
            object.__setattr__(self, "dtype", names.get(self.dtype, str(self.dtype)))
        object.__setattr__(self, "model", str(self.model))
        for name, allowed in (
            ("dtype", DTYPES),
            ("preprocess", PREPROCESS_CHOICES),
            ("labels", LABEL_MAPPINGS),
            ("units", UNIT_SETS),
        ):
            if getattr(self, name) not in allowed:
                raise InputError(
                    f"{option(name)}: expected one of {list(allowed)}, got {getattr(self, name)!r}"
                )
        if (self.units == "sae") != (self.sae is not None):
            raise InputError(
                f"{option('sae')}: SAE latents need both {option('units', 'sae')} and "
                f"{option('sae', 'LAYER=PATH')}"
            )
        if self.sae_site is not None and self.sae_site not in SAE_SITES:
            raise InputError(
                f"{option('sae_site')}: expected one of {list(SAE_SITES)}, got {self.sae_site!r}"
            )
        if self.image_size is not None and (
            not isinstance(self.image_size, int) or self.image_size < 1
        ):
            raise InputError(
                f"{option('image_size')}: expected a positive number of pixels, "
                f"got {self.image_size!r}"
            )

    def precision(self, device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
        """(model dtype, autocast dtype); ``tf32`` switches this process's CUDA matmuls and
        convolutions to TF32 (only on CUDA), every other name switches them off."""
        if self.dtype == "tf32" and device.type != "cuda":
            raise InputError(f"{option('dtype')}: tf32 needs a CUDA device, got {device}")
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.dtype == "tf32"
            torch.backends.cudnn.allow_tf32 = self.dtype == "tf32"
        return DTYPES[self.dtype]

    def settings(self, adapter, labels: str, weights_sha256: str | None = None) -> dict:
        """The manifest's model keys for ``adapter`` loaded from this spec, with the label
        mapping the image folder was read with: everything a run's neurons depend on besides
        the method (weights, dtype, image processor, token, labels, checkpoint options, and
        for a zero-shot model its label set and prompt)."""
        settings = {
            "model": self.model,
            "dtype": self.dtype,
            "weights_sha256": weights_sha256 or adapter.weights_hash(),
            "preprocess": adapter.preprocess.to_dict(),
            "token": adapter.token.name,
            "labels": labels,
            "image_size": self.image_size,
            "fc_norm_twice": self.fc_norm_twice,
        }
        if self.units != "neurons":  # neuron runs keep the keys they always had
            settings["units"] = self.units
        if self.units == "sae":  # which SAE reads each layer: its weights' digest, and where
            saes = adapter.saes()
            settings["sae"] = {str(l): sae.origin["sha256"] for l, sae in saes.items()}
            settings["sae_files"] = {str(l): sae.origin["file"] for l, sae in saes.items()}
            settings["sae_site"] = self.sae_site
        if self.classes is not None:  # zero-shot: the label set is part of the run's identity
            settings.update(
                classes=str(Path(self.classes).expanduser().resolve()),
                prompt=adapter.details["zero_shot"]["prompt"],
            )
        return json.loads(json.dumps(settings))  # as the manifest stores it (lists, not tuples)

    @classmethod
    def from_settings(cls, settings: dict, model: str | None = None) -> "ModelSpec":
        """The spec a run's manifest records (``model``: where its model is now, if it moved)."""
        preprocess = settings.get("preprocess") or {}
        return cls(
            model=model or settings["model"],
            dtype=settings.get("dtype", "float32"),
            preprocess="official" if preprocess.get("name") == "official" else "model",
            token=settings.get("token"),
            labels=settings.get("labels") or "auto",
            image_size=settings.get("image_size"),
            fc_norm_twice=settings.get("fc_norm_twice", False),
            classes=settings.get("classes"),
            prompt=settings.get("prompt"),
            units=settings.get("units", "neurons"),
            sae=",".join(f"{l}={f}" for l, f in settings["sae_files"].items())
            if settings.get("sae_files")
            else None,
            sae_site=settings.get("sae_site"),
        )


MODEL_KEYS = (
    "weights_sha256",
    "preprocess",
    "token",
    "labels",
    "image_size",
    "fc_norm_twice",
    "classes",
    "prompt",
    "units",
    "sae",
)


def model_differences(theirs: dict, ours: dict) -> list[str]:
    """The model keys on which two runs' settings differ, as ``key: THEIRS there, OURS here``
    (the dtype and the model's path may differ: the neurons are the same)."""
    defaults = {"fc_norm_twice": False, "units": "neurons"}

    def show(key, value):
        if key == "preprocess" and isinstance(value, dict):
            return f"{value.get('name')} ({value.get('class', 'written out')})"
        if key == "weights_sha256" and isinstance(value, str):
            return value[:12] + "..."
        return repr(value)

    return [
        f"{key}: {show(key, theirs.get(key, defaults.get(key)))} there, "
        f"{show(key, ours.get(key, defaults.get(key)))} here"
        for key in MODEL_KEYS
        if theirs.get(key, defaults.get(key)) != ours.get(key, defaults.get(key))
    ]
