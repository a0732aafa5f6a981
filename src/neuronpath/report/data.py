"""The data of a run's page: what the records say (:class:`RunIndex`), thumbnails and maps as
the page draws them, and the JSON the page's script renders (:func:`page_data`).  Pure: the
records and the activation pass's results come in, nothing is read or run here."""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, RunFormatError, option
from ..pathformat import record_units, site_units

THUMB = 112  # thumbnail size, pixels


def quantised(values: torch.Tensor) -> dict:
    """A (height, width) map as bytes 0..255 between its min and max (what the page colours),
    row by row."""
    height, width = values.shape
    values = values.double().flatten()
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) * 255 if hi > lo else torch.zeros_like(values)
    return {
        "q": scaled.round().to(torch.uint8).tolist(),
        "lo": lo,
        "hi": hi,
        "h": height,
        "w": width,
    }


def thumbnail(pixels: torch.Tensor, preprocess) -> str:
    """The model's own view of an image (its preprocessed pixels, de-normalised) as a JPEG."""
    from PIL import Image

    x = pixels.double().cpu()
    mean, std = getattr(preprocess, "mean", None), getattr(preprocess, "std", None)
    if mean is not None and std is not None:
        x = (
            x * torch.tensor(std, dtype=x.dtype)[:, None, None]
            + torch.tensor(mean, dtype=x.dtype)[:, None, None]
        )
    else:
        x = (x - x.amin()) / (x.amax() - x.amin() + 1e-12)
    array = (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    image = Image.fromarray(array).resize((THUMB, THUMB), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def png(path: Path) -> str | None:
    """A PNG file as a data URL (None if it is not there)."""
    return (
        "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        if path.is_file()
        else None
    )


def text(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


class RunIndex:
    """What the page needs from a run's records, gathered in one streaming read: the images in
    order, their labels, predictions, each method's path -- per layer ``(site, unit, label)``
    of its first unit (:func:`neuronpath.pathformat.site_units`; ``sites``: the run's unit kind
    and block of every site) -- and final JAS, and how often each unit is on ``method``'s paths
    (the ``cards`` most frequent get a card, the first ``detail_count`` images their details)."""

    def __init__(
        self,
        records: Iterable[dict],
        where: Path,
        method: str,
        detail_count: int,
        cards: int,
        sites: tuple[list[str], list[int]],
    ):
        kinds, blocks = sites
        self.site_blocks, self.site_kinds = list(blocks), list(kinds)
        self.methods: list[str] = []
        self.order: list[str] = []
        rows: dict[str, dict] = {}
        counts: Counter = Counter()
        by_class: dict[tuple[int, int], Counter] = {}
        self.labels: dict[tuple[int, int], str] = {}
        self.summary_rows = []
        for r in records:
            if r["method"] not in self.methods:
                self.methods.append(r["method"])
            row = rows.get(r["image"])
            if row is None:
                self.order.append(r["image"])
                row = rows[r["image"]] = {
                    "label": r["label"],
                    "label_name": r.get("label_name"),
                    "pred": r["pred"],
                    "pred_name": r.get("pred_name"),
                    "prob": r["prob"],
                    "jas": {},
                    "paths": {},
                }
            row["jas"][r["method"]] = r["jas"]
            first = site_units(r["path"], record_units(r), kinds, blocks)
            row["paths"][r["method"]] = first
            if r["method"] == method:
                for site, unit, label in first:
                    counts[(site, unit)] += 1
                    by_class.setdefault((site, unit), Counter())[r["label"]] += 1
                    self.labels[(site, unit)] = label
            self.summary_rows.append(
                {k: r[k] for k in ("image", "method", "jas", "pred", "label", "prob")}
            )
        if not rows:
            raise RunFormatError(f"{where}: the run has no records yet")
        if method not in self.methods:
            raise InputError(
                f"{option('method')}: the run has no records of {method!r}; it has "
                f"{', '.join(self.methods)}"
            )
        self.rows, self.counts, self.by_class = rows, counts, by_class
        self.details = self.order[:detail_count]
        self.cards = [
            key for key, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:cards]
        ]
        self.images_with_method = sum(1 for row in rows.values() if method in row["paths"])


def page_data(
    index: RunIndex,
    shape: dict,
    evaluation: dict,
    details: dict,
    values: np.ndarray,
    positions: np.ndarray,
    maps: dict,
    thumbs: dict,
    method: str,
    readable: dict[str, str],
    layouts: list[dict],
    attention: dict | None = None,
    attention_note: str | None = None,
    atlas: tuple[dict, dict, str] | None = None,
) -> dict:
    """The JSON the page's script renders (``shape``: the run's ``layers`` and ``units``):
    every image as columns, the explorer's details,
    the unit cards (a head's with its attention pattern from the readout positions, where
    ``attention`` has it, else ``attention_note`` says why not), and each site's token layout
    (why a site has no maps); ``atlas``: each card unit's atlas (top and bottom images over the
    atlas's image set, histogram, statistics, text labels), those images' thumbnails, and a
    note."""
    attention = attention or {}
    atlas_cards, atlas_thumbs, atlas_note = atlas or ({}, {}, None)
    using: dict[tuple[int, int], list[str]] = {key: [] for key in index.cards}
    for image in index.order:  # the first 60 images whose paths use each card's unit
        for site, unit, _ in index.rows[image]["paths"].get(method, []):
            if len(using.get((site, unit), ())) < 60 and (site, unit) in using:
                using[(site, unit)].append(image)
    classes = sorted({row["label"] for row in index.rows.values()})
    names = {
        row["label"]: readable.get(row["label_name"], row["label_name"] or str(row["label"]))
        for row in index.rows.values()
    }
    order = index.order
    rows = {
        "id": order,
        "label": [classes.index(index.rows[i]["label"]) for i in order],
        "pred": [index.rows[i]["pred"] for i in order],
        "predName": [
            readable.get(
                index.rows[i]["pred_name"], index.rows[i]["pred_name"] or str(index.rows[i]["pred"])
            )
            for i in order
        ],
        "prob": [round(index.rows[i]["prob"], 5) for i in order],
        "jas": {m: [index.rows[i]["jas"].get(m) for i in order] for m in index.methods},
        "removed": {
            m: [removal(evaluation.get(i, {}).get(m)) for i in order] for m in index.methods
        }
        if evaluation
        else None,
    }
    detail = {}
    for image, record in details.items():
        detail[image] = {
            "thumb": record["thumb"],
            "paths": record["paths"],
            "eval": evaluation.get(image),
        }
    cards = []
    total = index.images_with_method
    class_sizes = Counter(row["label"] for row in index.rows.values())
    for c, (site, unit) in enumerate(index.cards):
        count = index.counts[(site, unit)]
        classes_top = index.by_class[(site, unit)].most_common(5)
        tops = []
        for value, position in zip(values[c], positions[c]):
            if position < 0:
                continue
            image = order[position]
            tops.append(
                {
                    "image": image,
                    "value": float(value),
                    "map": maps.get((c, image)),
                    "attention": attention.get((c, image)),
                    "label": names[index.rows[image]["label"]],
                }
            )
        cards.append(
            {
                "layer": index.site_blocks[site],
                "neuron": unit,
                "kind": index.site_kinds[site],
                "site": site,
                "name": index.labels[(site, unit)],
                "count": count,
                "atlas": atlas_cards.get((site, unit)),
                "images": using.get((site, unit), []),
                "share": count / total,
                "classes": [[names[k], v, v / class_sizes[k]] for k, v in classes_top],
                "top": tops,
            }
        )
    return {
        "method": method,
        "methods": index.methods,
        "classes": [names[k] for k in classes],
        "layers": shape["layers"],
        "rows": rows,
        "details": detail,
        "cards": cards,
        "thumbs": thumbs,
        "layouts": layouts,
        "units": shape["units"],
        "attentionNote": attention_note,
        "atlasThumbs": atlas_thumbs,
        "atlasNote": atlas_note,
        "capped": {
            "images": len(order),
            "details": len(detail),
            "neurons": len(index.counts),
            "cards": len(cards),
        },
    }


def removal(entry: dict | None) -> float | None:
    """Removing the whole path: P_remove / P - 1 of the ground-truth probability."""
    if not entry or entry.get("remove") is None or not entry["base"]:
        return None
    return round(entry["remove"] / entry["base"] - 1, 5)
