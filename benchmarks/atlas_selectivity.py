"""Are a run's most used path units selective by class?  For each run and method, the N units its
paths use most often (over all layers), and for each unit the **class purity of its top images**
in the run's atlas (``neuronpath neurons RUN --data D --atlas-top T``): the share of its T
highest-valued images that belong to their most common class.  Purity is scale-free, so units of
different kinds (neurons, heads, SAE latents) compare directly.  Chance is the purity of T images
drawn at random from the atlas's classes (each class as frequent as in ``--data``).  Bootstrap
95 % intervals over units; differences between runs are unpaired (different units).

    python benchmarks/atlas_selectivity.py runs/s12-dev100-sae runs/s12-dev100-paper \\
        --data ../shared/data/imagenet20-dev --most-used 30
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from neuronpath.experiments.neurons import read_atlas
from neuronpath.io.store import read_records
from neuronpath.pathformat import record_units


def most_used(run: Path, method: str, n: int) -> list[tuple[int, str, int]]:
    """The ``n`` (layer, kind, unit) a method's paths hold most often."""
    counts: Counter = Counter()
    for r in read_records(run, method):
        if r.get("method") != method:
            continue
        units = record_units(r)
        for layer, entry in enumerate(r["path"]):
            entries = entry if isinstance(entry, list) and isinstance(entry[0], list) else [entry]
            if units in ("heads", "sae"):
                for kind, index in entries:
                    counts[(layer, kind, int(index))] += 1
            else:
                for index in entry if isinstance(entry, list) else [entry]:
                    counts[(layer, "neuron", int(index))] += 1
    return [unit for unit, _ in counts.most_common(n)]


def purity(top: list) -> float:
    classes = Counter(image.split("/")[0] for image, _, _ in top)
    return max(classes.values()) / len(top)


def chance(class_sizes: list[int], t: int, draws: int = 20000, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    pool = np.repeat(np.arange(len(class_sizes)), class_sizes)
    picks = np.array([rng.choice(pool, t, replace=False) for _ in range(draws)])
    return float(np.mean([np.bincount(p).max() / t for p in picks]))


def interval(values: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    means = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(draws)]
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="the atlas's image folder")
    parser.add_argument("--most-used", type=int, default=30)
    parser.add_argument("--methods", default="jas,knowledge")
    args = parser.parse_args()
    sizes = [
        sum(1 for p in d.iterdir() if p.is_file())
        for d in sorted(args.data.iterdir())
        if d.is_dir()
    ]
    rows = {}
    print("| run | method | units | kinds | top images | purity [95 %] | chance |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        atlas = read_atlas(run / "neurons")
        for method in args.methods.split(","):
            units = [u for u in most_used(run, method, args.most_used) if u in atlas.units]
            if not units:
                continue
            tops = [atlas[u]["top"] for u in units]
            t = min(len(top) for top in tops)
            values = np.array([purity(top[:t]) for top in tops])
            mean, lo, hi = interval(values)
            kinds = ",".join(sorted({k for _, k, _ in units}))
            rows[(run.name, method)] = values
            print(
                f"| {run.name} | {method} | {len(units)} | {kinds} | {t} | "
                f"{mean:.3f} [{lo:.3f}, {hi:.3f}] | {chance(sizes, t):.3f} |"
            )
    keys = list(rows)
    if len(keys) > 1:
        print("\n| A − B | purity difference [95 %] |\n|---|---|")
        rng = np.random.default_rng(1)
        for i, a in enumerate(keys):
            for b in keys[i + 1 :]:
                if a[1] != b[1]:
                    continue
                x, y = rows[a], rows[b]
                diffs = [
                    x[rng.integers(0, len(x), len(x))].mean()
                    - y[rng.integers(0, len(y), len(y))].mean()
                    for _ in range(2000)
                ]
                print(
                    f"| {a[0]}:{a[1]} − {b[0]}:{b[1]} | {x.mean() - y.mean():+.3f} "
                    f"[{np.percentile(diffs, 2.5):+.3f}, {np.percentile(diffs, 97.5):+.3f}] |"
                )


if __name__ == "__main__":
    main()
