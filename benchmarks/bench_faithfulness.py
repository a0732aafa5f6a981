"""The cost of evaluate's faithfulness study: seconds per image of each ablation pass, and its
ratio to one forward + input-gradient backward of the same model on m rows (the unit R is
measured in, ``bench_search.py``), both measured in this run; plus the reference pass.

    python benchmarks/bench_faithfulness.py runs/s12-dev400 --images 20 --reference-split 40

Each ablation runs on its own copy of the find run (its first ``--images`` evaluated images),
with the run's methods, the random control and every method's matched-random control; the reference
statistics come from one streaming pass over ``--reference-split`` of the run's images.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_search import unit_seconds
from neuronpath.experiments.common import Execution
from neuronpath.experiments.evaluate import EditOptions, StoredPaths
from neuronpath.experiments.faithfulness import (
    FaithfulnessOptions,
    check_study,
    reference_statistics,
    run_faithfulness,
)
from neuronpath.io.images import load_image


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a finished find run")
    parser.add_argument("--images", type=int, default=20, help="evaluated images per ablation")
    parser.add_argument("--reference-split", type=int, default=40)
    parser.add_argument("--steps", type=int, default=20, help="m of the unit")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    execution = Execution(args.device, 16, progress=False)
    timings, images = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for ablation in ("zero", "mean", "resample"):
            copy = Path(tmp) / ablation
            shutil.copytree(
                args.run,
                copy,
                ignore=shutil.ignore_patterns("evaluation", "report", "causal", "classes-*"),
            )
            options = FaithfulnessOptions(
                ablations=(ablation,),
                metrics=("prob",),
                controls=("random", "matched-random"),
                reference_split=args.reference_split,
            )
            run = StoredPaths.open(copy, EditOptions(bootstrap=0), args.device)
            run.excluded = check_study(run, options)
            keep = [i for i in run.by_image if i not in run.excluded][: args.images]
            run.by_image = {i: r for i, r in run.by_image.items() if i in keep or i in run.excluded}
            images = len(keep)
            start = time.perf_counter()
            reference_statistics(run, options, copy / "evaluation" / "faithfulness", execution)
            timings.setdefault("reference pass", []).append(time.perf_counter() - start)
            start = time.perf_counter()
            run_faithfulness(run, options, execution)
            timings[ablation] = [time.perf_counter() - start]
        pixels = torch.stack([run.adapter.preprocess(load_image(run.root / i)) for i in keep[:4]])
        labels = torch.tensor([next(iter(run.by_image[i].values()))["label"] for i in keep[:4]])
        unit_seconds(run.adapter, pixels, labels, args.steps, 3)  # warm-up
        unit = unit_seconds(run.adapter, pixels, labels, args.steps, 10)

    rows = run.adapter.num_layers
    print(
        f"run {args.run}: {rows} layers, {images} images per ablation, methods "
        f"{', '.join(run.find.methods)} + random + each method's "
        f"matched-random (3 seeds), {torch.get_num_threads()} threads, device {args.device}"
    )
    print(f"unit (forward + input-gradient backward, {args.steps} rows): {unit * 1e3:.1f} ms")
    print(f"{'pass':<18}{'s / image':>10}{'R':>8}")
    for name in ("zero", "mean", "resample"):
        seconds = timings[name][0] / images
        print(f"{name:<18}{seconds:>10.3f}{seconds / unit:>8.1f}")
    reference = statistics.median(timings["reference pass"]) / args.reference_split
    print(
        f"{'reference pass':<18}{reference:>10.4f}{reference / unit:>8.2f}   (per reference "
        f"image, one streaming forward)"
    )


if __name__ == "__main__":
    main()
