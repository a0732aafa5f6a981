"""``neuronpath summary``: per-method statistics of a find run, as text."""

from __future__ import annotations

from pathlib import Path

from ..analysis.records import layer_distribution
from ..analysis.summary import summarize
from ..io.store import read_manifest, read_records
from ..report.text import format_summary


def summary_text(run_dir: str | Path) -> str:
    """The summary table of a run, and Fig. 2's per-layer counts when it has ``knowledge``."""
    records = read_records(run_dir)
    lines = [format_summary(summarize(records))]
    if any(r["method"] == "knowledge" for r in records):
        layers = read_manifest(run_dir)["model"]["num_layers"]
        lines.append("top-5 knowledge neurons per layer (Fig. 2): "
                     + " ".join(str(c) for c in layer_distribution(records, layers)))
    return "\n".join(lines)
