"""How closely each rule of the matched control matches a path's activation levels: for every
method of a find run, on every image, partners drawn by ``--match nearest`` (the default
window) and by ``--match bins`` (quantile bins of a reference set), with the achieved match of
each -- quantiles of partner level / path level over active path neurons, the share of partners
below half their path neuron's level -- and where the path neurons sit among their layer's
levels (the share in the reference's top bin).  One forward per image; no ablation.

    python benchmarks/match_quality.py runs/s12-dev400 --reference runs/dev-heldout

The draws are the faithfulness study's own (same function, seeds and generators), so its
``nearest`` numbers equal the study's ``matched_levels``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from neuronpath.draws import seeded_generator
from neuronpath.engine.interventions import record_neurons
from neuronpath.experiments.common import Execution
from neuronpath.experiments.evaluate import EditOptions, StoredPaths
from neuronpath.experiments.faithfulness import (
    FaithfulnessOptions,
    check_study,
    match_summary,
    reference_statistics,
)
from neuronpath.io.images import image_batches
from neuronpath.methods.controls import matched_path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a finished find run")
    parser.add_argument("--reference", required=True, help="reference images (the bins)")
    parser.add_argument("--bins", type=int, default=10)
    parser.add_argument("--window", type=int, default=FaithfulnessOptions.match_window)
    parser.add_argument("--seeds", type=int, default=FaithfulnessOptions.matched_seeds)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    options = FaithfulnessOptions(
        controls=("matched-random",), match="bins", reference=args.reference, bins=args.bins
    )
    run = StoredPaths.open(args.run, EditOptions(bootstrap=0), args.device)
    run.excluded = check_study(run, options)
    execution = Execution(args.device, 32, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        reference = reference_statistics(run, options, Path(tmp), execution)
        edges = [torch.from_numpy(reference[f"edges{l}"]) for l in range(run.adapter.num_layers)]
    adapter, layers = run.adapter, run.adapter.num_layers
    methods = run.find.methods
    pairs = {(m, rule): [] for m in methods for rule in ("nearest", "bins")}
    top_bin = {m: [] for m in methods}
    items = [run.reader.item(i) for i in run.by_image if i not in run.excluded]
    for batch in image_batches(items, adapter.preprocess, 32):
        pixels, images, _ = run.inputs(batch)
        with torch.inference_mode(), record_neurons(adapter) as acts:
            adapter.logits(pixels.to(adapter.device, adapter.dtype))
        paths = run.paths(images, [])
        for b, image in enumerate(images):
            levels = [acts[l][b].double().mean(0).cpu() for l in range(layers)]
            for method in methods:
                own = paths[method][b].reshape(layers, -1)
                for l in range(layers):
                    bins = torch.bucketize(levels[l][own[l]], edges[l].double())
                    top_bin[method] += (bins == len(edges[l])).tolist()
                for rule in ("nearest", "bins"):
                    for s in range(args.seeds):
                        generator = seeded_generator("matched", run.options.seed, s, image, method)
                        partner, _ = matched_path(
                            levels, own, generator, args.window, edges if rule == "bins" else None
                        )
                        pairs[(method, rule)] += [
                            [float(levels[l][i]), float(levels[l][j])]
                            for l in range(layers)
                            for i, j in zip(own[l].tolist(), partner[l].tolist())
                        ]
    print(
        f"run {args.run}: {len(items)} images, reference {args.reference} "
        f"({reference['count']} images), nearest: window {args.window}; bins: {args.bins}; "
        f"{args.seeds} seeds"
    )
    print(
        "| method | path neurons in the top bin | rule | partner / path level: 5 % | 25 % "
        "| median | 75 % | 95 % | below half |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for method in methods:
        for rule in ("bins", "nearest"):
            m = match_summary(pairs[(method, rule)])
            cells = [f"{m[k]:.3f}" for k in ("ratio_q05", "ratio_q25", "ratio_q50")]
            cells += [f"{m[k]:.3f}" for k in ("ratio_q75", "ratio_q95")]
            print(
                f"| {method} | {100 * np.mean(top_bin[method]):.1f} % | {rule} | "
                + " | ".join(cells)
                + f" | {100 * m['below_half']:.1f} % |"
            )


if __name__ == "__main__":
    main()
