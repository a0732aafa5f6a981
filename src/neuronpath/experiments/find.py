"""``neuronpath find``: model + image folder -> per-image paths on disk, resumable."""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..engine.attribution import AttributionConfig
from ..io.images import interleave_classes, load_pixels, scan_image_folder
from ..io.store import RunStore
from ..methods import DEFAULT_METHODS, PathOptions, check_methods, find_paths
from ..models.loading import load_model
from .common import DTYPES, log_to, model_widths, parse_bytes, resolve_device, versions

log = logging.getLogger("neuronpath")


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
             image_size: int | None = None, fc_norm_twice: bool = False,
             classes: str | Path | None = None, prompt: str | None = None,
             only: set[str] | None = None, progress: bool | None = None,
             command: Sequence[str] | None = None) -> Path:
    """Find paths for every image of an ImageFolder and write them to ``out`` (resumable).

    Re-running the same call skips finished images; a call with other settings into the
    same ``out`` raises :class:`~neuronpath.errors.RunConflictError`.  ``only`` restricts the
    run to these image ids (its hash is part of the run's identity); ``command`` is the
    command line recorded in the manifest.  ``classes`` and ``prompt`` make a CLIP or SigLIP
    model a zero-shot classifier (see :func:`~neuronpath.models.loading.load_model`).
    """
    methods = check_methods(methods)
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {dtype!r}")
    if batch_size < 1:
        raise ValueError(f"batch size: expected a positive integer, got {batch_size}")
    if topk < 1:
        raise ValueError(f"topk: expected a positive integer, got {topk}")
    PathOptions(topk_mode)  # validates
    if limit is not None and limit < 1:
        raise ValueError(f"limit: expected a positive integer, got {limit}")
    model_dtype, autocast = DTYPES[dtype]
    config = AttributionConfig(steps=steps, alphas=alphas, target=target, objective=objective,
                               memory_budget=parse_bytes(memory_budget), autocast=autocast)
    torch_device = resolve_device(device)
    adapter = load_model(model, device=torch_device, dtype=model_dtype, token=token,
                         preprocess=preprocess, image_size=image_size,
                         fc_norm_twice=fc_norm_twice, classes=classes, prompt=prompt)
    folder = scan_image_folder(data, adapter.id2label, labels)
    items = [it for it in folder.items if only is None or it.id in only]
    items = interleave_classes(items)[:limit]
    manifest = {
        "tool": "neuronpath find",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"model": str(model), "weights_sha256": adapter.weights_hash(),
                     "data": str(Path(data).expanduser().resolve()), "methods": methods,
                     "steps": steps, "alphas": alphas, "target": target, "objective": objective,
                     "preprocess": adapter.preprocess.to_dict(), "token": adapter.token.name,
                     "dtype": dtype, "labels": folder.mapping, "topk": topk,
                     "topk_mode": topk_mode, "image_size": image_size,
                     "fc_norm_twice": fc_norm_twice,
                     "subset_sha256": None if only is None else hashlib.sha256(
                         "\n".join(sorted(only)).encode()).hexdigest()},
        "model": {**adapter.describe(), **model_widths(adapter)},
        "alpha_grid": config.grid.to_dict(),
        "data": folder.describe(),
        "run": {"batch_size": batch_size, "device": str(torch_device), "limit": limit,
                "planned_images": len(items),
                "memory_budget": config.memory_budget,
                "command": None if command is None else list(command)},
        "versions": versions(),
    }
    if classes is not None:  # zero-shot: the label set is part of the run's identity
        manifest["settings"].update(classes=str(Path(classes).expanduser().resolve()),
                                    prompt=adapter.details["zero_shot"]["prompt"])
    store = RunStore(out, manifest)
    pending = [it for it in items if not set(methods) <= store.done.get(it.id, set())]
    log.info("find: %d images, %d already done, %d to do -> %s", len(items),
             len(items) - len(pending), len(pending), store.dir)
    with log_to(store.dir / "find.log"), \
            tqdm(total=len(pending), unit="img", disable=None if progress is None else not progress,
                 desc="neuron paths") as bar:
        for start in range(0, len(pending), batch_size):
            batch = pending[start:start + batch_size]
            good, pixels, errors = load_pixels(batch, adapter.preprocess)
            for item, error in errors:
                log.warning("skipping %s", error)
                store.skip(item.id, str(error))
            if good:
                labels_t = torch.tensor([it.label for it in good])
                result = find_paths(adapter, torch.stack(pixels), labels_t, methods, config,
                                    topk, topk_mode)
                store.append(image_records(good, result, methods, adapter.id2label))
            bar.update(len(batch))
    return store.dir
