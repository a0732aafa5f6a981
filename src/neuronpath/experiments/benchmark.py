"""``neuronpath benchmark RUN [RUN ...]``: how each path method of find runs made on planted
models' triggered images recovers the planted chain (:mod:`..analysis.recovery`).

Each run is scored against its plant (``--planted``, or the folder the run's model was read
from): ``RUN/benchmark/recovery.csv`` (``method,statistic,layer,value,lo,hi``; ``layer`` is
``all`` for whole-path and per-family rows), ``recovery.md`` and ``recovery.json``.  With
several runs (one per plant), ``--out DIR`` also gets the across-plant summary
(``plants.csv``: per method and statistic the mean over plants with a 95 % t-interval over
plants, and for rates the Wilson interval of the images pooled over plants; ``plants.md``).
Ranks and ROC areas need the run's saved scores (``find --save-scores``).  It reads stored
files only, in one process, and writes its outputs whole, so running it again is safe.

A run of SAE latents (``find --units sae`` with FFN-site SAEs of the planted model) is scored
through its dictionaries: a latent stands for the neuron that dominates its decoder direction
(the largest |coordinate|, :func:`latents_standing_for`), so a hit is a path latent standing for
the planted neuron.  ``recovery.json`` then says, per planted layer and distractor, how many
latents stand for the neuron, the best cosine of a decoder direction with it, and the decoder
bias b_dec at the neuron (a neuron on at every token is learnt into b_dec, which is no latent).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..analysis.bootstrap import bootstrap_draws
from ..analysis.recovery import recovery
from ..errors import InputError, option
from ..io.planted import PLANTED, check_planted_units, read_planted
from ..io.scores import SavedScores
from ..io.store import write_json_atomic
from ..models.loading import load_run_saes
from ..options import setting
from ..pathformat import decode
from .run import Run

STATISTICS = {
    "hit": "hit rate: the path's unit is the planted unit (Wilson 95 % interval)",
    "rank": "the planted unit's rank in the method's ranking of its layer (1 = top)",
    "auc": "ROC area of the method's scores against the planted unit within its layer "
    "(all: the mean of the layers' areas)",
    "pick:idle": "the idle distractor (loud, output-free) picked",
    "pick:constant": "the constant distractor (large, constant, no effect) picked",
    "pick:echo": "the echo distractor (moves with the trigger, no effect) picked",
    "pick:register": "the register picked (ambiguous: its status depends on the ablation)",
}
FAMILY_ORDER = ("idle", "constant", "echo", "register")
RANGES = {"hit": (0.0, 1.0), "pick": (0.0, 1.0), "auc": (0.0, 1.0), "rank": (1.0, np.inf)}


@dataclass(frozen=True)
class BenchmarkCommand:
    """score each path method of find runs on planted images against the planted chain"""

    runs: tuple[str, ...] = setting(
        (),
        "find runs made on PLANTED/images with --model PLANTED (one per plant)",
        positional=True,
        nargs="+",
    )
    planted: str | None = setting(
        None, "the folder neuronpath plant wrote (default: each run's model folder)"
    )
    out: str | None = setting(
        None, "with several runs: the folder of the across-plant summary (plants.csv, plants.md)"
    )
    bootstrap: int = setting(1000, "bootstrap resamples for the intervals (0: none)", type=int)
    seed: int = setting(0, "seed of the bootstrap", type=int)


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


def planted_folder(run: Run, planted_dir: str | Path | None) -> Path:
    """The plant a run is judged against: ``planted_dir``, or the folder its model was read
    from."""
    if planted_dir is not None:
        return Path(planted_dir)
    folder = Path(run.model_id).expanduser()
    if not (folder / PLANTED).is_file():
        raise InputError(
            f"{option('planted')}: {run.dir} was not made with a planted model "
            f"({run.model_id} has no {PLANTED}); expected --planted FOLDER written by "
            f"neuronpath plant"
        )
    return folder


def run_benchmarks(runs, planted_dir=None, out=None, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Score every run of ``runs`` against its plant (:func:`run_benchmark`) and, with several
    runs, write the across-plant summary into ``out``; returns {"runs": [...], "summary": ...}."""
    runs = list(runs)
    if not runs:
        raise InputError("benchmark: expected at least one find run (RUN ...)")
    if len(runs) > 1 and planted_dir is not None:
        raise InputError(
            f"{option('planted')}: several runs are judged each against its own model's plant; "
            f"leave --planted out"
        )
    if len(runs) > 1 and out is None:
        raise InputError(f"{option('out')}: expected the across-plant summary's folder")
    each = [run_benchmark(r, planted_dir, bootstrap, seed) for r in runs]
    summary = None
    if len(runs) > 1:
        summary = across_plants(each, Path(out))
    return {"runs": each, "summary": summary}


T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}  # fmt: skip


def t_quantile(df: int) -> float:
    """Student's t 97.5 % quantile for ``df`` degrees of freedom (a table; 1.96 past 30)."""
    if df <= 0:
        return float("nan")
    known = [k for k in T975 if k <= df]
    return T975[max(known)] if df <= 30 else 1.959963984540054


def across_plants(each: list[dict], out: Path) -> dict:
    """Per method and statistic of the whole chain (``layer`` all), the mean over plants with
    a 95 % t-interval over plants, and for rates the Wilson interval of the pooled images;
    written to ``out/plants.csv`` and ``out/plants.md``."""
    from ..analysis.recovery import wilson_interval

    methods = list(dict.fromkeys(m for e in each for m in e["results"]))
    rows = []
    for method in methods:
        per = [
            {(r["statistic"], str(r["layer"])): r for r in e["results"][method]}
            for e in each
            if method in e["results"]
        ]
        keys = [k for k in per[0] if k[1] == "all" and all(k in p for p in per)]
        for key in keys:
            values = np.array([p[key]["value"] for p in per])
            n = len(values)
            half = t_quantile(n - 1) * values.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
            mean = float(values.mean())
            row = {
                "method": method,
                "statistic": key[0],
                "plants": n,
                "value": mean,
                "lo": mean - half,
                "hi": mean + half,
                "lo_images": None,
                "hi_images": None,
            }
            low, high = RANGES.get(key[0].split(":")[0], (-np.inf, np.inf))
            row["lo"], row["hi"] = max(low, row["lo"]), min(high, row["hi"])  # as the statistic
            if key[0] == "hit" or key[0].startswith("pick:"):
                counts = [(p[key]["value"], p[key]["n"]) for p in per]
                pooled = wilson_interval(sum(v * m for v, m in counts), sum(m for _, m in counts))
                row["lo_images"], row["hi_images"] = pooled
            rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    fields = ["method", "statistic", "plants", "value", "lo", "hi", "lo_images", "hi_images"]
    with open(out / "plants.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        writer.writerows(rows)
    (out / "plants.md").write_text(plants_table(rows))
    summary = {"plants": [e["planted"] for e in each], "rows": rows}
    write_json_atomic(out / "plants.json", summary)
    return summary


def plants_table(rows: list[dict]) -> str:
    """One row per method: each whole-chain statistic as mean [interval over plants]."""
    stats = list(dict.fromkeys(r["statistic"] for r in rows))
    names = {"hit": "whole chain", "rank": "mean rank", "auc": "ROC area (mean of layers)"}
    head = ["method", "plants", *(names.get(s, s.replace(":", "s ")) for s in stats)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in dict.fromkeys(r["method"] for r in rows):
        got = {r["statistic"]: r for r in rows if r["method"] == method}
        cells = [method, str(next(iter(got.values()))["plants"])]
        for stat in stats:
            r = got.get(stat)
            cells.append("–" if r is None else f"{r['value']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_benchmark(
    run_dir: str | Path, planted_dir: str | Path | None = None, bootstrap: int = 1000,
    seed: int = 0,
) -> dict:  # fmt: skip
    """Score every method of ``run_dir`` against the chain planted in ``planted_dir`` (default:
    the run's model folder); returns ``recovery.json``."""
    if bootstrap < 0:
        raise InputError(f"{option('bootstrap')}: expected resamples >= 0, got {bootstrap}")
    run = Run.open(run_dir)
    folder = planted_folder(run, planted_dir)
    planted = read_planted(folder)
    if run.widths:
        check_planted_units(planted, folder, run.widths)
    check_run(run, planted, folder)
    units, distractors, held = dictionary_view(run, planted)
    widths = run.widths
    kinds, blocks = run.sites
    records = run.records()
    by_image: dict[str, dict] = {}
    for r in records:
        by_image.setdefault(r["image"], {})[r["method"]] = r
    run.check_complete(by_image)
    images = sorted(by_image)
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
        "run": str(run.dir),
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
        fields = ["method", "statistic", "layer", "value", "lo", "hi"]
        writer = csv.DictWriter(handle, fields, extrasaction="ignore")
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
    and mean within-layer ROC area (with saved scores), each distractor family's pick rate
    (over its layers; the register apart, as ambiguous)."""

    def cell(row) -> str:
        if row is None:
            return "–"
        text = f"{row['value']:.2f}"
        return text + (f" [{row['lo']:.2f}, {row['hi']:.2f}]" if row["lo"] is not None else "")

    layers = sorted(units)
    kinds = [k for k in FAMILY_ORDER if any(d["kind"] == k for d in distractors)]
    kinds += sorted({d["kind"] for d in distractors} - set(kinds))
    where = {k: [d["layer"] for d in distractors if d["kind"] == k] for k in kinds}

    def title(kind):
        at = ",".join(f"L{l}" for l in where[kind])
        return f"picks {kind} ({at}{', ambiguous' if kind == 'register' else ''})"

    head = (
        ["method", "whole path"]
        + [f"hit L{l}" for l in layers]
        + ["mean rank", "ROC area (mean of layers)"]
        + [title(k) for k in kinds]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, rows in results.items():
        get = {(r["statistic"], str(r["layer"])): r for r in rows}
        cells = [method, cell(get.get(("hit", "all")))]
        cells += [cell(get.get(("hit", str(l)))) for l in layers]
        cells += [cell(get.get(("rank", "all"))), cell(get.get(("auc", "all")))]
        for k in kinds:
            cells.append(cell(get.get(("pick:" + k, "all"))))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
