"""What does the official approximation of Alg. 1 cost?  Compares, on the images of each re-ranked
run, the official JAS path (and the knowledge path) of a reference run with the paths found by
``find --rerank C``: final JAS, removal/enhancement effects and causal checks (bootstrap 95 %
CIs over images), and agreement with the official path.  Every run must be evaluated with
``evaluate --causal``.

    python benchmarks/rerank_study.py runs/s12-dev400 runs/s12-rerank8 runs/s12-rerank32 \
        runs/s12-rerankall
"""

from __future__ import annotations

import argparse

import numpy as np

from neuronpath.analysis.bootstrap import bootstrap_draws, mean_interval
from neuronpath.experiments.run import Run
from neuronpath.io.store import read_records


def by_image(folder, method):
    return {r["image"]: r for r in read_records(folder, method)}


def cell(values: np.ndarray, draws: np.ndarray, scale: float = 1.0, digits: int = 3) -> str:
    low, high = mean_interval(values, draws)
    mean, lo, hi = scale * values.mean(), scale * low, scale * high
    return f"{mean:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", help="find run with the official jas path (and knowledge)")
    parser.add_argument("reranked", nargs="+", help="find runs made with --rerank C")
    parser.add_argument("--bootstrap", type=int, default=2000)
    args = parser.parse_args()
    ref = {
        m: (
            by_image(args.reference, m),
            by_image(f"{args.reference}/evaluation", m),
            by_image(f"{args.reference}/causal", m),
        )
        for m in ("jas", "knowledge")
    }
    print(
        "| images | path | final JAS | removal ΔP/P (%) | enhancement ΔP/P (%) | keep only "
        "the path ΔP/P (%) | neurons as official | paths as official |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run in args.reranked:
        rerank = Run.open(run).method_options.get("jas", {}).get("rerank", 0)
        found, evaluated, causal = (
            by_image(run, "jas"),
            by_image(f"{run}/evaluation", "jas"),
            by_image(f"{run}/causal", "jas"),
        )
        images = sorted(found)
        draws = bootstrap_draws(len(images), args.bootstrap, 0)
        rows = [
            ("official (`--rerank 0`)", *ref["jas"]),
            (f"`--rerank {rerank}`", found, evaluated, causal),
            ("knowledge", *ref["knowledge"]),
        ]
        official = np.array([ref["jas"][0][i]["path"] for i in images])
        for name, paths, ev, ca in rows:
            jas = np.array([paths[i]["jas"] for i in images])
            remove = np.array([ev[i]["remove_prob"] / ev[i]["base_prob"] - 1 for i in images])
            enhance = np.array([ev[i]["enhance_prob"] / ev[i]["base_prob"] - 1 for i in images])
            only = np.array([ca[i]["only_path_prob"] / ca[i]["base_prob"] - 1 for i in images])
            same = np.array([paths[i]["path"] for i in images]) == official
            print(
                f"| {len(images)} | {name} | {cell(jas, draws, digits=4)} | "
                f"{cell(remove, draws, 100, 1)} | {cell(enhance, draws, 100, 1)} | "
                f"{cell(only, draws, 100, 1)} | {same.mean():.1%} | "
                f"{same.all(axis=1).mean():.1%} |"
            )

        def dp(records, i, op):
            return records[i][f"{op}_prob"] / records[i]["base_prob"] - 1

        jas_diff = np.array([found[i]["jas"] - ref["jas"][0][i]["jas"] for i in images])
        remove_diff = np.array(
            [dp(evaluated, i, "remove") - dp(ref["jas"][1], i, "remove") for i in images]
        )
        enhance_diff = np.array(
            [dp(evaluated, i, "enhance") - dp(ref["jas"][1], i, "enhance") for i in images]
        )
        print(
            f"|  | `--rerank {rerank}` minus official, paired | {cell(jas_diff, draws, digits=4)} "
            f"| {cell(remove_diff, draws, 100, 1)} | {cell(enhance_diff, draws, 100, 1)} "
            f"| | | |"
        )
        ahead = (jas_diff > 1e-6).mean(), (jas_diff < -1e-6).mean()
        print(
            f"|  | `--rerank {rerank}`: final JAS higher than official on {ahead[0]:.1%} "
            f"of images, "
            f"lower on {ahead[1]:.1%}, equal on {1 - sum(ahead):.1%} | | | | | | |"
        )


if __name__ == "__main__":
    main()
