"""``neuronpath evaluate --ablation ...``: faithfulness of every stored path, measured the way
circuit researchers measure it (:mod:`neuronpath.analysis.faithfulness`).

For each ablation (``zero``: the paper's; ``mean``: each neuron's mean over a reference set at
the same positions; ``resample``: its value in another image of another class, seeded), on
every image, for every path method and control (``random``; ``matched-random``, drawn for
*every* method's path, ``matched-random:METHOD``: per path neuron a random neuron of its layer at
the same activation level on the image -- among the ``match_window`` nearest levels by default --
several seeds pooled, with the achieved match of levels reported):

* stage 1: each layer's path neuron ablated alone, which orders the path by its neurons' own
  effect on P(label), largest drop first;
* stage 2: the necessity curve (the first k neurons of that order ablated, k = 1 .. L; k = L is
  the whole path removed), the sufficiency curve (only the first k kept, every other neuron of
  the path's layers ablated), enhancement (path neurons x ``enhance_factor``), and per image
  the clean model and every neuron of every layer ablated.

Every row's four metrics go into ``RUN/evaluation/faithfulness/<ablation>/records.jsonl`` (a
resumable run folder, shared out over ``torchrun`` ranks); the mean of a reference set (and the
matched control's bins) into ``RUN/evaluation/faithfulness/reference.npz``, computed once.
Outputs: ``RUN/evaluation/faithfulness.csv`` (one row per method x ablation x metric x
statistic, and the matched controls' achieved match: quantiles of partner level / path level),
``faithfulness.md``, ``faithfulness.png/.svg`` (the curves), ``faithfulness.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..analysis.bootstrap import bootstrap_draws
from ..analysis.faithfulness import (
    METRICS,
    check_names,
    curve,
    leaders,
    metric_arrays,
    metric_values,
    own_rows,
    rival_classes,
    statistics,
)
from ..analysis.records import group_by
from ..analysis.unitstats import UnitStats
from ..draws import seeded_generator
from ..engine.ablation import ABLATIONS, own_rule, path_edit
from ..engine.editing import edited_chunks
from ..engine.interventions import ablate_neurons, record_neurons
from ..errors import ImageReadError, InputError, option
from ..io.images import ImageItem, image_batches, load_image
from ..io.store import check_settings, read_records, reading, write_json_atomic
from ..methods import CONTROLS
from ..options import names, setting
from ..pathformat import encode
from ..report.figures import faithfulness_figure
from ..report.tables import write_faithfulness_table
from .common import Execution
from .ranks import open_store
from .reference import file_digest, reference_files

log = logging.getLogger("neuronpath")

CLEAN, ALL, ALONE, NECESSITY, SUFFICIENCY, ENHANCE = range(6)
MATCHED = "matched-random"
MATCHES = ("nearest", "bins")
RATIO_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)  # the achieved match, partner / path level


def matched_name(method: str) -> str:
    """The matched control of one method's paths: ``matched-random:METHOD``."""
    return f"{MATCHED}:{method}"


def matched_of(name: str) -> str | None:
    """The method a matched control's name is drawn for, or None for any other name."""
    return name[len(MATCHED) + 1 :] if name.startswith(MATCHED + ":") else None


@dataclass(frozen=True)
class FaithfulnessOptions:
    """The faithfulness study's settings (see the module docstring): ablations and metrics; the
    reference set -- an image folder (``reference``; it must not overlap the run's images
    unless ``allow_overlap``) or ``reference_split`` images of the run's own, kept out of the
    evaluated set; the enhancement factor; the matched control's seeds and how it matches:
    ``nearest`` (default; among the ``match_window`` neurons of the layer nearest the path
    neuron's level on the image) or ``bins`` (in the same of ``bins`` quantile bins of the
    reference set's levels, the earlier rule)."""

    ablations: tuple[str, ...] = setting(
        ("zero",),
        "comma-separated ablations of path neurons: zero (the paper's), mean (a reference set's "
        "mean at the same positions), resample (another image's values, of another class, "
        "seeded)",
        parse=names,
        flag="ablation",
    )
    metrics: tuple[str, ...] = setting(
        ("prob",),
        "comma-separated metrics reported: prob, logit, logit-diff (target logit minus the "
        "strongest other class's), kl",
        parse=names,
    )
    controls: tuple[str, ...] | None = setting(
        None,
        "comma-separated controls: random, matched-random (for every method's path, per path "
        "neuron a random neuron of its layer at the same activation level on the image) "
        "(default: random, plus matched-random with a reference set)",
        parse=names,
    )
    reference: str | Path | None = setting(
        None,
        "folder of reference images (mean ablation; the matched control's bins with --match "
        "bins); not the run's images",
    )
    reference_split: int | None = setting(
        None,
        "or: N of the run's own images as the reference, kept out of the evaluated set "
        "(class-balanced, seeded)",
        type=int,
    )
    allow_overlap: bool = setting(False, "accept a --reference folder that holds images of the run")
    enhance_factor: float = setting(2.0, "enhancement multiplies path neurons by this", type=float)
    matched_seeds: int = setting(3, "matched-random paths per image, pooled", type=int)
    match: str = setting(
        "nearest",
        "how the matched control matches a path neuron's level on the image: nearest (drawn "
        "among the --match-window neurons of its layer nearest in level) or bins (in its "
        "quantile bin of the reference set's levels, --bins)",
        choices=MATCHES,
    )
    match_window: int = setting(
        8, "--match nearest: the partner is drawn among this many nearest levels", type=int
    )
    bins: int = setting(
        10, "--match bins: activation-level quantile bins of the matched control", type=int
    )

    def __post_init__(self):
        object.__setattr__(self, "ablations", check_names(self.ablations, ABLATIONS, "ablation"))
        object.__setattr__(self, "metrics", check_names(self.metrics, METRICS, "metrics"))
        if self.controls is None:  # with a reference set, the matched control too
            has_reference = self.reference is not None or self.reference_split is not None
            controls = ("random",) + ((MATCHED,) if has_reference else ())
        else:
            controls = tuple(dict.fromkeys(self.controls))
        object.__setattr__(self, "controls", controls)
        unknown = [c for c in self.controls if c not in CONTROLS]
        if unknown:
            raise InputError(
                f"{option('controls')}: unknown {unknown}; expected some of {', '.join(CONTROLS)}"
            )
        if self.reference is not None and self.reference_split is not None:
            raise InputError(
                f"{option('reference')}, {option('reference_split')}: give one "
                f"reference set, not both"
            )
        if not (self.enhance_factor >= 0 and math.isfinite(self.enhance_factor)):
            raise InputError(
                f"{option('enhance_factor')}: expected a finite factor >= 0 (2 doubles the "
                f"path's units, 0 removes them), got {self.enhance_factor}"
            )
        if self.match not in MATCHES:
            raise InputError(f"{option('match')}: expected one of {MATCHES}, got {self.match!r}")
        default = FaithfulnessOptions.__dataclass_fields__
        unused, other = ("bins", "bins") if self.match == "nearest" else ("match_window", "nearest")
        if getattr(self, unused) != default[unused].default:  # accepted, it would do nothing
            raise InputError(
                f"{option(unused)}: an option of {option('match', other)}, and the matched "
                f"control matches {self.match}"
            )
        for name, low in (
            ("reference_split", 1),
            ("matched_seeds", 1),
            ("match_window", 1),
            ("bins", 2),
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < low):
                raise InputError(f"{option(name)}: expected an integer >= {low}, got {value!r}")

    @property
    def needs_reference(self) -> bool:
        return "mean" in self.ablations or (MATCHED in self.controls and self.match == "bins")

    def identity(self) -> dict:
        """The settings a store's records depend on (besides the ablation)."""
        match = (
            {"match_window": self.match_window} if self.match == "nearest" else {"bins": self.bins}
        )
        return {
            "enhance_factor": self.enhance_factor,
            "matched_seeds": self.matched_seeds,
            "match": self.match,
            **match,
        }


def split_images(run, count: int, seed: int) -> list[str]:
    """``count`` of the run's images, class-balanced and seeded: each class's images in a
    seeded order, taken round-robin over classes."""
    by_class = group_by(
        ({"image": i, "label": next(iter(r.values()))["label"]} for i, r in run.by_image.items()),
        "label",
    )
    queues = []
    for label in sorted(by_class):
        images = sorted(r["image"] for r in by_class[label])
        order = torch.randperm(len(images), generator=seeded_generator("reference", seed, label))
        queues.append([images[i] for i in order.tolist()])
    taken = [q[rank] for rank in range(max(map(len, queues))) for q in queues if rank < len(q)]
    if count >= len(taken):
        raise InputError(
            f"{option('reference_split')}: {count} of the run's {len(taken)} images "
            f"would leave none to evaluate"
        )
    return taken[:count]


def _pixels_digest(load) -> str | None:
    """SHA-256 of a decoded image's pixels (None where it cannot be read)."""
    try:
        return hashlib.sha256(np.asarray(load()).tobytes()).hexdigest()
    except ImageReadError:
        return None


def reference_items(run, options: FaithfulnessOptions) -> list[ImageItem]:
    """The reference images: a split of the run's, or every image file under a folder, which
    is refused when it holds images of the run (same file or same bytes) unless allowed."""
    if options.reference_split is not None:
        return [run.reader.item(i) for i in sorted(run.excluded)]  # an order of its own
    root = Path(options.reference).expanduser()
    paths = reference_files(root)  # its image files; the overlap is checked here, by content too
    if not options.allow_overlap and run.reader.dataset is not None:  # rows: by their pixels
        theirs = {_pixels_digest(lambda p=p: load_image(p)) for p in paths} - {None}
        same = {i for i in run.by_image if _pixels_digest(lambda i=i: run.reader.load(i)) in theirs}
    elif not options.allow_overlap:
        ours = [run.reader.root / i for i in run.by_image]
        same = {p.resolve() for p in ours} & {p.resolve() for p in paths}
        if not same:
            theirs = {file_digest(p) for p in paths} - {None}
            same = {p for p in ours if file_digest(p) in theirs}
    else:
        same = set()
    if same:
        raise InputError(
            f"{option('reference')}: {len(same)} of its images are images of "
            f"the run (e.g. {sorted(same)[0]}); a reference must be other "
            f"images, or pass {option('allow_overlap')}"
        )
    return [ImageItem(p.relative_to(root).as_posix(), p, -1, "") for p in paths]


def reference_identity(run, options: FaithfulnessOptions) -> dict:
    """What identifies the reference statistics: the images (in sorted order, whatever order a
    set gives them in), the token policy, the seed, the units and ``bins`` (their edges are
    stored with the means)."""
    items = reference_items(run, options)
    return {
        "images_sha256": hashlib.sha256(
            "\n".join(sorted(str(it.path) for it in items)).encode()
        ).hexdigest(),
        "count": len(items),
        "token": run.adapter.token.name,
        "seed": run.options.seed,
        "bins": options.bins,
        **({"units": run.adapter.unit_set} if run.adapter.unit_set != "neurons" else {}),
        "source": str(options.reference)
        if options.reference
        else f"split {options.reference_split}",
    }


def reference_statistics(
    run, options: FaithfulnessOptions, folder: Path, execution: Execution
) -> UnitStats:
    """The reference set's statistics, computed once by one streaming pass (main rank) and
    kept in ``folder/reference.npz`` with its identity; every rank then reads them."""
    items = sorted(reference_items(run, options), key=lambda it: str(it.path))
    identity = reference_identity(run, options)
    path = folder / "reference.npz"
    remedy = "delete it: the next evaluate computes it again"
    if path.is_file():
        with reading(path, remedy):
            done = json.loads(str(np.load(path)["identity"])) == identity
    else:
        done = False
    if run.ranks.main and not done:
        shapes, stats, skipped = None, None, []
        for batch in image_batches(items, run.adapter.preprocess, execution.batch_size):
            skipped += [str(error) for _, error in batch.errors]
            if not batch.items:
                continue
            adapter, layers = run.adapter, range(run.adapter.num_layers)
            with torch.inference_mode(), record_neurons(adapter, coordinates=True) as acts:
                adapter.logits(batch.pixels.to(adapter.device, adapter.dtype))
            levels = [
                adapter.units(l).values(acts[l]).double().mean(1).cpu().numpy() for l in layers
            ]
            acts = {l: adapter.units(l).source(acts[l]) for l in layers}  # what ablation copies
            if stats is None:
                shapes = [tuple(acts[l].shape[1:]) for l in layers]
                counts = [level.shape[-1] for level in levels]
                seed = run.options.seed
                stats = UnitStats(counts, coordinates=shapes, layer_sample=len(items), seed=seed)
            coords = [acts[l].double().cpu().numpy() for l in layers]
            stats.add([it.id for it in batch.items], levels, coordinates=coords)
        for line in skipped:
            log.warning("reference: skipping %s", line)
        if stats is None:
            raise InputError(f"{option('reference')}: none of its {len(items)} images can be read")
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {f"mean{l}": m for l, m in enumerate(stats.coordinate_means())}
        arrays |= {f"edges{l}": e for l, e in enumerate(stats.edges(options.bins))}
        tmp = folder / "reference.tmp.npz"
        np.savez(tmp, identity=json.dumps(identity), count=stats.count, **arrays)
        tmp.replace(path)
        log.info("reference: %d images (%d unreadable) -> %s", stats.count, len(skipped), path)
    run.ranks.barrier()
    with reading(path, remedy):
        return dict(np.load(path))


class Rows:
    """The edited rows of one batch: each row's image, path, kind and k, and the edits of a
    chunk of rows built from them when it runs (so no (rows, neurons) mask lives longer)."""

    def __init__(self, widths: list[int], factor: float):
        self.widths, self.factor = widths, factor
        self.image, self.path, self.kind, self.k = [], [], [], []
        self.paths: list[torch.Tensor] = []  # (layers, K) each
        self.rank: list[torch.Tensor] = []  # each path's rank of every layer in its order

    def add_path(self, path: torch.Tensor) -> int:
        self.paths.append(path.reshape(len(self.widths), -1).long().cpu())
        self.rank.append(torch.arange(len(self.widths)))
        return len(self.paths) - 1

    def add(self, image: int, path: int, kind: int, k: int = 0) -> int:
        self.image.append(image)
        self.path.append(path)
        self.kind.append(kind)
        self.k.append(k)
        return len(self.kind) - 1

    def edits(self, rows: slice, source: list[torch.Tensor], per_image: bool) -> dict:
        kind, k = torch.tensor(self.kind[rows]), torch.tensor(self.k[rows])
        which = torch.tensor(self.image[rows]) if per_image else torch.zeros(len(kind), dtype=int)
        paths = torch.stack(self.paths)[torch.tensor(self.path[rows])]
        ranks = torch.stack(self.rank)[torch.tensor(self.path[rows])]
        edits = {}
        # kept rows (path_edit): sufficiency keeps the first k path units alone; all-ablated
        # keeps none.  Removed rows ablate the first k (necessity) or layer k's alone (alone).
        keep = (kind == SUFFICIENCY) | (kind == ALL)
        on_curve = (kind == SUFFICIENCY) | (kind == NECESSITY)
        for l, n in enumerate(self.widths):
            on = torch.zeros(len(kind), n, dtype=torch.float64).scatter_(1, paths[:, l], 1.0)
            early = (ranks[:, l] < k)[:, None]  # layer l among the first k of the path's order
            chosen = (on_curve[:, None] & early) | ((kind == ALONE) & (k == l))[:, None]
            multiplier, ablated = path_edit(on * chosen, keep)
            enhance = (kind == ENHANCE)[:, None]
            multiplier = torch.where(enhance, 1 + (self.factor - 1) * on, multiplier)
            edits[l] = (multiplier, torch.where(enhance, 0.0, ablated), source[l], which)
        return edits


def check_study(run, options: FaithfulnessOptions) -> frozenset[str]:
    """Refuse, before any work, a study that cannot run on ``run``; returns the images kept
    out of it (a reference split)."""
    if run.adapter.unit_set == "neurons+heads":
        raise InputError(
            f"{option('ablation')}: the faithfulness study orders and ablates a path layer by "
            f"layer, and is built for neuron and head paths; {run.run_dir} holds mixed "
            f"(neurons+heads) paths (Table 1's removal and enhancement work on them)"
        )
    if options.needs_reference and options.reference is None and options.reference_split is None:
        why = (
            "mean ablation"
            if "mean" in options.ablations
            else f"the matched control's bins ({option('match', 'bins')})"
        )
        raise InputError(
            f"{option('reference')}: {why} needs a reference set; pass "
            f"{option('reference', 'DIR')} or {option('reference_split', 'N')}"
        )
    if "resample" in options.ablations:
        labels = {next(iter(r.values()))["label"] for r in run.by_image.values()}
        if len(labels) < 2:
            raise InputError(
                f"{option('ablation')}: resample ablation takes values from images "
                f"of another class; the run has one class"
            )
    excluded = (
        frozenset(split_images(run, options.reference_split, run.options.seed))
        if options.reference_split
        else frozenset()
    )
    if options.reference is not None:
        reference_items(run, options)  # the folder exists, has images, none of the run's
    return excluded


def run_faithfulness(run, options: FaithfulnessOptions, execution: Execution) -> dict | None:
    """The faithfulness study of a find run (``run``: its :class:`~.evaluate.StoredPaths`, the
    images of :func:`check_study` kept out); returns every statistic (None on the other
    ranks)."""
    folder = run.run_dir / "evaluation" / "faithfulness"
    found = run.find.methods
    methods = found + [
        name
        for control in options.controls
        for name in ([matched_name(m) for m in found] if control == MATCHED else [control])
    ]
    identity = reference_identity(run, options) if options.needs_reference else None
    for ablation in options.ablations:  # a refused study changes nothing, the reference included
        check_settings(folder / ablation, _settings(run, options, ablation, methods, identity))
    reference = None
    if options.needs_reference:
        reference = reference_statistics(run, options, folder, execution)
    for ablation in options.ablations:
        _ablation_pass(run, options, ablation, reference, methods, folder, execution)
    if not run.ranks.main:
        return None
    return write_faithfulness(run.run_dir, options, methods, run.options, run.find.selection, found)


def _settings(run, options, ablation, methods, reference: dict | None) -> dict:
    """The manifest of one ablation's store (what its records depend on)."""
    settings = {
        "ablation": ablation,
        "seed": run.options.seed,
        "methods": methods,
        "excluded_sha256": hashlib.sha256("\n".join(sorted(run.excluded)).encode()).hexdigest(),
        **options.identity(),
    }
    if reference is not None:
        settings["reference"] = reference
    return run.manifest_for("neuronpath evaluate --ablation", settings)


def _ablation_pass(run, options, ablation, reference, methods, folder, execution) -> None:
    adapter, widths = run.adapter, run.adapter.widths()
    layers = adapter.num_layers
    identity = None if reference is None else json.loads(str(reference["identity"]))
    store = open_store(
        run.ranks, folder / ablation, _settings(run, options, ablation, methods, identity)
    )
    pending = run.pending(store, methods)
    log.info(
        "faithfulness (%s ablation): %d images, %d to do -> %s",
        ablation,
        len(run.by_image) - len(run.excluded),
        len(pending),
        store.dir,
    )
    donors = donor_pool(run) if ablation == "resample" else None

    def encoded(path):  # (layers, K) -> the record's format (pathformat)
        return encode(path.tolist(), adapter.unit_set, adapter.kinds, adapter.blocks)

    def handle(batch):
        pixels, images, labels = run.inputs(batch)
        with torch.inference_mode(), record_neurons(adapter, coordinates=True) as clean_coords:
            adapter.logits(pixels)
        clean_acts = {l: adapter.units(l).values(c) for l, c in clean_coords.items()}
        source, per_image, donor_of = ablation_sources(
            run, ablation, reference, clean_coords, images, donors
        )
        paths = run.paths(images, [c for c in options.controls if CONTROLS[c].path is not None])
        rows = Rows(widths, options.enhance_factor)
        owners, unmatched, levels = {}, {}, {}
        for b, image in enumerate(images):
            for name in methods:
                drawn = _paths_of(run, name, b, image, paths, clean_acts, reference, options)
                unmatched[(b, name)] = sum(u for _, u, _ in drawn)
                levels[(b, name)] = [pair for _, _, pairs in drawn for pair in pairs]
                owners[(b, name)] = [rows.add_path(p) for p, _, _ in drawn]
        base = {b: (rows.add(b, 0, CLEAN), rows.add(b, 0, ALL)) for b in range(len(images))}
        alone = {
            (b, p): [rows.add(b, p, ALONE, l) for l in range(layers)]
            for (b, _), ps in owners.items()
            for p in ps
        }
        first = _run_rows(adapter, pixels, rows, source, per_image)
        clean_logits = torch.stack([first[base[b][0]] for b in range(len(images))])
        targets = labels.cpu()
        rivals = rival_classes(clean_logits, targets)
        for (b, p), row_ids in alone.items():  # the path's order: largest single drop first
            prob = metric_values(
                first[row_ids],
                clean_logits[[b] * layers],
                targets[[b] * layers],
                rivals[[b] * layers],
            )["prob"]
            order = torch.from_numpy(prob).argsort(stable=True)  # lowest P(label) first
            rows.rank[p] = torch.empty(layers, dtype=torch.long).scatter_(
                0, order, torch.arange(layers)
            )
        start = len(rows.kind)
        curves = {
            (b, p): (
                [rows.add(b, p, NECESSITY, k) for k in range(1, layers + 1)],
                [rows.add(b, p, SUFFICIENCY, k) for k in range(1, layers + 1)],
                rows.add(b, p, ENHANCE),
            )
            for (b, p) in alone
        }
        second = _run_rows(adapter, pixels, rows, source, per_image, start)
        logits = torch.cat([first, second])
        image_of = torch.tensor(rows.image)
        values = metric_values(logits, clean_logits[image_of], targets[image_of], rivals[image_of])
        records = []
        for b, image in enumerate(images):
            for name in methods:
                ps = owners[(b, name)]
                record = {
                    "image": image,
                    "label": int(labels[b]),
                    "method": name,
                    "path": [encoded(rows.paths[p]) for p in ps]
                    if matched_of(name)
                    else encoded(rows.paths[ps[0]]),
                    "order": [int(l) for l in rows.rank[ps[0]].argsort().tolist()],
                    "jas": run.jas(image, name),
                }
                record.update(
                    _fields(
                        values, base[b], [alone[(b, p)] for p in ps], [curves[(b, p)] for p in ps]
                    )
                )
                if donor_of is not None:
                    record["donor"] = donor_of[b]
                if matched_of(name):
                    record["unmatched"] = unmatched[(b, name)]
                    record["levels"] = levels[(b, name)]  # [path level, partner level] pairs
                records.append(record)
        store.append(records)

    run.work_through(store, pending, execution, handle, f"faithfulness ({ablation})")


def _run_rows(adapter, pixels, rows: Rows, source, per_image: bool, start: int = 0):
    """The logits of rows ``start ..`` of ``rows``."""
    index = torch.tensor(rows.image[start:], device=pixels.device)

    def edit(chunk: slice):
        return ablate_neurons(
            adapter, rows.edits(slice(start + chunk.start, start + chunk.stop), source, per_image)
        )

    return torch.cat(
        [logits.double().cpu() for _, logits in edited_chunks(adapter, pixels, index, edit)]
    )


def donor_pool(run) -> dict[int, list[str]]:
    """The evaluated images by label, for resample ablation's donors."""
    pool: dict[int, list[str]] = {}
    for image, records in sorted(run.by_image.items()):
        if image not in run.excluded:
            pool.setdefault(next(iter(records.values()))["label"], []).append(image)
    return pool


def ablation_sources(run, ablation, reference, clean_coords, images, donors):
    """Per layer, the coordinates ablated units take: zeros, the reference mean, or each
    image's donor's values (another image of another class, seeded by image)."""
    adapter, layers = run.adapter, run.adapter.num_layers
    shapes = [tuple(adapter.units(l).source(clean_coords[l][:1]).shape[1:]) for l in range(layers)]
    if ablation == "zero":
        return [torch.zeros((1, *s), dtype=torch.float64) for s in shapes], False, None
    if ablation == "mean":
        return [torch.from_numpy(reference[f"mean{l}"])[None] for l in range(layers)], False, None
    donor_of = []
    for image in images:
        label = next(iter(run.by_image[image].values()))["label"]
        others = [i for lab, pool in sorted(donors.items()) if lab != label for i in pool]
        pick = torch.randint(
            len(others), (1,), generator=seeded_generator("donor", run.options.seed, image)
        ).item()
        donor_of.append(others[pick])
    items = [run.reader.item(d) for d in donor_of]
    batch = next(image_batches(items, adapter.preprocess, len(items)))
    if batch.errors:
        raise InputError(
            f"resample ablation: a donor image cannot be read "
            f"({batch.errors[0][1]}); pass {option('data', 'DIR')}"
        )
    with torch.inference_mode(), record_neurons(adapter, coordinates=True) as donor_acts:
        adapter.logits(batch.pixels.to(adapter.device, adapter.dtype))
    sources = [adapter.units(l).source(donor_acts[l]) for l in range(layers)]
    return [s.double().cpu() for s in sources], True, donor_of


def _paths_of(run, name, b, image, paths, clean_acts, reference, options):
    """[(path (layers, K), unmatched count, [[path level, partner level], ...])] of one method
    or control on one image: one path, or a matched control's ``matched_seeds`` paths, matched
    to its method's path on this image."""
    method = matched_of(name)
    if method is None:
        return [(paths[name][b], 0, [])]
    layers = run.adapter.num_layers
    own = paths[method][b].reshape(layers, -1)
    levels = [clean_acts[l][b].double().mean(0).cpu() for l in range(layers)]
    edges = (
        [torch.from_numpy(reference[f"edges{l}"]) for l in range(layers)]
        if options.match == "bins"
        else None
    )
    drawn = []
    for s in range(options.matched_seeds):
        generator = seeded_generator("matched", run.options.seed, s, image, method)
        path, unmatched = CONTROLS[MATCHED].matched(
            levels, own, generator, options.match_window, edges
        )
        pairs = [
            [float(levels[l][i]), float(levels[l][j])]
            for l in range(layers)
            for i, j in zip(own[l].tolist(), path[l].tolist())
        ]
        drawn.append((path, unmatched, pairs))
    return drawn


def match_summary(pairs: np.ndarray) -> dict:
    """The achieved match of a matched control: quantiles of partner level / path level over
    the pairs whose path neuron is active (level > 0; a ratio to a level at or below zero says
    nothing), the share of those partners below half the path neuron's level, and the median
    absolute difference of levels over all pairs."""
    pairs = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
    active = pairs[pairs[:, 0] > 0]
    ratio = active[:, 1] / active[:, 0] if len(active) else np.zeros(0)
    return {
        "pairs": int(len(pairs)),
        "active_pairs": int(len(active)),
        **{
            f"ratio_q{round(100 * q):02d}": float(np.quantile(ratio, q)) if len(ratio) else None
            for q in RATIO_QUANTILES
        },
        "below_half": float((ratio < 0.5).mean()) if len(ratio) else None,
        "median_abs_difference": float(np.median(np.abs(pairs[:, 1] - pairs[:, 0])))
        if len(pairs)
        else None,
    }


def _fields(values, base, alone, curves) -> dict:
    """A record's metric values: clean, all ablated, the path removed (necessity at k = L),
    enhanced, each neuron alone and both curves (k = 1 .. L), averaged over the paths given
    (the matched control's seeds)."""
    clean, ablated = base
    out = {}
    for metric in METRICS:
        v = values[metric]
        necessity = np.mean([v[c[0]] for c in curves], axis=0)
        sufficiency = np.mean([v[c[1]] for c in curves], axis=0)
        out[metric] = {
            "clean": float(v[clean]),
            "ablated": float(v[ablated]),
            "removed": float(necessity[-1]),
            "enhanced": float(np.mean([v[c[2]] for c in curves])),
            "alone": np.mean([v[a] for a in alone], axis=0).tolist(),
            "necessity": necessity.tolist(),
            "sufficiency": sufficiency.tolist(),
        }
    return out


def write_faithfulness(
    run_dir: Path,
    options: FaithfulnessOptions,
    methods: list[str],
    edit,
    selection: dict | None = None,
    candidates: list[str] | None = None,
) -> dict:
    """faithfulness.json/.csv/.md and the curves' figure from the ablation stores.  Rows of a
    method judged by the criterion it selected on (``selection``: the find run's, see
    :mod:`neuronpath.engine.ablation`) are marked, and the leaders (the best of
    ``candidates``, the run's methods) are chosen without them."""
    selection = selection or {}
    own = own_rule(selection)

    folder = run_dir / "evaluation"
    results: dict = {}
    curves: dict = {}
    unmatched: dict = {}
    matches: dict = {}
    for ablation in options.ablations:
        by_method = group_by(read_records(folder / "faithfulness" / ablation))
        for method in methods:
            rows = by_method.get(method, [])
            if not rows:
                continue
            if matched_of(method):  # how close the partners' levels came to the path's
                matches.setdefault(method, {})[ablation] = match_summary(
                    [pair for r in rows for pair in r["levels"]]
                )
            if matched_of(method) and options.match == "bins":  # bins that held no partner
                drawn = sum(np.asarray(r["path"]).size for r in rows)
                share = sum(r["unmatched"] for r in rows) / drawn
                unmatched.setdefault(ablation, {})[method] = share
                if share:
                    log.warning(
                        "%s: %.1f%% of its neurons found no other neuron in their activation "
                        "bin and took the nearest level instead (--bins %d)",
                        method,
                        100 * share,
                        options.bins,
                    )
            draws = (
                bootstrap_draws(len(rows), edit.bootstrap, edit.seed)
                if edit.bootstrap
                else np.zeros((0, len(rows)), int)
            )
            for metric in options.metrics:
                values = metric_arrays(rows, metric)
                results.setdefault(method, {}).setdefault(ablation, {})[metric] = statistics(
                    values, draws
                )
                curves.setdefault(metric, {}).setdefault(ablation, {})[method] = _curves(values)
    summary = {
        "ablations": list(options.ablations),
        "metrics": list(options.metrics),
        "bootstrap": edit.bootstrap,
        "enhance_factor": options.enhance_factor,
        "match": options.match,
        **({"match_window": options.match_window} if options.match == "nearest" else {}),
        **(
            {"bins": options.bins, "matched_unmatched_share": unmatched}
            if options.match == "bins"
            else {}
        ),
        "matched_levels": matches,
        "selection": selection,
        "own_criterion": own_rows(results, own),
        "leaders": leaders(results, own, candidates or methods),
        "results": results,
        "curves": curves,
    }
    write_json_atomic(folder / "faithfulness.json", summary)
    write_faithfulness_table(
        results, options.metrics, folder / "faithfulness", matches, summary["own_criterion"]
    )
    faithfulness_figure(curves, folder / "faithfulness")
    return summary


def _curves(values: dict) -> dict:
    return {
        name: curve(name, values[name], values["clean"], values["ablated"]).tolist()
        for name in ("necessity", "sufficiency")
    }
