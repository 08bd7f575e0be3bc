"""study.md and its plots, from what `rgvlm study` read back (the dict study/pipeline.py writes as study.json).

Rows are labelled from each run's checkpoint (its `reward` and context), never from folder names. Every cell is
a mean over seeds with a 95% confidence interval from the t distribution (n - 1 degrees of freedom): the
per-seed value is that run's score on the evaluated missions, so the interval covers seed-to-seed variation
(training and evaluation noise together), not the uncertainty of one run's success rate.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rgvlm_ray.experiments.study.plots import curve_png, curve_rows, curve_section, rho_plot
from rgvlm_ray.experiments.study.tables import (
    LONG_K,
    METRICS,
    chain_kind_table,
    diagnostics_table,
    figure4_table,
    mean_rows,
    targets,
    told_apart,
)
from rgvlm_ray.experiments.workspace import NOISE_WARNING
from rgvlm_ray.iql.evaluate import plot_png
from rgvlm_ray.label_quality import report as label_report


def labelers_section(study: dict[str, Any]) -> str:
    quality = study["label_quality"].get("by_labeler", {})
    lines = [
        "| labeler | status | Spearman rho | shuffled baseline | label set | seconds |",
        "|---|---|---|---|---|---|",
    ]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for name, o in study["labelers"].items():
        q = quality.get(name, {})
        status = "ok" if o["status"] == "ok" else f"**FAILED**: {o['error']} (its arms were skipped)"
        lines.append(
            f"| {name} | {status} | {fmt(q.get('spearman'))} | {fmt(q.get('spearman_shuffled'))} "
            f"| `{o['out']}` | {o['seconds']} |"
        )
    text = "\n".join(lines) + "\n"
    if study["label_quality"].get("error"):
        text += f"\nLabel report unavailable: {study['label_quality']['error']}\n"
    return text


def runs_section(study: dict[str, Any]) -> str:
    t, reused = study["timing"], study["reused"]
    lines = [
        f"This invocation (a rerun reuses finished work, so its times cover only what it redid): "
        f"{len(study['runs'])} runs; trained now: {t['trainings_run']}, reused (finished before): "
        f"{len(reused['train'])}; evaluations reused: {len(reused['eval'])}. Up to {t['parallel']} runs side by "
        f"side, {t['cpus_per_worker']:g} CPU per train worker; at most {t['max_concurrent_trainings']} trainings "
        f"were running at once. Training time summed over runs: {t['train_seconds_sum']:.0f} s, in "
        f"{t['seconds']:.0f} s of wall time for the whole train + evaluate stage.",
        "",
        "| stage | seconds | work | rate |",
        "|---|---|---|---|",
    ]
    for s in study["stages"]:
        if not s["work"]:
            rate = "reused"
        elif s["unit"] == "runs":
            rate = f"{s['seconds'] / s['work']:,.1f} s per run (wall)"
        else:
            rate = f"{s['rate']:,.1f} {s['unit']}/s"
        lines.append(f"| {s['name']} | {s['seconds']:,.1f} | {s['work']:,.0f} {s['unit']} | {rate} |")
    return "\n".join(lines) + "\n"


def behaviour_line(study: dict[str, Any]) -> str:
    """What the training data's behaviour itself achieves: the bar a learner that filters it should approach."""
    b, s = study.get("behaviour_data"), study["settings"]
    if not b or not b.get("by_k"):
        return "The behaviour data's own success is unknown (no `progress`/`num_subtasks` columns)."
    rows = b["by_k"]
    long = [r["subtask_completion"] for k, r in rows.items() if int(k) >= LONG_K]
    agree = "n/a" if b.get("expert_agreement") is None else f"{b['expert_agreement']:.2f}"
    mix = s.get("behaviour") or {}
    return (
        f"Behaviour data (noise {mix.get('expert_noise')}, levels {mix.get('noise_levels') or '-'}, detour "
        f"{mix.get('detour')}, abandon {mix.get('abandon')}): success by k "
        + ", ".join(f"{r['success_rate']:.2f}" for r in rows.values())
        + f"; sub-task completion at k ≥ {LONG_K} {np.mean(long) if long else math.nan:.2f}; actions equal to the "
        f"bot's {agree}. Policies are evaluated {s.get('eval_policy', 'greedy')}."
    )


def markdown(study: dict[str, Any]) -> str:
    s = study["settings"]
    warnings = ""
    if study["tiny_vlm"]:
        warnings += f"> **Warning.** {NOISE_WARNING}\n"
    if study["tiny_clip"]:
        warnings += (
            "> The CLIP labeler is a tiny random CLIP here (noise); set `study.clip_model` for a real one.\n"
        )
    for name in study.get("tiny_others", []):
        warnings += f"> The {name} labeler is a tiny random model here (noise); set `study.{name}_model` for a real one.\n"
    failed = study["skipped_labelers"]
    if failed:
        warnings += f"> **Labelers that failed:** {', '.join(failed)}. Their arms did not run; see below.\n"
    parts = [
        "# rgvlm study",
        "",
        warnings,
        f"Generated {study['created_utc']} in {study['seconds'] / 60:.1f} minutes. Labelers: "
        f"{', '.join(s['labelers'])}; modes {', '.join(s['modes'])} per labeler, plus `sparse`; "
        f"{s['seeds']} seed(s) per arm; {s['train_steps']} IQL updates per run; default context "
        f"{s['default_context']} (ablation: {', '.join(map(str, s['contexts'])) or 'none'}); "
        f"{s['episodes_per_k']} evaluation episodes per k and split, at most {s['eval_max_steps'] or 'the env'} steps"
        + (
            f", ended as failures after {s['eval_stall_steps']} steps without a sub-task done."
            if s.get("eval_stall_steps")
            else "."
        ),
        "",
        behaviour_line(study),
        "",
        "Cells: mean over seeds ± the half-width of a 95% t-interval over seeds (n - 1 degrees of freedom). "
        "Each row is labelled from what its runs' checkpoints say they were trained with, never from folder names.",
        "",
    ]
    for split in s["splits"]:
        parts += [f"## Split `{split}`", ""]
        for metric, title in METRICS.items():
            parts += [f"### {title.capitalize()} by number of sub-tasks k (the paper's Figure 4)", ""]
            parts += [figure4_table(study, split, metric), ""]
        parts += [
            f"![completion by k]({split}_by_k.png)",
            "",
            "### Downstream success against label quality",
            "",
            f"![success vs rho](rho_vs_success_{split}.png)",
            "",
            "### Targets (sub-task completion, mean over seeds)",
            "",
            targets(study, split),
            "### Chains that repeat a sub-task (sub-task completion, k >= 2)",
            "",
            chain_kind_table(study, split),
            "### Does each learner select actions? (weights and expert agreement)",
            "",
            diagnostics_table(study) if split == s["splits"][0] else "(see the first split)\n",
            "### Can these arms be told apart?",
            "",
            "Rule: two arms are told apart only when their 95% CIs do not overlap (a conservative check, not a "
            "test); with one seed there is no CI and nothing can be told apart.",
            "",
            told_apart(study, split),
        ]
    parts += ["## Learning curves", "", curve_section(study)]
    parts += [
        "## Labelers (label quality from `rgvlm label-report` over the joined label sets)",
        "",
        labelers_section(study),
    ]
    reports = study["label_quality"].get("reports") or []
    if reports:
        parts += [label_report.markdown(reports)]
    parts += ["## Runs and timing", "", runs_section(study)]
    parts += [
        "Files: raw data and one label set per labeler under `data/` (`data/raw`, `data/labels-<labeler>`), runs under `runs/<arm>/seed<i>`, evaluations under `eval/<arm>/seed<i>/<split>`, everything above "
        "as JSON in `study.json`.",
        "",
    ]
    return "\n".join(parts)


def report_files(study: dict[str, Any]) -> dict[str, bytes]:
    files = {"study.md": markdown(study).encode()}
    for split in study["settings"]["splits"]:
        files[f"{split}_by_k.png"] = plot_png(mean_rows(study, split), f"Mean over seeds by k ({split})")
        files[f"rho_vs_success_{split}.png"] = rho_plot(study, split)
    if curve_rows(study):
        files["learning_curves.png"] = curve_png(study)
    return files
