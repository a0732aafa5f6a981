"""Reduced precision, measured: seconds per image and R of ``find`` (jas+activation) in each
precision, and how far the paths agree with the first precision's, all in one run.

    python benchmarks/bench_precision.py --model ../shared/models/vit-s12-imagenet20 \
        --data ../shared/data/imagenet20-dev --images 12 --dtypes float32,bfloat16

R is the time per image over one float32 forward + input-gradient backward of the same model on
m rows (the unit of bench_search.py), measured in this run.  Agreement with the first dtype:
the share of (image, layer) path neurons that are identical, the share of images whose whole
path is identical, and the final-JAS difference (mean absolute, and relative to the mean |JAS|).
``tf32`` (float32 with TF32 matmuls) needs CUDA.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_search import unit_seconds  # the same unit R is measured in
from neuronpath.engine.attribution import AttributionConfig
from neuronpath.io.images import image_batches, interleave_classes, scan_image_folder
from neuronpath.methods import find_paths
from neuronpath.models.loading import load_model
from neuronpath.models.spec import ModelSpec


def run_paths(adapter, pixels, labels, config, batch_size):
    paths, scores = [], []
    if pixels.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for s in range(0, len(labels), batch_size):
        result = find_paths(
            adapter,
            pixels[s : s + batch_size],
            labels[s : s + batch_size],
            ["jas", "activation"],
            config,
        )
        paths.append(result.paths["jas"])
        scores.append(result.scores["jas"])
    if pixels.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / len(labels), torch.cat(paths), torch.cat(scores).double()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    device = torch.device(args.device)

    adapter = load_model(args.model, device=device)
    items = interleave_classes(scan_image_folder(args.data, adapter.id2label).items)[: args.images]
    batch = next(image_batches(items, adapter.preprocess, len(items)))
    pixels = batch.pixels.to(device)
    labels = torch.tensor([i.label for i in batch.items], device=device)
    ModelSpec(dtype="float32").precision(device)
    unit_seconds(adapter, pixels, labels, args.steps, 3)  # warm-up
    units = [unit_seconds(adapter, pixels, labels, args.steps, 10)]

    results = {}
    for name in args.dtypes.split(","):
        model_dtype, autocast = ModelSpec(dtype=name).precision(device)
        adapter.to(dtype=model_dtype)
        config = AttributionConfig(steps=args.steps, autocast=autocast)
        run_paths(adapter, pixels[:1], labels[:1], config, 1)  # warm-up
        results[name] = run_paths(adapter, pixels, labels, config, args.batch_size)
        adapter.to(dtype=torch.float32)
        ModelSpec(dtype="float32").precision(device)
        units.append(unit_seconds(adapter, pixels, labels, args.steps, 10))
    unit = statistics.mean(units)

    print(
        f"model {args.model}: {adapter.num_layers} layers, m = {args.steps}, "
        f"{len(labels)} images, batch {args.batch_size}, device {device}, "
        f"{torch.get_num_threads()} threads; find = jas+activation"
    )
    print(
        f"unit (float32 forward + input-gradient backward, {args.steps} rows): "
        f"{unit * 1e3:.1f} ms (min {min(units) * 1e3:.1f}, max {max(units) * 1e3:.1f})"
    )
    reference = next(iter(results))
    _, ref_paths, ref_scores = results[reference]
    print(
        f"{'dtype':<10}{'s / image':>10}{'R':>7}{'speed vs ' + reference:>18}"
        f"{'neurons same':>14}{'paths same':>12}{'|dJAS| mean':>13}{'rel':>8}"
    )
    for name, (seconds, paths, scores) in results.items():
        same = (paths == ref_paths).double()
        diff = (scores - ref_scores).abs()
        print(
            f"{name:<10}{seconds:>10.3f}{seconds / unit:>7.2f}"
            f"{results[reference][0] / seconds:>17.2f}x"
            f"{same.mean().item():>13.1%}{same.all(dim=1).double().mean().item():>12.1%}"
            f"{diff.mean().item():>13.2e}"
            f"{diff.mean().item() / ref_scores.abs().mean().item():>8.1%}"
        )


if __name__ == "__main__":
    main()
