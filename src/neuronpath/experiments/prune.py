"""``neuronpath prune``: class-specific pruning experiment, Figure 6 and the Table 3 depth ablation.

Writes into OUT: ``find/`` (the TopK paths of the probe images, a resumable find run),
``grid/`` (every test image's label probability and prediction under every setting, a
resumable run folder too), ``results.json`` (every number, the split and the kept neurons),
``figure6.png/.svg``, ``table3.md/.csv``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..analysis.bootstrap import bootstrap_draws
from ..analysis.pruning import (AGGREGATES, keep_by_frequency, keep_by_slot_mode,
                                paired_difference, probe_selections, prune_multipliers,
                                pruning_metrics, random_keep, split_probe_test)
from ..engine.editing import pruned_predictions
from ..errors import RunConflictError, option
from ..io.images import scan_image_folder
from ..io.store import read_manifest, read_records, write_json_atomic
from ..models.loading import load_model
from ..report.figures import pruning_figure
from ..report.tables import write_depth_table
from .common import model_widths, precision, resolve_device
from .ranks import join_ranks, open_store, work_through
from .find import input_settings, run_find

log = logging.getLogger("neuronpath")

PATH_METHODS = ("jas", "activation")
GRID_BATCH = 64  # test images per batch of the pruning grid
PRUNE_METHODS = PATH_METHODS + ("random",)  # keep rules: two path methods and a random control


def run_prune(model: str, data: str | Path, out: str | Path, *,
              keep: Sequence[int] = (1, 5, 10, 30, 50), mask: Sequence[float] = (0.1, 0.3, 0.5, 1.0),
              depth: Sequence[int] | None = None, probe_fraction: float = 0.8, seed: int = 0,
              aggregate: str = "frequency", methods: Sequence[str] = PRUNE_METHODS,
              find_run: str | Path | None = None, steps: int = 20, alphas: str = "left",
              topk_mode: str = "all", batch_size: int = 8, device: str = "auto",
              dtype: str = "float32", preprocess: str = "model", token: str | None = None,
              labels: str = "auto", memory_budget: str | int = "2GiB",
              image_size: int | None = None, fc_norm_twice: bool = False,
              table_keep: int = 5, table_mask: float = 1.0, bootstrap: int = 1000,
              classes: str | Path | None = None, prompt: str | None = None,
              workers: int | None = None, command: Sequence[str] | None = None,
              progress: bool | None = None) -> dict | None:
    """Run the pruning experiment into ``out`` (probe paths in ``out/find``, the test images'
    outcomes under every setting in ``out/grid``, both resumable) and return every number;
    ``command`` is recorded in the probe find run's manifest, ``classes`` and ``prompt`` make a
    CLIP or SigLIP model a zero-shot classifier.  A reused ``find_run`` must have been made with
    the same model, inputs, token and labels.  Under ``torchrun`` the ranks share the probe
    paths and the grid; the main rank writes the results (the others return None)."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"{option('aggregate')}: expected one of {AGGREGATES}, got {aggregate!r}")
    if not keep or min(keep) < 1:
        raise ValueError(f"{option('keep')}: expected positive neuron counts, got {list(keep)}")
    if not mask or any(not 0 <= p <= 1 for p in mask):
        raise ValueError(f"{option('mask')}: expected shares in [0, 1], got {list(mask)}")
    unknown = [m for m in methods if m not in PRUNE_METHODS]
    if unknown:
        raise ValueError(f"{option('methods')}: unknown {unknown}; expected some of {PRUNE_METHODS}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ranks = join_ranks(resolve_device(device))
    adapter = load_model(model, device=ranks.device, dtype=precision(dtype, ranks.device)[0],
                         token=token, preprocess=preprocess, image_size=image_size,
                         fc_norm_twice=fc_norm_twice, classes=classes, prompt=prompt)
    widths, num_layers = adapter.widths(), adapter.num_layers
    depths = sorted(set(depth or [num_layers]))
    if depths[0] < 1 or depths[-1] > num_layers:
        raise ValueError(f"{option('depth')}: expected layers in 1..{num_layers}, got {depths}")
    if max(keep) > min(widths):
        raise ValueError(f"{option('keep')}: at most the FFN width {min(widths)}, got {max(keep)}")
    folder = scan_image_folder(data, adapter.id2label, labels)
    weights = adapter.weights_hash()
    inputs = input_settings(adapter, folder.mapping, image_size, fc_norm_twice, classes)
    by_class: dict[str, list[str]] = {}
    for item in folder.items:
        by_class.setdefault(item.folder, []).append(item.id)
    split = split_probe_test(by_class, probe_fraction, seed)
    probe = {i for i, s in split.items() if s == "probe"}
    path_methods = [m for m in methods if m in PATH_METHODS]

    k = max(keep)
    if find_run is not None:
        manifest = read_manifest(find_run)
        check_same_inputs(find_run, manifest["settings"], weights, inputs)
        if manifest["settings"]["topk"] < k:
            raise ValueError(f"find run {find_run} has K = {manifest['settings']['topk']} < "
                             f"max keep {k}")
        run_dir = Path(find_run)
    elif path_methods:
        run_dir = run_find(model, data, out / "find", methods=path_methods, steps=steps,
                           alphas=alphas, batch_size=batch_size, device=device, dtype=dtype,
                           preprocess=preprocess, token=token, labels=labels,
                           memory_budget=memory_budget, topk=k, topk_mode=topk_mode, only=probe,
                           image_size=image_size, fc_norm_twice=fc_norm_twice, classes=classes,
                           prompt=prompt, workers=workers, command=command)
    ranks.barrier()  # the probe paths are merged before any rank reads them
    records = read_records(run_dir) if path_methods else []
    # how the probe paths were searched: the find run's own settings, reused or made here
    found = read_manifest(run_dir) if path_methods else {}
    found_with = found.get("settings", {})
    unreadable = set(found.get("skipped", {}))  # probe images find reported and skipped
    search = {key: found_with.get(key) for key in ("steps", "alphas", "target", "objective",
                                                   "topk", "topk_mode")}
    search["rerank"] = found_with.get("rerank", 0)

    # kept neurons per (method, class, t)
    kept: dict[str, dict[str, dict[int, list[list[int]]]]] = {m: {} for m in methods}
    rule = keep_by_frequency if aggregate == "frequency" else keep_by_slot_mode
    for name, images in by_class.items():
        probe_images = sorted(i for i in images if split[i] == "probe" and i not in unreadable)
        for m in methods:
            if m == "random":
                kept[m][name] = {t: random_keep(name, seed, num_layers, widths, t) for t in keep}
            else:
                sel = probe_selections(records, m, probe_images)[:, :, :k]
                kept[m][name] = {t: rule(sel, t) for t in keep}

    # the grid: every test image under the unpruned model and every (method, t, p, depth)
    tests = [it for it in folder.items if split[it.id] == "test"]
    configs = {"unpruned": None} | {f"{m}|{t}|{p}|{d}": (m, t, p, d) for m in methods
                                     for t in keep for p in mask for d in depths}
    grid = _prune_grid(ranks, adapter, out / "grid", tests, configs, kept, widths, seed,
                       {"weights_sha256": weights, **inputs}, workers, progress)
    if not ranks.main:  # the other ranks of a torchrun job help with paths and grid only
        return None
    good = [it for it in tests if it.id in grid]
    if not good:
        raise ValueError(f"{option('data')}: no readable test image in {data}")
    labels_all = np.array([it.label for it in good])
    resamples = bootstrap_draws(len(good), bootstrap, seed)
    per_image = {}
    for c, key in enumerate(configs):
        probs = np.array([grid[it.id]["prob"][c] for it in good], dtype=np.float64)
        preds = np.array([grid[it.id]["pred"][c] for it in good])
        per_image[key] = ((preds == labels_all).astype(np.float64), probs)
    folders = [it.folder for it in good]
    results = {key: pruning_metrics(*values, folders, resamples) for key, values in per_image.items()}
    t_table = table_keep if table_keep in keep else keep[0]
    p_table = table_mask if table_mask in mask else mask[-1]
    comparisons = {}
    for d in depths:
        ours = f"jas|{t_table}|{p_table}|{d}"
        if ours not in per_image:
            break
        for other in [f"{m}|{t_table}|{p_table}|{d}" for m in methods if m != "jas"] + ["unpruned"]:
            comparisons[f"{ours} - {other}"] = paired_difference(per_image[ours], per_image[other], resamples)

    report = {"model": model, "data": str(Path(data).expanduser().resolve()),
              "weights_sha256": weights, "keep": list(keep), "mask": list(mask),
              "depth": depths, "probe_fraction": probe_fraction, "seed": seed,
              "aggregate": aggregate, "methods": list(methods), "topk_mode": search["topk_mode"],
              "find_run": str(run_dir) if path_methods else None, "search": search,
              "layers": num_layers,
              **model_widths(adapter), "test_images": len(good), "split": split, "kept": kept,
              "bootstrap": bootstrap, "results": results, "comparisons": comparisons}
    write_json_atomic(out / "results.json", report)
    pruning_figure(report, out / "figure6", depth=depths[-1])
    write_depth_table(report, out / "table3", t_table, p_table)
    return report


def check_same_inputs(find_run, settings: dict, weights_sha256: str, inputs: dict) -> None:
    """Refuse a reused find run whose paths were found on another model or other
    :func:`~.find.input_settings` (image processor, token, labels, checkpoint options,
    zero-shot label set) than this prune run evaluates: its kept neurons would then belong to
    a different computation."""
    if settings["weights_sha256"] != weights_sha256:
        raise RunConflictError(f"find run {find_run} was made by a different model")
    ours = json.loads(json.dumps(inputs))  # as the manifest stores them (tuples become lists)
    keys = list(dict.fromkeys([*ours, "classes", "prompt"]))
    ours = {key: ours.get(key) for key in keys}
    theirs = {key: settings.get(key, False if key == "fc_norm_twice" else None) for key in keys}
    changed = [key for key in keys if ours[key] != theirs[key]]
    if changed:
        def show(key, value):
            if key == "preprocess" and isinstance(value, dict):
                return f"{value.get('name')} ({value.get('class', 'written out')})"
            return repr(value)
        details = "; ".join(f"{key}: {show(key, theirs[key])} there, {show(key, ours[key])} here"
                            for key in changed)
        raise RunConflictError(f"find run {find_run} was made with other inputs than this prune "
                               f"run ({details}); pass the options the find run was made with")


def _prune_grid(ranks, adapter, folder: Path, tests: list, configs: dict, kept: dict, widths,
                seed: int, model_identity: dict, workers: int | None,
                progress: bool | None) -> dict:
    """The test images' label probability and prediction under every setting of the grid, as
    a resumable run folder (one record per image, ``prob``/``pred`` in ``configs`` order) that
    the ranks of a ``torchrun`` job share out.  The masks are seeded per image, so the numbers
    do not depend on batches, ranks or interruptions; ``model_identity`` (weights hash and
    :func:`~.find.input_settings`) is part of the folder's identity.  Returns the records by
    image (main rank; empty on the others)."""
    identity = {**model_identity, "configs": list(configs), "seed": seed,
                "tests_sha256": hashlib.sha256("\n".join(it.id for it in tests).encode()).hexdigest(),
                "kept_sha256": hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()}
    store = open_store(ranks, folder, {"tool": "neuronpath prune", "settings": identity})
    pending = [it for it in tests if "grid" not in store.done.get(it.id, set())]
    log.info("prune: %d test images x %d settings, %d images to do -> %s", len(tests),
             len(configs), len(pending), store.dir)

    def handle(batch):
        labels_t = torch.tensor([it.label for it in batch.items])
        probs, preds = [], []
        for setting in configs.values():
            if setting is None:
                rows = [{}] * len(batch.items)
            else:
                m, t, p, d = setting
                rows = [prune_multipliers(item.id, seed, kept[m][item.folder][t], widths, p, d)
                        for item in batch.items]
            prob, pred = pruned_predictions(adapter, batch.pixels, labels_t, rows, widths)
            probs.append(prob.double().cpu())
            preds.append(pred.cpu())
        probs, preds = torch.stack(probs, 1).tolist(), torch.stack(preds, 1).tolist()
        store.append([{"image": item.id, "method": "grid", "label": item.label,
                       "prob": probs[b], "pred": preds[b]} for b, item in enumerate(batch.items)])

    work_through(ranks, store, pending, adapter.preprocess, GRID_BATCH, workers, handle,
                 [it.id for it in tests], "pruning", progress)
    return {r["image"]: r for r in read_records(folder)} if ranks.main else {}
