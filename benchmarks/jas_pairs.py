"""The final JAS of two paths on the same images, paired by image: each run's mean with its
bootstrap 95 % interval, and A minus B.  A path is ``RUN:METHOD``.

    python benchmarks/jas_pairs.py runs/s12-dev100-sae:jas runs/s12-dev100-paper:jas
"""

from __future__ import annotations

import argparse

import numpy as np

from neuronpath.analysis.bootstrap import bootstrap_draws, percentile_interval
from neuronpath.io.store import read_records


def scores(spec: str) -> dict[str, float]:
    run, method = spec.rsplit(":", 1)
    return {r["image"]: r["jas"] for r in read_records(run, method)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    a, b = scores(args.a), scores(args.b)
    images = sorted(set(a) & set(b))
    x, y = np.array([a[i] for i in images]), np.array([b[i] for i in images])
    draws = bootstrap_draws(len(images), args.bootstrap, 0)
    print(f"{len(images)} images in both")
    for name, values in ((args.a, x), (args.b, y), (f"{args.a} - {args.b}", x - y)):
        lo, hi = percentile_interval(np.array([values[d].mean() for d in draws]))
        print(f"{name}: {values.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]")


if __name__ == "__main__":
    main()
