"""Cost of reading and preprocessing an image, per image, in one run: PIL decoding alone, decoding
plus the model's own image processor (``--preprocess model``), decoding plus the written-out
official pipeline (``--preprocess official``); and the processor's share of one ``find`` image.

    python benchmarks/bench_preprocess.py --model ../shared/models/vit-s12-imagenet20 \
        --data ../shared/data/imagenet20-dev --images 200
"""

from __future__ import annotations

import argparse
import time

import torch

from neuronpath.engine.attribution import AttributionConfig
from neuronpath.io.images import interleave_classes, load_image, scan_image_folder
from neuronpath.io.preprocessing import Preprocess
from neuronpath.methods import find_paths
from neuronpath.models.loading import load_model


def per_image(fn, items, rounds=3):
    """Median over rounds of the mean seconds per item."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for item in items:
            fn(item)
        times.append((time.perf_counter() - start) / len(items))
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--find-images", type=int, default=4)
    args = parser.parse_args()
    adapter = load_model(args.model)
    items = interleave_classes(scan_image_folder(args.data, adapter.id2label).items)[: args.images]
    size = tuple(adapter.preprocess(load_image(items[0].path)).shape[1:])
    official = Preprocess.official(size[0])
    decode = per_image(lambda it: load_image(it.path), items)
    model = per_image(lambda it: adapter.preprocess(load_image(it.path)), items)
    written = per_image(lambda it: official(load_image(it.path)), items)
    sample = items[: args.find_images]
    pixels = torch.stack([adapter.preprocess(load_image(it.path)) for it in sample])
    labels = torch.tensor([it.label for it in sample])
    find_paths(adapter, pixels[:1], labels[:1], config=AttributionConfig())  # warm-up
    start = time.perf_counter()
    find_paths(adapter, pixels, labels, config=AttributionConfig())
    find = (time.perf_counter() - start) / len(sample)
    print(
        f"{len(items)} images of {args.data}; processor "
        f"{type(getattr(adapter.preprocess, 'processor', adapter.preprocess)).__name__}, "
        f"output {size}; {torch.get_num_threads()} threads"
    )
    print(f"{'step':<52}{'ms / image':>12}")
    print(f"{'decode (PIL, to RGB)':<52}{decode * 1e3:>12.2f}")
    print(f"{'decode + the model processor (--preprocess model)':<52}{model * 1e3:>12.2f}")
    print(f"{'decode + official pipeline (written out)':<52}{written * 1e3:>12.2f}")
    print(f"{'find, jas+activation (m = 20)':<52}{find * 1e3:>12.1f}")
    print(f"the processor's own cost is {(model - decode) / find:.2%} of a find image")


if __name__ == "__main__":
    main()
