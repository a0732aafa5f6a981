"""Load a model by its :class:`~neuronpath.models.spec.ModelSpec`: the built-in demo, a local
Hugging Face folder, a hub id, a paper checkpoint file or ``timm:NAME``; and re-load a run's
model, checked against what the run recorded."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import torch

from ..engine.adapter import ModelAdapter
from ..errors import ModelLoadError, RunFormatError, option
from ..io.hub import hub_reachable
from ..io.preprocessing import Preprocess
from .huggingface import from_hf_model, load_hf
from .spec import DEMO, ModelSpec

log = logging.getLogger("neuronpath")


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep != "/" and os.sep in spec
    )


def load_model(
    spec: ModelSpec | str = DEMO, *, device: str | torch.device = "cpu", **options
) -> ModelAdapter:
    """Load a model and wrap it in an adapter.

    ``spec`` is a :class:`ModelSpec`, or its ``model`` with the other fields as keyword
    arguments (``load_model("x.pth", image_size=224)``).  ``model`` is ``"demo"`` (a small ViT
    trained on scikit-learn's digits on first use), a local Hugging Face model folder, a Hugging
    Face hub id (needs network the first time), a Google ViT ``.npz`` or MAE ``.pth`` checkpoint
    file, or ``timm:NAME`` (needs timm).  The token policy is where the model's head reads
    (found by a gradient probe); ``token`` narrows it within those positions.  ``units``:
    ``neurons`` (FFN neurons), ``heads`` (attention heads) or ``neurons+heads``.  ``classes`` (a
    file of lines ``label<TAB>class name``) turns a CLIP or SigLIP model into a zero-shot
    classifier over those classes, with ``prompt`` (default ``"a photo of a {}."``).
    """
    spec = replace(spec, **options) if isinstance(spec, ModelSpec) else ModelSpec(spec, **options)
    device = torch.device(device)
    model_dtype, _ = spec.precision(device)
    name = spec.model
    kwargs: dict = {}
    if name == DEMO:
        from .demo import demo_model_dir  # the shipped weights

        model, prep, kwargs = load_hf(str(demo_model_dir()), True)
    elif Path(name).expanduser().is_dir():
        model, prep, kwargs = load_hf(str(Path(name).expanduser()), True, spec.classes, spec.prompt)
    elif name.startswith("timm:"):
        from .timm_models import load_timm

        adapter = load_timm(name[len("timm:") :], token=spec.token, units=_base_units(spec))
        if spec.preprocess == "official":
            adapter.preprocess = Preprocess.official(spec.image_size or 224)
        return _with_saes(adapter.to(device=device, dtype=model_dtype), spec)
    elif Path(name).expanduser().is_file():
        from .checkpoints import load_checkpoint

        model, prep = load_checkpoint(Path(name).expanduser(), spec)
    elif _looks_like_path(name):
        raise ModelLoadError(f"{option('model')}: no such folder {name}")
    else:
        model, prep, kwargs = _load_from_hub(name, spec.classes, spec.prompt)
    if spec.classes is not None and not kwargs.get("details"):
        raise ModelLoadError(
            f"{option('classes')}: zero-shot classification needs a CLIP or "
            f"SigLIP model folder or hub id, not {name}"
        )
    if spec.preprocess == "official":
        prep = Preprocess.official(getattr(model.config, "image_size", 224))
    adapter = from_hf_model(
        model.to(model_dtype),
        preprocess=prep,
        token=spec.token,
        name=name,
        units=_base_units(spec),
        **kwargs,
    )
    if hasattr(model, "embedding_head"):  # zero-shot: its units' direct effects can be read
        adapter.embedding_head = model.embedding_head(kwargs["details"]["zero_shot"]["class_names"])
    return _with_saes(adapter.to(device=device, dtype=model_dtype), spec)


def _base_units(spec: ModelSpec) -> str:
    """The units the adapter is built with: SAE latents are put on neurons' layers after."""
    return "neurons" if spec.units == "sae" else spec.units


def _with_saes(adapter: ModelAdapter, spec: ModelSpec) -> ModelAdapter:
    """``adapter`` with the layers ``spec.sae`` names read through their SAEs."""
    if spec.sae is not None:
        from .sae_files import load_sae_spec

        adapter.use_saes(load_sae_spec(spec.sae, spec.sae_site))
    return adapter


def _load_from_hub(spec: str, classes: str | None, prompt: str | None):
    try:
        return load_hf(spec, True, classes, prompt)  # already in the local cache?
    except OSError:
        pass
    if not hub_reachable():
        raise ModelLoadError(
            f"model: {spec!r} is not a local folder and the Hugging Face Hub cannot be reached "
            f"(no network, or HF_HUB_OFFLINE is set). On a machine with network, download it "
            f"with `hf download {spec} --local-dir DIR` (or "
            f"`AutoModelForImageClassification.from_pretrained('{spec}').save_pretrained(DIR)` "
            f"plus its image processor), copy DIR here and pass {option('model', 'DIR')}."
        )
    try:
        return load_hf(spec, False, classes, prompt)
    except OSError as error:
        raise ModelLoadError(
            f"{option('model')}: could not load {spec!r} from the Hugging Face "
            f"Hub: {error}. Pass a local model folder: "
            f"{option('model', 'DIR')}."
        ) from error


def load_run_model(
    run_dir: Path, settings: dict, model: str | None, device: torch.device
) -> ModelAdapter:
    """The model a run recorded in its ``settings`` (or ``model``, if it moved), checked: the
    same weights, image preprocessing and token policy, or :class:`RunFormatError`."""
    spec = ModelSpec.from_settings(settings, model)
    _check_sae_files(run_dir, settings)
    try:
        adapter = load_model(spec, device=device)
    except Exception as error:
        raise RunFormatError(
            f"{run_dir}: cannot load its model {spec.model!r} ({error}); pass "
            f"{option('model', 'DIR')} with the model the run was made "
            f"with"
        ) from error
    if adapter.weights_hash() != settings["weights_sha256"]:
        raise RunFormatError(
            f"{run_dir} was made by a different model than {spec.model!r} "
            f"(weights SHA-256 {settings['weights_sha256'][:12]}... in the run, "
            f"{adapter.weights_hash()[:12]}... now)"
        )
    _check_saes(run_dir, settings, adapter.saes())
    stored = settings["preprocess"]
    current = json.loads(json.dumps(adapter.preprocess.to_dict()))
    if stored != current:
        if "class" not in stored and stored.get("name") == "model":
            # a run made when ``--preprocess model`` was a copy of the processor, not the processor
            log.warning(
                "%s was made with neuronpath's earlier copy of the image processor "
                "(%s); this run now uses the model's own (%s)",
                run_dir,
                stored,
                current,
            )
        else:
            raise RunFormatError(
                f"{run_dir} was made with other image preprocessing than "
                f"{spec.model!r} gives now ({stored} in the run, {current} now); "
                f"pass {option('model', 'DIR')} with the model folder the run "
                f"was made with"
            )
    return adapter


def _check_sae_files(run_dir: Path, settings: dict) -> None:
    """Refuse a run whose SAE files are gone, naming the layer and the file."""
    for l, f in (settings.get("sae_files") or {}).items():
        if not Path(f).exists():
            raise RunFormatError(
                f"{run_dir} was made with the SAE of layer {l} read from {f}, which no longer "
                f"exists; restore it, or re-run find"
            )


def _check_saes(run_dir: Path, settings: dict, saes: dict) -> None:
    """Refuse SAEs whose weights are not those the run recorded (``settings["sae"]``)."""
    now = {str(l): sae.origin.get("sha256") for l, sae in saes.items()}
    then, files = settings.get("sae") or {}, settings.get("sae_files") or {}
    changed = sorted((l for l in set(now) | set(then) if now.get(l) != then.get(l)), key=int)
    if changed:
        l = changed[0]
        raise RunFormatError(
            f"{run_dir} was made with another SAE at layer {l} than {files.get(l)} holds now "
            f"(weights SHA-256 {str(then.get(l))[:12]}... in the run, {str(now.get(l))[:12]}... "
            f"now); restore it, or re-run find"
        )


def load_run_saes(run_dir: Path, settings: dict) -> dict:
    """``{layer: SparseAutoencoder}``: the SAEs a latent run was made with, read from the files
    its ``settings`` name, checked as :func:`load_run_model` checks them (no model is loaded)."""
    from .sae_files import load_sae

    _check_sae_files(run_dir, settings)
    files = settings.get("sae_files") or {}
    saes = {int(l): load_sae(f, settings.get("sae_site")) for l, f in files.items()}
    _check_saes(run_dir, settings, saes)
    return saes
