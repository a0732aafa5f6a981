"""``neuronpath find``: model + image folder -> per-image paths on disk, resumable."""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from ..engine.attribution import AttributionConfig
from ..errors import option
from ..io.images import interleave_classes, scan_image_folder
from ..methods import DEFAULT_METHODS, PathOptions, check_methods, find_paths
from ..models.loading import load_model
from .common import log_to, model_widths, parse_bytes, precision, resolve_device, versions
from .ranks import join_ranks, open_store, work_through

log = logging.getLogger("neuronpath")


def input_settings(adapter, labels: str, image_size: int | None, fc_norm_twice: bool,
                   classes: str | Path | None) -> dict:
    """What a run's neurons were read on besides the weights, as its manifest records it: the
    image processor, the token policy, the label mapping, the checkpoint options and, for a
    zero-shot model, the label set and prompt."""
    settings = {"preprocess": adapter.preprocess.to_dict(), "token": adapter.token.name,
                "labels": labels, "image_size": image_size, "fc_norm_twice": fc_norm_twice}
    if classes is not None:  # zero-shot: the label set is part of the run's identity
        settings.update(classes=str(Path(classes).expanduser().resolve()),
                        prompt=adapter.details["zero_shot"]["prompt"])
    return settings


def image_records(items, result, methods, id2label: dict) -> list[dict]:
    """One record per image and method: labels, clean prediction, path and final JAS (and,
    for ``knowledge``, the top-5 (layer, neuron, score) triples)."""
    clean = result.clean
    records = []
    for row, item in enumerate(items):
        pred = int(clean.predicted[row])
        for method in methods:
            record = {"image": item.id, "label": item.label,
                      "label_name": id2label.get(item.label), "pred": pred,
                      "pred_name": id2label.get(pred), "prob": float(clean.label_prob[row]),
                      "target": int(clean.targets[row]), "method": method,
                      "path": result.paths[method][row].tolist(),
                      "jas": float(result.scores[method][row])}
            for key, values in result.extras.get(method, {}).items():
                record[key] = values[row]
            records.append(record)
    return records


def run_find(model: str, data: str | Path, out: str | Path, *,
             methods: Sequence[str] = DEFAULT_METHODS, steps: int = 20, alphas: str = "left",
             target: str = "label", objective: str = "prob", batch_size: int = 8,
             device: str = "auto", dtype: str = "float32", limit: int | None = None,
             preprocess: str = "model", token: str | None = None, labels: str = "auto",
             memory_budget: str | int = "2GiB", topk: int = 1, topk_mode: str = "all",
             rerank: int | str = 0,
             image_size: int | None = None, fc_norm_twice: bool = False,
             classes: str | Path | None = None, prompt: str | None = None,
             only: set[str] | None = None, progress: bool | None = None,
             workers: int | None = None, command: Sequence[str] | None = None) -> Path:
    """Find paths for every image of an ImageFolder and write them to ``out`` (resumable).

    Re-running the same call skips finished images; a call with other settings into the
    same ``out`` raises :class:`~neuronpath.errors.RunConflictError`.  ``only`` restricts the
    run to these image ids (its hash is part of the run's identity); ``command`` is the
    command line recorded in the manifest.  ``classes`` and ``prompt`` make a CLIP or SigLIP
    model a zero-shot classifier (see :func:`~neuronpath.models.loading.load_model`).
    ``workers`` processes decode the images (default: 0 on a CPU, up to 4 beside a GPU).
    Under ``torchrun`` every rank takes its share of the images (:mod:`.ranks`).
    """
    methods = check_methods(methods)
    if batch_size < 1:
        raise ValueError(f"{option('batch_size')}: expected a positive integer, got {batch_size}")
    if topk < 1:
        raise ValueError(f"{option('topk')}: expected a positive integer, got {topk}")
    rerank = PathOptions(topk_mode, rerank).rerank  # validates both
    if limit is not None and limit < 1:
        raise ValueError(f"{option('limit')}: expected a positive integer, got {limit}")
    ranks = join_ranks(resolve_device(device))
    torch_device = ranks.device
    model_dtype, autocast = precision(dtype, torch_device)
    config = AttributionConfig(steps=steps, alphas=alphas, target=target, objective=objective,
                               memory_budget=parse_bytes(memory_budget), autocast=autocast)
    adapter = load_model(model, device=torch_device, dtype=model_dtype, token=token,
                         preprocess=preprocess, image_size=image_size,
                         fc_norm_twice=fc_norm_twice, classes=classes, prompt=prompt)
    log.info("find: each neuron is read at token %s: %s", adapter.token.name, adapter.readout)
    if topk > min(adapter.widths()):
        raise ValueError(f"{option('topk')}: expected 1 <= K <= {min(adapter.widths())} (the FFN width of "
                         f"{adapter.describe()['class']}), got {topk}")
    if rerank != "all" and 0 < rerank < topk:
        raise ValueError(f"{option('rerank')}: expected at least K = {topk} candidates, got {rerank}")
    folder = scan_image_folder(data, adapter.id2label, labels)
    items = [it for it in folder.items if only is None or it.id in only]
    items = interleave_classes(items)[:limit]
    manifest = {
        "tool": "neuronpath find",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"model": str(model), "weights_sha256": adapter.weights_hash(),
                     "data": str(Path(data).expanduser().resolve()), "methods": methods,
                     "steps": steps, "alphas": alphas, "target": target, "objective": objective,
                     "dtype": dtype, "topk": topk, "topk_mode": topk_mode,
                     **input_settings(adapter, folder.mapping, image_size, fc_norm_twice, classes),
                     "subset_sha256": None if only is None else hashlib.sha256(
                         "\n".join(sorted(only)).encode()).hexdigest()},
        "model": {**adapter.describe(), **model_widths(adapter),
                  "preprocessor": getattr(adapter.preprocess, "describe", lambda: None)()},
        "alpha_grid": config.grid.to_dict(),
        "data": folder.describe(),
        "run": {"batch_size": batch_size, "device": str(torch_device), "limit": limit,
                "planned_images": len(items),
                "memory_budget": config.memory_budget,
                "command": None if command is None else list(command)},
        "versions": versions(),
    }
    if rerank:  # Alg. 1 as written: exact re-scoring of the search's candidates
        manifest["settings"]["rerank"] = rerank
    manifest["search"] = {"rerank": rerank}
    store = open_store(ranks, out, manifest)
    pending = [it for it in items if not set(methods) <= store.done.get(it.id, set())]
    log.info("find: %d images, %d already done, %d to do -> %s", len(items),
             len(items) - len(pending), len(pending), store.dir)

    def handle(batch):
        labels_t = torch.tensor([it.label for it in batch.items])
        result = find_paths(adapter, batch.pixels.to(torch_device, non_blocking=True),
                            labels_t, methods, config, topk, topk_mode, rerank)
        store.append(image_records(batch.items, result, methods, adapter.id2label))

    with log_to(store.dir / "find.log"):
        work_through(ranks, store, pending, adapter.preprocess, batch_size, workers, handle,
                     [it.id for it in items], "neuron paths", progress)
    return store.dir
