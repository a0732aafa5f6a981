"""How far apart a model's top two logits are: per model folder, the 1st, 5th and 50th
percentiles of the margin (top logit over the runner-up) over every 4th image of the dev set
(200 images), and how many images each class wins.  A model whose margins are small has
predictions that tiny weight changes flip (why ``plant`` refuses the random ViT-B/16).

    python benchmarks/logit_margins.py runs/random-vit-b16 ../shared/models/vit-s12-imagenet20
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", default="../shared/data/imagenet20-dev")
    args = parser.parse_args()
    files = sorted(Path(args.data).glob("*/*.JPEG"))[::4]
    for name in args.models:
        model = AutoModelForImageClassification.from_pretrained(name).eval()
        processor = AutoImageProcessor.from_pretrained(name)
        rows = []
        with torch.no_grad():
            for i in range(0, len(files), 50):
                images = [Image.open(f).convert("RGB") for f in files[i : i + 50]]
                rows.append(model(**processor(images, return_tensors="pt")).logits)
        logits = torch.cat(rows)
        top = logits.topk(2, dim=1).values
        margin = (top[:, 0] - top[:, 1]).numpy()
        wins = torch.bincount(logits.argmax(1), minlength=logits.shape[1]).tolist()
        q = np.quantile(margin, [0.01, 0.05, 0.5])
        print(
            f"{name}: {len(margin)} images; margin 1st/5th/50th percentile "
            f"{q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f}; images won per class {wins}"
        )


if __name__ == "__main__":
    main()
