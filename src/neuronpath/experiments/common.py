"""What every experiment shares: how a command runs (:class:`Execution`), devices, sizes,
package versions and the run log."""

from __future__ import annotations

import contextlib
import logging
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from ..errors import InputError, option
from ..options import setting
from ..pathformat import decode, encode, record_units
from ..version import __version__

log = logging.getLogger("neuronpath")


PASS_BATCH = 16  # images per batch of the commands that run forwards only (no gradients)


@dataclass(frozen=True)
class Execution:
    """How a command runs, apart from what it computes: the device, images per batch, image
    decoding processes (default: 0 on a CPU, up to 4 beside a GPU) and the progress bar
    (default: on a terminal)."""

    device: str = setting("auto", "cpu, cuda, cuda:N, mps or auto (cuda, then mps, then cpu)")
    batch_size: int = setting(8, "images per batch", type=int)
    workers: int | None = setting(
        None,
        "processes decoding images in the background (default: 0 on a CPU, up to 4 beside a GPU)",
        type=int,
    )
    progress: bool | None = setting(None, cli=False)

    @classmethod
    def forwards(cls, **given) -> "Execution":
        """The execution of a command that runs forwards only: larger batches."""
        return cls(**{"batch_size": PASS_BATCH, **given})

    def __post_init__(self):
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(
                f"{option('batch_size')}: expected a positive integer, got {self.batch_size!r}"
            )
        if self.workers is not None and self.workers < 0:
            raise InputError(
                f"{option('workers')}: expected a number of processes >= 0, got {self.workers}"
            )


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
        raise InputError(
            f"{option('device')}: expected auto, cpu, cuda, cuda:N or mps; got {device!r}"
        )
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{option('device')}: {device} requested but CUDA is not available")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise InputError(
                f"{option('device')}: {device} requested but this machine has "
                f"{torch.cuda.device_count()} CUDA devices"
            )
    if parsed.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise InputError(f"{option('device')}: mps requested but not available")
    return parsed


def peak_memory(device: torch.device) -> dict:
    """This process's peak resident memory so far (bytes; Linux and macOS), and on CUDA the
    peak memory torch allocated on the device."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"rss_bytes": rss if sys.platform == "darwin" else rss * 1024}
    if device.type == "cuda":
        out["cuda_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


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


def model_widths(adapter) -> dict:
    """The manifest's width fields: ``width`` (one FFN width, or None where layers differ) and
    ``widths`` (one per layer)."""
    widths = adapter.widths()
    return {"width": widths[0] if len(set(widths)) == 1 else None, "widths": widths}


def path_fields(row: torch.Tensor, adapter) -> dict:
    """A record's path fields for one image's engine path (sites, or sites x K): ``"path"`` in
    the run's format, and ``"units"`` for head and mixed paths (:mod:`neuronpath.pathformat`)."""
    units = adapter.unit_set
    path = encode(row.tolist(), units, adapter.kinds, adapter.blocks)
    return {"path": path} if units == "neurons" else {"path": path, "units": units}


def path_tensor(records, adapter) -> torch.Tensor:
    """The engine paths (images, sites) or (images, sites, K) of some records, one per image."""
    return torch.tensor(
        [decode(r["path"], record_units(r), adapter.kinds, adapter.blocks) for r in records]
    )


def run_class_names(path, run, records, what: str = "class_names") -> dict[str, str]:
    """A ``--class-names`` file for a :class:`~.run.Run`, checked: every label must be one of
    the run's classes or a label of its model (a file for all of ImageNet serves a 20-class
    run; one with its columns swapped does not)."""
    from ..io.labels import check_labels, read_class_names

    names = read_class_names(path, what)
    known = run.known_labels
    known |= {r.get("label_name") for r in records} | {r.get("pred_name") for r in records}
    check_labels(names, known - {None}, path, what, "classes of the run or labels of its model")
    return names
