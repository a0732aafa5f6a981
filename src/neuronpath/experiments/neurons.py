"""``neuronpath neurons``: what a path unit responds to -- a neuron atlas over any image set.

One streaming pass over an image folder (``--limit``, ``torchrun``, resumable, progress) keeps,
for the units on a find run's paths (or all units of chosen layers, or the units named with
``--units``), each unit's top-k and bottom-k images by its value at the read positions (the
mean over them, as the page shows it) with the token where it peaks in each, and its
statistics (:class:`~neuronpath.analysis.unitstats.UnitStats`); for a zero-shot CLIP or SigLIP
model also each unit's **text labels**: the vocabulary entries (the run's class names, or
``--vocabulary FILE``) its direct effect on the image embedding is most aligned with
(:mod:`neuronpath.engine.direct`; the direct effect only).  Memory grows with units x k, never
with the images.

Writes ``OUT/`` (default ``RUN/neurons/``): ``manifest.json``, ``atlas.npz`` (what the page and
:func:`read_atlas` read), ``top.csv`` (``layer,neuron,rank,image,value,peak_token``; bottom
images have ranks -1, -2, ...), ``labels.csv`` (``layer,neuron,rank,label,score``) where there
are labels.  Each rank checkpoints its accumulator after every batch
(``state.rank{r}.npz``, atomically, with the images it holds), so a killed pass loses nothing;
when all are done the main rank merges them into one, as a single process leaves it.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..analysis.unitstats import UnitStats
from ..engine.direct import direct_effects
from ..engine.interventions import record_neurons
from ..errors import ImageReadError, InputError, RunFormatError, option
from ..io.images import interleave_classes
from ..io.sources import DataSpec, Reader, as_data
from ..io.store import reading, store_settings, write_json_atomic
from ..models.loading import load_model
from ..models.spec import ModelSpec
from ..options import integers, names, nested, setting
from ..pathformat import ABSENT, decode, record_units, unit_label
from ..report.figures import atlas_figure
from .common import PASS_BATCH, Execution, resolve_device, versions
from .ranks import join_ranks, open_store, work_through
from .run import Run

log = logging.getLogger("neuronpath")

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
HISTOGRAM_BINS = 20
STATE = "state.rank{}.npz"


@dataclass(frozen=True)
class AtlasOptions:
    """What the atlas keeps: ``top`` and ``bottom`` images per unit, ``sample`` images whose
    values give the quantiles and histograms, ``labels`` text labels per unit, the ``seed``
    of the sample."""

    top: int = setting(9, "top images per unit", type=int)
    bottom: int = setting(3, "bottom images per unit", type=int)
    sample: int = setting(1024, "images whose values give quantiles and histograms", type=int)
    labels: int = setting(5, "text labels per unit (zero-shot models)", type=int)
    seed: int = setting(0, "seed of the sample and of ties", type=int)

    def __post_init__(self):
        for name, low in (("top", 1), ("bottom", 0), ("sample", 1), ("labels", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise InputError(f"{option(name)}: expected an integer >= {low}, got {value!r}")


def parse_units(text: str) -> list[tuple[int, str, int]]:
    """``L:I,L:hI,...`` -> ``[(layer, kind, index)]``: neuron I of layer L, or (``hI``) its
    head I."""
    out = []
    for item in (part.strip() for part in str(text).split(",") if part.strip()):
        layer, sep, index = item.partition(":")
        kind = "head" if index.startswith("h") else "neuron"
        try:
            out.append((int(layer), kind, int(index.removeprefix("h"))))
        except ValueError:
            sep = ""
        if not sep:
            raise InputError(
                f"{option('select')}: expected LAYER:INDEX (a neuron) or LAYER:hINDEX (a head) "
                f"items, got {item!r}"
            )
    if not out:
        raise InputError(f"{option('select')}: expected LAYER:INDEX items, got {text!r}")
    return out


def unit_set_of(units: list[tuple[int, str, int]]) -> str:
    kinds = {kind for _, kind, _ in units}
    return "neurons+heads" if len(kinds) > 1 else ("heads" if kinds == {"head"} else "neurons")


def sites_of(units: list[tuple[int, str, int]], adapter) -> dict[int, list[int]]:
    """``{site: [units]}`` of ``(layer, kind, index)`` units, checked against the model's
    layers and widths."""
    widths, chosen = adapter.widths(), {}
    for layer, kind, index in units:
        site = next(
            (
                s
                for s in range(adapter.num_layers)
                if adapter.blocks[s] == layer and adapter.units(s).kind == kind
            ),
            None,
        )
        name = f"{layer}:{'h' if kind == 'head' else ''}{index}"
        if site is None:
            raise InputError(
                f"{option('select')}: {name}: the model has layers 0..{adapter.num_blocks - 1}"
            )
        if not 0 <= index < widths[site]:
            raise InputError(
                f"{option('select')}: {name}: layer {layer} has {widths[site]} {kind}s "
                f"(0..{widths[site] - 1})"
            )
        chosen.setdefault(site, []).append(index)
    return {s: sorted(set(u)) for s, u in sorted(chosen.items())}


def path_units(run: Run, methods: list[str] | None) -> dict[int, list[int]]:
    """``{site: [units]}`` on the paths of ``methods`` (default: every method) of a find run."""
    kinds, blocks = run.sites
    records = run.records()
    available = list(dict.fromkeys(r["method"] for r in records))
    methods = methods or available
    unknown = [m for m in methods if m not in available]
    if unknown:
        raise InputError(
            f"{option('method')}: the run has no paths of {unknown}; it has "
            f"{', '.join(available) or 'none yet'}"
        )
    chosen: dict[int, set[int]] = {}
    for r in records:
        if r["method"] in methods:
            for site, entry in enumerate(decode(r["path"], record_units(r), kinds, blocks)):
                for unit in entry if isinstance(entry, list) else [entry]:  # TopK: all K
                    if unit != ABSENT:
                        chosen.setdefault(site, set()).add(int(unit))
    if not chosen:
        raise RunFormatError(f"{run.dir}: the run has no paths of {', '.join(methods)} yet")
    return {s: sorted(u) for s, u in sorted(chosen.items())}


def _peaks(adapter, site: int, values: torch.Tensor) -> torch.Tensor:
    """(rows, tokens, n) -> (rows, n): the token where each unit peaks, among the site's
    image tokens (after its special tokens) where its layout states them, else among all."""
    layout = adapter.layout(site, values.shape[1])
    start = layout.prefix if layout.kind == "grid" else 0
    return values[:, start:].argmax(1) + start


@dataclass(frozen=True)
class NeuronsOptions:
    """Which units the atlas describes -- a find run's path units (``methods``: whose paths,
    default all), the units ``select`` of a model (``L:I`` a neuron, ``L:hI`` a head), or
    every unit of ``layers`` -- over at most ``limit`` images, with text labels from
    ``vocabulary`` (zero-shot models), written to ``out``, and what it keeps per unit
    (``atlas``)."""

    select: str | None = setting(
        None,
        "without a run: LAYER:INDEX (a neuron) or LAYER:hINDEX (a head), ...",
        old_flag="units",
    )
    methods: tuple[str, ...] | None = setting(
        None, "whose paths' units (default: every method of the run)", parse=names
    )
    layers: tuple[int, ...] | None = setting(
        None, "every unit of these layers instead", parse=integers
    )
    out: str | None = setting(None, "atlas folder (default: RUN/neurons)")
    vocabulary: str | None = setting(
        None, "text labels from one word or phrase per line (zero-shot models)"
    )
    limit: int | None = setting(None, "at most N images, round-robin over classes", type=int)
    atlas: AtlasOptions = nested(AtlasOptions, "what the atlas keeps")
    figure: bool = setting(True, cli=False)  # also draw atlas.png


@dataclass(frozen=True)
class NeuronsCommand:
    """a neuron atlas: each path unit's top and bottom images over an image folder, its
    statistics, and text labels for zero-shot CLIP / SigLIP"""

    run: str | None = setting(
        None, "find run whose path units to describe", positional=True, nargs="?"
    )
    data: DataSpec = nested(DataSpec, "data options")
    model: str | None = setting(None, "without a run: the model whose --select to describe")
    options: NeuronsOptions = nested(NeuronsOptions)
    execution: Execution = nested(Execution, "how it runs", defaults={"batch_size": PASS_BATCH})


def run_neurons(
    data: DataSpec | str | Path,
    run_dir: str | Path | None = None,
    spec: ModelSpec | str | None = None,
    options: NeuronsOptions = NeuronsOptions(),
    execution: Execution = Execution.forwards(),
) -> Path | None:
    """The atlas (:class:`NeuronsOptions`) of a find run's path units (``run_dir``) or of a
    model's units (``spec`` with ``options.select``), or of every unit of ``options.layers``
    (either way), over the images of ``data``; returns the atlas folder (None on the other
    ranks of a ``torchrun`` job)."""
    units, methods, layers, out = options.select, options.methods, options.layers, options.out
    vocabulary, limit, figure = options.vocabulary, options.limit, options.figure
    atlas = options.atlas
    if (run_dir is None) == (spec is None):
        raise InputError(
            f"neurons: give a find run, or {option('model', 'M')} with "
            f"{option('select', 'L:I,...')} (or {option('layers', 'L,...')}), not both"
        )
    if limit is not None and limit < 1:
        raise InputError(f"{option('limit')}: expected a positive integer, got {limit}")
    chosen = [n for n, v in (("select", units), ("layers", layers), ("methods", methods)) if v]
    if len(chosen) > 1:  # each names which units: given together, one would be ignored
        raise InputError(
            f"{' and '.join(option(n) for n in chosen)}: each names the units to describe; give one"
        )
    ranks = join_ranks(resolve_device(execution.device))
    named = parse_units(units) if units is not None else None
    if run_dir is not None:
        run_dir = Path(run_dir)
        run = Run.open(run_dir)
        on_paths = path_units(run, methods) if layers is None and named is None else None
        adapter = run.load_model(None, ranks.device)
        source = {"find_settings_sha256": run.settings_sha256}
        out = Path(out) if out else run_dir / "neurons"
        missing = {kind for _, kind, _ in named or []} - set(run.sites[0])
        if missing:
            raise InputError(
                f"{option('select')}: {units} names {' and '.join(sorted(missing))}s, and the "
                f"run's model is read for {run.units}; describe them with "
                f"{option('model', run.model_id)} {option('select', units)}"
            )
    else:
        spec = spec if isinstance(spec, ModelSpec) else ModelSpec(spec)
        if named is not None:
            spec = replace(spec, units=unit_set_of(named))
        adapter = load_model(spec, device=ranks.device)
        source = {"model": spec.settings(adapter, "auto")}
        if out is None:
            raise InputError(f"neurons: {option('out', 'DIR')} is needed without a find run")
        out = Path(out)
    if layers is not None:
        bad = [l for l in layers if not 0 <= l < adapter.num_blocks]
        if bad:
            raise InputError(
                f"{option('layers')}: {bad} outside the model's layers 0..{adapter.num_blocks - 1}"
            )
        tracked = {
            s: list(range(adapter.widths()[s]))
            for s in range(adapter.num_layers)
            if adapter.blocks[s] in layers
        }
    elif named is not None:  # with a run: these units of the run's model
        tracked = sites_of(named, adapter)
    elif run_dir is not None:
        tracked = on_paths
    else:
        raise InputError(
            f"neurons: name the units, {option('select', 'L:I,...')} or {option('layers', 'L,...')}"
        )
    texts, names = _vocabulary(adapter, vocabulary, run if run_dir else None)
    folder = as_data(data).open(adapter.id2label)
    items = interleave_classes(folder.items)[:limit]
    settings = {
        **source,
        **folder.settings(),
        "images_sha256": _sha([it.id for it in items]),
        "units": {str(s): u for s, u in tracked.items()},
        "top": atlas.top,
        "bottom": atlas.bottom,
        "sample": atlas.sample,
        "seed": atlas.seed,
        "vocabulary_sha256": None if texts is None else _sha(names),
        # text labels from an older rule (through the live final norm) are not resumed
        **({} if texts is None else {"text_labels": "direct effects, norms frozen at the image"}),
    }
    store = open_store(
        ranks,
        out,
        {
            "tool": "neuronpath neurons",
            "settings": settings,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
        },
    )
    sites = sorted(tracked)
    counts = adapter.widths()

    def fresh() -> UnitStats:
        return UnitStats(
            counts,
            [tracked.get(s, []) for s in range(adapter.num_layers)],
            top=atlas.top,
            bottom=atlas.bottom,
            sample=atlas.sample,
            seed=atlas.seed,
        )

    mine_path = store.dir / STATE.format(ranks.rank)
    stats, effects = (
        fresh(),
        {s: np.zeros((len(tracked[s]), 0 if texts is None else len(names))) for s in sites},
    )
    if mine_path.is_file():
        with reading(mine_path, STATE_REMEDY):
            state = np.load(mine_path)
            stats.load(state)
            effects = {s: state[f"effect{s}"] for s in sites}
    done = set()
    for path in _states(store.dir):
        with reading(path, STATE_REMEDY):
            done |= set(str(np.load(path)["images"]).split("\n")) - {""}
    pending = [it for it in items if it.id not in done]
    log.info(
        "neurons: %d units in %d layers, %d images, %d to do -> %s",
        sum(len(u) for u in tracked.values()),
        len(sites),
        len(items),
        len(pending),
        store.dir,
    )
    index = {s: torch.tensor(tracked[s]) for s in sites}

    def handle(batch):
        pixels = batch.pixels.to(adapter.device, adapter.dtype)
        with torch.inference_mode(), record_neurons(adapter, sites, all_tokens=True) as acts:
            adapter.logits(pixels)
        levels, peaks = [], []
        for s in range(adapter.num_layers):
            if s not in tracked:
                levels.append(np.zeros((len(batch.items), counts[s])))
                peaks.append(np.zeros((len(batch.items), counts[s]), dtype=np.int64))
                continue
            values = acts[s].double()
            levels.append(adapter.token_at(s).select(values).mean(1).cpu().numpy())
            peaks.append(_peaks(adapter, s, values).cpu().numpy())
        if texts is not None:
            found = direct_effects(adapter, adapter.embedding_head, pixels, index, texts)
            for s in sites:
                effects[s] = effects[s] + found[s].double().sum(0).cpu().numpy()
        stats.add([it.id for it in batch.items], levels, peaks)
        _state_aside(mine_path, stats, effects).replace(mine_path)

    order = [it.id for it in items]
    work_through(ranks, store, pending, adapter.preprocess, execution, handle, order, "atlas")
    ranks.barrier()
    if not ranks.main:
        return None
    merged, total = fresh(), {s: 0 for s in sites}
    states = _states(store.dir)
    for path in states:
        with reading(path, STATE_REMEDY):
            state = np.load(path)
            part = fresh().load(state)
            total = {s: total[s] + state[f"effect{s}"] for s in sites}
        merged.merge(part)
    if len(states) > 1:
        _consolidate(store.dir, states, merged, total)
    _write(store.dir, adapter, tracked, merged, total if texts is not None else None, names, atlas)
    if figure:
        _figure(store.dir, adapter, Reader.of(folder.settings()))
    return store.dir


FIGURE_UNITS = 16  # units drawn in atlas.png
STATE_REMEDY = (
    "delete it and run the same command again: the images it held are read again (a kill "
    "cannot leave it so -- it is written aside and renamed -- but a full disk or a copy can)"
)


def _figure(folder: Path, adapter, reader: Reader) -> None:
    """atlas.png: the first units of the atlas, each with its top and bottom images as the
    model sees them, the peak patch boxed."""
    atlas = read_atlas(folder)
    chosen = list(atlas.units.items())[:FIGURE_UNITS]
    wanted = sorted({t[0] for _, e in chosen for t in e["top"] + e["bottom"]})
    pictures = {}
    for image in wanted:
        try:
            x = adapter.preprocess(reader.load(image))
        except ImageReadError:
            continue
        pictures[image] = _view(x, adapter.preprocess)
    rows, grid = [], None
    for (layer, kind, unit), entry in chosen:
        layout = adapter.layout(entry["site"])
        grid = (layout.height, layout.width) if layout.kind == "grid" else grid

        def cells(ends, layout=layout):
            return [(pictures[i], v, layout.cell(p)) for i, v, p in ends if i in pictures]

        labels = ", ".join(w for w, _ in entry.get("labels", [])[:3])
        rows.append(
            {
                "name": unit_label(layer, kind, unit),
                "top": cells(entry["top"]),
                "bottom": cells(entry["bottom"]),
                "labels": labels,
            }
        )
    if rows:
        atlas_figure(rows, folder / "atlas", grid)


def _view(pixels: torch.Tensor, preprocess) -> np.ndarray:
    """A preprocessed image de-normalised to (H, W, 3) in [0, 1], as the model sees it."""
    x = pixels.double()
    mean, std = getattr(preprocess, "mean", None), getattr(preprocess, "std", None)
    if mean is not None and std is not None:
        x = x * torch.tensor(std, dtype=x.dtype)[:, None, None]
        x = x + torch.tensor(mean, dtype=x.dtype)[:, None, None]
    else:
        x = (x - x.amin()) / (x.amax() - x.amin() + 1e-12)
    return x.clamp(0, 1).permute(1, 2, 0).numpy()


def _consolidate(folder: Path, states: list[Path], merged: UnitStats, total: dict) -> None:
    """Leave one state file, as one process would: the merged accumulator as rank 0's.

    Written aside first, the ranks' files removed, then renamed in: a kill at any point leaves
    states that hold each image at most once (at worst the removed files' images are redone
    by the next run), never one image twice."""
    target = folder / STATE.format(0)
    tmp = _state_aside(target, merged, total)
    for path in states:
        path.unlink()
    tmp.replace(target)


def _state_aside(path: Path, stats: UnitStats, effects: dict) -> Path:
    """Write the state meant for ``path`` beside it, under a name that is not a state file
    until the caller renames it in (so a kill mid-write leaves no damaged state)."""
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as handle:
        np.savez(handle, **stats.to_arrays(), **{f"effect{s}": e for s, e in effects.items()})
    return tmp


def _states(folder: Path) -> list[Path]:
    """Every rank's checkpoint in ``folder`` (of this job or an earlier, killed one)."""
    return sorted(
        p for p in folder.glob("state.rank*.npz") if re.fullmatch(r"state\.rank\d+\.npz", p.name)
    )


def _vocabulary(adapter, vocabulary, run: Run | None):
    """(text embeddings (C, d_e), names) of the labels, or (None, None) without a text tower:
    the run's class names by default, or one word or phrase per line of ``vocabulary``."""
    head = adapter.embedding_head
    if head is None:
        if vocabulary is not None:
            raise InputError(
                f"{option('vocabulary')}: text labels need a zero-shot CLIP or SigLIP model "
                f"(a text tower); {type(adapter.model).__name__} has none"
            )
        return None, None
    if vocabulary is None:
        return head.texts, list(head.names)
    path = Path(vocabulary).expanduser()
    try:
        words = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(
            f"{option('vocabulary')}: cannot read {path} as a UTF-8 text file ({error}); "
            f"expected one word or phrase per line"
        ) from None
    words = list(dict.fromkeys(w for w in words if w))
    if not words:
        raise InputError(f"{option('vocabulary')}: {path} has no words; expected one per line")
    from ..models.zero_shot import embed_texts

    prompt = adapter.details["zero_shot"]["prompt"]
    folder = run.model_id if run is not None else adapter.name
    return embed_texts(folder, [prompt.format(w) for w in words]), words


def _sha(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _write(folder: Path, adapter, tracked, stats: UnitStats, effects, names, options) -> None:
    """atlas.npz, top.csv and labels.csv from the merged statistics."""
    arrays, rows, label_rows = {}, [], []
    for s, units in sorted(tracked.items()):
        block = adapter.blocks[s]
        sample = stats.sample(s)
        top, bottom = stats.top[s], stats.bottom[s]
        histogram = [
            np.histogram(sample[:, j], bins=HISTOGRAM_BINS)[0]
            if len(sample)
            else np.zeros(HISTOGRAM_BINS)
            for j in range(len(units))
        ]
        edges = [
            np.histogram_bin_edges(sample[:, j], bins=HISTOGRAM_BINS)
            if len(sample)
            else np.zeros(HISTOGRAM_BINS + 1)
            for j in range(len(units))
        ]
        arrays |= {
            f"units{s}": np.array(units),
            f"mean{s}": stats.means()[s],
            f"min{s}": stats.min[s],
            f"max{s}": stats.max[s],
            f"active{s}": stats.active[s] / max(stats.count, 1),
            f"quantiles{s}": stats.quantiles(s, QUANTILES)
            if len(sample)
            else np.zeros((5, len(units))),
            f"histogram{s}": np.array(histogram),
            f"edges{s}": np.array(edges),
            f"top_values{s}": top.values,
            f"top_images{s}": top.images.astype(str),
            f"top_peaks{s}": top.peaks,
            f"bottom_values{s}": bottom.values,
            f"bottom_images{s}": bottom.images.astype(str),
            f"bottom_peaks{s}": bottom.peaks,
        }
        for j, unit in enumerate(units):
            for ends, sign in ((top, 1), (bottom, -1)):
                for r in range(ends.values.shape[1]):
                    rows.append(
                        [
                            block,
                            unit,
                            sign * (r + 1),
                            ends.images[j, r],
                            f"{ends.values[j, r]:.6g}",
                            int(ends.peaks[j, r]),
                            adapter.units(s).kind,
                        ]
                    )
        if effects is not None:
            mean = effects[s] / max(stats.count, 1)
            arrays[f"labels{s}"] = mean
            for j, unit in enumerate(units):
                for r, c in enumerate(np.argsort(-mean[j], kind="stable")[: options.labels]):
                    label_rows.append([block, unit, r + 1, names[c], f"{mean[j, c]:.6g}"])
    sites = sorted(tracked)
    meta = {
        "sites": sites,
        "blocks": [adapter.blocks[s] for s in sites],
        "kinds": [adapter.units(s).kind for s in sites],
        "names": {
            str(s): [unit_label(adapter.blocks[s], adapter.units(s).kind, u) for u in tracked[s]]
            for s in sites
        },
        "images": stats.count,
        "quantiles": list(QUANTILES),
        "vocabulary": names,
    }
    tmp = folder / "atlas.tmp.npz"
    np.savez(tmp, meta=json.dumps(meta), **arrays)
    tmp.replace(folder / "atlas.npz")
    header = ["layer", "neuron", "rank", "image", "value", "peak_token"]
    if set(meta["kinds"]) == {"neuron"}:  # the columns of a neuron atlas; heads add their kind
        rows = [row[:-1] for row in rows]
    else:
        header.append("kind")
    _csv(folder / "top.csv", header, rows)
    if effects is not None:
        _csv(folder / "labels.csv", ["layer", "neuron", "rank", "label", "score"], label_rows)
    write_json_atomic(
        folder / "atlas.json",
        {"images": stats.count, "units": sum(len(u) for u in tracked.values())},
    )


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    tmp.replace(path)


@dataclass
class Atlas:
    """A neuron atlas read back (:func:`read_atlas`): per unit (``(layer, kind, index)``) its
    statistics, top and bottom images with their peak tokens, and text labels where there are
    any; ``folder``: where it is."""

    images: int
    units: dict[tuple[int, str, int], dict]
    folder: Path

    def __getitem__(self, key) -> dict:
        return self.units[key]

    def reader(self) -> Reader:
        """The images the atlas was made over."""
        return Reader.of(store_settings(self.folder))


def read_atlas(folder: str | Path) -> Atlas:
    """The atlas a ``neuronpath neurons`` pass wrote into ``folder``."""
    path = Path(folder) / "atlas.npz"
    if not path.is_file():
        raise RunFormatError(f"{folder}: no atlas.npz (run neuronpath neurons first)")
    with reading(path, "run the neurons command again to write it"):
        data = dict(np.load(path))
        meta = json.loads(str(data["meta"]))
        units = {}
        for s, block, kind in zip(meta["sites"], meta["blocks"], meta["kinds"]):
            for j, unit in enumerate(data[f"units{s}"].tolist()):
                entry = {
                    "site": s,
                    "mean": float(data[f"mean{s}"][j]),
                    "min": float(data[f"min{s}"][j]),
                    "max": float(data[f"max{s}"][j]),
                    "active": float(data[f"active{s}"][j]),
                    "quantiles": dict(zip(meta["quantiles"], data[f"quantiles{s}"][:, j].tolist())),
                    "histogram": (data[f"histogram{s}"][j].tolist(), data[f"edges{s}"][j].tolist()),
                    "top": list(
                        zip(
                            data[f"top_images{s}"][j].tolist(),
                            data[f"top_values{s}"][j].tolist(),
                            data[f"top_peaks{s}"][j].tolist(),
                        )
                    ),
                    "bottom": list(
                        zip(
                            data[f"bottom_images{s}"][j].tolist(),
                            data[f"bottom_values{s}"][j].tolist(),
                            data[f"bottom_peaks{s}"][j].tolist(),
                        )
                    ),
                }
                if f"labels{s}" in data:
                    scores = data[f"labels{s}"][j]
                    order = np.argsort(-scores, kind="stable")
                    entry["labels"] = [(meta["vocabulary"][c], float(scores[c])) for c in order]
                units[(block, kind, unit)] = entry
        return Atlas(meta["images"], units, Path(folder))
