"""Head paths, neuron paths and mixed paths of one model side by side: final JAS (bootstrap 95 %
CI over the images every run has), removal and enhancement from each run's ``evaluate``, and per
layer how often the mixed search picks a head (Wilson 95 % interval).

    python benchmarks/heads_study.py --neurons runs/s12-neurons100 --heads runs/s12-heads100 \
        --mixed runs/s12-mixed100

Each run is a ``find`` run on the same model and images (``--units neurons``, ``heads`` and
``neurons+heads``), each evaluated with ``neuronpath evaluate RUN``.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from neuronpath.analysis.bootstrap import bootstrap_draws, mean_interval
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
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    runs = {"neurons": args.neurons, "heads": args.heads, "neurons+heads": args.mixed}
    scores: dict[str, dict[str, float]] = {}
    mixed_paths: dict[str, list] = {}
    for units, run in runs.items():
        for record in read_records(run):
            scores.setdefault(f"{record['method']} [{units}]", {})[record["image"]] = record["jas"]
            if units == "neurons+heads" and record["method"] == "jas":
                mixed_paths[record["image"]] = record["path"]
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


if __name__ == "__main__":
    main()
