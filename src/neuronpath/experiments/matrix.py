"""``neuronpath matrix``: the selection x judging matrix -- does a method's lead over a baseline
survive a change of criterion?

Reads evaluated find runs (``evaluate --ablation zero,mean,resample ...``: the faithfulness
study's records) and, for each method of each run against a ``--baseline`` method of the same
run, on the images both have, writes the difference of normalised faithfulness

    d_necessity   = f(method's path ablated) - f(baseline's path ablated)   (lower: more needed)
    d_sufficiency = f(only method's path kept) - f(only baseline's kept)    (higher: more enough)

for every judging ablation and metric the study holds, each with a paired bootstrap 95 %
interval over images (the same resampled images for both methods; f is a ratio of means, so
each draw recomputes it).  A row's *selection* is the criterion the method chose its path by,
as the find run recorded it (:mod:`neuronpath.engine.ablation`); a cell judged by that same
criterion is marked ``own`` -- it says how well the method did what it was asked, not whether
its path is the model's.  Runs of the same images selected with different criteria (``find
--causal-ablation zero`` beside the default) make the matrix's rows.

Writes ``OUT/matrix.json``, ``OUT/matrix.csv`` and ``OUT/matrix.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..analysis.bootstrap import bootstrap_draws, percentile_interval
from ..analysis.faithfulness import METRICS, curve, metric_arrays
from ..analysis.records import group_by
from ..engine.ablation import ABLATIONS, own_rule
from ..errors import InputError, RunFormatError, option
from ..io.store import read_records, write_json_atomic
from ..options import names, setting
from ..report.tables import write_matrix_table
from .run import Run

STATISTICS = ("necessity", "sufficiency")


@dataclass(frozen=True)
class MatrixCommand:
    """the selection x judging matrix: each method's necessity and sufficiency minus a
    baseline's, under every ablation and metric of evaluated runs, its own criterion marked"""

    runs: tuple[str, ...] = setting((), "evaluated find run folders", positional=True, nargs="+")
    baseline: str = setting("knowledge", "the method every other is compared with (in each run)")
    methods: tuple[str, ...] | None = setting(
        None,
        "comma-separated methods to compare (default: every method of each run that chose its "
        "path by an intervention)",
        parse=names,
    )
    bootstrap: int = setting(
        1000, "bootstrap resamples of the images for the intervals (0: none)", type=int
    )
    seed: int = setting(0, "seed of the bootstrap resamples", type=int)
    out: str | None = setting(None, "output folder", required=True)


def paired_difference(
    rows: Sequence[dict], base: Sequence[dict], metric: str, draws: np.ndarray
) -> dict[str, dict]:
    """d_necessity and d_sufficiency (module docstring) of ``rows`` against ``base`` (one
    record each per image, in the same image order) for ``metric``: ``{statistic: {value, lo,
    hi}}`` with percentile intervals over ``draws`` (resampled image indices; none: no
    interval)."""
    ours, theirs = metric_arrays(list(rows), metric), metric_arrays(list(base), metric)

    def value(index, statistic):
        def end(values):
            return curve(
                statistic, values[statistic][index], values["clean"][index],
                values["ablated"][index],
            )[-1]  # fmt: skip

        return float(end(ours) - end(theirs))

    out = {}
    everything = np.arange(len(rows))
    for statistic in STATISTICS:
        interval = (
            percentile_interval(np.array([value(d, statistic) for d in draws]))
            if len(draws)
            else None
        )
        out[statistic] = {
            "value": value(everything, statistic),
            "lo": interval[0] if interval else None,
            "hi": interval[1] if interval else None,
        }
    return out


def _study(run: Run) -> dict[str, dict[str, dict[str, dict]]]:
    """``{ablation: {method: {image: record}}}`` of a run's faithfulness study."""
    folder = run.dir / "evaluation" / "faithfulness"
    found = {}
    for ablation in ABLATIONS:
        if (folder / ablation).is_dir():
            by_method = group_by(read_records(folder / ablation))
            found[ablation] = {m: {r["image"]: r for r in rs} for m, rs in by_method.items()}
    if not found:
        raise RunFormatError(
            f"{run.dir}: no faithfulness study (evaluation/faithfulness/); run `neuronpath "
            f"evaluate {run.dir} {option('ablation')} zero,mean,resample "
            f"{option('reference', 'DIR')}` first"
        )
    return found


def run_matrix(
    runs: Sequence[str | Path],
    out: str | Path,
    baseline: str = "knowledge",
    methods: Sequence[str] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """The matrix (module docstring) of ``runs``; writes it under ``out`` and returns it."""
    if not runs:
        raise InputError("matrix: expected at least one evaluated find run (RUN ...)")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise InputError(f"{option('bootstrap')}: expected an integer >= 0, got {bootstrap!r}")
    if out is None:
        raise InputError(f"{option('out')}: expected an output folder")
    rows = []
    for folder in runs:
        run = Run.open(folder)
        if baseline not in run.methods:
            raise InputError(
                f"{option('baseline')}: {baseline!r} is not a method of {run.dir} (it has "
                f"{', '.join(run.methods)}); find it in the same run to compare with it"
            )
        selection = run.selection
        own = own_rule(selection)
        wanted = set(methods) if methods else set(selection)
        chosen = [m for m in run.methods if m != baseline and m in wanted]
        missing = [m for m in (methods or []) if m not in run.methods]
        if missing:
            raise InputError(
                f"{option('methods')}: {missing[0]!r} is not a method of {run.dir} (it has "
                f"{', '.join(run.methods)})"
            )
        for ablation, by_method in _study(run).items():
            base = by_method.get(baseline, {})
            for method in chosen:
                ours = by_method.get(method, {})
                images = sorted(set(ours) & set(base))
                if not images:
                    continue
                draws = (
                    bootstrap_draws(len(images), bootstrap, seed)
                    if bootstrap
                    else np.zeros((0, len(images)), int)
                )
                for metric in [m for m in METRICS if m in ours[images[0]]]:
                    rows.append(
                        {
                            "run": str(run.dir),
                            "method": method,
                            "selected": selection.get(method),
                            "judged": ablation,
                            "metric": metric,
                            "own": own(method, ablation, metric),
                            "images": len(images),
                            **paired_difference(
                                [ours[i] for i in images], [base[i] for i in images], metric, draws
                            ),
                        }
                    )
    if not rows:
        raise InputError(
            f"matrix: no method to compare with {baseline} in {', '.join(map(str, runs))} "
            f"(name them with {option('methods')})"
        )
    result = {"baseline": baseline, "bootstrap": bootstrap, "seed": seed, "rows": rows}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "matrix.json", result)
    write_matrix_table(result, out / "matrix")
    return result
