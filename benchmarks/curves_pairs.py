"""CPR and CMD of methods from one or more runs' ``evaluate --curves`` stores, on the images they
all evaluated, with paired differences against chosen methods (bootstrap 95 % intervals over
images; each resample recomputes every f(k) and area).

    python benchmarks/curves_pairs.py runs/s12-dev100-new runs/s12-dev400-scores \\
        --against knowledge,jas --ablations mean,resample --metric prob

A method is named by its name in the first run that holds it; ``RUN=PREFIX`` names a run's
methods PREFIX + name (``runs/s12-dev400-sae=latent-`` gives ``latent-jas``), so that runs with
the same methods can be compared.  Runs of the same model and
reference set give the same edits of the same images for mean ablation; resample ablation draws
each image's donor from its own run's images, so across runs of different image sets the donors
differ.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from neuronpath.analysis.bootstrap import bootstrap_draws, percentile_interval
from neuronpath.analysis.curves import cpr_cmd
from neuronpath.analysis.faithfulness import normalised
from neuronpath.io.store import read_records


def curves_of(runs: list[str], ablation: str, metric: str) -> dict[str, dict[str, dict]]:
    """{method: {image: {clean, none, kept}}}, each method from the first run holding it (a run
    given as ``RUN=PREFIX`` names its methods PREFIX + name)."""
    out: dict[str, dict[str, dict]] = {}
    for given in runs:
        run, _, prefix = given.partition("=")
        found: dict[str, dict[str, dict]] = {}
        for r in read_records(Path(run) / "evaluation" / "curves" / ablation):
            found.setdefault(prefix + r["method"], {})[r["image"]] = r[metric]
        for method, rows in found.items():
            out.setdefault(method, rows)
    return out


def areas(rows: list[dict], index: np.ndarray) -> np.ndarray:
    clean = np.array([rows[i]["clean"] for i in index])
    none = np.array([rows[i]["none"] for i in index])
    kept = np.array([rows[i]["kept"] for i in index])
    return np.array(cpr_cmd(normalised(kept, clean, none)))


def cell(value, draws) -> str:
    lo, hi = percentile_interval(draws)
    return f"{value:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="RUN or RUN=PREFIX")
    parser.add_argument("--against", default="knowledge,jas")
    parser.add_argument("--ablations", default="mean,resample")
    parser.add_argument("--metric", default="prob")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    against = args.against.split(",")
    print("| ablation | method | images | CPR | CMD | "
          + " | ".join(f"CPR − {b} | CMD − {b}" for b in against) + " |")  # fmt: skip
    print("|---" * (5 + 2 * len(against)) + "|")
    for ablation in args.ablations.split(","):
        methods = curves_of(args.runs, ablation, args.metric)
        images = sorted(set.intersection(*(set(rows) for rows in methods.values())))
        draws = bootstrap_draws(len(images), args.bootstrap, 0)
        whole = np.arange(len(images))
        table = {m: [rows[i] for i in images] for m, rows in methods.items()}
        boot = {m: np.array([areas(rows, d) for d in draws]) for m, rows in table.items()}
        for method, rows in table.items():
            value = areas(rows, whole)
            cells = [cell(value[j], boot[method][:, j]) for j in range(2)]
            for b in against:
                if b not in table:
                    cells += ["—", "—"]
                    continue
                diff = value - areas(table[b], whole)
                cells += [cell(diff[j], boot[method][:, j] - boot[b][:, j]) for j in range(2)]
            print(f"| {ablation} | {method} | {len(images)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
