"""How many of ViT-Slim's trained masks end below zero, and how many of a layer's kept neurons
(its 5 largest |mask|) have a negative mask, on the built-in demo ViT (20 training images of a
class, the default search at several lambda).

    python benchmarks/slim_masks.py

With the masks kept >= 0 (issue 33) both counts are 0; run it on the code before that change
(``git worktree add /tmp/old 97a07c6 && PYTHONPATH=/tmp/old/src python benchmarks/slim_masks.py``)
to see what the earlier search did.
"""

from __future__ import annotations

import torch

from neuronpath.engine.neurons import top_k
from neuronpath.engine.slimming import SlimOptions, train_masks
from neuronpath.io.images import image_batches, scan_image_folder
from neuronpath.models.demo import demo_data_dir
from neuronpath.models.loading import load_model


def main():
    adapter = load_model("demo")
    items = scan_image_folder(demo_data_dir() / "train", adapter.id2label).items
    for label in (3, 7):
        chosen = [it for it in items if it.label == label][:20]
        batch = next(image_batches(chosen, adapter.preprocess, len(chosen)))
        labels = torch.tensor([label] * len(chosen))
        for l1 in (1e-4, 1e-3, 1e-2):
            masks = train_masks(adapter, batch.pixels, labels, SlimOptions(l1=l1))
            every = torch.cat(masks)
            kept = sum(int((m[top_k(m.abs(), 5)] < 0).sum()) for m in masks)
            print(
                f"class {label}, lambda {l1:g}: {int((every < 0).sum())} of {every.numel()} masks "
                f"< 0 (lowest {every.min():.2f}); {kept} of {5 * len(masks)} neurons kept by "
                f"|mask| have a negative mask"
            )


if __name__ == "__main__":
    main()
