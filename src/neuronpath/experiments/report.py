"""``neuronpath report``: one self-contained web page per run.

Reads a find run (or a prune run, whose paths are in ``find/``) and whatever ``evaluate``,
``classes`` and ``prune`` wrote beside it, streams the records once, and runs **one inference
pass** over the run's images that records every layer's FFN activations (batched,
``inference_mode``, resumable: a checkpoint after every batch in ``report/activations/``).  The
pass gives, for the explorer's images, each path neuron's clean activation and its map over the
patch grid, and, for the neuron cards (the most chosen path neurons), their top-activating
images; a second, small pass maps each card neuron on its top images.  No attribution is re-run.
The page is written by :mod:`neuronpath.report.page`.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import logging
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..analysis.summary import summarize
from ..engine.interventions import record_neurons
from ..errors import RunFormatError, option
from ..io.images import ImageItem, image_batches
from ..io.labels import read_class_names
from ..io.store import iter_records, read_manifest, write_json_atomic
from ..report.page import write_page
from .common import load_run_model, resolve_device
from .ranks import Ranks, join_ranks, open_store, work_through

log = logging.getLogger("neuronpath")

THUMB = 112  # thumbnail size, pixels


def _grid(tokens: int) -> tuple[int, int] | None:
    """(prefix tokens, side) of a square patch grid among ``tokens``, None if there is none."""
    side = math.isqrt(tokens)
    prefix = tokens - side * side
    return (prefix, side) if side > 1 and prefix <= 8 else None


def _quantised(values: torch.Tensor) -> dict:
    """A map as bytes 0..255 between its min and max (what the page colours)."""
    values = values.double().flatten()
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) * 255 if hi > lo else torch.zeros_like(values)
    return {"q": scaled.round().to(torch.uint8).tolist(), "lo": lo, "hi": hi}


def _thumbnail(pixels: torch.Tensor, preprocess) -> str:
    """The model's own view of an image (its preprocessed pixels, de-normalised) as a JPEG."""
    from PIL import Image

    x = pixels.double().cpu()
    mean, std = getattr(preprocess, "mean", None), getattr(preprocess, "std", None)
    if mean is not None and std is not None:
        x = x * torch.tensor(std, dtype=x.dtype)[:, None, None] + torch.tensor(mean, dtype=x.dtype)[:, None, None]
    else:
        x = (x - x.amin()) / (x.amax() - x.amin() + 1e-12)
    array = (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    image = Image.fromarray(array).resize((THUMB, THUMB), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _png(path: Path) -> str | None:
    return ("data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
            if path.is_file() else None)


class RunIndex:
    """What the page needs from the records, gathered in one streaming read."""

    def __init__(self, find_dir: Path, method: str, detail_count: int, cards: int):
        self.methods: list[str] = []
        self.order: list[str] = []
        rows: dict[str, dict] = {}
        counts: Counter = Counter()
        by_class: dict[tuple[int, int], Counter] = {}
        summary_rows = []
        for r in iter_records(find_dir):
            if r["method"] not in self.methods:
                self.methods.append(r["method"])
            row = rows.get(r["image"])
            if row is None:
                self.order.append(r["image"])
                row = rows[r["image"]] = {"label": r["label"], "label_name": r.get("label_name"),
                                          "pred": r["pred"], "pred_name": r.get("pred_name"),
                                          "prob": r["prob"], "jas": {}, "paths": {}}
            row["jas"][r["method"]] = r["jas"]
            first = [p[0] if isinstance(p, list) else p for p in r["path"]]
            row["paths"][r["method"]] = first
            if r["method"] == method:
                for layer, neuron in enumerate(first):
                    counts[(layer, neuron)] += 1
                    by_class.setdefault((layer, neuron), Counter())[r["label"]] += 1
            summary_rows.append({k: r[k] for k in ("image", "method", "jas", "pred", "label", "prob")})
        if not rows:
            raise RunFormatError(f"{find_dir}: the run has no records yet")
        if method not in self.methods:
            raise ValueError(f"{option('method')}: the run has no records of {method!r}; it has "
                             f"{', '.join(self.methods)}")
        self.rows, self.counts, self.by_class = rows, counts, by_class
        self.summary = summarize(summary_rows)
        self.details = self.order[:detail_count]
        self.cards = [key for key, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:cards]]
        self.images_with_method = sum(1 for row in rows.values() if method in row["paths"])


def _evaluation(find_dir: Path) -> dict[str, dict[str, dict]]:
    """{image: {method: {base, remove, enhance}}} from an evaluated run, else {}."""
    folder = find_dir / "evaluation"
    if not (folder / "manifest.json").is_file():
        return {}
    out: dict[str, dict[str, dict]] = {}
    for r in iter_records(folder):
        out.setdefault(r["image"], {})[r["method"]] = {
            "base": r["base_prob"], "remove": r.get("remove_prob"), "enhance": r.get("enhance_prob")}
    return out


def _activation_pass(ranks: Ranks, adapter, index: RunIndex, root: Path, out: Path, top: int,
                     batch_size: int, workers: int | None, identity: dict,
                     progress: bool | None) -> tuple[dict, np.ndarray, np.ndarray]:
    """Pass 1 (resumable): details of the explorer's images, top-activating images of the cards.

    Returns (details by image, top values (cards, top), top image positions (cards, top))."""
    items = [ImageItem(i, root / i, index.rows[i]["label"], "") for i in index.order]
    manifest = {"tool": "neuronpath report", "settings": identity,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    cache = out / "activations"
    if ranks.main and (cache / "manifest.json").is_file() and \
            read_manifest(cache).get("settings") != json.loads(json.dumps(identity)):
        shutil.rmtree(cache)  # a cache of another page (other images, cards or method)
    store = open_store(ranks, cache, manifest)
    state_path = store.dir / f"top.rank{ranks.rank}.npz"
    cards = len(index.cards)
    values = np.full((cards, top), -np.inf)
    images = np.full((cards, top), -1, dtype=np.int64)
    if state_path.is_file():
        state = np.load(state_path)
        values, images = state["values"], state["images"]
    position = {image: i for i, image in enumerate(index.order)}
    detail_set = set(index.details)
    pending = [it for it in items if "pass" not in store.done.get(it.id, set())]
    log.info("report: %d images, %d to do in the activation pass -> %s", len(items), len(pending),
             store.dir)
    card_layers = sorted({l for l, _ in index.cards})

    def handle(batch):
        nonlocal values, images
        if batch.errors:
            raise RunFormatError(f"{batch.errors[0][1]}; pass the run's image folder (data)")
        pixels = batch.pixels.to(adapter.device, adapter.dtype)
        layers = sorted(set(card_layers) | (set(range(adapter.num_layers))
                                            if detail_set & {it.id for it in batch.items} else set()))
        with torch.inference_mode(), record_neurons(adapter, layers, all_tokens=True) as acts:
            adapter.logits(pixels)
        pooled = {l: adapter.token.select(acts[l]).double() for l in layers}  # (B, positions, n)
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
                record["thumb"] = _thumbnail(batch.pixels[b], adapter.preprocess)
                record["paths"] = {}
                for method, path in index.rows[item.id]["paths"].items():
                    act = [float(pooled[l][b, :, j].mean()) for l, j in enumerate(path)]
                    total = [float(pooled[l][b, :, j].sum()) for l, j in enumerate(path)]
                    whole = sum(total)
                    maps = []
                    for l, j in enumerate(path):
                        grid = _grid(acts[l].shape[1])
                        maps.append(None if grid is None else _quantised(
                            acts[l][b, grid[0]:, j].reshape(grid[1], grid[1])))
                    record["paths"][method] = {
                        "neurons": path, "act": act, "maps": maps,
                        "share": [t / whole if whole else None for t in total]}
            records.append(record)
        np.savez(state_path.with_name(state_path.name + ".tmp.npz"), values=values, images=images)
        Path(str(state_path) + ".tmp.npz").replace(state_path)
        store.append(records)

    work_through(ranks, store, pending, adapter.preprocess, batch_size, workers, handle,
                 index.order, "neuron activations", progress, skip_unreadable=False)
    details = {r["image"]: r for r in iter_records(store.dir) if "paths" in r}
    return details, *_merged_top(store.dir, cards, top)


def _merged_top(folder: Path, cards: int, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's running top images per card (also those of ranks of an earlier, killed
    job), merged: each image once per card, highest first."""
    values = np.full((cards, top), -np.inf)
    images = np.full((cards, top), -1, dtype=np.int64)
    parts = [np.load(path) for path in sorted(folder.glob("top.rank*.npz"))]
    if not parts:
        return values, images
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


def _card_maps(adapter, index: RunIndex, root: Path, images: np.ndarray,
               batch_size: int) -> tuple[dict, dict]:
    """Pass 2: each card neuron's map on each of its top images, and their thumbnails."""
    wanted: dict[str, list[tuple[int, int, int]]] = {}
    for c, (layer, neuron) in enumerate(index.cards):
        for position in images[c]:
            if position >= 0:
                wanted.setdefault(index.order[position], []).append((c, layer, neuron))
    items = [ImageItem(i, root / i, index.rows[i]["label"], "") for i in wanted]
    maps, thumbs = {}, {}
    for batch in image_batches(items, adapter.preprocess, batch_size):
        pixels = batch.pixels.to(adapter.device, adapter.dtype)
        with torch.inference_mode(), record_neurons(adapter, all_tokens=True) as acts:
            adapter.logits(pixels)
        for b, item in enumerate(batch.items):
            thumbs[item.id] = _thumbnail(batch.pixels[b], adapter.preprocess)
            for c, layer, neuron in wanted[item.id]:
                grid = _grid(acts[layer].shape[1])
                maps[(c, item.id)] = None if grid is None else _quantised(
                    acts[layer][b, grid[0]:, neuron].reshape(grid[1], grid[1]))
    return maps, thumbs


def _prune_paths(run_dir: Path, prune: dict) -> Path:
    """The find run holding a prune run's probe paths: its own ``find/``, or the run it reused
    (``--find-run``)."""
    if not prune.get("find_run"):
        raise RunFormatError(f"{run_dir}: this prune run has no path method (only random), so "
                             f"it has no paths to show")
    for folder in (run_dir / "find", Path(prune["find_run"])):
        if (folder / "manifest.json").is_file():
            return folder
    raise RunFormatError(f"{run_dir}: its probe paths were in {prune['find_run']}, which is "
                         f"not there any more")


def run_report(run_dir: str | Path, *, out: str | Path | None = None, images: int = 200,
               method: str = "jas", cards: int = 48, top: int = 6, batch_size: int = 16,
               device: str = "auto", model: str | None = None, data: str | Path | None = None,
               class_names: str | Path | None = None, workers: int | None = None,
               progress: bool | None = None) -> Path | None:
    """Write ``RUN_DIR/report/index.html`` (or ``out``) for a find or prune run; returns its
    path (None on the other ranks of a ``torchrun`` job).  ``class_names``: a file of lines
    ``label<TAB>readable name`` for the page."""
    run_dir = Path(run_dir)
    prune, find_dir = None, run_dir
    if (run_dir / "results.json").is_file() and not (run_dir / "manifest.json").is_file():
        prune = json.loads((run_dir / "results.json").read_text())
        find_dir = _prune_paths(run_dir, prune)
    manifest = read_manifest(find_dir)
    if images < 0 or cards < 0 or top < 1:
        raise ValueError(f"images, cards: expected counts >= 0 and top >= 1, got {images}, "
                         f"{cards}, {top}")
    index = RunIndex(find_dir, method, images, cards)
    evaluation = _evaluation(find_dir)
    ranks = join_ranks(resolve_device(device))
    adapter = load_run_model(find_dir, manifest, model, ranks.device)
    root = Path(data or manifest["settings"]["data"]).expanduser()
    folder = run_dir / "report"
    identity = {"find_settings_sha256": hashlib.sha256(json.dumps(
        manifest["settings"], sort_keys=True).encode()).hexdigest(), "method": method,
        "cards": [list(c) for c in index.cards], "top": top,
        "details_sha256": hashlib.sha256("\n".join(index.details).encode()).hexdigest()}
    details, values, positions = _activation_pass(ranks, adapter, index, root, folder, top,
                                                  batch_size, workers, identity, progress)
    if not ranks.main:
        return None
    maps, thumbs = _card_maps(adapter, index, root, positions, batch_size)
    readable = read_class_names(class_names) if class_names else {}
    data_json = _page_data(index, manifest, evaluation, details, values, positions, maps, thumbs,
                           method, readable)
    overview = {"manifest": manifest, "summary": index.summary, "run": str(run_dir),
                "paths_run": str(find_dir),
                "evaluation": {"table": _text(find_dir / "evaluation" / "table.md"),
                               "figure3": _png(find_dir / "evaluation" / "figure3.png")}
                if (find_dir / "evaluation" / "metrics.json").is_file() else None,
                "classes": {name: _png(find_dir / f"classes-{method}" / f"{name}.png")
                            for name in ("figure4", "similarity", "figure5", "figure2")}
                if (find_dir / f"classes-{method}" / "report.json").is_file() else None,
                "prune": {"table": _text(run_dir / "table3.md"),
                          "figure6": _png(run_dir / "figure6.png")} if prune else None,
                "method": method}
    target = Path(out) if out else folder / "index.html"
    write_page(target, overview, data_json)
    write_json_atomic(folder / "report.json", {"images": len(index.order), "details": len(details),
                                               "cards": len(index.cards), "page": str(target)})
    return target


def _text(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def _page_data(index: RunIndex, manifest: dict, evaluation: dict, details: dict,
               values: np.ndarray, positions: np.ndarray, maps: dict, thumbs: dict,
               method: str, readable: dict[str, str]) -> dict:
    """The JSON the page's script renders: every image as columns, the explorer's details,
    the neuron cards."""
    classes = sorted({row["label"] for row in index.rows.values()})
    names = {row["label"]: readable.get(row["label_name"], row["label_name"] or str(row["label"]))
             for row in index.rows.values()}
    order = index.order
    rows = {"id": order,
            "label": [classes.index(index.rows[i]["label"]) for i in order],
            "pred": [index.rows[i]["pred"] for i in order],
            "predName": [readable.get(index.rows[i]["pred_name"], index.rows[i]["pred_name"]
                                      or str(index.rows[i]["pred"])) for i in order],
            "prob": [round(index.rows[i]["prob"], 5) for i in order],
            "jas": {m: [index.rows[i]["jas"].get(m) for i in order] for m in index.methods},
            "removed": {m: [_removal(evaluation.get(i, {}).get(m)) for i in order]
                        for m in index.methods} if evaluation else None}
    detail = {}
    for image, record in details.items():
        detail[image] = {"thumb": record["thumb"], "paths": record["paths"],
                         "eval": evaluation.get(image)}
    cards = []
    total = index.images_with_method
    class_sizes = Counter(row["label"] for row in index.rows.values())
    for c, (layer, neuron) in enumerate(index.cards):
        count = index.counts[(layer, neuron)]
        classes_top = index.by_class[(layer, neuron)].most_common(5)
        tops = []
        for value, position in zip(values[c], positions[c]):
            if position < 0:
                continue
            image = order[position]
            tops.append({"image": image, "value": float(value), "map": maps.get((c, image)),
                         "label": names[index.rows[image]["label"]]})
        cards.append({"layer": layer, "neuron": neuron, "count": count, "share": count / total,
                      "classes": [[names[k], v, v / class_sizes[k]] for k, v in classes_top],
                      "top": tops})
    return {"method": method, "methods": index.methods, "classes": [names[k] for k in classes],
            "layers": manifest["model"]["num_layers"], "rows": rows, "details": detail,
            "cards": cards, "thumbs": thumbs,
            "capped": {"images": len(order), "details": len(detail),
                       "neurons": len(index.counts), "cards": len(cards)}}


def _removal(entry: dict | None) -> float | None:
    """Removing the whole path: P_remove / P - 1 of the ground-truth probability."""
    if not entry or entry.get("remove") is None or not entry["base"]:
        return None
    return round(entry["remove"] / entry["base"] - 1, 5)
