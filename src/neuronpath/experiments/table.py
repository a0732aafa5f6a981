"""``neuronpath table``: merge evaluated runs (one per model) into one Table 1."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError, RunFormatError, option
from ..io.store import read_json
from ..report.tables import write_table


def run_table(
    runs: Sequence[str | Path], out: str | Path, names: Sequence[str] | None = None
) -> list[Path]:
    """Write ``out.md`` and ``out.csv`` from each run's ``evaluation/metrics.json``; columns are
    ``names`` (default: the model ids).  Returns the written paths."""
    names = list(names) if names else [None] * len(runs)
    if len(names) != len(runs):
        raise InputError(f"table: {option('names')} needs one name per run")
    merged = {}
    for run, name in zip(runs, names):
        path = Path(run) / "evaluation" / "metrics.json"
        if not path.is_file():
            raise RunFormatError(
                f"{run}: not evaluated yet (no evaluation/metrics.json); "
                f"run `neuronpath evaluate {run}` first"
            )
        metrics = read_json(path, f"re-run `neuronpath evaluate {run}`", ("model", "methods"))
        merged[name or Path(str(metrics["model"])).name or metrics["model"]] = metrics["methods"]
    return write_table(merged, out)
