"""The study's figures: downstream success against label quality, and the learning curves."""

from __future__ import annotations

import io
from typing import Any

from rgvlm_ray.experiments.study.tables import arm_rows, groups, mean_ci, per_seed, run_label
from rgvlm_ray.iql.evaluate import KS


def rho_plot(study: dict[str, Any], split: str) -> bytes:
    """Downstream mean success (mean over k, then over seeds; 95% CI bars) against each labeler's Spearman rho."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality = study["label_quality"].get("by_labeler", {})
    runs = groups(study)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for offset, template in enumerate(study["settings"]["modes"]):
        xs, ys, errs, names = [], [], [], []
        rows = arm_rows(study, template)
        for labeler, q in quality.items():
            label = rows.get(labeler)
            if q["spearman"] is None or label not in runs:
                continue
            mean, half = mean_ci(per_seed(runs[label], split, "success_rate", KS))
            xs.append(q["spearman"] + 0.01 * offset)  # side by side, not on top
            ys.append(mean)
            errs.append(half or 0.0)
            names.append(labeler)
        if xs:
            ax.errorbar(xs, ys, yerr=errs, fmt="o", capsize=4, label=template)
            if offset == 0:  # name each labeler once
                for x, y, name in zip(xs, ys, names, strict=True):
                    ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if "sparse" in runs:
        mean, half = mean_ci(per_seed(runs["sparse"], split, "success_rate", KS))
        ax.axhline(mean, color="grey", linestyle="--", label="sparse")
        if half:
            ax.axhspan(mean - half, mean + half, color="grey", alpha=0.15)
    ax.set_xlabel("label quality: Spearman rho of cumulative label vs. true progress")
    ax.set_ylabel("mean success rate over k = 1..6")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Downstream success vs. label quality ({split}; bars: 95% CI over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def curve_rows(study: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per arm with a learning curve: its points (runs of their own budget, or intermediate checkpoints of a
    constant-lr run: `curve_sources`) plus the final evaluation."""
    out: dict[str, list[dict[str, Any]]] = {}
    for run in study["runs"]:
        if not run.get("curve"):
            continue
        split = run["curve"][0]["split"]
        final = run["evals"][split]
        points = [*run["curve"], {"step": final["step"], **{k: final.get(k) for k in CURVE_METRICS}}]
        out[f"{run_label(study, run['read_back'])} (seed {run['seed']}, {split})"] = points
    return out


CURVE_METRICS = {
    "subtask_completion": "sub-tasks completed (mean over k)",
    "expert_agreement": "expert agreement (held-out)",
    "train_agreement": "training agreement (fit)",
}
SOURCES = {
    "budgets": "each point is a run of its own, trained with that budget (its lr schedule ends there)",
    "checkpoints": "each point is a checkpoint inside one run at a constant learning rate",
}


def curve_sources(study: dict[str, Any]) -> set[str]:
    """How the points were made (runs.curve_source); a study.json from before budgets were recorded: checkpoints."""
    return {p.get("source", "checkpoints") for run in study["runs"] for p in run.get("curve") or []}


def curve_section(study: dict[str, Any]) -> str:
    curves = curve_rows(study)
    if not curves:
        return "No learning curves recorded (`study.curve_arms`, `study.curve_points`).\n"
    how = "; ".join(f"{SOURCES.get(s, s)} ({s})" for s in sorted(curve_sources(study)))
    lines = [
        f"Points by number of IQL updates: {how}. The last point is the run itself.",
        "",
        "| run | " + " | ".join(f"step → {t}" for t in CURVE_METRICS.values()) + " |",
        "|---|" + "---|" * len(CURVE_METRICS),
    ]
    for label, points in curves.items():
        cells = [
            ", ".join(f"{p['step']}: {'n/a' if p.get(m) is None else f'{p[m]:.2f}'}" for p in points)
            for m in CURVE_METRICS
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n![learning curves](learning_curves.png)\n"


def curve_png(study: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(5 * len(CURVE_METRICS), 4), squeeze=False)
    for ax, (metric, title) in zip(axes[0], CURVE_METRICS.items(), strict=True):
        for label, points in curve_rows(study).items():
            pts = [(p["step"], p[metric]) for p in points if p.get(metric) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=label)
        ax.set_xlabel("IQL updates")
        ax.set_ylabel(title)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Learning curves (" + ", ".join(sorted(curve_sources(study))) + ")")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
