"""Seconds per image of the neuron atlas pass (``neuronpath neurons``: decoding, one forward,
the statistics, the checkpoint after every batch; not the figure, drawn once), and its ratio
to one plain forward of the same batches of already decoded images, both measured in this run.

    python benchmarks/bench_atlas.py --model ../shared/models/vit-s12-imagenet20 \
        --data ../shared/data/imagenet20-dev --units 0:418,7:37,3:505 --images 400
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from neuronpath.experiments.common import Execution
from neuronpath.experiments.neurons import NeuronsOptions, run_neurons
from neuronpath.io.images import interleave_classes, load_image, scan_image_folder
from neuronpath.models.loading import load_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--units", required=True, help="LAYER:INDEX,... as neurons --select")
    parser.add_argument("--layers", help="or every unit of these layers (comma-separated)")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    adapter = load_model(args.model)
    items = interleave_classes(scan_image_folder(args.data, adapter.id2label).items)[: args.images]
    pixels = torch.stack([adapter.preprocess(load_image(i.path)) for i in items])
    forwards = []
    for _ in range(3):
        start = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, len(items), args.batch_size):
                adapter.logits(pixels[s : s + args.batch_size])
        forwards.append((time.perf_counter() - start) / len(items))
    forward = statistics.median(forwards)
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    passes = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            options = NeuronsOptions(
                select=None if layers else args.units,
                layers=layers,
                out=out,
                limit=args.images,
                figure=False,  # atlas.png is drawn once per pass, not per image
            )
            execution = Execution("cpu", args.batch_size, progress=False)
            run_neurons(args.data, spec=args.model, options=options, execution=execution)
            passes.append((time.perf_counter() - start) / len(items))
    atlas = statistics.median(passes)
    print(
        f"{len(items)} images, batch {args.batch_size}, {torch.get_num_threads()} threads; "
        f"medians of 3"
    )
    print(f"plain forward (decoded images): {forward * 1e3:.2f} ms / image")
    print(f"atlas pass (decode + forward + statistics + checkpoints): {atlas * 1e3:.2f} ms / image")
    print(f"ratio: {atlas / forward:.2f}")


if __name__ == "__main__":
    main()
