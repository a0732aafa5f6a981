"""``neuronpath summary``: per-method statistics of a find run, as text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..analysis.records import layer_distribution, methods_with_top
from ..analysis.summary import summarize
from ..methods import REGISTRY, method_title
from ..options import setting
from ..report.text import format_summary
from .run import Run


@dataclass(frozen=True)
class SummaryCommand:
    """print per-method statistics of a run"""

    run: str = setting(None, "run folder written by find", positional=True)


def summary_text(run_dir: str | Path) -> str:
    """The summary table of a run, and the per-layer counts of the top neurons of methods that
    keep them (Fig. 2's data for ``knowledge``)."""
    run = Run.open(run_dir)
    records = run.records()
    summary = summarize(records)
    lines = [format_summary(summary, {m: method_title(m) for m in summary})]
    units = run.units
    for method in methods_with_top(records):
        layers = run.num_layers
        what = REGISTRY[method].top_neurons if method in REGISTRY else f"top {method} neurons"
        plural = {"sae": "units (latents and neurons)"}.get(units, units)
        what = what.replace("neurons", plural) if units != "neurons" else what
        lines.append(
            f"{what or f'top {method} neurons'} per layer (Fig. 2): "
            + " ".join(str(c) for c in layer_distribution(records, layers, method))
        )
    return "\n".join(lines)
