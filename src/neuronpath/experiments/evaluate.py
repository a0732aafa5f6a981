"""``neuronpath evaluate``: removal / enhancement of every stored path, metrics, Table 1, Fig. 3.

Reads a ``find`` run, re-runs its model on its images with each method's path neurons
removed (x0) and enhanced (x2) at every layer at once, plus a random-path control (one random
neuron per layer per image, seeded), and writes into ``RUN_DIR/evaluation/``:

* ``manifest.json`` + ``records.jsonl`` -- one record per image and method (resumable like find);
* ``metrics.json`` -- every number (see :mod:`neuronpath.analysis.deviations`);
* ``table.md`` / ``table.csv`` -- the Table-1 layout for this run;
* ``figure3.png`` / ``figure3.svg`` -- box plots of the probability deviation.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from ..analysis.deviations import all_metrics, class_mean_deviations
from ..analysis.draws import random_path
from ..analysis.records import group_by
from ..engine.editing import OPS, manipulate
from ..errors import RunFormatError, option
from ..io.images import ImageItem
from ..io.store import read_manifest, read_records, write_json_atomic
from ..report.figures import probability_deviation_figure
from ..report.tables import write_table
from .common import load_run_model, resolve_device, run_widths, versions
from .ranks import join_ranks, open_store, work_through

log = logging.getLogger("neuronpath")

RANDOM = "random"


def _check_complete(run_dir: Path, manifest: dict, by_image: dict[str, dict]) -> None:
    methods = set(manifest["settings"]["methods"])
    finished = sum(1 for records in by_image.values() if methods <= set(records))
    planned = manifest.get("run", {}).get("planned_images")
    skipped = len(manifest.get("skipped", {}))
    if finished == 0 or (planned is not None and finished + skipped < planned):
        raise RunFormatError(f"{run_dir}: the find run is incomplete ({finished} of {planned} "
                             f"images done, {skipped} skipped); finish it by re-running the same "
                             f"find command, then evaluate")


def run_evaluate(run_dir: str | Path, *, ops: Sequence[str] = tuple(OPS), model: str | None = None,
                 data: str | Path | None = None, seed: int = 0, random_control: bool = True,
                 batch_size: int = 16, device: str = "auto", bootstrap: int = 1000,
                 progress: bool | None = None, workers: int | None = None) -> dict | None:
    """Evaluate a find run (resumable); returns the metrics (None on the other ranks of a
    ``torchrun`` job, which share the images)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFormatError(f"{run_dir}: no such run folder")
    ops = list(dict.fromkeys(ops))
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ValueError(f"ops: unknown {unknown}; expected some of {list(OPS)}")
    manifest = read_manifest(run_dir)
    by_image = {image: {r["method"]: r for r in rows}
                for image, rows in group_by(read_records(run_dir), "image").items()}
    _check_complete(run_dir, manifest, by_image)
    ranks = join_ranks(resolve_device(device))
    adapter = load_run_model(run_dir, manifest, model, ranks.device)
    data_root = Path(data or manifest["settings"]["data"]).expanduser()
    methods = list(manifest["settings"]["methods"]) + ([RANDOM] if random_control else [])
    find_sha = hashlib.sha256(json.dumps(manifest["settings"], sort_keys=True).encode()).hexdigest()
    eval_manifest = {
        "tool": "neuronpath evaluate",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"find_settings_sha256": find_sha, "ops": ops, "seed": seed,
                     "methods": methods, "factors": {op: OPS[op] for op in ops}},
        "versions": versions(),
    }
    store = open_store(ranks, run_dir / "evaluation", eval_manifest)
    pending = [ImageItem(i, data_root / i, rec[next(iter(rec))]["label"], "")
               for i, rec in by_image.items()
               if set(manifest["settings"]["methods"]) <= set(rec)
               and not set(methods) <= store.done.get(i, set())]
    log.info("evaluate: %d images, %d to do -> %s", len(by_image), len(pending), store.dir)
    widths = run_widths(manifest) or adapter.widths()

    def handle(batch):
        if batch.errors:
            raise RunFormatError(f"{batch.errors[0][1]}; pass {option('data', 'DIR')} with the "
                                 f"run's image folder")
        images = [it.id for it in batch.items]
        labels = torch.tensor([it.label for it in batch.items])
        paths = {m: torch.tensor([by_image[i][m]["path"] for i in images])
                 for m in manifest["settings"]["methods"]}
        k = next(iter(paths.values())).reshape(len(images), adapter.num_layers, -1).shape[-1]
        if random_control:
            paths[RANDOM] = torch.stack([random_path(i, seed, adapter.num_layers, widths, k)
                                         for i in images])
        result = manipulate(adapter, batch.pixels.to(ranks.device, non_blocking=True), labels,
                            paths, ops)
        records = []
        for row, image in enumerate(images):
            for m in methods:
                record = {"image": image, "label": int(labels[row]), "method": m,
                          "path": paths[m][row].tolist(),
                          "jas": by_image[image][m]["jas"] if m in by_image[image] else None,
                          "base_prob": float(result["base_prob"][row]),
                          "base_pred": int(result["base_pred"][row])}
                for op in ops:
                    record[f"{op}_prob"] = float(result[f"{m}:{op}_prob"][row])
                    record[f"{op}_pred"] = int(result[f"{m}:{op}_pred"][row])
                records.append(record)
        store.append(records)

    work_through(ranks, store, pending, adapter.preprocess, batch_size, workers, handle,
                 list(by_image), "remove/enhance", progress)
    return write_outputs(run_dir, ops, bootstrap, seed) if ranks.main else None


def write_outputs(run_dir: Path, ops: Sequence[str], bootstrap: int, seed: int) -> dict:
    """metrics.json, table.md/csv and figure3.png/svg from the evaluation records."""
    out = run_dir / "evaluation"
    records = read_records(out)
    metrics = all_metrics(records, ops, bootstrap, seed)
    name = read_manifest(run_dir)["settings"]["model"]
    write_json_atomic(out / "metrics.json", {"model": name, "ops": list(ops),
                                             "bootstrap": bootstrap, "methods": metrics})
    write_table({Path(name).name or name: metrics}, out / "table")
    deviations = {op: {m: class_mean_deviations(rows, op) for m, rows in group_by(records).items()}
                  for op in ops}
    probability_deviation_figure(deviations, out / "figure3", title=Path(name).name or name)
    return metrics
