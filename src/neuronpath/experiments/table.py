"""``neuronpath table``: merge evaluated runs (one per model) into one Table 1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, RunFormatError, option
from ..io.store import read_json
from ..options import names, setting
from ..report.tables import write_table


@dataclass(frozen=True)
class TableCommand:
    """merge evaluated runs (one per model) into one Table 1"""

    runs: tuple[str, ...] = setting((), "evaluated run folders", positional=True, nargs="+")
    out: str | None = setting(None, "output stem: writes STEM.md and STEM.csv", required=True)
    names: tuple[str, ...] | None = setting(
        None, "comma-separated column names (default: model ids)", parse=names
    )


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
