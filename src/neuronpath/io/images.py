"""Image folders (one sub-folder per class, mapped to label ids by :mod:`.labels`), robust
image reading, and batches of preprocessed pixels."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ImageReadError
from .labels import map_labels

log = logging.getLogger("neuronpath")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".ppm", ".pgm", ".jfif"}


@dataclass(frozen=True)
class ImageItem:
    id: str  # path relative to the data root, with forward slashes
    path: Path
    label: int
    folder: str


@dataclass
class ImageFolder:
    root: Path
    items: list[ImageItem]
    class_to_label: dict[str, int]
    mapping: str

    def describe(self) -> dict:
        return {"root": str(self.root), "images": len(self.items), "mapping": self.mapping,
                "classes": self.class_to_label}


def scan_image_folder(root: str | Path, id2label: dict[int, str], how: str = "auto") -> ImageFolder:
    """List the images of an ImageFolder-layout directory, sorted by class then file name."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data: {root} is not a folder; expected one sub-folder of "
                                f"images per class")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"data: {root} has no class sub-folders; expected the ImageFolder "
                         f"layout DIR/<class>/<image>")
    mapping, decided = map_labels(folders, id2label, how)
    log.info("data: class folders mapped to label ids by %s", decided)
    if decided == "sorted-folders":
        log.warning("data: class ids taken from sorted folder order (%s -> 0, ...)", folders[0])
    items = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                items.append(ImageItem(path.relative_to(root).as_posix(), path,
                                       mapping[folder], folder))
    if not items:
        raise ValueError(f"data: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}")
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


def load_image(path: str | Path) -> Image.Image:
    """Read an image as 8-bit RGB (from L, LA, P, RGBA, CMYK, 16-bit or float modes)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                array = np.asarray(image, dtype=np.float64)
                top = array.max() if array.max() > 0 else 1.0
                image = Image.fromarray((array / top * 255).astype(np.uint8), "L")
            elif image.mode in ("P", "PA"):
                image = image.convert("RGBA")
            return image.convert("RGB")
    except Exception as error:  # PIL raises many types for bad files
        raise ImageReadError(f"{path}: cannot read image ({type(error).__name__}: {error})") from error


def load_pixels(items: list[ImageItem], preprocess) -> tuple[list[ImageItem], list, list[tuple]]:
    """Read and preprocess images; returns (readable items, their tensors, [(item, error)])."""
    good, pixels, errors = [], [], []
    for item in items:
        try:
            pixels.append(preprocess(load_image(item.path)))
            good.append(item)
        except ImageReadError as error:
            errors.append((item, error))
    return good, pixels, errors
