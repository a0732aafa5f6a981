"""``find --reference DIR``: each unit's mean over a folder of reference images, at the positions
the model reads, for the path methods whose options start from it (a mean baseline, mean
ablation); it reaches them as ``CleanPass.reference``."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from ..engine.interventions import record_neurons
from ..errors import InputError, option
from ..io.images import IMAGE_EXTENSIONS, ImageItem, image_batches

log = logging.getLogger("neuronpath")


def file_digest(path: Path) -> str | None:
    """The SHA-256 of a file's bytes (None if it cannot be read)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def reference_files(folder: str | Path, run_paths: set[Path] = frozenset()) -> list[Path]:
    """Every image file under ``folder``, sorted; refused when there are none, or when one is an
    image of the run (``run_paths``, resolved): the same file, or a copy of one (by content)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"{option('reference')}: {root} is not a folder of images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise InputError(f"{option('reference')}: no image files under {root}")
    same = sorted(p for p in files if p.resolve() in run_paths)
    if not same and run_paths:  # a copy under another name is the same image
        ours = {file_digest(p) for p in run_paths} - {None}
        same = [p for p in files if file_digest(p) in ours]
    if same:
        raise InputError(
            f"{option('reference')}: {len(same)} of its images are images of the run (e.g. "
            f"{same[0]}); a reference must be other images"
        )
    return files


def reference_identity(folder: str | Path, files: list[Path]) -> dict:
    """What the manifest records of a reference set: the folder, how many images, and a digest
    of their names and sizes (another set is another run)."""
    root = Path(folder).expanduser()
    listing = "\n".join(f"{p.relative_to(root).as_posix()}\t{p.stat().st_size}" for p in files)
    return {
        "folder": str(root.resolve()),
        "images": len(files),
        "sha256": hashlib.sha256(listing.encode()).hexdigest(),
    }


def reference_means(adapter, files: list[Path], batch_size: int) -> list[torch.Tensor]:
    """Per layer, (tokens, coords): the mean over the readable ``files`` of every unit's
    coordinates at the adapter's read positions, summed in float64; unreadable files are
    reported and left out."""
    items = [ImageItem(p.name, p, -1, "") for p in files]
    totals, count = None, 0
    for batch in image_batches(items, adapter.preprocess, batch_size):
        for item, error in batch.errors:
            log.warning("reference: skipping %s: %s", item.path, error)
        if not batch.items:
            continue
        with torch.inference_mode(), record_neurons(adapter, coordinates=True) as acts:
            adapter.logits(batch.pixels.to(adapter.device, adapter.dtype))
        units = [adapter.units(l) for l in range(adapter.num_layers)]
        sums = [m.source(acts[l]).double().sum(0) for l, m in enumerate(units)]
        totals = sums if totals is None else [a + b for a, b in zip(totals, sums)]
        count += len(batch.items)
    if totals is None:
        raise InputError(f"{option('reference')}: none of its {len(files)} images can be read")
    log.info("reference: means of %d images (%d unreadable)", count, len(files) - count)
    return [(t / count).to(adapter.dtype) for t in totals]
