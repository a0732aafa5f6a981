"""Figures, drawn with matplotlib's object API (no global pyplot state, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

OP_TITLES = {"remove": "Removal (neurons x 0)", "enhance": "Enhancement (neurons x 2)"}


def probability_deviation_figure(deviations: Mapping[str, Mapping[str, np.ndarray]],
                                 out_stem: str | Path, title: str = "",
                                 unit: str = "class means") -> list[Path]:
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
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        figure.savefig(path, dpi=150)
    return paths
