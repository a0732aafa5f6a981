"""Throughput of one GPU: images per second of ``find`` (jas+activation), ``evaluate``
(removal + enhancement of both paths and a random control) and of the unit (one forward +
input-gradient backward on m rows), for a ViT-B/16-shaped model at 224 px, m = 20, over a sweep
of batch sizes.  Random weights: speed does not depend on them.

    python benchmarks/bench_gpu.py --device cuda --batch-sizes 1,4,8,16,32 --dtype float32
    python benchmarks/bench_gpu.py --device cuda --dtype bfloat16

Runs anywhere (``--device cpu`` with a small ``--layers``/``--image-size`` as a smoke test); the
figures mean something only on the GPU they were measured on.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import ViTConfig, ViTForImageClassification

from neuronpath.engine.attribution import AttributionConfig, objective
from neuronpath.engine.editing import manipulate
from neuronpath.methods import find_paths
from neuronpath.methods.controls import random_path
from neuronpath.models.huggingface import from_hf_model
from neuronpath.models.spec import ModelSpec
from neuronpath.options import byte_size as parse_bytes


def timed(fn, device, repeats):
    """Median seconds of ``fn()`` over ``repeats`` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float32", help="float32, tf32, bfloat16, float16")
    parser.add_argument("--batch-sizes", default="1,4,8,16,32")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--memory-budget", default="8GiB")
    args = parser.parse_args()
    device = torch.device(args.device)
    model_dtype, autocast = ModelSpec(dtype=args.dtype).precision(device)
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden,
        image_size=args.image_size,
        patch_size=args.patch,
        num_labels=1000,
    )
    adapter = from_hf_model(ViTForImageClassification(config).eval(), name="vit-b16-shaped")
    adapter.to(device=device, dtype=model_dtype)
    attribution = AttributionConfig(
        steps=args.steps, autocast=autocast, memory_budget=parse_bytes(args.memory_budget)
    )
    width = adapter.width()
    print(
        f"ViT: {args.layers} layers, width {args.hidden}, FFN {width}, {args.image_size} px, "
        f"patch {args.patch}; m = {args.steps}; dtype {args.dtype}; device "
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else device}"
    )
    print(f"{'batch':>6}{'unit img/s':>12}{'find img/s':>12}{'evaluate img/s':>16}{'R find':>8}")
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        pixels = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
        labels = torch.randint(0, 1000, (batch,), device=device)

        def unit():
            x = pixels[:1].repeat(args.steps, 1, 1, 1).requires_grad_(True)
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                f = objective(adapter.logits(x), labels[:1].repeat(args.steps), "prob").sum()
            torch.autograd.grad(f, x)

        def find():
            return find_paths(adapter, pixels, labels, ["jas", "activation"], attribution)

        result = find()
        paths = {
            **result.paths,
            "random": torch.stack(
                [random_path(str(i), 0, adapter.num_layers, width) for i in range(batch)]
            )[..., 0],
        }

        def evaluate():
            manipulate(adapter, pixels, labels, paths)

        unit_s = timed(unit, device, args.repeats)
        find_s = timed(find, device, args.repeats)
        evaluate_s = timed(evaluate, device, args.repeats)
        print(
            f"{batch:>6}{1 / unit_s:>12.2f}{batch / find_s:>12.2f}{batch / evaluate_s:>16.1f}"
            f"{find_s / batch / unit_s:>8.2f}"
        )


if __name__ == "__main__":
    main()
