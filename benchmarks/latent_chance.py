"""How often a latent drawn at random would "hit" a planted neuron: for a latent run of a
planted model (``neuronpath benchmark``'s reading: a latent stands for the neuron with the
largest |coordinate| of its decoder direction), per planted layer and distractor, the share of
the layer's latents standing for the neuron, and the mean over images of the share among the
latents active on the image (value > 0, read from the ``activation`` method's saved scores, which
are the latents' values).  The hit rates of ``recovery.md`` are to be read against these.

    python benchmarks/latent_chance.py runs/gt-vit-sae-cls --planted runs/planted-vit
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from neuronpath.experiments.benchmark import dictionary_view, read_planted
from neuronpath.experiments.run import Run
from neuronpath.io.scores import SavedScores


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--planted", type=Path, required=True)
    args = parser.parse_args()
    run = Run.open(args.run)
    planted = read_planted(args.planted)
    units, distractors, held = dictionary_view(run, planted)
    ids = sorted({r["image"] for r in run.records() if r["method"] == "activation"})
    values = SavedScores(run.dir).get("activation", ids)  # (images, layers, widest)
    print("| neuron | latents standing for it | share of the layer's latents | "
          "share among the latents active on the image (mean) |")  # fmt: skip
    print("|---|---|---|---|")
    for name, h in held.items():
        layer, found = h["layer"], h["latents"]
        width = run.widths[layer]
        active = values[:, layer, :width] > 0
        among = active[:, found].sum(1) / np.maximum(active.sum(1), 1)
        print(f"| {name} (neuron {h['neuron']}) | {len(found)} | {len(found) / width:.3f} | "
              f"{among.mean():.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
