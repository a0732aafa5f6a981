"""``neuronpath prune``: class-specific pruning experiment, Figure 6 and the Table 3 depth ablation.

Writes into OUT: ``find/`` (the TopK paths of the probe images, a resumable find run),
``grid/`` (every test image's label probability and prediction under every setting, a
resumable run folder too), ``results.json`` (every number, the split and the kept neurons),
``figure6.png/.svg``, ``table3.md/.csv``; with ``--baselines vit-slim`` also ``slim/`` (one
record per class: each layer's best masks and how many are positive) and ``slim/masks/CLASS.npz``
(every trained mask of the class, ``layer0`` .. ``layer{L-1}``) and ``table2.md/.csv``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..analysis.bootstrap import bootstrap_draws
from ..analysis.pruning import (
    PruneSettings,
    keep_by_frequency,
    keep_by_slot_mode,
    paired_difference,
    probe_selections,
    prune_multipliers,
    pruning_metrics,
    split_probe_test,
)
from ..engine.attribution import AttributionConfig
from ..engine.editing import pruned_predictions
from ..engine.slimming import SlimOptions, ranked_by_mask, train_masks
from ..errors import InputError, RunConflictError, option, options_named
from ..io.images import image_batches
from ..io.sources import DataSpec, as_data
from ..io.store import read_records, write_json_atomic
from ..methods import CONTROLS, REGISTRY, MethodOptions, method_options
from ..models.loading import load_model
from ..models.spec import MODEL_KEYS, ModelSpec, model_differences
from ..options import flag_name, names, nested, setting
from ..report.figures import pruning_figure
from ..report.tables import write_depth_table, write_table2
from .common import Execution, model_widths, resolve_device
from .find import FindOptions, run_find
from .ranks import join_ranks, open_store, work_through
from .run import SEARCH_KEYS, Run

log = logging.getLogger("neuronpath")

GRID_BATCH = 64  # test images per batch of the pruning grid
DEFAULT_KEEP_RULES = ("jas", "activation", "random")  # two path methods and a control
SLIM_RANKING = "signed mask, masks projected onto >= 0"  # engine/slimming.py


@dataclass(frozen=True)
class PruneOptions:
    """What ``prune`` does besides the model, the images and how it runs: the grid and its
    statistics (:class:`~neuronpath.analysis.pruning.PruneSettings`), the keep rules --
    registered path methods (their TopK paths of the probe images, found with ``config`` or
    taken from ``find_run``, which must have read the same neurons; names, or names with their
    options) and controls (``random``) -- and the trained baselines' search (``slim``);
    ``command``: the command line the probe find run's manifest records."""

    settings: PruneSettings = nested(PruneSettings, "the pruning grid")
    methods: Sequence[str] | Mapping[str, MethodOptions | None] = setting(
        DEFAULT_KEEP_RULES,
        lambda: (
            "comma-separated keep rules: path methods ("
            + ", ".join(REGISTRY)
            + ") and controls ("
            + ", ".join(n for n, c in CONTROLS.items() if c.keep is not None)
            + ")"
        ),
        parse=names,
    )
    find_run: str | None = setting(None, "reuse a find run with TopK paths (K >= max keep)")
    reference: str | None = setting(
        None,
        "folder of reference images for the path methods that start from each unit's mean "
        "(find --reference)",
    )
    config: AttributionConfig = nested(AttributionConfig, "the integral (Eq. 3)")
    slim: SlimOptions = nested(SlimOptions, "trained baselines (Table 2)")
    command: tuple[str, ...] | None = setting(None, cli=False)


@dataclass(frozen=True)
class PruneCommand:
    """class-specific pruning guided by TopK paths: Figure 6, Table 3's depth ablation and
    Table 2"""

    spec: ModelSpec = nested(ModelSpec, "model options")
    data: DataSpec = nested(DataSpec, "data options")
    out: str | None = setting(None, "output folder (resumable)")
    options: PruneOptions = nested(PruneOptions)
    execution: Execution = nested(Execution, "how it runs")


def run_prune(
    spec: ModelSpec | str,
    data: DataSpec | str | Path,
    out: str | Path,
    options: PruneOptions = PruneOptions(),
    execution: Execution = Execution(),
) -> dict | None:
    """Run the pruning experiment into ``out`` and return every number.

    ``options``: the grid, the keep rules and the baselines (:class:`PruneOptions`;
    ``settings.baselines`` adds trained keep rules -- ``vit-slim``: ViT-Slim's soft masks,
    searched with ``options.slim`` on each class's probe images,
    :mod:`neuronpath.engine.slimming`).  The probe paths go to ``out/find`` (or come from
    ``options.find_run``), the test images' outcomes under every setting to ``out/grid``; both
    folders are resumable, and under ``torchrun`` the ranks share them (the main rank writes the
    results, the others return None).
    """
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec(spec)
    settings, methods, find_run = options.settings, options.methods, options.find_run
    config, slim, command = options.config, options.slim, options.command
    unknown = [m for m in methods if m not in REGISTRY and m not in CONTROLS]
    if unknown:
        raise InputError(
            f"{option('methods')}: unknown {unknown}; expected some of "
            f"{', '.join([*REGISTRY, *CONTROLS])}"
        )
    rules = list(methods)
    controls = [m for m in rules if m in CONTROLS]
    unkept = [c for c in controls if CONTROLS[c].keep is None]
    if unkept:
        rules = [n for n, c in CONTROLS.items() if c.keep is not None]
        raise InputError(
            f"{option('methods')}: {unkept} draw no kept neurons; the controls of "
            f"prune are {', '.join(rules)}"
        )
    chosen = (
        method_options(
            {
                m: (methods[m] if isinstance(methods, Mapping) else None)
                for m in rules
                if m not in CONTROLS
            }
        )
        if len(controls) < len(rules)
        else {}
    )
    keep, mask = settings.keep, settings.mask
    k = max(keep)
    for name, opts in chosen.items():  # prune finds TopK paths with K = the largest keep
        try:
            with options_named(topk="keep"):
                opts.check(k)
        except InputError as error:
            raise InputError(
                f"{error} (prune keeps the best t of TopK paths with K = the largest "
                f"{option('keep')})"
            ) from None
    changed = [
        flag_name(f)
        for f in dataclasses.fields(SlimOptions)
        if getattr(slim, f.name) != getattr(SlimOptions(), f.name)
    ]
    if changed and "vit-slim" not in settings.baselines:
        raise InputError(
            f"{', '.join(option(c) for c in changed)}: the ViT-Slim search's options, which act "
            f"only with {option('baselines', 'vit-slim')}"
        )
    if "vit-slim" in settings.baselines and spec.units != "neurons":
        raise InputError(
            f"{option('baselines')}: vit-slim trains soft masks on the FFN neurons; a "
            f"{spec.units} run keeps other units (pass {option('units', 'neurons')})"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if spec.units == "neurons+heads":
        raise InputError(
            f"{option('units')}: prune keeps t units per layer of one kind; pass "
            f"{option('units')} neurons or heads"
        )
    ranks = join_ranks(resolve_device(execution.device))
    adapter = load_model(spec, device=ranks.device)
    widths, num_layers = adapter.widths(), adapter.num_layers
    depths = sorted(set(settings.depth or [num_layers]))
    if depths[-1] > num_layers:
        raise InputError(f"{option('depth')}: expected layers in 1..{num_layers}, got {depths}")
    if max(keep) > min(widths):
        raise InputError(
            f"{option('keep')}: at most the {'FFN width' if spec.units == 'neurons' else 'heads'} "
            f"{min(widths)} per layer, got {max(keep)}"
        )
    folder = as_data(data).open(adapter.id2label, spec.labels)
    model_settings = spec.settings(adapter, folder.mapping)
    by_class: dict[str, list[str]] = {}
    for item in folder.items:
        by_class.setdefault(item.folder, []).append(item.id)
    split = split_probe_test(by_class, settings.probe_fraction, settings.seed)
    probe = {i for i, s in split.items() if s == "probe"}

    run_dir = None
    if find_run is not None:
        reused = Run.open(find_run)
        check_same_model(find_run, reused.settings, model_settings)
        if reused.topk < k:
            raise InputError(
                f"{option('find_run')}: {find_run} has K = {reused.topk} < max keep {k}"
            )
        missing = [m for m in chosen if m not in reused.methods]
        if missing:
            raise InputError(
                f"{option('find_run')}: {find_run} has no paths of {missing}; it "
                f"has {reused.methods}"
            )
        run_dir = Path(find_run)
    elif chosen:
        search = FindOptions(
            chosen, config, k, reference=options.reference, only=frozenset(probe), command=command
        )
        run_dir = run_find(spec, data, out / "find", search, execution)
    ranks.barrier()  # the probe paths are merged before any rank reads them
    found = Run.open(run_dir) if chosen else None
    records = found.counted_records() if found else []
    unreadable = set(found.skipped if found else {})  # probe images find reported and skipped

    # kept neurons per (keep rule, class, t)
    kept: dict[str, dict[str, dict[int, list[list[int]]]]] = {m: {} for m in rules}
    rule = keep_by_frequency if settings.aggregate == "frequency" else keep_by_slot_mode
    for name, images in by_class.items():
        probe_images = sorted(i for i in images if split[i] == "probe" and i not in unreadable)
        for m in rules:
            if m in CONTROLS:
                kept[m][name] = {
                    t: CONTROLS[m].keep(name, settings.seed, num_layers, widths, t) for t in keep
                }
            else:
                sel = probe_selections(records, m, probe_images)[:, :, :k]
                kept[m][name] = {t: rule(sel, t) for t in keep}

    if settings.baselines:  # ViT-Slim: masks trained on each class's probe images
        probes = {
            name: sorted(i for i in images if split[i] == "probe" and i not in unreadable)
            for name, images in by_class.items()
        }
        masks = _slim_masks(
            ranks, adapter, out / "slim", folder, probes, k, slim, model_settings, execution
        )
        rules.insert(len(chosen), "vit-slim")
        kept["vit-slim"] = {
            name: {t: [sorted(layer[:t]) for layer in masks[name]] for t in keep}
            for name in by_class
        }

    # the grid: every test image under the unpruned model and every (rule, t, p, depth)
    tests = [it for it in folder.items if split[it.id] == "test"]
    configs = {"unpruned": None} | {
        f"{m}|{t}|{p}|{d}": (m, t, p, d) for m in rules for t in keep for p in mask for d in depths
    }
    grid = _prune_grid(
        ranks,
        adapter,
        out / "grid",
        tests,
        configs,
        kept,
        widths,
        settings.seed,
        model_settings,
        execution,
    )
    if not ranks.main:  # the other ranks of a torchrun job help with paths and grid only
        return None
    good = [it for it in tests if it.id in grid]
    if not good:
        raise InputError(f"{option('data')}: no readable test image in {data}")
    labels_all = np.array([it.label for it in good])
    resamples = bootstrap_draws(len(good), settings.bootstrap, settings.seed)
    per_image = {}
    for c, key in enumerate(configs):
        probs = np.array([grid[it.id]["prob"][c] for it in good], dtype=np.float64)
        preds = np.array([grid[it.id]["pred"][c] for it in good])
        per_image[key] = ((preds == labels_all).astype(np.float64), probs)
    folders = [it.folder for it in good]
    results = {
        key: pruning_metrics(*values, folders, resamples) for key, values in per_image.items()
    }
    t_table, p_table = settings.table_cell
    comparisons = {}
    first = rules[0]
    for d in depths:
        ours = f"{first}|{t_table}|{p_table}|{d}"
        for other in [f"{m}|{t_table}|{p_table}|{d}" for m in rules[1:]] + ["unpruned"]:
            comparisons[f"{ours} - {other}"] = paired_difference(
                per_image[ours], per_image[other], resamples
            )

    report = {
        "model": spec.model,
        "data": folder.settings()["data"],
        "weights_sha256": model_settings["weights_sha256"],
        "keep": list(keep),
        "mask": list(mask),
        "depth": depths,
        "probe_fraction": settings.probe_fraction,
        "seed": settings.seed,
        "aggregate": settings.aggregate,
        "methods": rules,
        "find_run": str(run_dir) if chosen else None,
        "search": found.search if found else dict.fromkeys(SEARCH_KEYS),
        "layers": num_layers,
        **model_widths(adapter),
        "test_images": len(good),
        "split": split,
        "kept": kept,
        "bootstrap": settings.bootstrap,
        "results": results,
        "comparisons": comparisons,
    }
    write_json_atomic(out / "results.json", report)
    pruning_figure(report, out / "figure6", depth=depths[-1])
    write_depth_table(report, out / "table3", t_table, p_table)
    write_table2(report, out / "table2", t_table, p_table)
    return report


def _slim_masks(
    ranks,
    adapter,
    folder: Path,
    image_folder,
    probes: dict[str, list[str]],
    k: int,
    slim: SlimOptions,
    model_settings: dict,
    execution: Execution,
) -> dict:
    """Per class, each layer's neurons ordered by their trained ViT-Slim mask (the first k), a
    resumable run folder with one record per class, the classes shared out over the ranks."""
    few = {name: len(images) for name, images in probes.items() if len(images) < 2}
    if few:
        raise InputError(
            f"{option('baselines')}: vit-slim trains each class's masks on its probe "
            f"images, at least 2; too few in {few}"
        )
    identity = {
        **{key: model_settings[key] for key in MODEL_KEYS if key in model_settings},
        "slim": dataclasses.asdict(slim),
        "ranking": SLIM_RANKING,  # masks of an older rule (|mask|, unprojected) are not reused
        "k": k,
        "probes_sha256": hashlib.sha256(json.dumps(probes, sort_keys=True).encode()).hexdigest(),
    }
    store = open_store(
        ranks, folder, {"tool": "neuronpath prune --baselines vit-slim", "settings": identity}
    )
    items = {it.id: it for it in image_folder.items}
    pending = [name for name in probes if "vit-slim" not in store.done.get(name, set())]
    log.info(
        "prune: vit-slim masks of %d classes, %d to train -> %s",
        len(probes),
        len(pending),
        store.dir,
    )
    try:
        for name in tqdm(
            ranks.share(pending),
            desc="vit-slim masks",
            unit="class",
            disable=not ranks.main or execution.progress is False,
        ):
            batch = next(
                image_batches(
                    [items[i] for i in probes[name]], adapter.preprocess, len(probes[name])
                )
            )
            labels = torch.tensor([it.label for it in batch.items])
            masks = train_masks(adapter, batch.pixels, labels, slim)
            top = ranked_by_mask(masks, k)
            saved = write_masks(store.dir / "masks", name, masks)
            store.append(
                [
                    {
                        "image": name,
                        "method": "vit-slim",
                        "top": top,
                        "values": [m[t].tolist() for m, t in zip(masks, top)],
                        "positive": [int((m > 0).sum()) for m in masks],
                        "masks": saved,
                    }
                ]
            )
        ranks.barrier()
        if ranks.main and ranks.world > 1:
            store.consolidate()
    finally:
        store.close()
    ranks.barrier()
    return {r["image"]: r["top"] for r in read_records(folder)}


def mask_file_name(name: str) -> str:
    """A file name for class ``name``'s masks: the name itself where it is a plain file name,
    else its safe characters and a short hash of the name (two classes never share a file)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if safe != name or safe.startswith("."):
        safe = f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return f"{safe}.npz"


def write_masks(folder: Path, name: str, masks: list[torch.Tensor]) -> str:
    """Write class ``name``'s trained masks to ``folder`` (``layer0``, ``layer1``, ... arrays)
    atomically, before its record, so a record always has its file; returns the path
    relative to the slim folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / mask_file_name(name)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as handle:
        np.savez(handle, **{f"layer{l}": m.cpu().numpy() for l, m in enumerate(masks)})
    tmp.replace(path)
    return f"{folder.name}/{path.name}"


def check_same_model(find_run, theirs: dict, ours: dict) -> None:
    """Refuse a reused find run whose paths were found on another model or with other model
    settings (:func:`~neuronpath.models.spec.model_differences`: weights, image processor, token,
    labels, checkpoint options, zero-shot label set) than this prune run evaluates: its kept
    neurons would then belong to a different computation."""
    changed = model_differences(theirs, ours)
    if changed:
        raise RunConflictError(
            f"find run {find_run} was made with other inputs than this prune "
            f"run ({'; '.join(changed)}); pass the options the find run was "
            f"made with"
        )


def _prune_grid(
    ranks,
    adapter,
    folder: Path,
    tests: list,
    configs: dict,
    kept: dict,
    widths,
    seed: int,
    model_identity: dict,
    execution: Execution,
) -> dict:
    """The test images' label probability and prediction under every setting of the grid, as
    a resumable run folder (one record per image, ``prob``/``pred`` in ``configs`` order) that
    the ranks of a ``torchrun`` job share out.  The masks are seeded per image, so the numbers
    do not depend on batches, ranks or interruptions; ``model_identity`` (the model's settings)
    is part of the folder's identity.  Returns the records by image (main rank; empty on the
    others)."""
    identity = {
        **{key: model_identity[key] for key in MODEL_KEYS if key in model_identity},
        "configs": list(configs),
        "seed": seed,
        "tests_sha256": hashlib.sha256("\n".join(it.id for it in tests).encode()).hexdigest(),
        "kept_sha256": hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest(),
    }
    store = open_store(ranks, folder, {"tool": "neuronpath prune", "settings": identity})
    pending = [it for it in tests if "grid" not in store.done.get(it.id, set())]
    log.info(
        "prune: %d test images x %d settings, %d images to do -> %s",
        len(tests),
        len(configs),
        len(pending),
        store.dir,
    )

    def handle(batch):
        labels_t = torch.tensor([it.label for it in batch.items])
        probs, preds = [], []
        for cell in configs.values():
            if cell is None:
                rows = [{}] * len(batch.items)
            else:
                m, t, p, d = cell
                rows = [
                    prune_multipliers(item.id, seed, kept[m][item.folder][t], widths, p, d)
                    for item in batch.items
                ]
            prob, pred = pruned_predictions(adapter, batch.pixels, labels_t, rows, widths)
            probs.append(prob.double().cpu())
            preds.append(pred.cpu())
        probs, preds = torch.stack(probs, 1).tolist(), torch.stack(preds, 1).tolist()
        store.append(
            [
                {
                    "image": item.id,
                    "method": "grid",
                    "label": item.label,
                    "prob": probs[b],
                    "pred": preds[b],
                }
                for b, item in enumerate(batch.items)
            ]
        )

    grid = Execution(execution.device, GRID_BATCH, execution.workers, execution.progress)
    order = [it.id for it in tests]
    work_through(ranks, store, pending, adapter.preprocess, grid, handle, order, "pruning")
    return {r["image"]: r for r in read_records(folder)} if ranks.main else {}
