"""Tables as Markdown (for reading) and CSV (long format, for tools): the paper's Table 1
(rows = metric x method, columns = models, one run per model) and Table 3 (pruning depth
ablation)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

ROWS = (
    ("JAS", "mean_jas", None),
    ("Removal accuracy deviation (pp)", "accuracy_deviation", "remove"),
    ("Enhancement accuracy deviation (pp)", "accuracy_deviation", "enhance"),
    ("Removal dP/P, mean of class means (%)", "dp_class_mean", "remove"),
    ("Enhancement dP/P, mean of class means (%)", "dp_class_mean", "enhance"),
)


def write_markdown_and_csv(
    out_stem: str | Path, lines: list[str], rows: list[dict], fields: list[str] | None = None
) -> list[Path]:
    """Write ``out_stem.md`` (the Markdown ``lines``) and ``out_stem.csv`` (``rows``, columns
    ``fields`` or the first row's keys); returns their paths."""
    stem = Path(out_stem)
    md, csv_path = stem.with_suffix(".md"), stem.with_suffix(".csv")
    md.write_text("\n".join(lines) + "\n")
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fields or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return [md, csv_path]


def _cell(metrics: Mapping, key: str, op: str | None) -> tuple[float | None, list | None]:
    if op is None:
        return metrics.get(key), None
    if op not in metrics:
        return None, None
    scale = 100 if key.startswith("dp") else 1
    value, ci = metrics[op].get(key), metrics[op].get(f"{key}_ci")
    return (
        None if value is None else value * scale,
        None if ci is None else [c * scale for c in ci],
    )


def table_rows(runs: Mapping[str, Mapping[str, Mapping]]) -> list[dict]:
    """Long format: one row per (metric, method, model) with value and CI."""
    rows = []
    methods = list(dict.fromkeys(m for metrics in runs.values() for m in metrics))
    for label, key, op in ROWS:
        for method in methods:
            for model, metrics in runs.items():
                if method not in metrics:
                    continue
                value, ci = _cell(metrics[method], key, op)
                rows.append(
                    {
                        "metric": label,
                        "method": method,
                        "model": model,
                        "value": value,
                        "ci_low": ci[0] if ci else None,
                        "ci_high": ci[1] if ci else None,
                    }
                )
    return rows


def _fmt(row: dict | None) -> str:
    if (
        row is None
        or row["value"] is None
        or (isinstance(row["value"], float) and math.isnan(row["value"]))
    ):
        return "–"
    text = f"{row['value']:.4f}" if row["metric"] == "JAS" else f"{row['value']:+.2f}"
    if row["ci_low"] is not None:
        text += f" [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"
    return text


def write_table(runs: Mapping[str, Mapping[str, Mapping]], out_stem: str | Path) -> list[Path]:
    """Write ``out_stem.md`` (Table-1 layout) and ``out_stem.csv`` (long format)."""
    rows = table_rows(runs)
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    models = list(runs)
    index = {(r["metric"], r["method"], r["model"]): r for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| metric | method | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for label, _, _ in ROWS:
        for method in methods:
            cells = [_fmt(index.get((label, method, m))) for m in models]
            if any(c != "–" for c in cells):
                lines.append(f"| {label} | {method} | " + " | ".join(cells) + " |")
    intervals = any(r["ci_low"] is not None for r in rows)
    note = (
        "Cells: value [bootstrap 95 % CI over images]."
        if intervals
        else "Cells: value (no intervals: evaluated with --bootstrap 0)."
    )
    return write_markdown_and_csv(
        stem,
        lines + ["", note],
        rows,
        ["metric", "method", "model", "value", "ci_low", "ci_high"],
    )


def write_depth_table(report: Mapping, out_stem: str | Path, t: int, p: float) -> list[Path]:
    """Table 3: depth (rows) x method (columns), top-1 accuracy and mean GT probability."""
    methods, depths, results = report["methods"], report["depth"], report["results"]
    base = results["unpruned"]
    lines = [
        f"Keep {t} neurons per layer, mask {p:g} of the others, in the first d layers "
        f"({report['test_images']} test images). Cells: top-1 accuracy / mean ground-truth "
        f"probability. Unpruned: {base['accuracy']:.3f} / {base['mean_label_prob']:.3f}.",
        "",
        "| depth d | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    rows = []
    for d in depths:
        cells = []
        for m in methods:
            r = results[f"{m}|{t}|{p}|{d}"]
            cells.append(f"{r['accuracy']:.3f} / {r['mean_label_prob']:.3f}")
            rows.append(
                {
                    "depth": d,
                    "method": m,
                    "keep": t,
                    "mask": p,
                    "accuracy": r["accuracy"],
                    "mean_label_prob": r["mean_label_prob"],
                    **{
                        f"{k}_ci_{end}": (r[f"{k}_ci"] or [None, None])[i]
                        for k in ("accuracy", "mean_label_prob")
                        for i, end in enumerate(("low", "high"))
                    },
                }
            )
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    paired = report.get("comparisons", {})
    if paired:
        lines += [
            "",
            "Paired differences on the same test images, JAS keep minus the other "
            "(bootstrap 95 % CI):",
            "",
            "| depth d | compared with | top-1 accuracy | mean GT probability |",
            "|---|---|---|---|",
        ]
        for key, c in paired.items():
            ours, other = key.split(" - ")
            d = ours.rsplit("|", 1)[1]
            name = other.split("|")[0]

            def fmt(v, ci):
                return f"{v:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else f"{v:+.3f}"

            lines.append(
                f"| {d} | {name} | {fmt(c['accuracy'], c['accuracy_ci'])} | "
                f"{fmt(c['mean_label_prob'], c['mean_label_prob_ci'])} |"
            )
    return write_markdown_and_csv(out_stem, lines, rows)


def write_causal_table(metrics: Mapping[str, Mapping], out_stem: str | Path) -> list[Path]:
    """The causal checks per method: dP/P (%) removing the path, removing one layer's path
    neuron (mean over layers; the strongest layer), keeping only the path; top-1 then."""

    def pct(value, ci=None):
        text = f"{100 * value:+.1f} %"
        return text + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "")

    lines = [
        "| method | remove the path | remove one neuron (mean over layers) | strongest "
        "single layer | keep only the path | top-1, only the path |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for method, m in metrics.items():
        lines.append(
            f"| {method} | {pct(m['path_removed'], m['path_removed_ci'])} | "
            f"{pct(m['each_removed_mean'], m['each_removed_mean_ci'])} | "
            f"layer {m['strongest_layer']}: {pct(m['strongest_layer_dp'])} | "
            f"{pct(m['only_path'], m['only_path_ci'])} | "
            f"{m['only_path_accuracy']:.1%} (clean {m['accuracy']:.1%}) |"
        )
        rows.append(
            {
                "method": method,
                **{k: v for k, v in m.items() if not isinstance(v, list) or k.endswith("_ci")},
            }
        )
    lines += [
        "",
        "Cells: mean dP/P = P_edit / P - 1 of the ground-truth probability over images "
        "[bootstrap 95 % CI].",
    ]
    flat = [
        {k: (";".join(f"{x:.6g}" for x in v) if isinstance(v, list) else v) for k, v in row.items()}
        for row in rows
    ]
    return write_markdown_and_csv(out_stem, lines, flat)


def value_cell(s: Mapping, sign: str = "+") -> str:
    """A statistic ``{value, lo, hi}`` as ``+0.123 [+0.100, +0.150]`` (``sign=""``: unsigned),
    the interval left out where there is none."""
    text = f"{s['value']:{sign}.3f}"
    return text + (f" [{s['lo']:{sign}.3f}, {s['hi']:{sign}.3f}]" if s["lo"] is not None else "")


OWN_MARK = " (own criterion)"
OWN_NOTE = (
    "judged by the criterion the method selected its path on (the same ablation, resample "
    "counting as mean, and the same metric family: prob and logit are one), not evidence for it"
)
FAITHFULNESS_COLUMNS = (
    ("removal", "removal"),
    ("enhancement", "enhancement"),
    ("necessity", "f, path ablated"),
    ("necessity_area", "necessity area"),
    ("sufficiency", "f, only path kept"),
    ("sufficiency_area", "sufficiency area"),
)


def write_faithfulness_table(
    results: Mapping,
    metrics,
    out_stem: str | Path,
    matches: Mapping | None = None,
    own: Sequence[Mapping] = (),
) -> list[Path]:
    """``out_stem.csv``: one row per method x ablation x metric x statistic with its 95 %
    interval and whether the method selected its path by this criterion (``own``: the rows
    that are), and each matched control's achieved match (metric ``match``: quantiles of
    partner level / path level, the share below half, no interval); ``out_stem.md``: per
    metric, one row per method and ablation (its own criterion marked), then the achieved
    match."""
    owned = {(r["method"], r["ablation"], r["metric"]) for r in own}

    rows, lines = [], []
    for metric in metrics:
        lines += [
            f"**{metric}** (removal and enhancement: "
            + (
                "mean P'/P - 1"
                if metric == "prob"
                else "mean KL(clean || edited)"
                if metric == "kl"
                else "mean change"
            )
            + "; f: normalised faithfulness, "
            "1 = the clean model, 0 = every unit of the path's layers ablated)",
            "",
            "| method | ablation | " + " | ".join(t for _, t in FAITHFULNESS_COLUMNS) + " |",
            "|---|---|" + "---|" * len(FAITHFULNESS_COLUMNS),
        ]
        for method, by_ablation in results.items():
            for ablation, by_metric in by_ablation.items():
                stats = by_metric.get(metric)
                if stats is None:
                    continue
                mine = (method, ablation, metric) in owned
                lines.append(
                    f"| {method}{OWN_MARK if mine else ''} | {ablation} | "
                    + " | ".join(value_cell(stats[key]) for key, _ in FAITHFULNESS_COLUMNS)
                    + " |"
                )
                rows += [
                    {
                        "method": method,
                        "ablation": ablation,
                        "metric": metric,
                        "statistic": key,
                        **stats[key],
                        "own_criterion": mine,
                    }
                    for key, _ in FAITHFULNESS_COLUMNS
                ]
        lines.append("")
    if owned:
        lines += [
            f"{OWN_MARK.strip()}: {OWN_NOTE}; left out of the leaders in faithfulness.json",
            "",
        ]
    if matches:
        lines += [
            "**Achieved match** of the matched controls: partner level / path level over the "
            "pairs whose path neuron is active (level > 0), its quantiles, the share of "
            "partners below half the path neuron's level, and the median |difference| of levels "
            "over all pairs",
            "",
            "| control | ablation | pairs | 5 % | 25 % | median | 75 % | 95 % | below half "
            "| median abs. difference |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        keys = ["ratio_q05", "ratio_q25", "ratio_q50", "ratio_q75", "ratio_q95", "below_half"]
        for control, by_ablation in matches.items():
            for ablation, match in by_ablation.items():

                def number(key):
                    value = match[key]
                    return "–" if value is None else f"{value:.3f}"

                lines.append(
                    f"| {control} | {ablation} | {match['active_pairs']} of {match['pairs']} | "
                    + " | ".join(number(k) for k in keys + ["median_abs_difference"])
                    + " |"
                )
                rows += [
                    {
                        "method": control,
                        "ablation": ablation,
                        "metric": "match",
                        "statistic": key,
                        "value": match[key],
                        "lo": None,
                        "hi": None,
                    }
                    for key in ["pairs", "active_pairs", *keys, "median_abs_difference"]
                ]
        lines.append("")
    return write_markdown_and_csv(
        out_stem,
        lines,
        rows,
        ["method", "ablation", "metric", "statistic", "value", "lo", "hi", "own_criterion"],
    )


def write_table2(report: Mapping, out_stem: str | Path, t: int, p: float) -> list[Path]:
    """Table 2: every keep rule (path methods, trained baselines such as ViT-Slim, controls)
    and the unpruned model at one setting -- t kept neurons per layer, a share p of the others
    masked, every layer pruned -- with top-1 accuracy and mean ground-truth probability (the
    paper's "accuracy") and their bootstrap 95 % intervals."""
    depth, results = max(report["depth"]), report["results"]

    def cell(value, ci):
        return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    lines = [
        f"Keep {t} neurons per layer, mask {p:g} of the others, all {depth} layers pruned "
        f"({report['test_images']} test images; mean GT probability is the paper's "
        f'"accuracy").',
        "",
        "| keep rule | mean GT probability | top-1 accuracy |",
        "|---|---|---|",
    ]
    rows = []
    for rule in [*report["methods"], "unpruned"]:
        r = results["unpruned" if rule == "unpruned" else f"{rule}|{t}|{p}|{depth}"]
        lines.append(
            f"| {rule} | {cell(r['mean_label_prob'], r['mean_label_prob_ci'])} | "
            f"{cell(r['accuracy'], r['accuracy_ci'])} |"
        )
        rows.append(
            {
                "rule": rule,
                "keep": t,
                "mask": p,
                "depth": depth,
                **{
                    f"{k}{s}": v
                    for k in ("mean_label_prob", "accuracy")
                    for s, v in (
                        ("", r[k]),
                        ("_ci_low", (r[f"{k}_ci"] or [None])[0]),
                        ("_ci_high", (r[f"{k}_ci"] or [None, None])[1]),
                    )
                },
            }
        )
    return write_markdown_and_csv(out_stem, lines, rows)


def write_curve_tables(
    results: Mapping, ks, folder: str | Path, own: Sequence[Mapping] = ()
) -> list[Path]:
    """``curves.csv`` (``method,ablation,metric,ranking,k,f,lo,hi``; ranking ``signed`` or
    ``absolute``), ``cpr_cmd.csv``
    (``method,ablation,metric,statistic,value,lo,hi,own_criterion``) and ``curves.md`` (CPR
    and CMD per method, ablation and metric, with 95 % intervals; ``own``: the rows judged by
    the criterion the method selected on, marked) from :func:`write_curves`' results."""
    folder = Path(folder)
    owned = {(r["method"], r["ablation"], r["metric"]) for r in own}

    curve_rows, area_rows = [], []
    lines = [
        "CPR: area under f(k); CMD: area under |1 - f(k)|; x = k / 100 (the fraction of each "
        f"layer's units kept, k in {', '.join(f'{k:g}' for k in ks)} %), trapezoid rule. "
        "Higher CPR and lower CMD are better. As MIB does, CPR ranks each layer's units by "
        "the signed score and CMD by |score|.",
        "",
        f"| method | ablation | metric | images | CPR | CMD | f at k = {ks[0]:g} % |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, by_ablation in results.items():
        for ablation, by_metric in by_ablation.items():
            for metric, stats in by_metric.items():
                for ranking, key in (("signed", "f"), ("absolute", "f_abs")):
                    for k, f, lo, hi in zip(ks, stats[key], stats[f"{key}_lo"], stats[f"{key}_hi"]):
                        curve_rows.append(
                            {
                                "method": method,
                                "ablation": ablation,
                                "metric": metric,
                                "ranking": ranking,
                                "k": k,
                                "f": f,
                                "lo": lo,
                                "hi": hi,
                            }
                        )
                mine = (method, ablation, metric) in owned
                for name in ("cpr", "cmd"):
                    area_rows.append(
                        {
                            "method": method,
                            "ablation": ablation,
                            "metric": metric,
                            "statistic": name,
                            **stats[name],
                            "own_criterion": mine,
                        }
                    )
                first = {"value": stats["f"][0], "lo": stats["f_lo"][0], "hi": stats["f_hi"][0]}
                lines.append(
                    f"| {method}{OWN_MARK if mine else ''} | {ablation} | {metric} | "
                    f"{stats['images']} | "
                    + " | ".join(value_cell(c, "") for c in (stats["cpr"], stats["cmd"], first))
                    + " |"
                )
    if owned:
        lines += ["", f"{OWN_MARK.strip()}: {OWN_NOTE}"]
    written = write_markdown_and_csv(folder / "curves", lines, curve_rows)
    area = folder / "cpr_cmd.csv"
    with open(area, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(area_rows[0]))
        writer.writeheader()
        writer.writerows(area_rows)
    return [*written, area]


def _selected(criterion: dict | None) -> str:
    if not criterion:
        return "not by an intervention"
    return f"{criterion['ablation']} ablation, {criterion['statistic']}, {criterion['metric']}"


def write_matrix_table(result: Mapping, stem: str | Path) -> list[Path]:
    """``stem.md``: per metric, one row per (run, method), one column per judging ablation,
    each cell d_necessity / d_sufficiency with intervals, own-criterion cells marked;
    ``stem.csv``: one row per cell and statistic."""

    def cell(row) -> str:
        mark = " (own)" if row["own"] else ""
        return f"{value_cell(row['necessity'])} / {value_cell(row['sufficiency'])}{mark}"

    rows, lines = [], []
    baseline = result["baseline"]
    for metric in dict.fromkeys(r["metric"] for r in result["rows"]):
        judged = list(dict.fromkeys(r["judged"] for r in result["rows"] if r["metric"] == metric))
        lines += [
            f"**{metric}**: necessity / sufficiency minus {baseline}'s (normalised f; "
            f"necessity lower and sufficiency higher is better), 95 % paired bootstrap intervals",
            "",
            "| method | run | selected with | " + " | ".join(f"judged: {a}" for a in judged) + " |",
            "|---|---|---|" + "---|" * len(judged),
        ]
        keys = dict.fromkeys((r["run"], r["method"]) for r in result["rows"])
        for run, method in keys:
            cells = {
                r["judged"]: r
                for r in result["rows"]
                if r["metric"] == metric and (r["run"], r["method"]) == (run, method)
            }
            if not cells:
                continue
            selected = _selected(next(iter(cells.values()))["selected"])
            lines.append(
                f"| {method} | {Path(run).name} | {selected} | "
                + " | ".join(cell(cells[a]) if a in cells else "–" for a in judged)
                + " |"
            )
        lines.append("")
    lines += [f"(own): {OWN_NOTE}.", ""]
    for r in result["rows"]:
        for statistic in ("necessity", "sufficiency"):
            rows.append(
                {
                    "run": r["run"],
                    "method": r["method"],
                    "selected": _selected(r["selected"]),
                    "judged": r["judged"],
                    "metric": r["metric"],
                    "statistic": f"{statistic} - {baseline}",
                    **r[statistic],
                    "own": r["own"],
                    "images": r["images"],
                }
            )
    return write_markdown_and_csv(stem, lines, rows)
