"""Head paths, neuron paths and mixed paths of one model side by side: final JAS (bootstrap 95 %
CI over the images every run has), removal and enhancement from each run's ``evaluate``, and per
layer how often the mixed search picks a head (Wilson 95 % interval); with ``--sized``, the
size-matched comparison: the head path against a neuron path of the same width per layer (the
TopK JAS path with K = the head's dimension, e.g. 32 neurons per block against one head of 32
dimensions), paired on the same images.

    python benchmarks/heads_study.py --neurons runs/s12-neurons100 --heads runs/s12-heads100 \
        --mixed runs/s12-mixed100 --sized runs/s12-neurons32x100

Each run is a ``find`` run on the same model and images (``--units neurons``, ``heads`` and
``neurons+heads``; ``--sized``: ``--units neurons --topk 32``), each evaluated with
``neuronpath evaluate RUN``.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from neuronpath.analysis.bootstrap import bootstrap_draws, mean_interval, percentile_interval
from neuronpath.experiments.run import Run
from neuronpath.io.store import read_json, read_records


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n == 0:
        return math.nan, math.nan
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def pct(value: float, ci) -> str:
    return f"{value * 100:+.1f} % [{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}]"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--neurons", required=True, help="find run with --units neurons")
    parser.add_argument("--heads", required=True, help="find run with --units heads")
    parser.add_argument("--mixed", required=True, help="find run with --units neurons+heads")
    parser.add_argument(
        "--sized", help="find run with --units neurons --topk D (D: a head's dimension)"
    )
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    runs = {"neurons": args.neurons, "heads": args.heads, "neurons+heads": args.mixed}
    sized = None
    if args.sized:
        sized = f"neurons, top {Run.open(args.sized).topk}"
        runs[sized] = args.sized
    scores: dict[str, dict[str, float]] = {}
    jas_paths: dict[str, dict[str, list]] = {units: {} for units in runs}
    for units, run in runs.items():
        for record in read_records(run):
            scores.setdefault(f"{record['method']} [{units}]", {})[record["image"]] = record["jas"]
            if record["method"] == "jas":
                jas_paths[units][record["image"]] = record["path"]
    mixed_paths = jas_paths["neurons+heads"]
    images = sorted(set.intersection(*(set(s) for s in scores.values())))
    draws = bootstrap_draws(len(images), args.bootstrap, args.seed)  # the same for every path

    print(f"{len(images)} images in every run")
    print(f"{'path':<26}{'mean final JAS':>15}   95% CI")
    for name, by_image in scores.items():
        values = np.array([by_image[i] for i in images])
        low, high = mean_interval(values, draws)
        print(f"{name:<26}{values.mean():>15.4f}   [{low:.4f}, {high:.4f}]")

    print("\nfrom each run's evaluate (its own images; ΔP/P mean of class means, accuracy in pp)")
    print(
        f"{'path':<26}{'images':>7}  {'removal ΔP/P':<26}{'enhancement ΔP/P':<26}"
        f"{'removal acc.':<24}enhancement acc."
    )
    for units, run in runs.items():
        metrics = read_json(f"{run}/evaluation/metrics.json", "metrics.json")
        for method, row in metrics["methods"].items():
            remove, enhance = row["remove"], row["enhance"]
            acc = [
                f"{op['accuracy_deviation']:+.2f} [{op['accuracy_deviation_ci'][0]:+.2f}, "
                f"{op['accuracy_deviation_ci'][1]:+.2f}]"
                for op in (remove, enhance)
            ]
            print(
                f"{method + ' [' + units + ']':<26}{row['images']:>7}  "
                f"{pct(remove['dp_class_mean'], remove['dp_class_mean_ci']):<26}"
                f"{pct(enhance['dp_class_mean'], enhance['dp_class_mean_ci']):<26}"
                f"{acc[0]:<24}{acc[1]}"
            )

    paths = list(mixed_paths.values())
    layers = len(paths[0])
    print(f"\nmixed JAS paths ({len(paths)} images): share whose unit is a head, per layer")
    for layer in range(layers):
        hits = sum(path[layer][0] == "head" for path in paths)
        low, high = wilson(hits, len(paths))
        share = hits / len(paths) * 100
        print(f"layer {layer:>2}: {share:5.1f} %  [{low * 100:.1f}, {high * 100:.1f}]")
    heads_per_path = [sum(unit[0] == "head" for unit in path) for path in paths]
    print(
        f"heads per mixed path: mean {np.mean(heads_per_path):.2f}, "
        f"paths without a head {sum(h == 0 for h in heads_per_path) / len(paths) * 100:.1f} %"
    )

    same = {"head": [0, 0], "neuron": [0, 0]}  # [equal to the single-kind path's unit, all]
    for image, path in mixed_paths.items():
        for layer, (kind, index) in enumerate(path):
            alone = jas_paths["heads" if kind == "head" else "neurons"].get(image)
            if alone is not None:
                other = alone[layer][1] if kind == "head" else alone[layer]
                same[kind][0] += other == index
                same[kind][1] += 1
    for kind, (equal, total) in same.items():
        print(f"mixed path's {kind}s equal to the {kind} path's unit: {equal} of {total}")
    mixed, heads = scores["jas [neurons+heads]"], scores["jas [heads]"]
    wins = [sum(op(heads[i], mixed[i]) for i in images) for op in (float.__gt__, float.__lt__)]
    print(
        f"final JAS, head path against mixed path: higher on {wins[0]}, lower on {wins[1]}, "
        f"equal on {len(images) - sum(wins)} of {len(images)} images"
    )
    if sized is not None:
        sized_jas, head_jas = scores[f"jas [{sized}]"], scores["jas [heads]"]
        difference = np.array([head_jas[i] - sized_jas[i] for i in images])
        low, high = percentile_interval(np.array([difference[d].mean() for d in draws]))
        higher = int((difference > 0).sum())
        print(
            f"size-matched, final JAS of the head path minus the {sized} path: "
            f"{difference.mean():+.4f} [{low:+.4f}, {high:+.4f}]; the head path higher on "
            f"{higher} of {len(images)} images"
        )
    head_paths = list(jas_paths["heads"].values())
    shares = []
    for layer in range(layers):
        counts = np.bincount([path[layer][1] for path in head_paths])
        shares.append(counts.max() / len(head_paths) * 100)
    print(
        f"head paths: the most frequent head of a layer is chosen on "
        f"{min(shares):.0f}-{max(shares):.0f} % of images"
    )


if __name__ == "__main__":
    main()
