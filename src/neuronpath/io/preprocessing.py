"""Image pipelines that are ours to define, written out so a run's manifest records them exactly.

``Preprocess.official`` is the authors' pipeline (docs/official-code.md#preprocessing): a square
resize to the model's image size (bilinear, antialiased) and ImageNet mean/std, no crop.  The
paper's checkpoint files (Google ``.npz``, MAE ``.pth``), which ship no processor, get their
documented pipelines here too.  A Hugging Face model's own pipeline is its image processor, run by
transformers itself (:class:`~neuronpath.models.huggingface.HFProcessor`), never a copy of it."""

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
        return cls(
            "official",
            (image_size, image_size),
            None,
            None,
            int(Image.Resampling.BILINEAR),
            1 / 255,
            IMAGENET_MEAN,
            IMAGENET_STD,
        )

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
