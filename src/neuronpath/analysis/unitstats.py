"""Streaming statistics of units over a set of images, in memory that grows with the number of
units, never with the number of images; the same whatever order the images come in, and
mergeable, so a resumed or ``torchrun``-shared pass gives the numbers of one uninterrupted pass.

One implementation serves two passes:

* the **neuron atlas** (``neuronpath neurons``): per tracked unit the count, mean, minimum,
  maximum and share of images where it is active (value > 0), its top-k and bottom-k images
  (with the token where it peaks in each; ties go to the image with the smaller seeded hash of
  its id), and its
  values on a fixed sample of images -- the ``sample`` images with the smallest seeded hash of
  their id, the same images for every unit -- from which quantiles and histograms come;
* the **reference set** of ``evaluate``'s mean ablation and matched control: per layer the mean
  of the site's coordinates at each read position, and a bounded sample of activation levels
  per layer (from each image a seeded share of each layer's units) whose quantiles are the
  matched control's bins.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from ..draws import seeded_generator

SAMPLE_PER_LAYER = 200_000  # reference: activation levels kept per layer for the quantile bins


def image_key(seed: int, image: str) -> int:
    """A seeded 64-bit hash of an image id: the atlas's sample is the smallest keys."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{image}".encode()).digest()[:8], "big") >> 1


class UnitStats:
    """Streaming statistics (see the module docstring).

    ``counts``: units per layer; ``units``: per layer the indices tracked (default: all);
    ``top``/``bottom``: images kept per unit at each end; ``sample``: images whose values of
    every tracked unit are kept (the atlas's quantiles); ``coordinates``: the shape
    (positions, coords) of each layer's coordinates to average (the reference's means);
    ``layer_sample``: keep the reference's per-layer level sample for ``images`` images."""

    def __init__(
        self,
        counts: Sequence[int],
        units: Sequence[Sequence[int]] | None = None,
        *,
        top: int = 0,
        bottom: int = 0,
        sample: int = 0,
        coordinates: Sequence[tuple[int, int]] | None = None,
        layer_sample: int | None = None,
        seed: int = 0,
    ):
        self.seed, self.top_k, self.bottom_k, self.sample_size = seed, top, bottom, sample
        self.units = [
            np.arange(n) if units is None else np.asarray(units[l], dtype=np.int64)
            for l, n in enumerate(counts)
        ]
        self.count = 0
        self.images: list[str] = []  # the images added, in the order they came (for merging)
        sizes = [len(u) for u in self.units]
        self.sum = [np.zeros(s) for s in sizes]
        self.min = [np.full(s, np.inf) for s in sizes]
        self.max = [np.full(s, -np.inf) for s in sizes]
        self.active = [np.zeros(s, dtype=np.int64) for s in sizes]
        self.top = [_Ends(s, top, largest=True, seed=seed) for s in sizes]
        self.bottom = [_Ends(s, bottom, largest=False, seed=seed) for s in sizes]
        self.sample_keys: list[int] = []
        self.sample_images: list[str] = []
        self.sample_values: list[list[np.ndarray]] = [[] for _ in sizes]  # per layer, per image
        self.coord_sums = None if coordinates is None else [np.zeros(c) for c in coordinates]
        self.take = (
            None
            if layer_sample is None
            else [max(1, min(n, SAMPLE_PER_LAYER // max(layer_sample, 1))) for n in counts]
        )
        self.layer_samples: list[list[np.ndarray]] = [[] for _ in counts]

    def add(
        self,
        images: Sequence[str],
        levels: Sequence[np.ndarray],
        peaks: Sequence[np.ndarray] | None = None,
        coordinates: Sequence[np.ndarray] | None = None,
    ) -> None:
        """A batch of images: per layer every unit's value (images, n_l) (its mean over the
        read positions), optionally the token where each peaks (images, n_l) and the
        coordinates (images, positions, coords)."""
        images = list(images)
        self.count += len(images)
        self.images += images
        for l, level in enumerate(levels):
            level = np.asarray(level, dtype=np.float64)
            mine = level[:, self.units[l]]
            self.sum[l] += mine.sum(0)
            np.minimum(self.min[l], mine.min(0, initial=np.inf), out=self.min[l])
            np.maximum(self.max[l], mine.max(0, initial=-np.inf), out=self.max[l])
            self.active[l] += (mine > 0).sum(0)
            peak = None if peaks is None else np.asarray(peaks[l])[:, self.units[l]]
            self.top[l].add(mine, images, peak)
            self.bottom[l].add(mine, images, peak)
            if self.take is not None:  # the reference's seeded share of the layer's units
                for b, image in enumerate(images):
                    chosen = torch.randperm(
                        level.shape[-1],
                        generator=seeded_generator("reference", self.seed, image, l),
                    )[: self.take[l]].numpy()
                    self.layer_samples[l].append(level[b, chosen])
            if self.coord_sums is not None:
                self.coord_sums[l] += np.asarray(coordinates[l], dtype=np.float64).sum(0)
        if self.sample_size:
            for b, image in enumerate(images):
                values = [
                    np.asarray(level, dtype=np.float64)[b, u]
                    for level, u in zip(levels, self.units)
                ]
                self._sample(image_key(self.seed, image), image, values)

    def _sample(self, key: int, image: str, values: list[np.ndarray]) -> None:
        """Keep an image's values if its key is among the ``sample`` smallest."""
        self.sample_keys.append(key)
        self.sample_images.append(image)
        for l, v in enumerate(values):
            self.sample_values[l].append(np.asarray(v, dtype=np.float64))
        if len(self.sample_keys) > self.sample_size:  # drop the largest key
            worst = int(np.argmax(self.sample_keys))
            for seq in (self.sample_keys, self.sample_images, *self.sample_values):
                seq.pop(worst)

    def merge(self, other: "UnitStats") -> None:
        """Add another pass's statistics over other images (a rank's share)."""
        self.count += other.count
        self.images += other.images
        for l in range(len(self.units)):
            self.sum[l] += other.sum[l]
            np.minimum(self.min[l], other.min[l], out=self.min[l])
            np.maximum(self.max[l], other.max[l], out=self.max[l])
            self.active[l] += other.active[l]
            self.top[l].merge(other.top[l])
            self.bottom[l].merge(other.bottom[l])
            self.layer_samples[l] += other.layer_samples[l]
            if self.coord_sums is not None:
                self.coord_sums[l] += other.coord_sums[l]
        for i, (key, image) in enumerate(zip(other.sample_keys, other.sample_images)):
            self._sample(key, image, [values[i] for values in other.sample_values])

    # -- results --

    def means(self) -> list[np.ndarray]:
        """Per layer, each tracked unit's mean value."""
        return [s / max(self.count, 1) for s in self.sum]

    def coordinate_means(self) -> list[np.ndarray]:
        """Per layer, the mean coordinates (positions, coords) (the reference's)."""
        return [s / max(self.count, 1) for s in self.coord_sums]

    def edges(self, bins: int) -> list[np.ndarray]:
        """Per layer, the ``bins - 1`` inner quantile edges of the sampled activation levels
        (the reference's, for the matched control)."""
        quantiles = np.linspace(0, 1, bins + 1)[1:-1]
        return [np.quantile(np.concatenate(s), quantiles) for s in self.layer_samples]

    def sample(self, layer: int) -> np.ndarray:
        """(sampled images, tracked units) values of layer ``layer``, images by key."""
        order = np.argsort(self.sample_keys, kind="stable")
        values = self.sample_values[layer]
        if not values:
            return np.zeros((0, len(self.units[layer])))
        return np.stack(values)[order]

    def quantiles(self, layer: int, qs: Sequence[float]) -> np.ndarray:
        """(len(qs), tracked units) quantiles of the sampled values."""
        return np.quantile(self.sample(layer), qs, axis=0)

    # -- checkpoints --

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {
            "count": np.array(self.count),
            "images": np.array("\n".join(self.images)),
            "sample_keys": np.array(self.sample_keys, dtype=np.uint64),
            "sample_images": np.array("\n".join(self.sample_images)),
        }
        for l in range(len(self.units)):
            out |= {
                f"sum{l}": self.sum[l],
                f"min{l}": self.min[l],
                f"max{l}": self.max[l],
                f"active{l}": self.active[l],
                f"sample{l}": np.array(self.sample_values[l]).reshape(
                    len(self.sample_values[l]), len(self.units[l])
                ),
                **self.top[l].arrays(f"top{l}"),
                **self.bottom[l].arrays(f"bottom{l}"),
            }
        return out

    def load(self, arrays) -> "UnitStats":
        """This (empty) accumulator with the state of :meth:`to_arrays` put back."""
        self.count = int(arrays["count"])
        self.images = [i for i in str(arrays["images"]).split("\n") if i]
        self.sample_keys = [int(k) for k in arrays["sample_keys"]]
        self.sample_images = [i for i in str(arrays["sample_images"]).split("\n") if i]
        for l in range(len(self.units)):
            self.sum[l], self.min[l], self.max[l] = (
                arrays[f"sum{l}"].copy(),
                arrays[f"min{l}"].copy(),
                arrays[f"max{l}"].copy(),
            )
            self.active[l] = arrays[f"active{l}"].copy()
            self.sample_values[l] = list(arrays[f"sample{l}"])
            self.top[l].load(arrays, f"top{l}")
            self.bottom[l].load(arrays, f"bottom{l}")
        return self


class _Ends:
    """Per unit, the k images with the largest (or smallest) values: (value, image, peak),
    ties to the image with the smaller seeded hash of its id (:func:`image_key`)."""

    def __init__(self, units: int, k: int, largest: bool, seed: int = 0):
        self.k, self.largest, self.seed = k, largest, seed
        self.values = np.zeros((units, 0))
        self.images = np.zeros((units, 0), dtype=object)
        self.peaks = np.zeros((units, 0), dtype=np.int64)
        self.keys = np.zeros((units, 0), dtype=np.int64)

    def add(self, values: np.ndarray, images: list[str], peaks: np.ndarray | None) -> None:
        """A batch: values and peaks (images, units)."""
        if not self.k:
            return
        units = values.shape[1]
        peaks = np.full(values.shape, -1) if peaks is None else peaks
        keys = np.array([image_key(self.seed, i) for i in images], dtype=np.int64)
        self._keep(
            np.concatenate([self.values, values.T], axis=1),
            np.concatenate([self.images, np.tile(np.array(images, dtype=object), (units, 1))], 1),
            np.concatenate([self.peaks, np.asarray(peaks, dtype=np.int64).T], axis=1),
            np.concatenate([self.keys, np.tile(keys, (units, 1))], axis=1),
        )

    def merge(self, other: "_Ends") -> None:
        if self.k:
            self._keep(
                np.concatenate([self.values, other.values], axis=1),
                np.concatenate([self.images, other.images], axis=1),
                np.concatenate([self.peaks, other.peaks], axis=1),
                np.concatenate([self.keys, other.keys], axis=1),
            )

    def _keep(self, values, images, peaks, keys) -> None:
        """The k best columns of each row: by value, then by key."""
        order = np.lexsort((keys, -values if self.largest else values), axis=-1)[:, : self.k]
        self.values = np.take_along_axis(values, order, 1)
        self.images = np.take_along_axis(images, order, 1)
        self.peaks = np.take_along_axis(peaks, order, 1)
        self.keys = np.take_along_axis(keys, order, 1)

    def arrays(self, prefix: str) -> dict:
        return {
            f"{prefix}_values": self.values,
            f"{prefix}_images": self.images.astype(str),
            f"{prefix}_peaks": self.peaks,
            f"{prefix}_keys": self.keys,
        }

    def load(self, arrays, prefix: str) -> None:
        if self.k:
            self.values = arrays[f"{prefix}_values"].copy()
            self.images = arrays[f"{prefix}_images"].astype(object)
            self.peaks = arrays[f"{prefix}_peaks"].copy()
            self.keys = arrays[f"{prefix}_keys"].copy()
