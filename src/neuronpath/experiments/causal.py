"""``neuronpath evaluate --causal``: which path is most influential by intervention.

For every stored path (and the seeded controls) of a finished find run, on every image:
P(label) with the whole path removed, with each layer's path neuron(s) removed alone, and with
every other neuron of the path's layers removed (only the path kept), all in batched
``inference_mode`` forwards.  Writes ``RUN_DIR/causal/``: ``records.jsonl`` (resumable like
find), ``metrics.json``, ``causal.md``/``.csv``, ``layers.png``/``.svg``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..analysis.causal import causal_metrics
from ..engine.editing import pruned_predictions
from ..errors import InputError, option
from ..io.store import read_records, write_json_atomic
from ..report.figures import causal_layer_figure
from ..report.tables import write_causal_table
from .common import Execution, path_fields
from .evaluate import EditOptions, StoredPaths
from .ranks import open_store

log = logging.getLogger("neuronpath")


def _edits(path: torch.Tensor, widths: list[int]) -> list[dict[int, torch.Tensor]]:
    """Multipliers for one image and path (layers, K): the whole path removed, each layer's
    path neurons removed alone (one per layer), only the path kept."""
    layers = range(len(widths))
    removed = {
        l: torch.ones(widths[l], dtype=torch.float64).index_fill_(0, path[l], 0.0) for l in layers
    }
    only = {
        l: torch.zeros(widths[l], dtype=torch.float64).index_fill_(0, path[l], 1.0) for l in layers
    }
    return [removed] + [{l: removed[l]} for l in layers] + [only]


def run_causal(
    run_dir: str | Path,
    *,
    options: EditOptions = EditOptions(),
    execution: Execution = Execution.forwards(),
) -> dict | None:
    """Causal checks of a find run's paths and of the controls of ``options`` (resumable);
    returns the metrics (None on the other ranks of a ``torchrun`` job)."""
    run = StoredPaths.open(run_dir, options, execution.device)
    if run.adapter.unit_set == "neurons+heads":
        raise InputError(
            f"{option('causal')}: the causal checks remove a path layer by layer and keep "
            f"only its units in their sites, and are built for neuron and head paths; "
            f"{run.run_dir} holds mixed (neurons+heads) paths"
        )
    seed, bootstrap = options.seed, options.bootstrap
    methods, layers = run.methods, run.adapter.num_layers
    widths = run.adapter.widths()
    store = open_store(
        run.ranks,
        run.run_dir / "causal",
        run.manifest_for(
            "neuronpath evaluate --causal",
            {
                "seed": seed,
                "methods": methods,
                "checks": ["path_removed", "each_removed", "only_path"],
            },
        ),
    )
    pending = run.pending(store)
    log.info("causal checks: %d images, %d to do -> %s", len(run.by_image), len(pending), store.dir)

    def handle(batch):
        pixels, images, labels = run.inputs(batch)
        paths = {m: p.reshape(len(images), layers, -1) for m, p in run.paths(images).items()}
        rows, owner = [], []
        for b in range(len(images)):
            rows.append({})  # the unmodified model
            owner.append(b)
            for m in methods:
                edits = _edits(paths[m][b], widths)
                rows += edits
                owner += [b] * len(edits)
        probs, preds = pruned_predictions(run.adapter, pixels, labels, rows, widths, owner)
        records, r = [], 0
        for b, image in enumerate(images):
            base_prob, base_pred = float(probs[r]), int(preds[r])
            r += 1
            for m in methods:
                span = probs[r : r + layers + 2].tolist()
                records.append(
                    {
                        "image": image,
                        "label": int(labels[b]),
                        "method": m,
                        **path_fields(paths[m][b], run.adapter),
                        "jas": run.jas(image, m),
                        "base_prob": base_prob,
                        "base_pred": base_pred,
                        "path_removed_prob": span[0],
                        "path_removed_pred": int(preds[r]),
                        "each_removed_prob": span[1 : layers + 1],
                        "only_path_prob": span[-1],
                        "only_path_pred": int(preds[r + layers + 1]),
                    }
                )
                r += layers + 2
        store.append(records)

    run.work_through(store, pending, execution, handle, "causal checks")
    if not run.ranks.main:
        return None
    metrics = causal_metrics(read_records(store.dir), bootstrap, seed)
    name = run.find.model_id
    write_json_atomic(
        store.dir / "metrics.json", {"model": name, "bootstrap": bootstrap, "methods": metrics}
    )
    write_causal_table(metrics, store.dir / "causal")
    causal_layer_figure(metrics, store.dir / "layers", title=Path(name).name or name)
    return metrics
