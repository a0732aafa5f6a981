"""``neuronpath classes``: class-level statistics, similarity and Figures 2, 4 and 5 of a run.

Writes into ``RUN_DIR/classes-METHOD/`` (or ``out``):

* ``utilisation.npz`` -- M_c (classes x layers x n), the raw counts, class ids and names,
  modal neurons;
* ``similarity.csv`` (matrix with names) and ``similar.json`` / ``similar.csv`` (each class's
  top and bottom 5 % most similar classes);
* ``report.json`` -- every number (coherence test, intra-class clustering, ...);
* ``figure4.png/.svg`` (violins), ``similarity.png/.svg`` (clustered heatmap), ``figure5.png/.svg``
  (a class, its most and least similar classes, with thumbnails), ``figure2.png/.svg``
  (top neurons per layer, for a method whose records keep them: ``knowledge``).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..analysis.classes import (
    class_paths,
    cosine_similarity,
    group_coherence,
    group_labels,
    intra_class_clustering,
    kde_mode,
    modal_neurons,
    most_and_least_similar,
    neuron_counts,
    utilisation,
)
from ..analysis.records import layer_distribution, methods_with_top
from ..errors import ImageReadError, InputError, option
from ..io.labels import read_groups
from ..io.sources import Reader
from ..io.store import write_json_atomic
from ..methods import REGISTRY
from ..options import names, nested, setting
from ..report.figures import (
    layer_distribution_figure,
    neuron_violins,
    similarity_heatmap,
    similarity_panel,
)
from .common import run_class_names
from .run import Run

log = logging.getLogger("neuronpath")


def _thumbnails(reader: Reader, images: Sequence[str], count: int, size: int = 96) -> list:
    out = []
    for image in images:
        if len(out) == count:
            break
        try:
            picture = reader.load(image)
        except ImageReadError as error:
            log.warning("thumbnail skipped: %s", error)
            continue
        picture.thumbnail((size, size))
        out.append(picture)
    return out


@dataclass(frozen=True)
class ClassesOptions:
    """The class statistics of one method's paths (``method``), written to ``out`` (default
    ``RUN/classes-METHOD``): Figure 4 for ``plot_classes``, Figure 5 around ``panel_class``
    with ``thumbnails`` per class, the coherence test of a ``groups`` file, readable
    ``class_names``, the run's images where they are now (``data``), the share of most / least
    similar classes listed, the permutations of the coherence test, Figure 4's line at the
    official KDE mode (``kde``) instead of the exact most used neuron, and the seed."""

    method: str | None = setting(None, "whose paths (default: jas, else the run's first method)")
    out: str | None = setting(None, "output folder (default: RUN/classes-METHOD)")
    plot_classes: tuple[str, ...] | None = setting(
        None,
        "comma-separated classes for Figure 4 (default: the first 4)",
        parse=names,
        old_flag="classes",
    )
    panel_class: str | None = setting(None, "class shown in Figure 5 (default: the first)")
    groups: str | None = setting(
        None, "file assigning classes to groups (class<TAB>group) for the coherence test"
    )
    class_names: str | None = setting(None, "file mapping class labels to readable names")
    data: str | None = setting(None, "the run's image folder, if it moved (for thumbnails)")
    fraction: float = setting(0.05, "share of most / least similar classes listed", type=float)
    permutations: int = setting(10000, "permutations of the coherence test", type=int)
    kde: bool = setting(
        False,
        "Figure 4 line at the Gaussian-KDE mode (official) instead of the exact most used neuron",
        flag="kde_mode",
    )
    thumbnails: int = setting(4, "Figure 5's thumbnails per class", type=int)
    seed: int = setting(0, "seed of the coherence test's permutations", type=int)

    def __post_init__(self):
        if not 0 < self.fraction <= 1:
            raise InputError(
                f"{option('fraction')}: expected a share in (0, 1], got {self.fraction}"
            )
        if self.permutations < 0:
            raise InputError(
                f"{option('permutations')}: expected a count >= 0, got {self.permutations}"
            )
        if self.thumbnails < 1:
            raise InputError(
                f"{option('thumbnails')}: expected a count >= 1, got {self.thumbnails}"
            )


@dataclass(frozen=True)
class ClassesCommand:
    """class-level neuron statistics, utilisation matrices, class similarity, Figures 2, 4
    and 5"""

    run: str = setting(None, "run folder written by find", positional=True)
    options: ClassesOptions = nested(ClassesOptions)


def run_classes(run_dir: str | Path, options: ClassesOptions = ClassesOptions()) -> dict:
    """Class-level statistics of a find run's paths (:class:`ClassesOptions`: whose paths,
    where to, the figures' classes, the tests' settings); returns every number."""
    fraction, permutations, kde = options.fraction, options.permutations, options.kde
    thumbnails, seed = options.thumbnails, options.seed
    method, out, plot_classes = options.method, options.out, options.plot_classes
    panel_class, groups, class_names = options.panel_class, options.groups, options.class_names
    data = options.data
    run = Run.of(run_dir)
    method = method or run.default_method
    root = run.reader(data)  # the run's images, checked before anything is written
    records = run.counted_records()
    methods = list(dict.fromkeys(r["method"] for r in records))
    if method not in methods:
        raise InputError(
            f"{option('method')}: the run has no records of {method!r}; it has "
            f"{', '.join(methods) or 'none yet'}"
        )
    widths = run.counted_widths or 1 + max(
        int(np.max(r["path"])) for r in records if r["method"] == method
    )
    cp = class_paths(records, method, widths)
    width = cp.width
    names = cp.names
    if panel_class is not None and panel_class not in names:  # before anything is written
        raise InputError(f"{option('panel_class')}: {panel_class!r} is not a class of the run")
    readable = run_class_names(class_names, run, records) if class_names else {}
    display = [readable.get(n, n) for n in names]
    out = Path(out) if out else run.dir / f"classes-{method}"
    out.mkdir(parents=True, exist_ok=True)

    counts = neuron_counts(cp)
    matrices = utilisation(counts)
    modes = modal_neurons(counts)
    np.savez_compressed(
        out / "utilisation.npz",
        utilisation=matrices.astype(np.float32),
        counts=counts,
        class_ids=np.array(cp.classes),
        class_names=np.array(names),
        modal=modes,
    )

    similarity = cosine_similarity(matrices)
    with open(out / "similarity.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class"] + names)
        for name, row in zip(names, similarity):
            writer.writerow([name] + [f"{v:.6f}" for v in row])
    lists = most_and_least_similar(similarity, fraction)
    similar = {
        names[i]: {k: [[names[j], s] for j, s in entry[k]] for k in ("top", "bottom")}
        for i, entry in enumerate(lists)
    }
    (out / "similar.json").write_text(json.dumps(similar, indent=2))
    with open(out / "similar.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "kind", "rank", "other", "similarity"])
        for name, entry in similar.items():
            for kind in ("top", "bottom"):
                for rank, (other, s) in enumerate(entry[kind], 1):
                    writer.writerow([name, kind, rank, other, f"{s:.6f}"])

    report = {
        "run": str(run.dir),
        "method": method,
        "classes": len(names),
        "layers": cp.num_layers,
        "width": width,
        "widths": cp.layer_widths(),
        "images_per_class": {n: len(cp.paths[c]) for n, c in zip(names, cp.classes)},
        "similarity_fraction": fraction,
        "similarity_offdiagonal_mean": float(similarity[~np.eye(len(names), dtype=bool)].mean())
        if len(names) > 1
        else None,
        "clustering": intra_class_clustering(cp, seed=seed),
    }
    if groups:
        labels = group_labels(names, read_groups(groups))
        report["coherence"] = {
            "groups_file": str(groups),
            "group_sizes": {g: labels.count(g) for g in sorted(set(labels))},
            **group_coherence(similarity, labels, permutations, seed),
        }

    chosen = list(plot_classes) if plot_classes else names[:4]
    unknown = [c for c in chosen if c not in names]
    if unknown:
        raise InputError(
            f"{option('plot_classes')}: {unknown} are not classes of the run (e.g. {names[:3]})"
        )
    first = {n: cp.paths[cp.classes[names.index(n)]][:, :, 0] for n in chosen}
    line = {
        n: (
            np.array([kde_mode(first[n][:, l]) for l in range(cp.num_layers)])
            if kde
            else modes[names.index(n)]
        )
        for n in chosen
    }
    neuron_violins(
        {readable.get(n, n): first[n] for n in chosen},
        {readable.get(n, n): line[n] for n in chosen},
        width,
        out / "figure4",
    )
    similarity_heatmap(
        similarity, display, out / "similarity", title=f"class similarity ({method} paths)"
    )

    anchor = panel_class or names[0]
    i = names.index(anchor)
    rows = [(display[i], None, _thumbnails(root, cp.images[cp.classes[i]], thumbnails))]
    for kind in ("top", "bottom"):
        for j, s in lists[i][kind]:
            rows.append(
                (
                    f"{'most' if kind == 'top' else 'least'} similar:\n{display[j]}",
                    s,
                    _thumbnails(root, cp.images[cp.classes[j]], thumbnails),
                )
            )
    if all(images for _, _, images in rows):
        similarity_panel(rows, out / "figure5", title=f"{display[i]}: most / least similar classes")
    else:
        log.warning(
            "figure 5 skipped: images not found under %s (pass %s)", root, option("data", "DIR")
        )

    for number, with_top in enumerate(methods_with_top(records)):
        what = (
            REGISTRY[with_top].top_neurons if with_top in REGISTRY else ""
        ) or f"top {with_top} neurons"
        distribution = layer_distribution(records, cp.num_layers, with_top)
        report[f"{with_top}_layer_distribution"] = distribution
        layer_distribution_figure(
            distribution,
            out / ("figure2" if number == 0 else f"figure2-{with_top}"),
            title=f"{what} per layer",
            what=what,
        )
    write_json_atomic(out / "report.json", report)
    return report
