"""Seconds per image of the JAS path search, and its ratio R to one forward + input-gradient
backward of the same model on m rows, both measured in this run.

    python benchmarks/bench_search.py --model ../shared/models/vit-s12-imagenet20 \
        --data ../shared/data/imagenet20-dev --images 20

R counts everything ``find`` does per image: the clean forward, the L search passes, and the
final JAS of the JAS path and of the Activation path.  The official code costs about 44
such units per image for a 12-layer model with m = 20 (spec §11).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from neuronpath.attribution import AttributionConfig, objective
from neuronpath.data import interleave_classes, load_image, scan_image_folder
from neuronpath.loading import load_model
from neuronpath.search import find_paths


def unit_seconds(adapter, pixels, labels, steps, repeats):
    """One forward + backward to the input on ``steps`` rows (one image, interpolated inputs)."""
    times = []
    for i in range(repeats):
        x = pixels[i % len(pixels)][None].repeat(steps, 1, 1, 1)
        x = (x * torch.linspace(0, 1, steps)[:, None, None, None]).requires_grad_(True)
        y = labels[i % len(labels)].repeat(steps)
        start = time.perf_counter()
        f = objective(adapter.logits(x), y, "prob").sum()
        torch.autograd.grad(f, x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    adapter = load_model(args.model, device=args.device)
    folder = scan_image_folder(args.data, adapter.id2label)
    items = interleave_classes(folder.items)[:args.images]
    pixels = torch.stack([adapter.preprocess(load_image(i.path)) for i in items]).to(args.device)
    labels = torch.tensor([i.label for i in items], device=args.device)
    config = AttributionConfig(steps=args.steps)

    unit_seconds(adapter, pixels, labels, args.steps, 3)  # warm-up
    unit_before = unit_seconds(adapter, pixels, labels, args.steps, 10)
    finals = {"jas": [], "activation": []}
    start = time.perf_counter()
    for s in range(0, len(items), args.batch_size):
        result = find_paths(adapter, pixels[s:s + args.batch_size],
                            labels[s:s + args.batch_size], config=config)
        for method in finals:
            finals[method] += result.scores[method].tolist()
    per_image = (time.perf_counter() - start) / len(items)
    unit_after = unit_seconds(adapter, pixels, labels, args.steps, 10)
    unit = statistics.mean([unit_before, unit_after])

    print(f"model {args.model}: {adapter.num_layers} layers, m = {args.steps}, "
          f"{len(items)} images, batch {args.batch_size}, device {args.device}, "
          f"{torch.get_num_threads()} threads")
    print(f"unit (forward + input-gradient backward, {args.steps} rows): {unit * 1e3:.1f} ms "
          f"(before {unit_before * 1e3:.1f}, after {unit_after * 1e3:.1f})")
    print(f"JAS path search + final JAS of both paths: {per_image:.3f} s per image")
    print(f"R = {per_image / unit:.2f} units per image (target <= 16; official code ~44)")
    for method, scores in finals.items():
        print(f"mean final JAS, {method} path: {statistics.fmean(scores):.5f}")


if __name__ == "__main__":
    main()
