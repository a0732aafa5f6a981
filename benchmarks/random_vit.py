"""Write a randomly initialised ViT with ViT-B/16's depth and widths (12 layers, 768 hidden, 12
heads, 3,072 FFN neurons, 16-pixel patches) for a given input size and a shared model's
classes, as a Hugging Face folder -- the model ``neuronpath plant`` is tried on to show the
surgery does not depend on trained weights.

    python benchmarks/random_vit.py ../shared/models/vit-s12-imagenet20 runs/random-vit-b16 \\
        --image-size 64
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "like", help="a Hugging Face model folder whose classes and preprocessing to copy"
    )
    parser.add_argument("out", help="the folder to write")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    like = json.loads((Path(args.like) / "config.json").read_text())
    torch.manual_seed(args.seed)
    config = ViTConfig(
        image_size=args.image_size,
        patch_size=16,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        num_labels=len(like["id2label"]),
        id2label={int(k): v for k, v in like["id2label"].items()},
        label2id=like["label2id"],
    )
    out = Path(args.out)
    ViTForImageClassification(config).eval().save_pretrained(out)
    processor = json.loads((Path(args.like) / "preprocessor_config.json").read_text())
    processor["size"] = {"height": args.image_size, "width": args.image_size}
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
