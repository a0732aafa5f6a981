"""Figures, drawn with matplotlib's object API (no global pyplot state, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

OP_TITLES = {"remove": "Removal (neurons x 0)", "enhance": "Enhancement (neurons x 2)"}


def probability_deviation_figure(
    deviations: Mapping[str, Mapping[str, np.ndarray]],
    out_stem: str | Path,
    title: str = "",
    unit: str = "class means",
) -> list[Path]:
    """Fig. 3: box plots of dP/P x 100 % per method, one panel per operation.

    ``deviations[op][method]`` holds the values to box (per-class means of dP/P in the
    official figure).  Writes ``out_stem.png`` and ``out_stem.svg``; returns their paths.
    """
    from matplotlib.figure import Figure

    ops = list(deviations)
    figure = Figure(figsize=(4.2 * len(ops), 3.8), layout="constrained")
    axes = figure.subplots(1, len(ops), squeeze=False)[0]
    for ax, op in zip(axes, ops):
        methods = list(deviations[op])
        values = [100 * np.asarray(deviations[op][m], dtype=float) for m in methods]
        ax.boxplot(values, tick_labels=methods, showfliers=True, widths=0.6)
        ax.axhline(0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(OP_TITLES.get(op, op))
        ax.set_ylabel(f"(P_edit / P - 1) x 100 %, {unit}")
        ax.tick_params(axis="x", labelrotation=20)
    if title:
        figure.suptitle(title)
    return _save(figure, out_stem)


def _save(figure, out_stem) -> list[Path]:
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        figure.savefig(path, dpi=150)
    return paths


def neuron_violins(
    paths_by_class: Mapping[str, np.ndarray],
    modes: Mapping[str, np.ndarray],
    width: int,
    out_stem: str | Path,
    columns: int = 2,
) -> list[Path]:
    """Fig. 4: per class, a violin of the selected neuron index at each layer, the most used
    neuron per layer joined by a dotted line.  ``paths_by_class[name]``: (images, layers);
    ``modes[name]``: (layers,).  A layer where every image picks the same neuron (no spread
    to estimate a density from) is drawn as a short bar."""
    from matplotlib.figure import Figure

    names = list(paths_by_class)
    rows = -(-len(names) // columns)
    figure = Figure(figsize=(5.0 * min(columns, len(names)), 3.0 * rows), layout="constrained")
    axes = figure.subplots(rows, min(columns, len(names)), squeeze=False).ravel()
    for ax, name in zip(axes, names):
        values = np.asarray(paths_by_class[name])
        layers = np.arange(values.shape[1])
        spread = [l for l in layers if np.ptp(values[:, l]) > 0]
        if spread:
            parts = ax.violinplot(
                [values[:, l] for l in spread], positions=spread, widths=0.8, showextrema=False
            )
            for body in parts["bodies"]:
                body.set_alpha(0.5)
        for l in layers:
            if l not in spread:
                ax.hlines(values[0, l], l - 0.3, l + 0.3, color="C0", linewidth=2)
        ax.plot(
            layers,
            modes[name],
            linestyle=":",
            marker="o",
            markersize=3,
            color="C3",
            label="most used neuron",
        )
        ax.set_title(name)
        ax.set_xlabel("layer")
        ax.set_ylabel("neuron index")
        ax.set_ylim(-0.02 * width, 1.02 * width)
        ax.set_xticks(layers)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    axes[0].legend(loc="upper right", fontsize=7)
    return _save(figure, out_stem)


def similarity_heatmap(
    similarity: np.ndarray, names: Sequence[str], out_stem: str | Path, title: str = ""
) -> list[Path]:
    """Cosine similarity of utilisation matrices, classes ordered by average-linkage
    hierarchical clustering on 1 - similarity."""
    from matplotlib.figure import Figure
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    distance = np.clip(1 - similarity, 0, None)
    np.fill_diagonal(distance, 0)
    order = (
        leaves_list(linkage(squareform(distance, checks=False), "average"))
        if len(names) > 2
        else np.arange(len(names))
    )
    size = min(2.5 + 0.32 * len(names), 14)  # ImageNet's 1000 classes: a 14-inch map
    figure = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = figure.subplots()
    shown = similarity[np.ix_(order, order)].astype(float)
    np.fill_diagonal(shown, np.nan)  # self-similarity (1) would flatten the colour scale
    image = ax.imshow(shown, cmap="viridis", interpolation="nearest")
    if len(names) <= 60:
        ax.set_xticks(range(len(names)), [names[i] for i in order], rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), [names[i] for i in order], fontsize=7)
    else:
        ax.set_xlabel(f"{len(names)} classes, clustered order")
    figure.colorbar(image, ax=ax, label="cosine similarity of M_c (diagonal blank)")
    if title:
        ax.set_title(title)
    return _save(figure, out_stem)


def similarity_panel(
    rows: Sequence[tuple[str, float | None, Sequence]], out_stem: str | Path, title: str = ""
) -> list[Path]:
    """Fig. 5-style panel: one row per class (the class, its most and least similar classes),
    each with a few thumbnails (PIL images) and its similarity to the first class."""
    from matplotlib.figure import Figure

    per_row = max(len(images) for _, _, images in rows)
    figure = Figure(figsize=(1.6 * per_row + 1.5, 1.7 * len(rows)), layout="constrained")
    axes = figure.subplots(len(rows), per_row, squeeze=False)
    for r, (name, sim, images) in enumerate(rows):
        for c in range(per_row):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(images[c])
            else:
                ax.set_visible(False)
        label = name if sim is None else f"{name}\nsim {sim:.3f}"
        axes[r, 0].set_ylabel(label, fontsize=8)
    if title:
        figure.suptitle(title)
    return _save(figure, out_stem)


def layer_distribution_figure(
    counts: Sequence[int],
    out_stem: str | Path,
    title: str = "",
    what: str = "top-5 knowledge neurons",
) -> list[Path]:
    """Fig. 2: how many of the per-image top neurons (``what``) fall in each layer."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 3.2), layout="constrained")
    ax = figure.subplots()
    total = max(sum(counts), 1)
    ax.bar(range(len(counts)), [100 * c / total for c in counts], color="C2")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"share of {what} (%)")
    ax.set_xticks(range(len(counts)))
    if title:
        ax.set_title(title)
    return _save(figure, out_stem)


def pruning_figure(report: Mapping, out_stem: str | Path, depth: int) -> list[Path]:
    """Fig. 6: metric vs kept neurons per layer, one line per mask share, one column per
    method; the unpruned model dotted.  Rows: mean ground-truth probability (what the paper's
    "accuracy" is) and top-1 accuracy."""
    from matplotlib.figure import Figure

    methods, keep, masks = report["methods"], report["keep"], report["mask"]
    results, base = report["results"], report["results"]["unpruned"]
    metrics = (("mean_label_prob", "mean ground-truth probability"), ("accuracy", "top-1 accuracy"))
    figure = Figure(figsize=(3.6 * len(methods), 5.6), layout="constrained")
    axes = figure.subplots(len(metrics), len(methods), squeeze=False, sharey="row")
    for col, method in enumerate(methods):
        for row, (key, label) in enumerate(metrics):
            ax = axes[row, col]
            for p in masks:
                ax.plot(
                    keep,
                    [results[f"{method}|{t}|{p}|{depth}"][key] for t in keep],
                    marker="o",
                    markersize=3,
                    label=f"mask {p:g}",
                )
            ax.axhline(base[key], color="black", linestyle=":", linewidth=1, label="unpruned")
            ax.set_xscale("log")
            ax.set_xticks(keep, [str(t) for t in keep])
            ax.set_xlabel("kept neurons per layer")
            if col == 0:
                ax.set_ylabel(label)
            if row == 0:
                ax.set_title(f"{method} (first {depth} layers)")
    axes[0, 0].legend(fontsize=7)
    return _save(figure, out_stem)


def causal_layer_figure(
    metrics: Mapping[str, Mapping], out_stem: str | Path, title: str = ""
) -> list[Path]:
    """Mean dP/P of removing one layer's path neuron alone, per layer, one line per method."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = figure.subplots()
    for method, m in metrics.items():
        values = 100 * np.asarray(m["each_removed_per_layer"])
        ax.plot(range(len(values)), values, marker="o", markersize=3, label=method)
    ax.axhline(0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("layer whose path neuron is removed alone")
    ax.set_ylabel("mean (P_edit / P - 1) x 100 %")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return _save(figure, out_stem)


def faithfulness_figure(
    curves: Mapping[str, Mapping[str, Mapping[str, Mapping]]], out_stem: str | Path
) -> list[Path]:
    """Normalised faithfulness over k, one panel per (metric, ablation): per method the
    necessity curve (the first k path neurons ablated; solid) and the sufficiency curve (only
    the first k kept; dashed).  ``curves[metric][ablation][method]`` holds both."""
    from matplotlib.figure import Figure

    metrics = list(curves)
    ablations = list(dict.fromkeys(a for m in metrics for a in curves[m]))
    figure = Figure(figsize=(3.6 * len(ablations), 3.0 * len(metrics) + 0.4), layout="constrained")
    axes = figure.subplots(len(metrics), len(ablations), squeeze=False)
    for r, metric in enumerate(metrics):
        for c, ablation in enumerate(ablations):
            ax = axes[r][c]
            for i, (method, both) in enumerate(curves[metric].get(ablation, {}).items()):
                k = np.arange(len(both["necessity"]))
                ax.plot(
                    k, both["necessity"], color=f"C{i}", marker="o", markersize=2.5, label=method
                )
                ax.plot(
                    k,
                    both["sufficiency"],
                    color=f"C{i}",
                    linestyle="--",
                    marker="o",
                    markersize=2.5,
                )
            ax.axhline(0, color="grey", linewidth=0.6, linestyle=":")
            ax.axhline(1, color="grey", linewidth=0.6, linestyle=":")
            ax.set_title(f"{ablation} ablation, {metric}", fontsize=9)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_xlabel("k path neurons (order: largest single effect first)", fontsize=8)
            if c == 0:
                ax.set_ylabel("normalised faithfulness f(k)")
    axes[0][0].legend(fontsize=7, title="solid: ablated; dashed: only kept", title_fontsize=7)
    return _save(figure, out_stem)


def atlas_figure(
    rows: Sequence[Mapping], out_stem: str | Path, grid: tuple[int, int] | None = None
) -> list[Path]:
    """The atlas of some units, one row each: its top images then its bottom images (the model's
    view of each, (H, W, 3) in [0, 1]), the patch where the unit peaks boxed (``grid``: the
    layout's rows and columns), and the value under each.  ``rows[i]``: ``{"name", "top":
    [(picture, value, cell)], "bottom": [...], "labels": str}``."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    width = max(len(r["top"]) + len(r["bottom"]) for r in rows) + 1
    figure = Figure(figsize=(1.05 * width, 1.25 * len(rows)))
    axes = figure.subplots(len(rows), width, squeeze=False)
    figure.subplots_adjust(left=0.01, right=0.99, top=0.97, bottom=0.01, wspace=0.08, hspace=0.3)
    for ax_row, row in zip(axes, rows):
        ax_row[0].text(
            0.5,
            0.5,
            row["name"] + ("\n" + row["labels"] if row.get("labels") else ""),
            ha="center",
            va="center",
            fontsize=8,
            wrap=True,
        )
        cells = [("top", *t) for t in row["top"]] + [("bottom", *b) for b in row["bottom"]]
        for ax, (end, picture, value, cell) in zip(ax_row[1:], cells):
            ax.imshow(picture, interpolation="nearest")
            if cell is not None and grid is not None:
                h, w = picture.shape[0] / grid[0], picture.shape[1] / grid[1]
                ax.add_patch(
                    Rectangle(
                        (cell[1] * w - 0.5, cell[0] * h - 0.5),
                        w,
                        h,
                        fill=False,
                        edgecolor="red",
                        linewidth=1.2,
                    )
                )
            ax.set_title(
                f"{'bottom ' if end == 'bottom' else ''}{value:.2f}",
                fontsize=7,
                pad=2,
                color="#a03030" if end == "bottom" else "black",
            )
        for ax in ax_row:
            ax.set_axis_off()
    return _save(figure, out_stem)


def curves_figure(results: Mapping, ks, out_stem: str | Path) -> list[Path]:
    """MIB's faithfulness curves: f(k) over k (log scale), one panel per (metric, ablation),
    one line per method with its 95 % band.  ``results[method][ablation][metric]`` holds
    ``f``, ``f_lo``, ``f_hi``, ``cpr``, ``cmd``."""
    from matplotlib.figure import Figure

    pairs = list(
        dict.fromkeys(
            (metric, ablation)
            for by_ablation in results.values()
            for ablation, by_metric in by_ablation.items()
            for metric in by_metric
        )
    )
    figure = Figure(figsize=(3.8 * len(pairs), 3.2), layout="constrained")
    axes = figure.subplots(1, len(pairs), squeeze=False)[0]
    for ax, (metric, ablation) in zip(axes, pairs):
        for i, (method, by_ablation) in enumerate(results.items()):
            stats = by_ablation.get(ablation, {}).get(metric)
            if stats is None:
                continue
            label = f"{method} (CPR {stats['cpr']['value']:.2f}, CMD {stats['cmd']['value']:.2f})"
            ax.plot(ks, stats["f"], color=f"C{i}", marker="o", markersize=2.5, label=label)
            if stats["f_lo"][0] is not None:
                ax.fill_between(ks, stats["f_lo"], stats["f_hi"], color=f"C{i}", alpha=0.15)
        ax.axhline(1, color="grey", linewidth=0.6, linestyle=":")
        ax.axhline(0, color="grey", linewidth=0.6, linestyle=":")
        ax.set_xscale("log")
        ax.set_xlabel("k: % of each layer's units kept (the method's top)", fontsize=8)
        ax.set_ylabel("f(k)")
        ax.set_title(f"{ablation} ablation, {metric}", fontsize=9)
        ax.legend(fontsize=6)
    return _save(figure, out_stem)
