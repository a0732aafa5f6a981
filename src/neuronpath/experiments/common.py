"""What every experiment shares: devices and dtypes, sizes, package versions, the run log, and
re-loading a run's model (checked against its weights hash)."""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import re
from importlib import metadata
from pathlib import Path

import torch

from ..errors import RunFormatError, option
from ..models.loading import load_model
from ..version import __version__

log = logging.getLogger("neuronpath")

# name -> (model weights dtype, autocast dtype or None); "tf32" is float32 with TF32 matmuls on CUDA
DTYPES = {"float32": (torch.float32, None), "float64": (torch.float64, None),
          "tf32": (torch.float32, None),
          "bfloat16": (torch.float32, torch.bfloat16), "float16": (torch.float32, torch.float16)}


def precision(dtype: str, device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """(model dtype, autocast dtype) of a ``dtype`` name; ``tf32`` switches this process's CUDA
    matmuls and convolutions to TF32 (only on CUDA), every other name switches them off."""
    if dtype not in DTYPES:
        raise ValueError(f"{option('dtype')}: expected one of {list(DTYPES)}, got {dtype!r}")
    if dtype == "tf32" and device.type != "cuda":
        raise ValueError(f"{option('dtype')}: tf32 needs a CUDA device, got {device}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = dtype == "tf32"
    return DTYPES[dtype]


def parse_bytes(text: str | int) -> int:
    """'2GiB', '512MiB', '1.5GB' or a plain number of bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(i?)B?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"{option('memory_budget')}: expected a size such as 2GiB or 512MiB, got {text!r}")
    number, unit, binary = match.groups()
    base = 1024 if binary or not unit else 1000
    return int(float(number) * base ** " KMGT".index(unit.upper() or " "))


def resolve_device(device: str) -> torch.device:
    """``auto`` (cuda, then mps, then cpu) or a device name that is available here."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{option('device')}: expected auto, cpu, cuda, cuda:N or mps; "
                         f"got {device!r}")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option('device')}: {device} requested but CUDA is not available")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"{option('device')}: {device} requested but this machine has "
                             f"{torch.cuda.device_count()} CUDA devices")
    if parsed.type == "mps" and not (getattr(torch.backends, "mps", None)
                                     and torch.backends.mps.is_available()):
        raise ValueError(f"{option('device')}: mps requested but not available")
    return parsed


def versions() -> dict:
    """Python and package versions, for manifests."""
    out = {"python": platform.python_version(), "neuronpath": __version__}
    for package in ("torch", "transformers", "numpy", "pillow", "safetensors"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


@contextlib.contextmanager
def log_to(path: Path):
    """Copy the package's log into ``path`` for the duration of the context."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def load_run_model(run_dir: Path, manifest: dict, model: str | None, device: torch.device):
    """The model of a find run (or ``model``, if it moved), checked against the weights hash
    stored by find."""
    settings = manifest["settings"]
    spec = model or settings["model"]
    model_dtype, _ = precision(settings["dtype"], device)
    try:
        adapter = load_model(spec, device=device, dtype=model_dtype, token=settings["token"],
                             preprocess="official" if settings["preprocess"]["name"] == "official"
                             else "model",
                             image_size=settings.get("image_size"),
                             fc_norm_twice=settings.get("fc_norm_twice", False),
                             classes=settings.get("classes"), prompt=settings.get("prompt"))
    except Exception as error:
        raise RunFormatError(f"{run_dir}: cannot load its model {spec!r} ({error}); pass "
                             f"{option('model', 'DIR')} with the model the run was made "
                             f"with") from error
    if adapter.weights_hash() != settings["weights_sha256"]:
        raise RunFormatError(f"{run_dir} was made by a different model than {spec!r} (weights "
                             f"SHA-256 {settings['weights_sha256'][:12]}... in the run, "
                             f"{adapter.weights_hash()[:12]}... now)")
    stored = settings["preprocess"]
    current = json.loads(json.dumps(adapter.preprocess.to_dict()))
    if stored != current:
        if "class" not in stored and stored.get("name") == "model":
            # a run made when ``--preprocess model`` was a copy of the processor, not the processor
            log.warning("%s was made with neuronpath's earlier copy of the image processor "
                        "(%s); this run now uses the model's own (%s)", run_dir, stored, current)
        else:
            raise RunFormatError(f"{run_dir} was made with other image preprocessing than "
                                 f"{spec!r} gives now ({stored} in the run, {current} now); "
                                 f"pass {option('model', 'DIR')} with the model folder the run "
                                 f"was made with")
    return adapter


def model_widths(adapter) -> dict:
    """The manifest's width fields: ``width`` (one FFN width, or None where layers differ) and
    ``widths`` (one per layer)."""
    widths = adapter.widths()
    return {"width": widths[0] if len(set(widths)) == 1 else None, "widths": widths}


def run_widths(manifest: dict) -> list[int] | None:
    """Per-layer FFN widths recorded by a find run (None for a run that recorded none)."""
    model = manifest.get("model", {})
    if model.get("widths"):
        return list(model["widths"])
    if model.get("width"):
        return [model["width"]] * model["num_layers"]
    return None
