"""Seconds per image of each path method, and its ratio R to one forward + input-gradient
backward of the same model on m rows, both measured in this run; plus each path's mean final JAS.

    python benchmarks/bench_search.py --model ../shared/models/vit-s12-imagenet20 \
        --data ../shared/data/imagenet20-dev --images 20

R counts everything ``find`` does per image: the clean forward, the search, and the final JAS. The
headline row is ``jas+activation`` (``find``'s default: JAS path search plus the final JAS of both
paths); the official code costs about 44 such units per image for a 12-layer model with m = 20
(docs/official-code.md#cost).  Each other row is one method run alone (its clean pass, search,
final JAS).  Methods that start from a reference mean (``jas-mean``; ``causal`` and ``learned``
with their default mean ablation) need ``--reference DIR``; computing the means is not timed.

    python benchmarks/bench_search.py --model ../shared/models/vit-s12-imagenet20 \
        --data ../shared/data/imagenet20-dev --images 20 --threads 1 \
        --methods knowledge,jas,causal,jas-mean,learned --reference runs/dev-heldout
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from neuronpath.engine.attribution import AttributionConfig, objective
from neuronpath.experiments.reference import reference_files, reference_means
from neuronpath.io.images import interleave_classes, load_image, scan_image_folder
from neuronpath.methods import REGISTRY, JASOptions, find_paths
from neuronpath.models.loading import load_model


def unit_seconds(adapter, pixels, labels, steps, repeats):
    """Median seconds of one forward + backward to the input on ``steps`` rows (one image,
    interpolated inputs): the unit R is measured in (also by ``bench_precision.py``)."""
    times = []
    for i in range(repeats):
        x = pixels[i % len(pixels)][None].repeat(steps, 1, 1, 1)
        x = x * torch.linspace(0, 1, steps, device=x.device)[:, None, None, None]
        x = x.requires_grad_(True)
        y = labels[i % len(labels)].repeat(steps)
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.autograd.grad(objective(adapter.logits(x), y, "prob").sum(), x)
        if x.is_cuda:
            torch.cuda.synchronize()
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
    parser.add_argument(
        "--methods",
        default="jas+activation,influence-pattern,activation,knowledge",
        help="comma-separated runs; '+' joins methods run together",
    )
    parser.add_argument("--topk", type=int, default=1)
    parser.add_argument("--reference", help="reference images, for methods that need their means")
    parser.add_argument(
        "--units",
        default="neurons",
        help="comma-separated unit sets (neurons, heads, neurons+heads, sae); each run of "
        "--methods is timed on each where its methods are defined",
    )
    parser.add_argument(
        "--sae", help="the SAEs of --units sae (find's --sae: LAYER=PATH,... or a file)"
    )
    parser.add_argument(
        "--rerank",
        default="0",
        help="jas search: re-score the best C candidates exactly ('all': every neuron)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    adapters = {
        u: load_model(args.model, device=args.device, units=u, sae=args.sae if u == "sae" else None)
        for u in args.units.split(",")
    }
    adapter = adapters[next(iter(adapters))]
    blocks = len(set(adapter.blocks))  # a mixed adapter has two sites per block
    folder = scan_image_folder(args.data, adapter.id2label)
    items = interleave_classes(folder.items)[: args.images]
    pixels = torch.stack([adapter.preprocess(load_image(i.path)) for i in items]).to(args.device)
    labels = torch.tensor([i.label for i in items], device=args.device)
    config = AttributionConfig(steps=args.steps)
    rerank = args.rerank if args.rerank == "all" else int(args.rerank)
    means = {
        u: reference_means(a, reference_files(args.reference), args.batch_size)
        if args.reference
        else None
        for u, a in adapters.items()
    }

    unit_seconds(adapter, pixels, labels, args.steps, 3)  # warm-up
    units = [unit_seconds(adapter, pixels, labels, args.steps, 10)]
    timings, finals = {}, {}
    for unit_set, adapter in adapters.items():
        for run in args.methods.split(","):
            methods = run.split("+")
            if any(unit_set not in REGISTRY[m].units for m in methods):
                continue
            name = run if len(adapters) == 1 else f"{run} [{unit_set}]"
            scores = {m: [] for m in methods}
            start = time.perf_counter()
            for s in range(0, len(items), args.batch_size):
                chosen = {m: JASOptions(rerank=rerank) if m == "jas" else None for m in methods}
                result = find_paths(
                    adapter,
                    pixels[s : s + args.batch_size],
                    labels[s : s + args.batch_size],
                    chosen,
                    config,
                    k=args.topk,
                    reference=means[unit_set],
                )
                for m in methods:
                    scores[m] += result.scores[m].tolist()
            timings[name] = (time.perf_counter() - start) / len(items)
            for m in methods:
                label = m if len(adapters) == 1 else f"{m} [{unit_set}]"
                finals.setdefault(label, statistics.fmean(scores[m]))
            units.append(unit_seconds(adapter, pixels, labels, args.steps, 10))
    unit = statistics.mean(units)

    print(
        f"model {args.model}: {blocks} blocks, m = {args.steps}, K = {args.topk}, "
        f"rerank {rerank}, "
        f"{len(items)} images, batch {args.batch_size}, device {args.device}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"unit (forward + input-gradient backward, {args.steps} rows): {unit * 1e3:.1f} ms "
        f"(min {min(units) * 1e3:.1f}, max {max(units) * 1e3:.1f} over {len(units)} checks)"
    )
    print(f"{'run':<32}{'s / image':>10}{'R':>8}")
    for run, seconds in timings.items():
        print(f"{run:<32}{seconds:>10.3f}{seconds / unit:>8.2f}")
    print("target for jas+activation: R <= 16 (official code ~44)")
    print(f"{'path':<32}{'mean final JAS':>15}")
    for m, value in sorted(finals.items(), key=lambda kv: -kv[1]):
        print(f"{m:<32}{value:>15.5f}")


if __name__ == "__main__":
    main()
