"""study.md and its plots, from what `rgvlm study` read back (the dict study/runs.py writes as study.json).

Rows are labelled from each run's checkpoint (its `reward` and context), never from folder names. Every cell is
a mean over seeds with a 95% confidence interval from the t distribution (n - 1 degrees of freedom): the
per-seed value is that run's score on the evaluated missions, so the interval covers seed-to-seed variation
(training and evaluation noise together), not the uncertainty of one run's success rate.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import stats

from rgvlm_ray.experiments.workspace import NOISE_WARNING
from rgvlm_ray.iql.evaluate import KS, plot_png
from rgvlm_ray.label_quality import report as label_report

CONFIDENCE = 0.95
METRICS = {"subtask_completion": "proportion of sub-tasks completed", "success_rate": "success rate"}
LONG_K = 3  # "long horizon": the comparison section looks at k >= 3


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float, float | None]:
    """(mean, half-width of the two-sided t interval), or (mean, None) with fewer than two values."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return math.nan, None
    mean = float(x.mean())
    if x.size < 2:
        return mean, None
    sem = float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, float(stats.t.ppf((1 + confidence) / 2, x.size - 1)) * sem


def cell(values: list[float]) -> str:
    mean, half = mean_ci(values)
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if half is None else f"{mean:.2f} ± {half:.2f}"


def row_label(reward: str, context: int | None, default_context: int) -> str:
    if context is None or context == default_context:
        return reward
    return f"{reward}, context {context}"


def run_label(study: dict[str, Any], back: dict[str, Any]) -> str:
    """A run's row, from what its checkpoint says: the reward and context, or the baseline learner (and, for the
    ceiling, that it read the expert data)."""
    default = study["settings"]["default_context"]
    learner = back.get("learner") or "iql"
    if learner != "iql":
        expert = study["data"].get("expert")
        return f"{learner} (expert data)" if expert and back.get("in_path") == expert else learner
    context = back.get("context") if back.get("context") is not None else back.get("config_context")
    return row_label(back["reward"], context, default)


CEILING_ROW = "bc (expert data)"


def groups(study: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Runs grouped by what they read back (reward, context, learner), in arm order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for run in study["runs"]:
        out.setdefault(run_label(study, run["read_back"]), []).append(run)
    return out


def per_seed(runs: list[dict[str, Any]], split: str, metric: str, ks: Iterable[int]) -> list[float]:
    """One value per run: its `metric` averaged over the evaluated k in `ks`."""
    wanted = set(ks)
    values = []
    for run in runs:
        rows = [r for r in run["evals"][split]["by_k"] if r["k"] in wanted]
        if rows:
            values.append(float(np.mean([r[metric] for r in rows])))
    return values


def n_note(runs: list[dict[str, Any]]) -> str:
    seeds = sorted(r["read_back"].get("seed", r["seed"]) for r in runs)
    n = f"n={len(runs)}" + (", no CI" if len(runs) < 2 else "")
    return f"{n} (seeds {', '.join(map(str, seeds))})"


def figure4_table(study: dict[str, Any], split: str, metric: str) -> str:
    header = "| arm (read back) | seeds | " + " | ".join(f"k={k}" for k in KS) + " | mean |"
    lines = [header, "|---" * (len(KS) + 3) + "|"]
    for label, runs in groups(study).items():
        cells = [cell(per_seed(runs, split, metric, [k])) for k in KS]
        lines.append(
            f"| {label} | {n_note(runs)} | "
            + " | ".join(cells)
            + f" | {cell(per_seed(runs, split, metric, KS))} |"
        )
    return "\n".join(lines) + "\n"


def mean_rows(study: dict[str, Any], split: str) -> dict[str, list[dict[str, Any]]]:
    """Per group, by_k-shaped rows of seed means (for the Figure-4 line plot)."""
    series = {}
    for label, runs in groups(study).items():
        series[label] = [
            {"k": k, **{m: mean_ci(per_seed(runs, split, m, [k]))[0] for m in METRICS}} for k in KS
        ]
    return series


def arm_rows(study: dict[str, Any], template: str) -> dict[str, str]:
    """labeler -> the row label of its default-context arm made from `template` (e.g. "X+sparse")."""
    default = study["settings"]["default_context"]
    return {
        a["labeler"]: row_label(a["reward"], a["context"], default)
        for a in study["arms"]
        if a["labeler"] and a["template"] == template and not a["ablation"]
    }


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


def _interval(values: list[float]) -> tuple[float, float | None, str]:
    mean, half = mean_ci(values)
    text = (
        f"{mean:.2f} (n={len(values)}, no CI)"
        if half is None
        else f"{mean:.2f} [{mean - half:.2f}, {mean + half:.2f}]"
    )
    return mean, half, text


def diagnostics_table(study: dict[str, Any]) -> str:
    """Per arm: did its actor's weights select (run.json diagnostics, last report), and does its policy pick the
    bot's action on held-out states (eval.json expert_agreement, first split)? Mean ± 95% CI over seeds."""
    split = study["settings"]["splits"][0]
    lines = [
        "| arm (read back) | seeds | weight ESS | β·sd(A) | clipped | weight on rewarded steps (× mean) "
        f"| expert-action agreement ({split}) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, runs in groups(study).items():
        diag = [r["read_back"].get("diagnostics") or {} for r in runs]

        def col(key: str, diag: list[dict[str, Any]] = diag) -> str:
            return cell([d[key] for d in diag if d.get(key) is not None and not math.isnan(d[key])])

        agree = [r["evals"][split].get("expert_agreement") for r in runs]
        agreement = cell([a for a in agree if a is not None]) if any(a is not None for a in agree) else "n/a"
        learner = runs[0]["read_back"].get("learner") or "iql"
        weights = ["BC: weights 1"] * 4 if learner != "iql" else [
            col("awr_ess"), col("beta_adv_std"), col("adv_clipped_frac"), col("reward_weight_ratio")
        ]  # fmt: skip
        lines.append(f"| {label} | {n_note(runs)} | " + " | ".join(weights) + f" | {agreement} |")
    return (
        "\n".join(lines)
        + "\n\nESS: (Σw)² / (N Σw²) of the actor's weights over a batch, as a share of it (1 = behaviour cloning). "
        "β·sd(A) below ~0.3 means nearly flat weights. Agreement: the share of held-out behaviour states where "
        "argmax π is the BabyAI bot's action (the behaviour data's own agreement is in the settings line above).\n"
    )


def curve_rows(study: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per arm with a learning curve: its points (intermediate checkpoints) plus the final evaluation."""
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
    "expert_agreement": "expert agreement",
}


def curve_section(study: dict[str, Any]) -> str:
    curves = curve_rows(study)
    if not curves:
        return "No learning curves recorded (`study.curve_arms`, `study.curve_points`).\n"
    lines = ["| run | " + " | ".join(f"step → {t}" for t in CURVE_METRICS.values()) + " |", "|---|---|---|"]
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
    fig.suptitle("Learning curves (intermediate checkpoints)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def told_apart(study: dict[str, Any], split: str) -> str:
    """For each X+sparse against sparse, at the mean over k >= LONG_K: do the 95% CIs overlap?"""
    runs = groups(study)
    if "sparse" not in runs:
        return "No `sparse` runs to compare against.\n"
    ks = [k for k in KS if k >= LONG_K]
    lines = []
    for label in arm_rows(study, "X+sparse").values():
        if label not in runs:
            continue
        for metric, title in METRICS.items():
            a, ha, ta = _interval(per_seed(runs[label], split, metric, ks))
            b, hb, tb = _interval(per_seed(runs["sparse"], split, metric, ks))
            if ha is None or hb is None:
                verdict = "**cannot be told apart** (too few seeds for a CI)"
            elif a - ha > b + hb or b - hb > a + ha:
                verdict = f"the CIs do not overlap: `{label}` is {'higher' if a > b else 'lower'}"
            else:
                verdict = "the CIs overlap: **cannot be told apart**"
            lines.append(f"- `{label}` vs `sparse`, {title}, k ≥ {LONG_K}: {ta} vs {tb}; {verdict}.")
    return ("\n".join(lines) + "\n") if lines else "No X+sparse arms ran.\n"


def _verdict(a: tuple[float, float | None], b: tuple[float, float | None]) -> str:
    (ma, ha), (mb, hb) = a, b
    if ha is None or hb is None:
        return "cannot be told apart (no CI)"
    if ma - ha > mb + hb:
        return "higher, CIs do not overlap"
    if mb - hb > ma + ha:
        return "lower, CIs do not overlap"
    return "CIs overlap: cannot be told apart"


def targets(study: dict[str, Any], split: str) -> str:
    """The issue's four targets, on sub-task completion, each with its measured distance."""
    runs, metric = groups(study), "subtask_completion"
    default = study["settings"]["default_context"]
    long_ks, lines = [k for k in KS if k >= LONG_K], []

    def stat(label: str, ks: list[int]) -> tuple[float, float | None]:
        return mean_ci(per_seed(runs.get(label, []), split, metric, ks))

    if "oracle+sparse" in runs and "sparse" in runs:
        o, sp = stat("oracle+sparse", long_ks), stat("sparse", long_ks)
        ratio = o[0] / sp[0] if sp[0] > 0 else math.nan
        lines.append(
            f"- `oracle+sparse` >= 2x `sparse` at k >= {LONG_K} with non-overlapping CIs: {o[0]:.3f} vs "
            f"{sp[0]:.3f}, ratio **{'n/a' if math.isnan(ratio) else f'{ratio:.2f}x'}**; {_verdict(o, sp)}. "
            f"{'**Met.**' if ratio >= 2 and _verdict(o, sp).startswith('higher') else '**Not met.**'}"
        )
    if "oracle+sparse" in runs and "bc" in runs:
        o, b = stat("oracle+sparse", long_ks), stat("bc", long_ks)
        v = _verdict(o, b)
        lines.append(
            f"- `oracle+sparse` above `bc` at k >= {LONG_K} (IQL uses the reward): {o[0]:.3f} vs {b[0]:.3f}; {v}. "
            f"{'**Met.**' if v.startswith('higher') else '**Not met.**'}"
        )
    if "oracle+sparse" in runs and "noisy60+sparse" in runs:
        o, n = stat("oracle+sparse", list(KS)), stat("noisy60+sparse", list(KS))
        v = _verdict(n, o)
        lines.append(
            f"- dose-response: `noisy60+sparse` below `oracle+sparse` (mean over k): {n[0]:.3f} vs {o[0]:.3f}; "
            f"{v}. {'**Met.**' if v.startswith('lower') else '**Not met.**'}"
        )
    agreement = {label: agreement_stat(rs, split) for label, rs in runs.items()}
    if agreement.get("oracle+sparse") and agreement.get("bc"):
        o, b = agreement["oracle+sparse"], agreement["bc"]
        v = _verdict(o, b)
        lines.append(
            f"- expert-action agreement, `oracle+sparse` above `bc`: {o[0]:.3f} vs {b[0]:.3f}; {v}. "
            f"{'**Met.**' if o[0] > b[0] else '**Not met.**'}"
        )
    if CEILING_ROW in runs:
        c = stat(CEILING_ROW, long_ks)
        lines.append(
            f"- the architecture's ceiling (BC on noise-free expert data, one seed) at k >= {LONG_K}: {c[0]:.3f}."
        )
    ablations = [label for label in runs if label.startswith("oracle+sparse, context ")]
    for label in ablations:
        d, c = stat("oracle+sparse", [k for k in KS if k >= 2]), stat(label, [k for k in KS if k >= 2])
        lines.append(
            f"- context {default} vs {label.split(', ')[1]} with `oracle+sparse`, k >= 2: {d[0]:.3f} vs {c[0]:.3f}; "
            f"context {default}: {_verdict(d, c)}."
        )
    noisy = sorted((fmt_noise(label), label) for label in runs if fmt_noise(label) is not None)
    if noisy:
        series = [(0.0, "oracle+sparse")] if "oracle+sparse" in runs else []
        series += [(p, label) for p, label in noisy]
        cells = ", ".join(f"{p:.0%}: {stat(label, list(KS))[0]:.3f}" for p, label in series)
        means = [stat(label, list(KS))[0] for _, label in series]
        falls = all(b <= a for a, b in zip(means, means[1:], strict=False))
        lines.append(f"- downstream completion (mean over k) by oracle noise, X+sparse arms: {cells}; "
                     f"{'falls monotonically' if falls else 'does **not** fall monotonically'}.")  # fmt: skip
    if "sparse" in runs:
        by_k = [stat("sparse", [k])[0] for k in KS]
        falls = by_k[0] > by_k[-1]
        lines.append(f"- `sparse` completion by k: {', '.join(f'{v:.2f}' for v in by_k)}; "
                     f"k=1 {'above' if falls else 'not above'} k={KS[-1]} (the paper's shape).")  # fmt: skip
    return ("\n".join(lines) + "\n") if lines else "No arms to check.\n"


def agreement_stat(runs: list[dict[str, Any]], split: str) -> tuple[float, float | None] | None:
    values = [r["evals"][split].get("expert_agreement") for r in runs]
    values = [v for v in values if v is not None]
    return mean_ci(values) if values else None


def fmt_noise(label: str) -> float | None:
    """The noise of a `noisyNN+sparse` row (default context), else None."""
    from rgvlm_ray.labelers.noisy_oracle import noise_of

    if not label.endswith("+sparse") or "," in label:
        return None
    return noise_of(label.removesuffix("+sparse"))


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
