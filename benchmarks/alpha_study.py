"""The integral's accuracy and cost: how the alpha rule and the number of points m change the
JAS paths and the final JAS, against a converged reference (Gauss-Legendre, m = 128, its own
error checked against m = 64).

    python benchmarks/alpha_study.py --model ../shared/models/vit-s12-imagenet20 \
        --data ../shared/data/imagenet20-dev --images 100 --out runs/alpha-study.jsonl

For every rule (left = the official grid, right = the paper's Eq. 3, midpoint, gauss-legendre)
and m in {3, 5, 10, 20}: the JAS path of every image (the official search), and

* **integration error**: the final JAS of the *reference's path* computed with the setting's
  grid, against the reference's value: mean absolute and relative error (the quadrature alone);
* **path agreement** with the reference: the share of identical path neurons and of identical
  whole paths; and with the official paths (left, m = 20), which is what a preset must keep;
* **cost**: seconds per image of the search and final JAS, and R, their ratio to one forward +
  input-gradient backward on 20 rows of the same model, measured in the same run.

The reference's own error: its final JAS recomputed with m = 64 on the same path (every image),
and the path an m = 64 search picks (the first ``--check-search`` images).

Every batch of images is appended to ``--out`` (JSON lines) as it finishes, so a killed study
resumes where it stopped. ``--shard K/N`` takes every N-th image from the K-th, so N processes
(one per core) share the images; ``--merge A B ...`` reads their files and prints the table
over all of them (R is each shard's own ratio, weighted by its images).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench_search import unit_seconds
from neuronpath.analysis.bootstrap import bootstrap_draws, mean_interval
from neuronpath.engine.attribution import AttributionConfig, clean_pass, joint_attribution_scores
from neuronpath.io.images import interleave_classes, load_image, scan_image_folder
from neuronpath.methods import find_paths
from neuronpath.models.loading import load_model

RULES = ("left", "right", "midpoint", "gauss-legendre")
STEPS = (3, 5, 10, 20)
REFERENCE = ("gauss-legendre", 128)
CHECK = ("gauss-legendre", 64)
OFFICIAL = ("left", 20)


def timed_search(adapter, pixels, labels, config):
    """(paths (images, layers), final JAS (images,), seconds) of the JAS search."""
    start = time.perf_counter()
    result = find_paths(adapter, pixels, labels, ["jas"], config)
    return result.paths["jas"], result.scores["jas"], time.perf_counter() - start


def jas_of(adapter, pixels, labels, paths, config):
    """Final JAS of given paths (images, layers) with ``config``'s grid."""
    clean = clean_pass(adapter, pixels, labels, config)
    neurons = {l: paths[:, l] for l in range(paths.shape[1])}
    return joint_attribution_scores(adapter, pixels, clean, [neurons], config)[0]


def study_batch(adapter, pixels, labels, check_search):
    """Every number of the study for one batch of images, as a JSON-ready dict."""
    unit = unit_seconds(adapter, pixels, labels, 20, 5)
    ref_paths, ref_jas, ref_seconds = timed_search(
        adapter, pixels, labels, AttributionConfig(steps=REFERENCE[1], alphas=REFERENCE[0])
    )
    check_cfg = AttributionConfig(steps=CHECK[1], alphas=CHECK[0])
    row = {
        "images": len(labels),
        "unit_seconds": unit,
        "reference": {
            "paths": ref_paths.tolist(),
            "jas": ref_jas.tolist(),
            "seconds": ref_seconds,
            "check_jas_same_path": jas_of(adapter, pixels, labels, ref_paths, check_cfg).tolist(),
        },
        "settings": {},
    }
    if check_search:
        row["reference"]["check_paths"] = timed_search(adapter, pixels, labels, check_cfg)[
            0
        ].tolist()
    for rule in RULES:
        for m in STEPS:
            config = AttributionConfig(steps=m, alphas=rule)
            paths, _, seconds = timed_search(adapter, pixels, labels, config)
            row["settings"][f"{rule}:{m}"] = {
                "paths": paths.tolist(),
                "jas_on_reference_path": jas_of(
                    adapter, pixels, labels, ref_paths, config
                ).tolist(),
                "seconds": seconds,
            }
    return row


def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    adapter = load_model(args.model, dtype=dtype)
    items = interleave_classes(scan_image_folder(args.data, adapter.id2label).items)
    indices = list(range(min(args.images, len(items))))
    shard, shards = (int(v) for v in args.shard.split("/"))
    indices = indices[shard::shards]
    out = Path(args.out)
    done = {i for row in read_rows([out]) for i in row["indices"]} if out.exists() else set()
    pending = [i for i in indices if i not in done]
    print(f"shard {shard}/{shards}: {len(indices)} images, {len(pending)} to do", flush=True)
    for s in range(0, len(pending), args.batch_size):
        batch = pending[s : s + args.batch_size]
        pixels = torch.stack([adapter.preprocess(load_image(items[i].path)) for i in batch])
        labels = torch.tensor([items[i].label for i in batch])
        check_search = any(i < args.check_search for i in batch)
        row = study_batch(adapter, pixels.to(dtype), labels, check_search)
        row["indices"] = batch
        row["threads"] = torch.get_num_threads()
        row["dtype"] = args.dtype
        with out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(f"images {s + len(batch)}/{len(pending)} done", flush=True)


def read_rows(paths):
    """Every batch's row of the JSON-lines files ``paths`` (a line cut by a kill is left out:
    its batch is done again); an image in two rows is refused."""
    rows = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    seen = set()
    for row in rows:
        if seen & set(row["indices"]):
            raise SystemExit(f"image indices {sorted(seen & set(row['indices']))} appear twice")
        seen.update(row["indices"])
    return rows


def summarise(rows):
    """The study's table over every row (batch) of every shard."""

    def entry(row, key):
        return row["reference"] if key == "reference" else row["settings"][key]

    def stack(key, field):
        return torch.cat([torch.tensor(entry(r, key)[field], dtype=torch.float64) for r in rows])

    def agreement(a, b):
        same = a == b
        return float(same.float().mean()), float(same.all(1).float().mean())

    def ratio(key):
        # each batch's seconds over its own unit, weighted by its images
        total = sum(row["images"] for row in rows)
        return sum(entry(row, key)["seconds"] / row["unit_seconds"] for row in rows) / total

    n = sum(row["images"] for row in rows)
    ref_paths = stack("reference", "paths")
    ref_jas = stack("reference", "jas")
    scale = float(ref_jas.abs().mean())
    check = stack("reference", "check_jas_same_path")
    checked = [row for row in rows if "check_paths" in row["reference"]]
    check_paths = torch.cat([torch.tensor(r["reference"]["check_paths"]) for r in checked])
    check_ref = torch.cat([torch.tensor(r["reference"]["paths"]) for r in checked])
    official = stack(f"{OFFICIAL[0]}:{OFFICIAL[1]}", "paths")
    official_kept = (official == ref_paths).all(1).numpy().astype(float)
    draws = bootstrap_draws(n, 2000)
    result = {
        "images": n,
        "dtype": rows[0]["dtype"],
        "threads": sorted({row["threads"] for row in rows}),
        "unit_seconds": statistics.mean(row["unit_seconds"] for row in rows),
        "reference": {
            "rule": REFERENCE[0],
            "steps": REFERENCE[1],
            "mean_jas": float(ref_jas.mean()),
            "R": ratio("reference"),
            "check": {
                "steps": CHECK[1],
                "abs_error_same_path": float((check - ref_jas).abs().mean()),
                "max_abs_error_same_path": float((check - ref_jas).abs().max()),
                "rel_error_same_path": float((check - ref_jas).abs().mean()) / scale,
                "search_images": len(check_paths),
                "neurons_identical": agreement(check_paths, check_ref)[0],
                "paths_identical": agreement(check_paths, check_ref)[1],
            },
        },
        "settings": [],
    }
    for rule in RULES:
        for m in STEPS:
            key = f"{rule}:{m}"
            paths = stack(key, "paths")
            error = (stack(key, "jas_on_reference_path") - ref_jas).abs()
            kept = (paths == ref_paths).all(1).numpy().astype(float)
            result["settings"].append(
                {
                    "rule": rule,
                    "steps": m,
                    "abs_error": float(error.mean()),
                    "rel_error": float(error.mean()) / scale,
                    "neurons_identical": agreement(paths, ref_paths)[0],
                    "paths_identical": agreement(paths, ref_paths)[1],
                    "paths_identical_interval": mean_interval(kept, draws),
                    # this setting's share of the reference's paths minus the official grid's,
                    # image by image: > 0 where it keeps more of them
                    "paths_identical_minus_official": float(np.mean(kept - official_kept)),
                    "paths_identical_minus_official_interval": mean_interval(
                        kept - official_kept, draws
                    ),
                    "official_neurons_identical": agreement(paths, official)[0],
                    "official_paths_identical": agreement(paths, official)[1],
                    "paths_differing": int((~(paths == ref_paths).all(1)).sum()),
                    "R": ratio(key),
                }
            )
    return result


def _interval(bounds, signed=False):
    sign = "+" if signed else ""
    return f"[{bounds[0]:{sign}.1%}, {bounds[1]:{sign}.1%}]"


def report(result):
    print(
        f"{result['images']} images, {result['dtype']}, {result['threads']} threads per process; "
        f"unit (forward + input-gradient backward, 20 rows) {result['unit_seconds'] * 1e3:.1f} ms"
    )
    ref, c = result["reference"], result["reference"]["check"]
    print(
        f"reference {ref['rule']} m={ref['steps']}: mean final JAS {ref['mean_jas']:.5f}, "
        f"R {ref['R']:.1f}; m={CHECK[1]} on the same path: JAS error "
        f"{c['abs_error_same_path']:.2e} "
        f"mean, {c['max_abs_error_same_path']:.2e} max ({c['rel_error_same_path']:.2e} relative); "
        f"m={CHECK[1]} search on {c['search_images']} images: neurons identical "
        f"{c['neurons_identical']:.1%}, paths identical {c['paths_identical']:.1%}"
    )
    print(
        f"{'rule':<15}{'m':>3}{'|dJAS|':>10}{'rel':>9}{'neurons':>9}{'paths':>8}"
        f"{'95% interval':>17}{'minus official [95%]':>25}{'vs official n.':>15}{'p.':>7}{'R':>7}"
    )
    for e in result["settings"]:
        print(
            f"{e['rule']:<15}{e['steps']:>3}{e['abs_error']:>10.2e}{e['rel_error']:>9.2%}"
            f"{e['neurons_identical']:>9.1%}{e['paths_identical']:>8.1%}"
            f"{_interval(e['paths_identical_interval']):>17}"
            f"{e['paths_identical_minus_official']:>+8.1%} "
            f"{_interval(e['paths_identical_minus_official_interval'], True):>16}"
            f"{e['official_neurons_identical']:>15.1%}{e['official_paths_identical']:>7.1%}"
            f"{e['R']:>7.2f}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model")
    parser.add_argument("--data")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--shard", default="0/1", help="K/N: every N-th image from the K-th")
    parser.add_argument(
        "--check-search",
        type=int,
        default=20,
        help="run the m = 64 search on the first this many images (default: 20)",
    )
    parser.add_argument("--out", help="JSON lines, one per batch, appended (resumes)")
    parser.add_argument("--merge", nargs="+", help="summarise these JSON-lines files")
    parser.add_argument("--json", help="write the summary as JSON")
    args = parser.parse_args()
    if not args.merge:
        if not (args.model and args.data and args.out):
            parser.error("--model, --data and --out are needed (or --merge FILES)")
        run(args)
    result = summarise(read_rows(args.merge or [args.out]))
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
