"""``neuronpath report``: one self-contained web page per run.

Reads a find run (or a prune run, whose paths are in ``find/``) and whatever ``evaluate``,
``classes`` and ``prune`` wrote beside it, streams the records once, and runs **one inference
pass** over the run's images that records every layer's FFN activations (batched,
``inference_mode``, resumable: a checkpoint after every batch in ``report/activations/``).  The
pass gives, for the explorer's images, each path neuron's clean activation and its map over the
image (where the adapter states its tokens' layout), and, for the neuron cards (the most chosen
path neurons), their top-activating
images; a second, small pass maps each card neuron on its top images.  No attribution is re-run.
The page's data is built by :mod:`neuronpath.report.data` and written by
:mod:`neuronpath.report.page`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..analysis.summary import summarize
from ..engine.interventions import record_neurons
from ..errors import InputError, RunFormatError, option
from ..io.images import image_batches
from ..io.sources import Reader
from ..io.store import iter_records, reading, store_settings, write_json_atomic
from ..options import nested, setting
from ..report.data import RunIndex, page_data, png, quantised, text, thumbnail
from ..report.page import write_page
from .common import PASS_BATCH, Execution, resolve_device, run_class_names
from .neurons import read_atlas
from .ranks import Ranks, join_ranks, open_store, work_through
from .run import Run

log = logging.getLogger("neuronpath")
CACHE_REMEDY = "delete the page's activations folder (RUN/report/activations): it is made again"


def _map(adapter, site: int, values: torch.Tensor) -> dict | None:
    """A unit's values over site ``site``'s tokens, (tokens,), drawn where its adapter says
    the tokens sit in the image (None where it states no layout)."""
    image_map = adapter.layout(site, values.shape[0]).image_map(values)
    return None if image_map is None else quantised(image_map)


def _evaluation(find_dir: Path) -> dict[str, dict[str, dict]]:
    """{image: {method: {base, remove, enhance}}} from an evaluated run, else {}."""
    folder = find_dir / "evaluation"
    if not (folder / "manifest.json").is_file():
        return {}
    out: dict[str, dict[str, dict]] = {}
    for r in iter_records(folder):
        out.setdefault(r["image"], {})[r["method"]] = {
            "base": r["base_prob"],
            "remove": r.get("remove_prob"),
            "enhance": r.get("enhance_prob"),
        }
    return out


def _activation_pass(
    ranks: Ranks,
    adapter,
    index: RunIndex,
    reader: Reader,
    out: Path,
    top: int,
    execution: Execution,
    identity: dict,
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Pass 1 (resumable): details of the explorer's images, top-activating images of the cards.

    Returns (details by image, top values (cards, top), top image positions (cards, top))."""
    items = [reader.item(i, index.rows[i]["label"]) for i in index.order]
    manifest = {
        "tool": "neuronpath report",
        "settings": identity,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    cache = out / "activations"
    if (
        ranks.main
        and (cache / "manifest.json").is_file()
        and store_settings(cache) != json.loads(json.dumps(identity))
    ):
        shutil.rmtree(cache)  # a cache of another page (other images, cards or method)
    store = open_store(ranks, cache, manifest)
    state_path = store.dir / f"top.rank{ranks.rank}.npz"
    cards = len(index.cards)
    values = np.full((cards, top), -np.inf)
    images = np.full((cards, top), -1, dtype=np.int64)
    if state_path.is_file():
        with reading(state_path, CACHE_REMEDY):
            state = np.load(state_path)
            values, images = state["values"], state["images"]
    position = {image: i for i, image in enumerate(index.order)}
    detail_set = set(index.details)
    pending = [it for it in items if "pass" not in store.done.get(it.id, set())]
    log.info(
        "report: %d images, %d to do in the activation pass -> %s",
        len(items),
        len(pending),
        store.dir,
    )
    card_sites = sorted({site for site, _ in index.cards})

    def handle(batch):
        nonlocal values, images
        if batch.errors:
            raise RunFormatError(f"{batch.errors[0][1]}; pass the run's image folder (data)")
        pixels = batch.pixels.to(adapter.device, adapter.dtype)
        layers = sorted(
            set(card_sites)
            | (
                set(range(adapter.num_layers))
                if detail_set & {it.id for it in batch.items}
                else set()
            )
        )
        with torch.inference_mode(), record_neurons(adapter, layers, all_tokens=True) as acts:
            adapter.logits(pixels)
        pooled = {l: adapter.token_at(l).select(acts[l]).double() for l in layers}  # (B, pos, n)
        if cards:
            batch_values = torch.stack([pooled[l][:, :, j].mean(1) for l, j in index.cards]).cpu()
            positions = torch.tensor([position[it.id] for it in batch.items]).expand(cards, -1)
            merged_v = torch.cat([torch.from_numpy(values), batch_values], dim=1)
            merged_i = torch.cat([torch.from_numpy(images), positions], dim=1)
            order = torch.sort(merged_v, dim=1, descending=True, stable=True).indices[:, :top]
            values = merged_v.gather(1, order).numpy()
            images = merged_i.gather(1, order).numpy()
        records = []
        for b, item in enumerate(batch.items):
            record = {"image": item.id, "method": "pass"}
            if item.id in detail_set:
                record["thumb"] = thumbnail(batch.pixels[b], adapter.preprocess)
                record["paths"] = {}
                for method, path in index.rows[item.id]["paths"].items():
                    act = [float(pooled[site][b, :, j].mean()) for site, j, _ in path]
                    total = [float(pooled[site][b, :, j].sum()) for site, j, _ in path]
                    whole = sum(total)
                    maps = [_map(adapter, site, acts[site][b, :, j]) for site, j, _ in path]
                    record["paths"][method] = {
                        "neurons": [j for _, j, _ in path],
                        "sites": [site for site, _, _ in path],
                        "labels": [label for _, _, label in path],
                        "act": act,
                        "maps": maps,
                        "share": [t / whole if whole else None for t in total],
                    }
            records.append(record)
        tmp = state_path.with_name(f".{state_path.name}.partial")  # not a state until renamed
        with open(tmp, "wb") as handle:
            np.savez(handle, values=values, images=images)
        tmp.replace(state_path)
        store.append(records)

    prep, order = adapter.preprocess, index.order
    work_through(ranks, store, pending, prep, execution, handle, order, "activations", False)
    details = {r["image"]: r for r in iter_records(store.dir) if "paths" in r}
    return details, *_merged_top(store.dir, cards, top)


def _merged_top(folder: Path, cards: int, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's running top images per card (also those of ranks of an earlier, killed
    job), merged: each image once per card, highest first."""
    values = np.full((cards, top), -np.inf)
    images = np.full((cards, top), -1, dtype=np.int64)
    parts = []
    for path in sorted(folder.glob("top.rank*.npz")):
        with reading(path, CACHE_REMEDY):
            parts.append(dict(np.load(path)))
    if not parts:
        return values, images
    with reading(folder, CACHE_REMEDY):
        all_values = np.concatenate([p["values"] for p in parts], axis=1)
        all_images = np.concatenate([p["images"] for p in parts], axis=1)
    for c in range(cards):
        taken = []
        for k in np.argsort(-all_values[c], kind="stable"):
            if all_images[c, k] >= 0 and all_images[c, k] not in taken:
                taken.append(all_images[c, k])
                values[c, len(taken) - 1] = all_values[c, k]
                images[c, len(taken) - 1] = all_images[c, k]
                if len(taken) == top:
                    break
    return values, images


def _card_maps(
    adapter, index: RunIndex, reader: Reader, images: np.ndarray, batch_size: int
) -> tuple[dict, dict, dict]:
    """Pass 2: each card unit's map on each of its top images, their thumbnails, and for a
    head card the head's attention from the readout positions over the keys, where the
    adapter can give attention weights (:meth:`ModelAdapter.attention_weights`)."""
    wanted: dict[str, list[tuple[int, int, int]]] = {}
    for c, (site, unit) in enumerate(index.cards):
        for position in images[c]:
            if position >= 0:
                wanted.setdefault(index.order[position], []).append((c, site, unit))
    head_sites = sorted({s for s, _ in index.cards if adapter.units(s).kind == "head"})
    items = [reader.item(i, index.rows[i]["label"]) for i in wanted]
    maps, thumbs, attention = {}, {}, {}
    for batch in image_batches(items, adapter.preprocess, batch_size):
        pixels = batch.pixels.to(adapter.device, adapter.dtype)
        with torch.inference_mode(), record_neurons(adapter, all_tokens=True) as acts:
            adapter.logits(pixels)
        weights = adapter.attention_weights(pixels, head_sites) if head_sites else {}
        for b, item in enumerate(batch.items):
            thumbs[item.id] = thumbnail(batch.pixels[b], adapter.preprocess)
            for c, site, unit in wanted[item.id]:
                maps[(c, item.id)] = _map(adapter, site, acts[site][b, :, unit])
                if site in weights:
                    queries = adapter.token_at(site).positions(weights[site].shape[-2])
                    pattern = weights[site][b, unit, queries].double().mean(0)
                    attention[(c, item.id)] = _map(adapter, site, pattern)
    return maps, thumbs, attention


def _atlas(find_dir: Path, adapter, index: RunIndex, batch_size: int) -> tuple[dict, dict, str]:
    """The atlas of ``find_dir/neurons`` (``neuronpath neurons``) for the card units: per card
    unit its top and bottom images over the atlas's image set (with the peak token's cell),
    histogram, statistics and text labels; the thumbnails of those images; and a note on the
    atlas (or why there is none)."""
    folder = find_dir / "neurons"
    if not (folder / "atlas.npz").is_file():
        return {}, {}, "no atlas (neuronpath neurons RUN --data DIR adds one)"
    atlas = read_atlas(folder)
    root = atlas.reader()
    by_site = {(entry["site"], unit): entry for (_, _, unit), entry in atlas.units.items()}
    cards, wanted = {}, set()
    for site, unit in index.cards:
        entry = by_site.get((site, unit))
        if entry is None:
            continue
        layout = adapter.layout(site)

        def placed(image, value, peak):
            wanted.add(image)
            return {"image": image, "value": value, "peak": layout.cell(peak)}

        cards[(site, unit)] = {
            "top": [placed(*t) for t in entry["top"]],
            "bottom": [placed(*t) for t in entry["bottom"]],
            "histogram": entry["histogram"],
            "stats": {k: entry[k] for k in ("mean", "min", "max", "active")},
            "labels": entry.get("labels", [])[:5],
        }
    thumbs = {}
    items = [root.item(i) for i in sorted(wanted)]
    for batch in image_batches(items, adapter.preprocess, batch_size):
        for b, item in enumerate(batch.items):
            thumbs[item.id] = thumbnail(batch.pixels[b], adapter.preprocess)
    note = f"atlas over {atlas.images} images of {root}"
    return cards, thumbs, note


def _prune_paths(run_dir: Path, prune: dict) -> Path:
    """The find run holding a prune run's probe paths: its own ``find/``, or the run it reused
    (``--find-run``)."""
    if not prune.get("find_run"):
        raise RunFormatError(
            f"{run_dir}: this prune run has no path method (only random), so "
            f"it has no paths to show"
        )
    for folder in (run_dir / "find", Path(prune["find_run"])):
        if (folder / "manifest.json").is_file():
            return folder
    raise RunFormatError(
        f"{run_dir}: its probe paths were in {prune['find_run']}, which is not there any more"
    )


@dataclass(frozen=True)
class ReportOptions:
    """The page: where it goes (``out``), ``images`` with details, ``cards`` of ``method``'s
    most chosen units each with its ``top`` images, the run's model and images where they are
    now (``model``, ``data``; checked), readable ``class_names``."""

    out: str | None = setting(None, "the page (default: RUN/report/index.html)")
    images: int = setting(200, "images with thumbnails, activations and maps", type=int)
    method: str | None = setting(
        None, "whose paths make the neuron cards (default: jas, else the run's first method)"
    )
    cards: int = setting(48, "neuron cards", type=int)
    top: int = setting(6, "top images per neuron card", type=int)
    model: str | None = setting(None, "the run's model, if it moved (its weights are checked)")
    data: str | None = setting(None, "the run's image folder, if it moved")
    class_names: str | None = setting(None, "file mapping class labels to readable names")


@dataclass(frozen=True)
class ReportCommand:
    """one self-contained web page for a run: overview, path explorer, neuron cards"""

    run: str = setting(None, "run folder written by find (or by prune)", positional=True)
    options: ReportOptions = nested(ReportOptions)
    execution: Execution = nested(Execution, "how it runs", defaults={"batch_size": PASS_BATCH})


def run_report(
    run_dir: str | Path,
    options: ReportOptions = ReportOptions(),
    execution: Execution = Execution.forwards(),
) -> Path | None:
    """Write ``RUN_DIR/report/index.html`` (or ``options.out``) for a find or prune run;
    returns its path (None on the other ranks of a ``torchrun`` job)."""
    out, images, method, cards = options.out, options.images, options.method, options.cards
    top, model, data, class_names = options.top, options.model, options.data, options.class_names
    run_dir = Path(run_dir)
    prune, find_dir = None, run_dir
    if (run_dir / "results.json").is_file() and not (run_dir / "manifest.json").is_file():
        prune = json.loads((run_dir / "results.json").read_text())
        find_dir = _prune_paths(run_dir, prune)
    run = Run.open(find_dir)
    method = method or run.default_method
    for name, value, low in (("images", images, 0), ("cards", cards, 0), ("top", top, 1)):
        if not isinstance(value, int) or value < low:
            raise InputError(f"{option(name)}: expected a count >= {low}, got {value!r}")
    index = RunIndex(run.iter_records(), find_dir, method, images, cards, run.sites)
    rows = list(index.rows.values())
    readable = run_class_names(class_names, run, rows) if class_names else {}
    evaluation = _evaluation(find_dir)
    ranks = join_ranks(resolve_device(execution.device))
    adapter = run.load_model(model, ranks.device)
    root = run.reader(data)
    folder = run_dir / "report"
    identity = {
        "find_settings_sha256": run.settings_sha256,
        "method": method,
        "cards": [list(c) for c in index.cards],
        "top": top,
        "details_sha256": hashlib.sha256("\n".join(index.details).encode()).hexdigest(),
    }
    details, values, positions = _activation_pass(
        ranks, adapter, index, root, folder, top, execution, identity
    )
    if not ranks.main:
        return None
    maps, thumbs, attention = _card_maps(adapter, index, root, positions, execution.batch_size)
    atlas, atlas_thumbs, atlas_note = _atlas(find_dir, adapter, index, execution.batch_size)
    layouts = [adapter.layout(l).describe() for l in range(adapter.num_layers)]
    data_json = page_data(
        index,
        {"layers": run.num_layers, "units": run.units},
        evaluation,
        details,
        values,
        positions,
        maps,
        thumbs,
        method,
        readable,
        layouts,
        attention,
        adapter.attention_note,
        (atlas, atlas_thumbs, atlas_note),
    )
    overview = {
        "facts": run.facts(),
        "title": run.model_id,
        "summary": summarize(index.summary_rows),
        "run": str(run_dir),
        "paths_run": str(find_dir),
        "evaluation": {
            "table": text(find_dir / "evaluation" / "table.md"),
            "figure3": png(find_dir / "evaluation" / "figure3.png"),
        }
        if (find_dir / "evaluation" / "metrics.json").is_file()
        else None,
        "faithfulness": {
            "table": text(find_dir / "evaluation" / "faithfulness.md"),
            "figure": png(find_dir / "evaluation" / "faithfulness.png"),
        }
        if (find_dir / "evaluation" / "faithfulness.json").is_file()
        else None,
        "curves": {
            "table": text(find_dir / "evaluation" / "curves.md"),
            "figure": png(find_dir / "evaluation" / "curves.png"),
        }
        if (find_dir / "evaluation" / "curves.json").is_file()
        else None,
        "classes": {
            name: png(find_dir / f"classes-{method}" / f"{name}.png")
            for name in ("figure4", "similarity", "figure5", "figure2")
        }
        if (find_dir / f"classes-{method}" / "report.json").is_file()
        else None,
        "prune": {
            "table": text(run_dir / "table3.md"),
            "table2": text(run_dir / "table2.md"),
            "figure6": png(run_dir / "figure6.png"),
        }
        if prune
        else None,
        "method": method,
    }
    target = Path(out) if out else folder / "index.html"
    write_page(target, overview, data_json)
    write_json_atomic(
        folder / "report.json",
        {
            "images": len(index.order),
            "details": len(details),
            "cards": len(index.cards),
            "page": str(target),
        },
    )
    return target
