"""The integral's accuracy and cost: how the alpha rule and the number of points m change the
JAS paths and the final JAS, against a converged reference (Gauss-Legendre, m = 128, its own
error checked against m = 64).

    python benchmarks/alpha_study.py --model ../shared/models/vit-s12-imagenet20 \
        --data ../shared/data/imagenet20-dev --images 100 --out runs/alpha-study.json

For every rule (left = the official grid, right = the paper's Eq. 3, midpoint, gauss-legendre)
and m in {3, 5, 10, 20}: the JAS path of every image (the official search), and

* **integration error**: the final JAS of the *reference's path* computed with the setting's
  grid, against the reference's value: mean absolute and relative error (the quadrature alone);
* **path agreement** with the reference: the share of identical path neurons and of identical
  whole paths; and with the official paths (left, m = 20), which is what a preset must keep;
* **cost**: seconds per image of the search and final JAS, and R, their ratio to one forward +
  input-gradient backward on 20 rows of the same model, measured in this run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench_search import unit_seconds
from neuronpath.engine.attribution import AttributionConfig, clean_pass, joint_attribution_scores
from neuronpath.io.images import interleave_classes, load_image, scan_image_folder
from neuronpath.methods import find_paths
from neuronpath.models.loading import load_model

RULES = ("left", "right", "midpoint", "gauss-legendre")
STEPS = (3, 5, 10, 20)


def search(adapter, pixels, labels, config, batch):
    """(paths (images, layers), final JAS (images,), seconds per image) of the JAS search."""
    paths, scores = [], []
    start = time.perf_counter()
    for s in range(0, len(labels), batch):
        result = find_paths(adapter, pixels[s : s + batch], labels[s : s + batch], ["jas"], config)
        paths.append(result.paths["jas"])
        scores.append(result.scores["jas"])
    return torch.cat(paths), torch.cat(scores), (time.perf_counter() - start) / len(labels)


def jas_of(adapter, pixels, labels, paths, config, batch):
    """Final JAS of given paths (images, layers) with ``config``'s grid."""
    out = []
    for s in range(0, len(labels), batch):
        x, y, p = pixels[s : s + batch], labels[s : s + batch], paths[s : s + batch]
        clean = clean_pass(adapter, x, y, config)
        neurons = {l: p[:, l] for l in range(p.shape[1])}
        out.append(joint_attribution_scores(adapter, x, clean, [neurons], config)[0])
    return torch.cat(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--out", help="write every number as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    adapter = load_model(args.model, dtype=dtype)
    items = interleave_classes(scan_image_folder(args.data, adapter.id2label).items)[: args.images]
    pixels = torch.stack([adapter.preprocess(load_image(i.path)) for i in items]).to(dtype)
    labels = torch.tensor([i.label for i in items])
    units = [unit_seconds(adapter, pixels, labels, 20, 5)]

    reference_cfg = AttributionConfig(steps=128, alphas="gauss-legendre")
    ref_paths, ref_jas, ref_seconds = search(
        adapter, pixels, labels, reference_cfg, args.batch_size
    )
    check_cfg = AttributionConfig(steps=64, alphas="gauss-legendre")
    check_paths, check_jas, check_seconds = search(
        adapter, pixels, labels, check_cfg, args.batch_size
    )
    check_on_ref = jas_of(adapter, pixels, labels, ref_paths, check_cfg, args.batch_size)
    units.append(unit_seconds(adapter, pixels, labels, 20, 5))

    def agreement(paths, other):
        return float((paths == other).float().mean()), float((paths == other).all(1).float().mean())

    scale = float(ref_jas.abs().mean())
    results = {
        "images": len(items),
        "reference": {
            "rule": "gauss-legendre",
            "steps": 128,
            "mean_jas": float(ref_jas.mean()),
            "seconds": ref_seconds,
            "check_m64": {
                "abs_error_same_path": float((check_on_ref - ref_jas).abs().mean()),
                "rel_error_same_path": float((check_on_ref - ref_jas).abs().mean()) / scale,
                "neurons_identical": agreement(check_paths, ref_paths)[0],
                "paths_identical": agreement(check_paths, ref_paths)[1],
                "seconds": check_seconds,
            },
        },
        "settings": [],
    }
    official = None
    for rule in RULES:
        for m in STEPS:
            config = AttributionConfig(steps=m, alphas=rule)
            paths, _, seconds = search(adapter, pixels, labels, config, args.batch_size)
            on_ref = jas_of(adapter, pixels, labels, ref_paths, config, args.batch_size)
            units.append(unit_seconds(adapter, pixels, labels, 20, 5))
            if rule == "left" and m == 20:
                official = paths
            results["settings"].append(
                {
                    "rule": rule,
                    "steps": m,
                    "abs_error": float((on_ref - ref_jas).abs().mean()),
                    "rel_error": float((on_ref - ref_jas).abs().mean()) / scale,
                    "neurons_identical": agreement(paths, ref_paths)[0],
                    "paths_identical": agreement(paths, ref_paths)[1],
                    "seconds": seconds,
                    "paths": paths.tolist(),
                }
            )
            print(f"{rule} m={m}: done", flush=True)
    unit = statistics.mean(units)
    for entry in results["settings"]:
        paths = torch.tensor(entry.pop("paths"))
        entry["official_neurons_identical"], entry["official_paths_identical"] = agreement(
            paths, official
        )
        entry["R"] = entry["seconds"] / unit
    results["unit_seconds"] = unit
    results["reference"]["R"] = ref_seconds / unit

    print(
        f"{len(items)} images, {args.dtype}, batch {args.batch_size}, {torch.get_num_threads()} "
        f"threads; unit (forward + input-gradient backward, 20 rows) {unit * 1e3:.1f} ms"
    )
    c = results["reference"]["check_m64"]
    print(
        f"reference gauss-legendre m=128: mean final JAS {results['reference']['mean_jas']:.5f}; "
        f"m=64 against it: JAS error on the same path {c['abs_error_same_path']:.2e} "
        f"({c['rel_error_same_path']:.2e} relative), neurons identical "
        f"{c['neurons_identical']:.1%}, paths identical {c['paths_identical']:.1%}"
    )
    print(
        f"{'rule':<15}{'m':>3}{'|dJAS|':>10}{'rel':>9}{'neurons':>9}{'paths':>8}"
        f"{'vs official n.':>15}{'p.':>7}{'R':>7}"
    )
    for e in results["settings"]:
        print(
            f"{e['rule']:<15}{e['steps']:>3}{e['abs_error']:>10.2e}{e['rel_error']:>9.2%}"
            f"{e['neurons_identical']:>9.1%}{e['paths_identical']:>8.1%}"
            f"{e['official_neurons_identical']:>15.1%}{e['official_paths_identical']:>7.1%}"
            f"{e['R']:>7.2f}"
        )
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
