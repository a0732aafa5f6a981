"""The run report as one self-contained HTML file: the overview written here, the explorer and
the neuron cards drawn in the browser by ``assets/page.js`` from data inlined as JSON.  Plain
HTML, CSS and JavaScript; images inlined as data URLs; nothing is fetched."""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path


def _asset(name: str) -> str:
    return resources.files("neuronpath.report").joinpath("assets", name).read_text()


def markdown_table(text: str) -> str:
    """The pipe tables and paragraphs of a small Markdown file as HTML."""
    out, table = [], []

    def flush():
        if table:
            head, *body = [
                [html.escape(c.strip()) for c in row.strip().strip("|").split("|")]
                for row in table
                if not set(row.replace("|", "").strip()) <= set("-: ")
            ]
            out.append(
                "<table><thead><tr>"
                + "".join(f"<th>{c}</th>" for c in head)
                + "</tr></thead><tbody>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
                + "</tbody></table>"
            )
            table.clear()

    for line in text.splitlines():
        if line.strip().startswith("|"):
            table.append(line)
            continue
        flush()
        if line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


def _figure(src: str | None, caption: str) -> str:
    return (
        f'<figure><img src="{src}" alt="{html.escape(caption)}"><figcaption>'
        f"{html.escape(caption)}</figcaption></figure>"
        if src
        else ""
    )


def _missing(what: str, command: str) -> str:
    return (
        f'<p class="missing">{html.escape(what)}: not made yet — run <code>'
        f"{html.escape(command)}</code>.</p>"
    )


def overview_html(overview: dict) -> dict[str, str]:
    """The page's static parts, in the order a reader wants them: ``findings`` (what the run
    found: its paths per method, Table 1 and Figure 3), ``experiments`` (the faithfulness
    study, the class figures, pruning -- or the command that makes each missing one) and
    ``settings`` (model, data, search settings, versions)."""
    run = overview.get("paths_run") or overview["run"]  # a prune run's paths: its find run
    facts = overview["facts"]  # the run's settings (:meth:`~neuronpath.experiments.run.Run.facts`)
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in facts
        if v is not None
    )
    summary = "".join(
        f"<tr><td>{html.escape(m)}</td><td>{s['images']}</td><td>{s['mean_jas']:.4g}</td>"
        f"<td>{s['median_jas']:.4g}</td><td>{s['accuracy']:.1%}</td>"
        f"<td>{s['mean_label_prob']:.3f}</td></tr>"
        for m, s in overview["summary"].items()
    )
    findings = [
        "<h2>Paths</h2><table><thead><tr><th>method</th><th>images</th><th>mean JAS</th>"
        "<th>median JAS</th><th>accuracy</th><th>P(label)</th></tr></thead>"
        f"<tbody>{summary}</tbody></table>",
        "<h2>Removal and enhancement (Table 1, Figure 3)</h2>",
    ]
    evaluation = overview["evaluation"]
    findings.append(
        markdown_table(evaluation["table"] or "") + _figure(evaluation["figure3"], "Figure 3")
        if evaluation
        else _missing("Table 1 and Figure 3", f"neuronpath evaluate {run}")
    )
    parts = ["<h2>Faithfulness: ablations, metrics, necessity and sufficiency</h2>"]
    study = overview.get("faithfulness")
    parts.append(
        markdown_table(study["table"] or "")
        + _figure(study["figure"], "necessity (solid) and sufficiency (dashed) curves")
        if study
        else _missing(
            "The faithfulness study",
            f"neuronpath evaluate {run} --ablation zero,mean,resample --reference-split 40",
        )
    )
    parts.append("<h2>Curves over whole rankings: CPR and CMD</h2>")
    curves = overview.get("curves")
    parts.append(
        markdown_table(curves["table"] or "") + _figure(curves["figure"], "f(k) per method")
        if curves
        else _missing(
            "The curves (from a run found with --save-scores)",
            f"neuronpath evaluate {run} --curves --ablation mean --reference-split 40",
        )
    )
    parts.append(f"<h2>Classes ({html.escape(overview['method'])} paths: Figures 4, 5, 2)</h2>")
    classes = overview["classes"]
    parts.append(
        "".join(_figure(src, name) for name, src in classes.items())
        if classes
        else _missing("Class figures", f"neuronpath classes {run} --method {overview['method']}")
    )
    parts.append("<h2>Class-specific pruning (Figure 6, Table 3)</h2>")
    prune = overview["prune"]
    parts.append(
        markdown_table(prune.get("table2") or "")
        + markdown_table(prune["table"] or "")
        + _figure(prune["figure6"], "Figure 6")
        if prune
        else _missing(
            "Figure 6, Tables 2 and 3 (this is not a prune run)",
            "neuronpath prune --model M --data D --out DIR",
        )
    )
    return {
        "findings": "\n".join(findings),
        "experiments": "\n".join(parts),
        "settings": f"<table class=facts>{rows}</table>",
    }


def write_page(target: Path, overview: dict, data: dict) -> Path:
    """Write the self-contained page."""
    title = f"neuronpath — {overview['title']}"
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    page = _asset("page.html").format(
        title=html.escape(title),
        css=_asset("page.css"),
        **overview_html(overview),
        data=payload,
        script=_asset("page.js"),
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(page)
    tmp.replace(target)
    return target
