"""Image folders (one sub-folder per class, mapped to label ids by :mod:`.labels`), robust
image reading, and batches of preprocessed pixels decoded in background workers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ..errors import ImageReadError, InputError, option
from .labels import map_labels

log = logging.getLogger("neuronpath")

IMAGE_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".jfif",
}


@dataclass(frozen=True)
class ImageItem:
    id: str  # path relative to the data root, with forward slashes
    path: Path
    label: int
    folder: str


@dataclass
class ImageFolder:
    """A source's images with their labels (``kind``: ``folder``, ``flat`` or ``dataset``,
    :mod:`.sources`; ``extra``: what identifies a flat folder's labels file or a dataset)."""

    root: Path
    items: list[ImageItem]
    class_to_label: dict[str, int]
    mapping: str
    kind: str = "folder"
    extra: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {
            "root": str(self.root),
            "images": len(self.items),
            "mapping": self.mapping,
            "classes": self.class_to_label,
            "source": self.kind,
            **self.extra,
        }

    def settings(self) -> dict:
        """What a run's settings record of the source: the folder (as runs always did), and for
        a flat folder its labels file, for a dataset its spec, columns and fingerprint."""
        if self.kind == "dataset":
            return {"data": self.extra["dataset"], "data_source": dict(self.extra)}
        out = {"data": str(self.root.resolve())}
        if self.kind == "flat":
            out["data_source"] = {"kind": "flat", **self.extra}
        return out


def scan_image_folder(root: str | Path, id2label: dict[int, str], how: str = "auto") -> ImageFolder:
    """List the images of an ImageFolder-layout directory, sorted by class then file name."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(
            f"{option('data')}: {root} is not a folder; expected one sub-folder of images per class"
        )
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        loose = sum(1 for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        hint = (
            f"; it holds {loose} images directly: name their labels with "
            f"{option('labels_file', 'FILE')}"
            if loose
            else ""
        )
        raise InputError(
            f"{option('data')}: {root} has no class sub-folders; expected the ImageFolder "
            f"layout DIR/<class>/<image>{hint}"
        )
    mapping, decided = map_labels(folders, id2label, how)
    log.info("data: class folders mapped to label ids by %s", decided)
    if decided == "sorted-folders":
        log.warning("data: class ids taken from sorted folder order (%s -> 0, ...)", folders[0])
    items = []
    for folder in folders:
        count = len(items)
        for path in sorted((root / folder).rglob("*")):
            # a dangling link is listed too: reading it fails, and it is reported and skipped
            if (path.is_file() or path.is_symlink()) and path.suffix.lower() in IMAGE_EXTENSIONS:
                items.append(
                    ImageItem(path.relative_to(root).as_posix(), path, mapping[folder], folder)
                )
        if len(items) == count:
            log.warning("data: the class folder %s has no images", root / folder)
    if not items:
        raise InputError(
            f"{option('data')}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}"
        )
    return ImageFolder(root, items, mapping, decided)


def interleave_classes(items: list[ImageItem]) -> list[ImageItem]:
    """Round-robin over classes (first image of every class, then the second, ...), so that
    a ``limit`` takes a class-balanced sample."""
    by_class: dict[str, list[ImageItem]] = {}
    for item in items:
        by_class.setdefault(item.folder, []).append(item)
    queues = list(by_class.values())
    out = []
    for rank in range(max(len(q) for q in queues)):
        out.extend(q[rank] for q in queues if rank < len(q))
    return out


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: 16-bit and float images scaled to their maximum, palettes
    through RGBA."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.max() > 0 else 1.0
        image = Image.fromarray((array / top * 255).astype(np.uint8), "L")
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Read an image as 8-bit RGB (from L, LA, P, RGBA, CMYK, 16-bit or float modes)."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except Exception as error:  # PIL raises many types for bad files
        raise ImageReadError(
            f"{path}: cannot read image ({type(error).__name__}: {error})"
        ) from error


@dataclass
class Batch:
    """Readable images of a batch with their pixels (None if none was readable), and the
    unreadable ones with their errors."""

    items: list[ImageItem]
    pixels: torch.Tensor | None
    errors: list[tuple[ImageItem, ImageReadError]]


def open_item(item: ImageItem) -> Image.Image:
    """An item's decoded image, whatever its source: a file, or a dataset row (any ``path``
    with a ``load()`` method, see ``io/sources.DatasetRow``)."""
    return item.path.load() if hasattr(item.path, "load") else load_image(item.path)


class _Decoded:
    """Dataset over image items: (position, pixels or None, error or None)."""

    def __init__(self, items: list[ImageItem], preprocess):
        self.items, self.preprocess = items, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            return i, self.preprocess(open_item(self.items[i])), None
        except ImageReadError as error:
            return i, None, error


def image_batches(
    items: list[ImageItem], preprocess, batch_size: int, workers: int = 0, pin_memory: bool = False
) -> Iterator[Batch]:
    """Batches of ``batch_size`` items in order, read and preprocessed by ``workers`` background
    processes (a ``torch.utils.data.DataLoader``; 0 reads in this process), pixels pinned for
    asynchronous copies to a GPU when ``pin_memory``.  Unreadable images come back as errors of
    their batch, never as pixels."""

    def collate(rows):
        good = [(i, x) for i, x, error in rows if error is None]
        return (
            [i for i, _ in good],
            torch.stack([x for _, x in good]) if good else None,
            [(i, error) for i, _, error in rows if error is not None],
        )

    decoded = _Decoded(items, preprocess)
    loader = DataLoader(
        decoded,
        batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
    )
    for good, pixels, errors in loader:
        yield Batch([items[i] for i in good], pixels, [(items[i], e) for i, e in errors])
