"""Paired comparisons of two methods in a run's faithfulness study: for each ablation and
metric, method A minus method B on the same images (removal change, f with the path ablated,
f with only the path kept), with bootstrap 95 % intervals over images.

    python benchmarks/faithfulness_pairs.py runs/s12-dev400 knowledge jas

``--b-run OTHER`` (repeatable: each ablation from the first that has it) reads method B from
another run's study of the same model and reference set
(the images both runs evaluated are paired).  Zero and mean ablation are then the same edits of
the same images; resample ablation draws each image's donor from its own run's images, so with
runs of different image sets the donors differ (still one image, two draws).

    python benchmarks/faithfulness_pairs.py runs/s12-dev100-new causal knowledge \
        --b-run runs/s12-dev400
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from neuronpath.analysis.bootstrap import bootstrap_draws, percentile_interval
from neuronpath.analysis.faithfulness import METRICS, change, normalised
from neuronpath.io.store import read_records


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument(
        "--b-run",
        action="append",
        help="read method B from this run's study (repeatable: each ablation from the first "
        "run that has it)",
    )
    args = parser.parse_args()
    folder = Path(args.run) / "evaluation" / "faithfulness"
    b_folders = [Path(r) / "evaluation" / "faithfulness" for r in args.b_run or [args.run]]
    print(
        f"| ablation | metric | {args.a} - {args.b}: removal | f, path ablated | "
        f"f, only path kept |"
    )
    print("|---|---|---|---|---|")
    for ablation in ("zero", "mean", "resample"):
        if not (folder / ablation).is_dir():
            continue
        rows = {}
        for r in read_records(folder / ablation):
            rows.setdefault(r["method"], {})[r["image"]] = r
        b_folder = next((f for f in b_folders if (f / ablation).is_dir()), None)
        if b_folder is None:
            continue
        b_rows = {}
        for r in read_records(b_folder / ablation):
            b_rows.setdefault(r["method"], {})[r["image"]] = r
        if args.a not in rows or args.b not in b_rows:
            continue  # a study still running, or one without the method
        rows = {args.a: rows[args.a], "B": b_rows[args.b]}
        images = sorted(set(rows[args.a]) & set(rows["B"]))
        draws = bootstrap_draws(len(images), args.bootstrap, 0)
        for metric in METRICS:

            def arrays(method):
                get = [rows[method][i][metric] for i in images]
                return {
                    key: np.array([g[key] for g in get]) for key in ("clean", "ablated", "removed")
                } | {"only": np.array([g["sufficiency"][-1] for g in get])}

            a, b = arrays(args.a), arrays("B")

            def stats(index):
                ra = change(metric, a["removed"][index], a["clean"][index]).mean()
                rb = change(metric, b["removed"][index], b["clean"][index]).mean()
                fa = normalised(a["removed"][index], a["clean"][index], a["ablated"][index])
                fb = normalised(b["removed"][index], b["clean"][index], b["ablated"][index])
                sa = normalised(a["only"][index], a["clean"][index], a["ablated"][index])
                sb = normalised(b["only"][index], b["clean"][index], b["ablated"][index])
                return np.array([ra - rb, fa - fb, sa - sb])

            value = stats(np.arange(len(images)))
            samples = np.array([stats(d) for d in draws])
            cells = []
            for j in range(3):
                lo, hi = percentile_interval(samples[:, j])
                cells.append(f"{value[j]:+.3f} [{lo:+.3f}, {hi:+.3f}]")
            print(f"| {ablation} | {metric} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
