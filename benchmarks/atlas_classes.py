"""What an atlas's units respond to, by class: for each unit of a ``neuronpath neurons`` folder,
its mean value, the share of images where it is active, the classes of its top images, and the
three classes with the highest mean value over the atlas's sample (the whole image set when it
holds fewer images than ``--sample``).

    python benchmarks/atlas_classes.py runs/s12-atlas \
        --class-names ../shared/data/imagenet20-dev/classes.tsv
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from neuronpath.experiments.neurons import read_atlas
from neuronpath.io.labels import read_class_names
from neuronpath.pathformat import unit_label


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("atlas")
    parser.add_argument("--class-names")
    args = parser.parse_args()
    names = read_class_names(args.class_names) if args.class_names else {}
    atlas = read_atlas(args.atlas)
    data = np.load(Path(args.atlas) / "atlas.npz")
    meta = json.loads(str(data["meta"]))
    state = np.load(Path(args.atlas) / "state.rank0.npz")
    sampled = [i for i in str(state["sample_images"]).split("\n") if i]
    keys = np.array([int(k) for k in state["sample_keys"]])
    order = np.argsort(keys, kind="stable")
    sampled = [sampled[i] for i in order]
    print(f"{atlas.images} images, {len(sampled)} of them in the sample")
    for s, block, kind in zip(meta["sites"], meta["blocks"], meta["kinds"]):
        values = np.stack(list(state[f"sample{s}"]))[order] if len(sampled) else None
        for j, unit in enumerate(data[f"units{s}"].tolist()):
            entry = atlas[(block, kind, unit)]

            def cls(image):
                return names.get(image.split("/")[0], image.split("/")[0])

            top = Counter(cls(i) for i, _, _ in entry["top"]).most_common()
            by_class = defaultdict(list)
            for image, value in zip(sampled, values[:, j] if values is not None else []):
                by_class[cls(image)].append(value)
            means = sorted(((np.mean(v), c) for c, v in by_class.items()), reverse=True)[:3]
            print(
                f"{unit_label(block, kind, unit)}: mean {entry['mean']:.3f}, active "
                f"{entry['active']:.0%}; top {len(entry['top'])}: "
                + ", ".join(f"{c} {n}" for c, n in top)
                + "; highest class means: "
                + ", ".join(f"{c} {m:.2f}" for m, c in means)
            )


if __name__ == "__main__":
    main()
