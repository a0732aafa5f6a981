"""Mean final JAS per path method of a ``find`` run, with bootstrap 95 % confidence intervals
over images, and the paired differences between methods (is JAS > IP > Activation here?).

    python benchmarks/path_ordering.py RUN_DIR [--bootstrap 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from neuronpath.experiments.run import Run
from neuronpath.io.store import read_records


def bootstrap_ci(values: np.ndarray, rng: np.random.Generator, n: int) -> tuple[float, float]:
    means = values[rng.integers(0, len(values), (n, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run = Run.open(args.run)
    scores: dict[str, dict[str, float]] = {}
    for record in read_records(args.run):
        scores.setdefault(record["method"], {})[record["image"]] = record["jas"]
    images = sorted(set.intersection(*(set(s) for s in scores.values())))
    rng = np.random.default_rng(args.seed)
    print(
        f"run {args.run}: model {run.model_id}, {len(images)} images with "
        f"every method, m = {run.search['steps']}, "
        f"alphas {run.search['alphas']}"
    )
    print(f"{'method':<20}{'mean final JAS':>16}{'95% CI':>22}")
    means = {}
    for method, by_image in scores.items():
        values = np.array([by_image[i] for i in images])
        means[method] = values.mean()
        low, high = bootstrap_ci(values, rng, args.bootstrap)
        print(f"{method:<20}{values.mean():>16.4f}   [{low:.4f}, {high:.4f}]")
    print(f"\n{'paired difference':<36}{'mean':>10}{'95% CI':>22}{'share > 0':>11}")
    ordered = sorted(means, key=means.get, reverse=True)
    for a, b in itertools.combinations(ordered, 2):
        diff = np.array([scores[a][i] - scores[b][i] for i in images])
        low, high = bootstrap_ci(diff, rng, args.bootstrap)
        print(
            f"{a + ' - ' + b:<36}{diff.mean():>10.4f}   [{low:.4f}, {high:.4f}]"
            f"{(diff > 0).mean():>11.1%}"
        )


if __name__ == "__main__":
    main()
