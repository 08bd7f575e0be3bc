"""The study's numbers: means and 95% confidence intervals over seeds, the tables of study.md, and whether
two arms can be told apart (the targets)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import stats

from rgvlm_ray.iql.agreement import FIT_THRESHOLD
from rgvlm_ray.iql.evaluate import KS

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


def chain_kind_table(study: dict[str, Any], split: str) -> str:
    """Sub-task completion (k >= 2) on chains that repeat a sub-task and on the others, per arm (eval.json
    `by_chain_kind`): where memory beyond the window binds (docs/iql.md, "Chains that repeat a sub-task")."""
    lines = [
        "| arm (read back) | seeds | chains repeating a sub-task | episodes | other chains | episodes |",
        "|---|---|---|---|---|---|",
    ]
    for label, runs in groups(study).items():
        kinds = [run["evals"][split].get("by_chain_kind") for run in runs]
        if not all(kinds):
            lines.append(f"| {label} | {n_note(runs)} | not recorded (evaluated before issue 23) | | | |")
            continue
        cells = []
        for kind in ("repeats_subtask", "distinct_subtasks"):
            values = [
                k[kind]["subtask_completion"] for k in kinds if k[kind]["subtask_completion"] is not None
            ]
            cells += [cell(values), str(sum(k[kind]["episodes"] for k in kinds))]
        lines.append(f"| {label} | {n_note(runs)} | " + " | ".join(cells) + " |")
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
        f"| fit: agreement with its training actions | fits (>= {FIT_THRESHOLD}) "
        f"| expert-action agreement, held-out ({split}) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, runs in groups(study).items():
        diag = [r["read_back"].get("diagnostics") or {} for r in runs]

        def col(key: str, diag: list[dict[str, Any]] = diag) -> str:
            return cell([d[key] for d in diag if d.get(key) is not None and not math.isnan(d[key])])

        agree = [r["evals"][split].get("expert_agreement") for r in runs]
        agreement = cell([a for a in agree if a is not None]) if any(a is not None for a in agree) else "n/a"
        fit = [r["evals"][split].get("train_agreement") for r in runs]
        fit_cell = cell([a for a in fit if a is not None]) if any(a is not None for a in fit) else "n/a"
        fits = [r["evals"][split].get("fits_training_data") for r in runs]
        fits_cell = (
            f"{sum(f is True for f in fits)} of {len(fits)} seeds"
            if any(f is not None for f in fits)
            else "n/a"
        )
        if any(f is False for f in fits):
            fits_cell += " — **did not fit**"
        learner = runs[0]["read_back"].get("learner") or "iql"
        weights = ["BC: weights 1"] * 4 if learner != "iql" else [
            col("awr_ess"), col("beta_adv_std"), col("adv_clipped_frac"), col("reward_weight_ratio")
        ]  # fmt: skip
        lines.append(
            f"| {label} | {n_note(runs)} | "
            + " | ".join(weights)
            + f" | {fit_cell} | {fits_cell} | {agreement} |"
        )
    return (
        "\n".join(lines)
        + "\n\nESS: (Σw)² / (N Σw²) of the actor's weights over a batch, as a share of it (1 = behaviour cloning). "
        "β·sd(A) below ~0.3 means nearly flat weights. Agreement: the share of held-out behaviour states where "
        "argmax π is the BabyAI bot's action (the behaviour data's own agreement is in the settings line above). "
        "Fit: the share of the run's own training states where argmax π is the action the data took "
        "(eval.train_agreement_episodes of them); a run below the threshold did not fit its data, and its "
        "completion says little about its reward. On data with random actions only memorising the noise reaches the "
        "threshold: the expert-data ceiling (`bc (expert data)`) is the row where it must hold.\n"
    )


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
            f"{'**Met.**' if v.startswith('higher') else '**Not met.**'}"
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
