"""``neuronpath benchmark RUN --planted PLANTED``: how each path method of a find run made on
a planted model's triggered images recovers the planted path (:mod:`..analysis.recovery`).

Writes ``RUN/benchmark/recovery.csv`` (``method,statistic,layer,value,lo,hi``; ``layer`` is
``all`` for whole-path rows), ``recovery.md`` and ``recovery.json``.  Ranks and ROC areas need
the run's saved scores (``find --save-scores``); without them only hit and pick rates are
reported.  It reads stored files only, in one process, and writes its outputs whole, so
running it again is safe.

A run of SAE latents (``find --units sae`` with FFN-site SAEs of the planted model) is scored
through its dictionaries: a latent stands for the neuron that dominates its decoder direction
(the largest |coordinate|, :func:`latents_standing_for`), so a hit is a path latent standing for
the planted neuron.  ``recovery.json`` then says, per planted layer and distractor, how many
latents stand for the neuron, the best cosine of a decoder direction with it, and the decoder
bias b_dec at the neuron (a neuron on at every token is learnt into b_dec, which is no latent).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..analysis.bootstrap import bootstrap_draws
from ..analysis.recovery import recovery
from ..errors import InputError, RunFormatError, option
from ..io.scores import SavedScores
from ..io.store import write_json_atomic
from ..models.loading import load_run_saes
from ..options import setting
from ..pathformat import decode
from .run import Run

PLANTED = "planted.json"
STATISTICS = {
    "hit": "hit rate: the path's unit is the planted unit",
    "rank": "the planted unit's rank in the method's ranking of its layer (1 = top)",
    "auc": "ROC area of the method's scores against the planted units",
    "pick:register": "the register-like distractor picked",
    "pick:idle": "the idle distractor picked",
}


@dataclass(frozen=True)
class BenchmarkCommand:
    """score each path method of a find run on planted images against the planted path"""

    run: str = setting(
        None, "find run made on PLANTED/images with --model PLANTED", positional=True
    )
    planted: str = setting(None, "the folder neuronpath plant wrote")
    bootstrap: int = setting(1000, "bootstrap resamples for the intervals (0: none)", type=int)
    seed: int = setting(0, "seed of the bootstrap", type=int)


def read_planted(folder: str | Path) -> dict:
    path = Path(folder) / PLANTED
    if not path.is_file():
        raise InputError(
            f"{option('planted')}: {folder} has no {PLANTED}; expected a folder written by "
            f"neuronpath plant"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RunFormatError(f"{path} is damaged ({error}); run neuronpath plant again") from None


def check_run(run: Run, planted: dict, folder: Path) -> None:
    """Refuse a run that was not made with the planted model on its triggered images."""
    images = (folder / planted["images"]["triggered"]).resolve()
    root = Path(run.reader().root).resolve()
    if run.weights_sha256 != planted["weights_sha256"]:
        raise InputError(
            f"{run.dir}: the run's model is not the planted model of {folder} (its weights "
            f"differ); run find --model {folder} --data {images} --save-scores"
        )
    if root != images:
        raise InputError(
            f"{run.dir}: the run was not made on the planted images ({root}); run find "
            f"--model {folder} --data {images} --save-scores"
        )
    if run.units not in ("neurons", "sae"):
        raise InputError(
            f"{run.dir}: a planted path is a neuron path; the run holds {run.units} (expected "
            f"neurons, or SAE latents of its FFN sites)"
        )


def latents_standing_for(w_dec, neuron: int) -> list[int]:
    """The latents whose decoder direction (a row of ``w_dec``, (latents, neurons)) has its
    largest |coordinate| on ``neuron``."""
    return [int(i) for i in (w_dec.abs().argmax(1) == neuron).nonzero().flatten()]


def dictionary_view(run: Run, planted: dict) -> tuple[dict, list, dict]:
    """The planted units and distractors in the run's units (:func:`latents_standing_for` at a
    layer read through an SAE), and per such layer what its dictionary holds of them."""
    units = {int(l): int(n) for l, n in planted["units"].items()}
    distractors = [dict(d) for d in planted["distractors"]]
    saes = load_run_saes(run.dir, run.settings) if run.units == "sae" else {}
    resid = sorted(l for l, sae in saes.items() if sae.site != "ffn")
    if resid:
        raise InputError(
            f"{run.dir}: layer {resid[0]} is read through a residual-stream SAE, whose latents "
            f"stand for no FFN neuron; a planted path is judged through FFN-site SAEs"
        )
    held: dict = {}

    def view(layer: int, neuron: int, name: str):
        if layer not in saes:
            return [neuron]
        w_dec = saes[layer].w_dec.double()
        found = latents_standing_for(w_dec, neuron)
        cosine = w_dec[:, neuron].abs() / w_dec.norm(dim=1)
        held[name] = {
            "layer": layer,
            "neuron": neuron,
            "latents": found,
            "best_cosine": float(cosine.max()),
            "b_dec": float(saes[layer].b_dec[neuron]),
        }
        return found

    for l in sorted(units):
        units[l] = view(l, units[l], f"planted L{l}")
    for d in distractors:
        d["units"] = view(d["layer"], d["neuron"], f"{d['kind']} L{d['layer']}")
    return units, distractors, held


def run_benchmark(
    run_dir: str | Path, planted_dir: str | Path, bootstrap: int = 1000, seed: int = 0
) -> dict:
    """Score every method of ``run_dir`` against the path planted in ``planted_dir``; returns
    ``recovery.json``."""
    if bootstrap < 0:
        raise InputError(f"{option('bootstrap')}: expected resamples >= 0, got {bootstrap}")
    folder = Path(planted_dir)
    planted = read_planted(folder)
    run = Run.open(run_dir)
    check_run(run, planted, folder)
    units, distractors, held = dictionary_view(run, planted)
    widths = run.widths
    kinds, blocks = run.sites
    records = run.records()
    images = sorted({r["image"] for r in records})
    scores = SavedScores(run.dir) if run.saved_scores else None
    results, rows = {}, []
    for method in run.methods:
        by_image = {r["image"]: r for r in records if r["method"] == method}
        ids = [i for i in images if i in by_image]
        paths = np.array(
            [decode(by_image[i]["path"], run.units, kinds, blocks) for i in ids]
        ).reshape(len(ids), run.num_layers, -1)
        draws = (
            bootstrap_draws(len(ids), bootstrap, seed)
            if bootstrap
            else np.zeros((0, len(ids)), int)
        )
        ranked = scores.get(method, ids) if scores is not None else None
        found = recovery(paths, units, distractors, ranked, widths, draws)
        results[method] = found
        rows += [{"method": method, **row} for row in found]
    out = run.dir / "benchmark"
    out.mkdir(exist_ok=True)
    summary = {
        "planted": str(folder),
        "units": planted["units"],
        "distractors": planted["distractors"],
        "images": len(images),
        "bootstrap": bootstrap,
        "scores": scores is not None,
        "statistics": STATISTICS,
        "results": results,
        **({"dictionary": held} if held else {}),
    }
    write_json_atomic(out / "recovery.json", summary)
    with open(out / "recovery.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["method", "statistic", "layer", "value", "lo", "hi"])
        writer.writeheader()
        writer.writerows(rows)
    table = recovery_table(results, units, planted["distractors"])
    (out / "recovery.md").write_text(table + dictionary_lines(held))
    return summary


def dictionary_lines(held: dict) -> str:
    """For a latent run, what each SAE holds of the planted neurons and distractors."""
    if not held:
        return ""
    lines = ["", "Latents standing for each neuron (its largest decoder coordinate):", ""]
    for name, h in held.items():
        lines.append(
            f"- {name} (neuron {h['neuron']}): {len(h['latents'])} latents; the best decoder "
            f"direction's cosine with the neuron {h['best_cosine']:.2f}; the decoder bias "
            f"b_dec there {h['b_dec']:+.2f}"
        )
    return "\n".join(lines) + "\n"


def recovery_table(results: dict, units: dict, distractors: list) -> str:
    """One row per method: whole-path recovery, each planted layer's hit rate, the mean rank
    and pooled ROC area (with saved scores), each distractor's pick rate."""

    def cell(row) -> str:
        if row is None:
            return "–"
        text = f"{row['value']:.2f}"
        return text + (f" [{row['lo']:.2f}, {row['hi']:.2f}]" if row["lo"] is not None else "")

    layers = sorted(units)
    head = (
        ["method", "whole path"]
        + [f"hit L{l}" for l in layers]
        + ["mean rank", "ROC area"]
        + [f"picks {d['kind']} (L{d['layer']})" for d in distractors]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, rows in results.items():
        get = {(r["statistic"], str(r["layer"])): r for r in rows}
        cells = [method, cell(get.get(("hit", "all")))]
        cells += [cell(get.get(("hit", str(l)))) for l in layers]
        cells += [cell(get.get(("rank", "all"))), cell(get.get(("auc", "all")))]
        cells += [cell(get.get((f"pick:{d['kind']}", str(d["layer"])))) for d in distractors]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
