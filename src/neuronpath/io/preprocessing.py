"""Image preprocessing, written out explicitly so that a run's manifest records it exactly.

``Preprocess.from_hf_config`` reproduces a Hugging Face ``ViTImageProcessor``-style config
(resize, optional centre crop, rescale, normalise) with PIL and NumPy, so no torchvision is
needed.  ``Preprocess.official`` is the authors' pipeline (spec §9): a square resize to the
model's image size (bilinear, antialiased) and ImageNet mean/std, no crop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize -> (centre crop) -> scale to [0, 1] -> normalise; PIL image -> (3, H, W) float32."""

    name: str
    resize: tuple[int, int] | None  # (height, width) exact resize
    shortest_edge: int | None  # or: resize the shorter side to this, keeping aspect ratio
    crop: tuple[int, int] | None  # (height, width) centre crop after resizing
    resample: int
    rescale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def official(cls, image_size: int = 224) -> "Preprocess":
        return cls("official", (image_size, image_size), None, None,
                   int(Image.Resampling.BILINEAR), 1 / 255, IMAGENET_MEAN, IMAGENET_STD)

    @classmethod
    def from_hf_config(cls, config: dict, name: str = "model") -> "Preprocess":
        """Build from a ``preprocessor_config.json`` dict (ViT/DeiT/BEiT-style processors)."""
        size = config.get("size", 224) if config.get("do_resize", True) else None
        resize = shortest = None
        if isinstance(size, int):
            resize = (size, size)
        elif isinstance(size, dict):
            if "height" in size and "width" in size:
                resize = (int(size["height"]), int(size["width"]))
            elif "shortest_edge" in size:
                shortest = int(size["shortest_edge"])
            else:
                raise ValueError(f"preprocessor config: unsupported 'size' {size!r}; expected "
                                 "height/width or shortest_edge")
        crop = None
        if config.get("do_center_crop", False):
            c = config.get("crop_size", 224)
            crop = (c, c) if isinstance(c, int) else (int(c["height"]), int(c["width"]))
        mean = config.get("image_mean", IMAGENET_MEAN) if config.get("do_normalize", True) else (0, 0, 0)
        std = config.get("image_std", IMAGENET_STD) if config.get("do_normalize", True) else (1, 1, 1)
        rescale = config.get("rescale_factor", 1 / 255) if config.get("do_rescale", True) else 1.0
        return cls(name, resize, shortest, crop, int(config.get("resample", 2)), float(rescale),
                   tuple(float(v) for v in _three(mean)), tuple(float(v) for v in _three(std)))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if self.resize is not None:
            image = image.resize((self.resize[1], self.resize[0]), self.resample)
        elif self.shortest_edge is not None:
            w, h = image.size
            s = self.shortest_edge / min(w, h)
            image = image.resize((max(1, round(w * s)), max(1, round(h * s))), self.resample)
        if self.crop is not None:
            ch, cw = self.crop
            w, h = image.size
            left, top = (w - cw) // 2, (h - ch) // 2
            image = image.crop((left, top, left + cw, top + ch))
        array = np.asarray(image, dtype=np.float32) * np.float32(self.rescale)
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(array.transpose(2, 0, 1).copy())

    def to_dict(self) -> dict:
        return asdict(self)


def _three(values) -> tuple:
    values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    return values * 3 if len(values) == 1 else values
