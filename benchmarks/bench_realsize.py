"""The cost at the paper's model sizes, on random weights of the real shapes (no download):
ViT-B/16 and ViT-L/16 at 224 px (197 tokens; 3,072 and 4,096 FFN neurons per layer).

    python benchmarks/bench_realsize.py --data ../shared/data/imagenet20-dev --images 2

    # one thread per process on a 2-core machine, the memory run on the second core:
    OMP_NUM_THREADS=1 python benchmarks/bench_realsize.py --data ../shared/data/imagenet20-dev \
        --images 1 --models ViT-B/16,ViT-L/16 --concurrent --repeats 2

For each model, measured in one run: one unit (a forward + input-gradient backward on m = 20
rows), the seconds per image of ``find``'s default (the JAS search and the final JAS of the JAS
and Activation paths) and its ratio R to the unit, and the peak resident memory of a
``neuronpath find`` process on one image with the default memory budget (2 GiB of saved
activations per chunk), as find logs it.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification

from bench_search import unit_seconds
from neuronpath.engine.attribution import AttributionConfig
from neuronpath.io.images import interleave_classes, load_image, scan_image_folder
from neuronpath.methods import find_paths
from neuronpath.models.loading import load_model

SIZES = {
    "ViT-B/16": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    ),
    "ViT-L/16": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),
}
PREPROCESSOR = {
    "do_resize": True,
    "size": {"height": 224, "width": 224},
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "image_processor_type": "ViTImageProcessor",
}


def save(name: str, folder: Path) -> Path:
    torch.manual_seed(0)
    config = ViTConfig(image_size=224, patch_size=16, num_labels=1000, **SIZES[name])
    ViTForImageClassification(config).eval().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="an ImageFolder (synset folders map to ids)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--models", default=",".join(SIZES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--repeats", type=int, default=3, help="units timed before and after find (median each)"
    )
    parser.add_argument(
        "--concurrent",
        action="store_true",
        help="run the memory measurement's find beside the timing (with OMP_NUM_THREADS=1 on "
        "two cores: half the wall time, each run on its own core)",
    )
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            folder = save(name, Path(tmp) / "model")
            adapter = load_model(str(folder))
            items = interleave_classes(scan_image_folder(args.data, adapter.id2label).items)
            items = items[: args.images]
            pixels = torch.stack([adapter.preprocess(load_image(i.path)) for i in items])
            labels = torch.tensor([i.label for i in items])
            out = Path(tmp) / "run"
            command = [
                sys.executable,
                "-m",
                "neuronpath.cli",
                "find",
                "--model",
                str(folder),
                "--data",
                args.data,
                "--out",
                str(out),
                "--limit",
                "1",
                "--device",
                "cpu",
                "--steps",
                str(args.steps),
                "--batch-size",
                "1",
            ]
            errors = Path(tmp) / "find.stderr"
            memory_run = None
            if args.concurrent:  # the memory run on another core, beside the timing
                with errors.open("w") as handle:
                    memory_run = subprocess.Popen(command, stdout=handle, stderr=handle)
            unit_seconds(adapter, pixels, labels, args.steps, 1)  # warm-up
            units = [unit_seconds(adapter, pixels, labels, args.steps, args.repeats)]
            start = time.perf_counter()
            for b in range(len(items)):
                find_paths(
                    adapter,
                    pixels[b : b + 1],
                    labels[b : b + 1],
                    ["jas", "activation"],
                    AttributionConfig(steps=args.steps),
                )
            seconds = (time.perf_counter() - start) / len(items)
            units.append(unit_seconds(adapter, pixels, labels, args.steps, args.repeats))
            unit = statistics.mean(units)
            if memory_run is None:
                subprocess.run(command, check=True, capture_output=True)
            elif memory_run.wait() != 0:
                raise SystemExit(f"the find run failed:\n{errors.read_text()}")
            logged = re.search(r"peak memory ([\d.]+) GiB", (out / "find.log").read_text())
            rows.append(
                (name, adapter.num_layers, adapter.width(), unit, seconds, float(logged.group(1)))
            )
    print(
        f"{torch.get_num_threads()} threads, m = {args.steps}, {args.images} images per model"
        f"{', memory run beside the timing' if args.concurrent else ''}"
    )
    print(
        f"{'model':<10}{'layers':>7}{'FFN':>6}{'unit (s)':>10}{'s / image':>11}{'R':>7}"
        f"{'peak GiB':>10}"
    )
    for name, layers, width, unit, seconds, peak in rows:
        print(
            f"{name:<10}{layers:>7}{width:>6}{unit:>10.2f}{seconds:>11.1f}{seconds / unit:>7.1f}"
            f"{peak:>10.2f}"
        )


if __name__ == "__main__":
    main()
