"""CPR and CMD of each method over several planted runs evaluated with ``--curves``: per method
and ablation the mean over runs with the smallest and largest run, as a Markdown table.

    python benchmarks/curves_over_plants.py runs/find-gt-vit-seed-*
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="find runs evaluated with --curves")
    parser.add_argument("--metric", default="prob")
    args = parser.parse_args()
    table: dict = {}
    for run in args.runs:
        results = json.loads((Path(run) / "evaluation" / "curves.json").read_text())["results"]
        for method, by_ablation in results.items():
            for ablation, by_metric in by_ablation.items():
                stats = by_metric[args.metric]
                row = table.setdefault((method, ablation), {"cpr": [], "cmd": []})
                row["cpr"].append(stats["cpr"]["value"])
                row["cmd"].append(stats["cmd"]["value"])
    print("| method | ablation | runs | CPR, mean [min, max] | CMD, mean [min, max] |")
    print("|---|---|---|---|---|")
    for (method, ablation), row in table.items():
        cells = [
            f"{sum(v) / len(v):.3f} [{min(v):.3f}, {max(v):.3f}]" for v in (row["cpr"], row["cmd"])
        ]
        print(f"| {method} | {ablation} | {len(row['cpr'])} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
