"""Plain-text summaries printed by the commands."""

from __future__ import annotations


def format_summary(summary: dict[str, dict], titles: dict[str, str]) -> str:
    """The summary table; ``titles`` names each method's path ("JAS path")."""
    lines = [
        f"{'method':<12}{'images':>8}{'mean JAS':>12}{'median JAS':>12}"
        f"{'accuracy':>10}{'P(label)':>10}"
    ]
    for method, s in summary.items():
        lines.append(
            f"{method:<12}{s['images']:>8}{s['mean_jas']:>12.4g}{s['median_jas']:>12.4g}"
            f"{s['accuracy']:>10.1%}{s['mean_label_prob']:>10.3f}"
        )
    for method, s in summary.items():
        for other, share in s.get("share_above", {}).items():
            lines.append(
                f"{titles[method]} scores above the {titles[other]} on {share:.1%} of images"
            )
    return "\n".join(lines)


def format_class_report(report: dict) -> str:
    """The headline numbers of ``neuronpath classes``."""
    c = report["clustering"]
    lines = [
        f"{report['classes']} classes, {report['layers']} layers, {report['width']} neurons "
        f"per layer ({report['method']} paths)",
        "share of images on their class's modal neuron (leave-one-out), per layer:",
        "  observed:        " + " ".join(f"{v:.2f}" for v in c["share_modal"]),
        "  labels shuffled: " + " ".join(f"{v:.2f}" for v in c["shuffled_labels"]),
        f"  chance 1/n = {c['chance']:.4f}",
    ]
    if "coherence" in report:
        h = report["coherence"]
        lines.append(
            f"group coherence: within {h['within_mean']:.4f}, between "
            f"{h['between_mean']:.4f}, difference {h['difference']:+.4f}, permutation "
            f"p = {h['p_value']:.4g} ({h['permutations']} permutations)"
        )
    return "\n".join(lines)
