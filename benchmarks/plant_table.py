"""The verification of several plants side by side: one Markdown row per plant with every check's
value (each link's smallest removal over zero, mean and resample ablation; the largest
distractor |removal|; clean predictions kept; planted level over the natural 99th percentile),
the trigger's effect, the register's removal under each ablation (ambiguous, not checked), and
the planted neurons' output-column norms over their layers' median column norm (smallest and
largest).

    python benchmarks/plant_table.py runs/gt-vit/seed-* runs/gt-beit/seed-*
"""

from __future__ import annotations

import argparse
from pathlib import Path

from neuronpath.engine.planting import ffn_pair
from neuronpath.io.planted import read_planted
from neuronpath.models.loading import load_model


def column_ratios(folder: Path, units: dict) -> list[float]:
    """Each planted neuron's W2 column norm over its layer's median column norm."""
    adapter = load_model(str(folder), device="cpu")
    out = []
    for layer, neuron in units.items():
        norms = ffn_pair(adapter, int(layer))[1].weight.detach().double().norm(dim=0)
        out.append(float(norms[neuron] / norms.median()))
    return out


def row(folder: Path) -> str:
    planted = read_planted(folder)
    ratios = column_ratios(folder, planted["units"])
    v = planted["verification"]
    c = v["checks"]
    links = ", ".join(
        f"{name} {min(by.values()):.3f}" for name, by in c["links"]["by_link"].items()
    )
    register = next(iter(v["ambiguous"].values()), None)
    reg = (
        "–"
        if register is None
        else " / ".join(f"{register['removal'][k]:+.3f}" for k in ("zero", "mean", "resample"))
    )
    cells = [
        f"{folder.parent.name}/{folder.name}",
        f"{planted['target']['name']}, L{','.join(map(str, planted['layers']))}",
        f"{v['trigger_effect_on_p_target']:.3f}",
        f"{c['a']['value']:.3f}",
        f"{c['b']['value']:.3f}",
        links,
        f"{c['c']['value']:+.3f}",
        f"{c['distractors']['value']:.3f}",
        f"{c['same']['value']:.3f}",
        f"{c['e']['value']:.2f}",
        f"{c['levels']['value']:.2f}",
        reg,
        f"{min(ratios):.0f}-{max(ratios):.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("planted", type=Path, nargs="+")
    args = parser.parse_args()
    head = ["plant", "target, layers", "trigger effect", "(a) to target", "(b) whole chain",
            "(links) each link alone, smallest of 3 ablations", "(c) matched random",
            "(distractors) largest", "(same) clean kept", "(e) top-1 change", "(levels)",
            "register removal zero / mean / resample", "column norm / layer median"]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for folder in args.planted:
        print(row(folder))


if __name__ == "__main__":
    main()
