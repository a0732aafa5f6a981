"""``neuronpath find``: model + image folder -> per-image paths on disk, resumable."""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..engine.attribution import AttributionConfig
from ..errors import InputError, option
from ..io.images import interleave_classes
from ..io.labels import check_labels
from ..io.scores import SavedScores, write_scores
from ..io.sources import DataSpec, as_data
from ..io.store import iter_records, store_skipped
from ..methods import (
    DEFAULT_METHODS,
    REGISTRY,
    MethodOptions,
    check_units,
    find_paths,
    method_options,
    selection_criteria,
)
from ..models.loading import load_model
from ..models.spec import DEMO, ModelSpec
from ..options import names, nested, setting
from .common import (
    Execution,
    log_to,
    model_widths,
    path_fields,
    peak_memory,
    resolve_device,
    versions,
)
from .ranks import join_ranks, open_store, work_through
from .reference import reference_files, reference_identity, reference_means

log = logging.getLogger("neuronpath")

DEMO_OUT = "neuronpath-demo"


def default_methods(units: str) -> list[str]:
    """The default path methods that are defined for paths of ``units``."""
    return [m for m in DEFAULT_METHODS if units in REGISTRY[m].units]


def _methods_help() -> str:
    return (
        "comma-separated path methods (default: "
        + ",".join(DEFAULT_METHODS)
        + ", those defined for the units): "
        + "; ".join(f"{m.name}: {m.summary}" for m in REGISTRY.values())
    )


@dataclass(frozen=True)
class FindOptions:
    """What ``find`` searches, besides the model, the images and how it runs: the path
    methods (names, or names with their options objects; None: the defaults defined for the
    model's units), the integral's settings, K units per layer, at most ``limit`` images
    (round-robin over classes); ``only``: these image ids (its hash is part of the run's
    identity); ``command``: the command line the manifest records."""

    methods: Sequence[str] | Mapping[str, MethodOptions | None] | None = setting(
        None, _methods_help, parse=names
    )
    config: AttributionConfig = nested(AttributionConfig, "the integral (Eq. 3)")
    topk: int = setting(1, "units per layer (TopK path, App. E.1)", type=int)
    limit: int | None = setting(None, "at most N images, taken round-robin over classes", type=int)
    save_scores: bool = setting(
        False,
        "also store every method's per-layer scores of every candidate unit, the ranking its "
        "path is the top of (RUN/scores/; evaluate --curves and benchmark read them)",
    )
    reference: str | None = setting(
        None,
        "folder of reference images (not the run's): each unit's mean over them, where the "
        "methods that need one start (jas-mean; causal, learned with mean ablation)",
    )
    only: frozenset[str] | None = setting(None, cli=False)
    command: tuple[str, ...] | None = setting(None, cli=False)


@dataclass(frozen=True)
class FindCommand:
    """find neuron paths for every image of a folder"""

    spec: ModelSpec = nested(ModelSpec, "model options")
    data: DataSpec = nested(DataSpec, "data options")
    out: str | None = setting(None, f"run folder (resumable); default: {DEMO_OUT} for the demo")
    options: FindOptions = nested(FindOptions)
    execution: Execution = nested(Execution, "how it runs")

    @property
    def is_demo(self) -> bool:
        """Neither a model nor images given: the built-in demo."""
        return self.spec.model == DEMO and self.data.data is None


@dataclass(frozen=True)
class DemoCommand:
    """run find on the built-in digits ViT (no network) and print a summary"""

    out: str = setting(DEMO_OUT, "run folder")
    retrain: bool = setting(
        False,
        "train the demo ViT here instead of using the shipped weights (its figures then depend "
        "on this machine)",
    )
    options: FindOptions = nested(FindOptions)
    execution: Execution = nested(Execution, "how it runs")


def image_records(items, result, methods, adapter) -> list[dict]:
    """One record per image and method: labels, clean prediction, path and final JAS (and the
    method's per-image extras, e.g. ``knowledge``'s top-5 (layer, neuron, score) triples)."""
    id2label = adapter.id2label
    clean = result.clean
    records = []
    for row, item in enumerate(items):
        pred = int(clean.predicted[row])
        for method in methods:
            record = {
                "image": item.id,
                "label": item.label,
                "label_name": id2label.get(item.label),
                "pred": pred,
                "pred_name": id2label.get(pred),
                "prob": float(clean.label_prob[row]),
                "target": int(clean.targets[row]),
                "method": method,
                **path_fields(result.paths[method][row], adapter),
                "jas": float(result.scores[method][row]),
            }
            for key, values in result.extras.get(method, {}).items():
                record[key] = values[row]
            records.append(record)
    return records


def _open_data(data, adapter, spec: ModelSpec):
    """The run's images; for a zero-shot model the class file's labels must be exactly the
    image classes (no fallback to folder order)."""
    source = as_data(data)
    if spec.classes is None:
        return source.open(adapter.id2label, spec.labels)
    labels = {v: "" for v in adapter.id2label.values()}
    try:
        folder = source.open(adapter.id2label, "label2id")
    except InputError:
        logging.disable(logging.WARNING)  # not the fallback's note: this only names the classes
        try:
            classes = source.open({}, "sorted-folders").class_to_label
        finally:
            logging.disable(logging.NOTSET)
        missing = sorted(set(classes) - set(labels))
        raise InputError(
            f"{option('classes')}: {spec.classes} has no line for the image classes "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''} of {source.data}; expected "
            f"one line 'label<TAB>class name' per class, the label its folder's name"
        ) from None
    check_labels(
        labels, folder.class_to_label, spec.classes, "classes", f"classes of {source.data}"
    )
    return folder


def run_find(
    spec: ModelSpec | str,
    data: DataSpec | str | Path,
    out: str | Path,
    options: FindOptions = FindOptions(),
    execution: Execution = Execution(),
) -> Path:
    """Find paths for every image of a source (``data``: an ImageFolder, or a
    :class:`~neuronpath.io.sources.DataSpec`) and write them to ``out`` (resumable).

    ``spec``: the model (a :class:`ModelSpec`, or a model id with every other field at its
    default); ``options``: the methods, the integral's settings (its autocast follows the
    spec's dtype), K and the images (:class:`FindOptions`).  Re-running the same call skips
    finished images; a call with other settings into the same ``out`` raises
    :class:`~neuronpath.errors.RunConflictError`.  Under ``torchrun`` every rank takes its share
    of the images (:mod:`.ranks`).
    """
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec(spec)
    topk, limit, only = options.topk, options.limit, options.only
    methods = options.methods
    if methods is None:  # the defaults that are defined for the paths' units
        methods = default_methods(spec.units)
        left = [m for m in DEFAULT_METHODS if m not in methods]
        if left:
            log.info(
                "find: %s paths: %s (not defined for them) left out of the default methods",
                spec.units,
                ", ".join(left),
            )
    chosen = method_options(methods)
    if not isinstance(topk, int) or topk < 1:
        raise InputError(f"{option('topk')}: expected a positive integer, got {topk!r}")
    for opts in chosen.values():
        opts.check(topk)
    if options.save_scores:
        for name, opts in chosen.items():
            why = opts.scores_undefined(spec.units)
            if why is not None:
                raise InputError(f"{option('save_scores')}: {name} has no scores to save: {why}")
    needing = [name for name, opts in chosen.items() if opts.needs_reference]
    if needing and options.reference is None:
        raise InputError(
            f"{option('reference')}: {needing[0]}'s options start from each unit's mean over "
            f"a reference set; expected a folder of reference images (not the run's)"
        )
    if options.reference is not None and not needing:
        raise InputError(
            f"{option('reference')}: none of the methods {', '.join(chosen)} uses a reference "
            f"with these options (jas-mean, and causal and learned with mean ablation, do)"
        )
    if limit is not None and limit < 1:
        raise InputError(f"{option('limit')}: expected a positive integer, got {limit}")
    ranks = join_ranks(resolve_device(execution.device))
    device = ranks.device
    config = replace(options.config, autocast=spec.precision(device)[1])
    adapter = load_model(spec, device=device)
    check_units(chosen, adapter.unit_set)
    log.info(
        "find: each %s is read at token %s: %s",
        "unit" if spec.units in ("neurons+heads", "sae") else spec.units.rstrip("s"),
        adapter.token.name,
        adapter.readout.reason,
    )
    if topk > min(adapter.widths()):
        raise InputError(
            f"{option('topk')}: expected 1 <= K <= {min(adapter.widths())} (the "
            f"{'FFN width' if spec.units == 'neurons' else 'units per layer'} of "
            f"{type(adapter.model).__name__}), got {topk}"
        )
    folder = _open_data(data, adapter, spec)
    items = [it for it in folder.items if only is None or it.id in only]
    items = interleave_classes(items)[:limit]
    if options.reference is not None:
        ours = {it.path.resolve() for it in items if isinstance(it.path, Path)}
        reference = reference_files(options.reference, ours)
    manifest = {
        "tool": "neuronpath find",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            **spec.settings(adapter, folder.mapping),
            **folder.settings(),
            "methods": list(chosen),
            "options": {m: o.to_dict() for m, o in chosen.items()},
            "steps": config.steps,
            "alphas": config.alphas,
            "target": config.target,
            "objective": config.objective,
            "topk": topk,
            "subset_sha256": None
            if only is None
            else hashlib.sha256("\n".join(sorted(only)).encode()).hexdigest(),
            **({"save_scores": True} if options.save_scores else {}),
            **(
                {"reference": reference_identity(options.reference, reference)}
                if options.reference is not None
                else {}
            ),
        },
        "selection": selection_criteria(
            {m: o.to_dict() for m, o in chosen.items()},
            config.objective,
            None
            if options.reference is None
            else reference_identity(options.reference, reference)["sha256"],
        ),
        "model": {
            **adapter.describe(),
            **model_widths(adapter),
            "preprocessor": getattr(adapter.preprocess, "describe", lambda: None)(),
        },
        "alpha_grid": config.grid.to_dict(),
        "data": folder.describe(),
        "run": {
            "batch_size": execution.batch_size,
            "device": str(device),
            "limit": limit,
            "planned_images": len(items),
            "memory_budget": config.memory_budget,
            "command": None if options.command is None else list(options.command),
        },
        "versions": versions(),
    }
    store = open_store(ranks, out, manifest)
    scored = SavedScores(store.dir).file_of if options.save_scores else None
    pending = [
        it
        for it in items
        if not set(chosen) <= store.done.get(it.id, set())
        or (scored is not None and it.id not in scored)
    ]
    log.info(
        "find: %d images, %d already done, %d to do -> %s",
        len(items),
        len(items) - len(pending),
        len(pending),
        store.dir,
    )

    means = None
    if options.reference is not None and pending:
        means = reference_means(adapter, reference, execution.batch_size)

    def handle(batch):
        labels = torch.tensor([it.label for it in batch.items])
        result = find_paths(
            adapter,
            batch.pixels.to(device, non_blocking=True),
            labels,
            chosen,
            config,
            topk,
            means,
        )
        if options.save_scores:  # before the records: a finished image has its scores
            unscored = [m for m in chosen if m not in result.ranked]
            if unscored:
                raise InputError(
                    f"{option('save_scores')}: method {unscored[0]} returned no scores "
                    f"(its MethodOutput.scores is None)"
                )
            write_scores(store.dir, [it.id for it in batch.items], result.ranked)
        store.append(image_records(batch.items, result, chosen, adapter))

    with log_to(store.dir / "find.log"):
        order = [it.id for it in items]
        work_through(ranks, store, pending, adapter.preprocess, execution, handle, order, "paths")
        peak = peak_memory(device)
        log.info(
            "find: peak memory %.2f GiB resident%s (memory budget %.2f GiB per chunk)",
            peak["rss_bytes"] / 2**30,
            f", {peak['cuda_bytes'] / 2**30:.2f} GiB on {device}" if "cuda_bytes" in peak else "",
            config.memory_budget / 2**30,
        )
    if ranks.main and items and not any(r["image"] for r in iter_records(store.dir)):
        skipped = store_skipped(store.dir)
        example = next(iter(skipped.items()), ("", "unknown"))
        raise InputError(
            f"{option('data')}: none of the run's {len(items)} images could be read, so it has "
            f"no paths (e.g. {example[0]}: {example[1]}); check the images"
            + (f" and {option('image_column')}" if folder.kind == "dataset" else "")
        )
    return store.dir
