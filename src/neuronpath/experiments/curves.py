"""``neuronpath evaluate --curves``: MIB's faithfulness curves over every method's whole ranking
(:mod:`neuronpath.analysis.curves`), from the candidate scores a ``find --save-scores`` run
stored.

On every image, for every method and every k of :data:`~neuronpath.analysis.curves.KS`, each
layer keeps its top k % of units in the method's ranking on that image (at least one) and every
other unit of every layer is ablated -- zeros, the reference set's means or another image's
values, the study's ``--ablation`` -- plus the clean model and every unit ablated.  Each
ranking is taken twice, by the signed score (CPR) and by |score| (CMD, as MIB ranks for it);
where the two orders agree on an image the rows are shared.  The rows' metrics go into
``RUN/evaluation/curves/<ablation>/records.jsonl`` (resumable, shared over ``torchrun`` ranks;
the mean ablation's reference is the study's ``reference.npz``); the curves, CPR and CMD with
bootstrap intervals into ``RUN/evaluation/curves.csv``
(``method,ablation,metric,ranking,k,f,lo,hi``), ``cpr_cmd.csv``
(``method,ablation,metric,statistic,value,lo,hi,own_criterion``), ``curves.md``,
``curves.json`` and the figure ``curves.png/.svg``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from ..analysis.bootstrap import bootstrap_draws
from ..analysis.curves import KS, curve_statistics, kept_count
from ..analysis.faithfulness import METRICS, metric_values, own_rows, rival_classes
from ..analysis.records import group_by
from ..engine.ablation import own_rule
from ..engine.editing import edited_chunks
from ..engine.interventions import ablate_neurons, record_neurons
from ..engine.neurons import top_k
from ..errors import InputError, option
from ..io.scores import SavedScores
from ..io.store import check_settings, read_records, write_json_atomic
from ..report.figures import curves_figure
from ..report.tables import write_curve_tables
from .common import Execution
from .faithfulness import (
    FaithfulnessOptions,
    ablation_sources,
    donor_pool,
    reference_identity,
    reference_statistics,
)
from .ranks import open_store

log = logging.getLogger("neuronpath")


def check_curves(run) -> None:
    """Refuse, before any work, curves of a run without saved scores."""
    if not run.find.saved_scores:
        raise InputError(
            f"{option('curves')}: {run.run_dir} was found without {option('save_scores')}, so "
            f"it holds no ranking of every unit to keep the top of; run the same find with "
            f"{option('save_scores')} into a new folder and evaluate that run"
        )


def _settings(run, ablation: str, reference: dict | None) -> dict:
    settings = {
        "ablation": ablation,
        "seed": run.options.seed,
        "methods": run.find.methods,
        "ks": list(KS),
        "rankings": ["signed (CPR)", "absolute (CMD)"],
        "excluded_sha256": hashlib.sha256("\n".join(sorted(run.excluded)).encode()).hexdigest(),
    }
    if reference is not None:
        settings["reference"] = reference
    return run.manifest_for("neuronpath evaluate --curves", settings)


def run_curves(run, options: FaithfulnessOptions, execution: Execution) -> dict | None:
    """The curves of a find run (``run``: its :class:`~.evaluate.StoredPaths`) under each of
    ``options.ablations``; returns every statistic (None on the other ranks)."""
    check_curves(run)
    folder = run.run_dir / "evaluation" / "curves"
    needs_reference = "mean" in options.ablations
    identity = reference_identity(run, options) if needs_reference else None
    for ablation in options.ablations:
        check_settings(folder / ablation, _settings(run, ablation, identity))
    reference = None
    if needs_reference:
        study = run.run_dir / "evaluation" / "faithfulness"  # shared with the study
        reference = reference_statistics(run, options, study, execution)
    scores = SavedScores(run.run_dir)
    for ablation in options.ablations:
        _ablation_pass(run, ablation, reference, identity, scores, folder, execution)
    if not run.ranks.main:
        return None
    return write_curves(run.run_dir, options, run.find.methods, run.options, run.find.selection)


class CurveRows:
    """The edited rows of one batch: each row's image, and per layer each unit's rank in the
    row's ranking and how many of the top are kept (the rest ablated)."""

    def __init__(self, widths: list[int]):
        self.widths = widths
        self.image: list[int] = []
        self.rank: list[list[torch.Tensor]] = []
        self.count: list[list[int]] = []
        self.identity = [torch.arange(n) for n in widths]

    def add(self, image: int, rank: list[torch.Tensor] | None, count: list[int]) -> int:
        self.image.append(image)
        self.rank.append(self.identity if rank is None else rank)
        self.count.append(count)
        return len(self.image) - 1

    def edits(self, rows: slice, source: list[torch.Tensor], per_image: bool) -> dict:
        index = range(len(self.image))[rows]
        which = (
            torch.tensor([self.image[r] for r in index])
            if per_image
            else torch.zeros(len(index), dtype=torch.long)
        )
        edits = {}
        for l in range(len(self.widths)):
            rank = torch.stack([self.rank[r][l] for r in index])
            count = torch.tensor([self.count[r][l] for r in index])
            kept = (rank < count[:, None]).double()
            edits[l] = (kept, 1 - kept, source[l], which)
        return edits


def ranks_of(scores: torch.Tensor, widths: list[int]) -> list[torch.Tensor]:
    """Each unit's place in its layer's ranking by ``scores`` (layers, units): 0 for the top."""
    return [
        torch.empty(n, dtype=torch.long).scatter_(0, top_k(scores[l, :n], n), torch.arange(n))
        for l, n in enumerate(widths)
    ]


def _ablation_pass(run, ablation, reference, identity, scores, folder, execution) -> None:
    adapter, widths, methods = run.adapter, run.adapter.widths(), run.find.methods
    store = open_store(run.ranks, folder / ablation, _settings(run, ablation, identity))
    pending = run.pending(store, methods)
    log.info(
        "curves (%s ablation): %d images, %d to do -> %s",
        ablation,
        len(run.by_image) - len(run.excluded),
        len(pending),
        store.dir,
    )
    donors = donor_pool(run) if ablation == "resample" else None

    def handle(batch):
        pixels, images, labels = run.inputs(batch)
        with torch.inference_mode(), record_neurons(adapter, coordinates=True) as clean_coords:
            adapter.logits(pixels)
        source, per_image, donor_of = ablation_sources(
            run, ablation, reference, clean_coords, images, donors
        )
        rows = CurveRows(widths)
        base = [
            (rows.add(b, None, widths), rows.add(b, None, [0] * len(widths)))
            for b in range(len(images))
        ]
        kept, kept_absolute = {}, {}
        counts = [[kept_count(n, k) for n in widths] for k in KS]  # per k, each layer's top
        for method in methods:
            ranked = torch.from_numpy(scores.get(method, images)).double()
            for b in range(len(images)):
                signed = ranks_of(ranked[b], widths)
                absolute = ranks_of(ranked[b].abs(), widths)
                kept[(b, method)] = [rows.add(b, signed, count) for count in counts]
                same = all(torch.equal(s, a) for s, a in zip(signed, absolute))
                kept_absolute[(b, method)] = (
                    kept[(b, method)]
                    if same
                    else [rows.add(b, absolute, count) for count in counts]
                )
        index = torch.tensor(rows.image, device=pixels.device)

        def edit(chunk: slice):
            return ablate_neurons(adapter, rows.edits(chunk, source, per_image))

        logits = torch.cat(
            [out.double().cpu() for _, out in edited_chunks(adapter, pixels, index, edit)]
        )
        clean_logits = logits[[clean for clean, _ in base]]
        targets = labels.cpu()
        rivals = rival_classes(clean_logits, targets)
        image_of = torch.tensor(rows.image)
        values = metric_values(logits, clean_logits[image_of], targets[image_of], rivals[image_of])
        records = []
        for b, image in enumerate(images):
            clean, none = base[b]
            for method in methods:
                record = {"image": image, "label": int(labels[b]), "method": method}
                for metric in METRICS:
                    v = values[metric]
                    record[metric] = {
                        "clean": float(v[clean]),
                        "none": float(v[none]),
                        "kept": [float(v[r]) for r in kept[(b, method)]],
                        "kept_absolute": [float(v[r]) for r in kept_absolute[(b, method)]],
                    }
                if donor_of is not None:
                    record["donor"] = donor_of[b]
                records.append(record)
        store.append(records)

    run.work_through(store, pending, execution, handle, f"curves ({ablation})")


def write_curves(
    run_dir: Path,
    options: FaithfulnessOptions,
    methods: list[str],
    edit,
    selection: dict | None = None,
) -> dict:
    """curves.json/.csv, cpr_cmd.csv, curves.md and the figure from the ablation stores; the
    rows of a method judged by the criterion it selected on (``selection``) marked."""
    selection = selection or {}
    folder = run_dir / "evaluation"
    results: dict = {}
    for ablation in options.ablations:
        by_method = group_by(read_records(folder / "curves" / ablation))
        for method in methods:
            rows = by_method.get(method, [])
            if not rows:
                continue
            draws = (
                bootstrap_draws(len(rows), edit.bootstrap, edit.seed)
                if edit.bootstrap
                else np.zeros((0, len(rows)), int)
            )
            for metric in options.metrics:
                clean = np.array([r[metric]["clean"] for r in rows])
                none = np.array([r[metric]["none"] for r in rows])
                kept = np.array([r[metric]["kept"] for r in rows])
                absolute = np.array([r[metric]["kept_absolute"] for r in rows])
                stats = curve_statistics(clean, none, kept, draws, KS, absolute)
                stats["images"] = len(rows)
                results.setdefault(method, {}).setdefault(ablation, {})[metric] = stats
    summary = {
        "ks": list(KS),
        "x": "k / 100, the fraction of each layer's units kept; trapezoid rule over the ks",
        "rankings": "CPR and f rank by the signed score, CMD and f_abs by |score| (MIB)",
        "ablations": list(options.ablations),
        "metrics": list(options.metrics),
        "bootstrap": edit.bootstrap,
        "selection": selection,
        "own_criterion": own_rows(results, own_rule(selection)),
        "results": results,
    }
    write_json_atomic(folder / "curves.json", summary)
    write_curve_tables(results, KS, folder, summary["own_criterion"])
    curves_figure(results, KS, folder / "curves")
    return summary
