"""The ground-truth-free figures as markdown tables, and the order each figure ranks the labelers in, set against
the order of the true rho where ground truth exists (label_quality/gtfree.py computes the figures)."""

from __future__ import annotations

from collections import defaultdict


def _f(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _ci(d: dict, key: str = "mean") -> str:
    if d.get(key) is None:
        return "n/a"
    ci = d.get("ci")
    return _f(d[key]) + (f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else "")


def _null(d: dict) -> str:
    return "" if d.get("shuffled") is None else f" (shuffled {_f(d['shuffled'])})"


WHY = {
    "success_auroc": "success AUROC",
    "success_step_rank": "success-step rank",
    "reward_agreement": "agreement with dataset reward",
    "position_bias": "position bias",
    "sample_spread": "spread over samples",
    "overlap": "overlapping windows",
}


def markdown(reports: list[dict]) -> str:
    """The ground-truth-free tables for the `without_ground_truth` part of each labeler's report."""
    reps = [r for r in reports if r.get("without_ground_truth")]
    if not reps:
        return ""
    d = reps[0]["without_ground_truth"]["dataset"]
    if d["success_signal"] == "none":
        success = "no success signal" + (
            " (the reward is dense; pass --success terminated if `terminated` marks success)"
            if d["reward"] == "dense"
            else ""
        )
    else:
        how = "sparse reward > 0" if d["success_signal"] == "reward" else "`terminated`"
        success = f"success = {how}: {d['successful']} successful, {d['failed']} failed"
    lines = [
        "### Without ground truth",
        "",
        f"{d['episodes']} episodes; dataset reward: {d['reward']}; {success}.",
        "",
        "| labeler | episodes | success AUROC of return [95% CI] | success-step rank [95% CI] | VOC | "
        "agreement with other label sets | agreement with dataset reward |",
        "|---|---|---|---|---|---|---|",
    ]
    for rep in reps:
        g = rep["without_ground_truth"]
        sa = g["success_auroc"]
        auc = "n/a" if sa["auroc"] is None else f"{_ci(sa, 'auroc')} ({sa['positive']} vs {sa['negative']})"
        auc += f"; {sa['ci_why']}" if sa.get("ci_why") else ""
        lines.append(
            f"| {rep['labeler']} | {g['episodes_labeled']} | {auc} "
            f"| {_ci(g['success_step_rank'])}{_null(g['success_step_rank'])} "
            f"| {_f(g['voc']['mean'])}{_null(g['voc'])} | {_f(g['agreement_mean'])} "
            f"| {_ci(g['reward_agreement'])}{_null(g['reward_agreement'])} |"
        )
    lines += [
        "",
        "| labeler | position bias (score vs position in window) | spread over samples (std; / score spread) "
        "| overlapping windows (steps; mean abs. diff; / score spread; Spearman) |",
        "|---|---|---|---|",
    ]
    for rep in reps:
        g = rep["without_ground_truth"]
        sp, ov = g["sample_spread"], g["overlap"]
        spread = "n/a" if sp["std_mean"] is None else f"{_f(sp['std_mean'])}; {_f(sp['ratio'])}"
        over = (
            "n/a"
            if ov["abs_diff_mean"] is None
            else f"{ov['steps']}; {_f(ov['abs_diff_mean'])}; {_f(ov['ratio'])}; {_f(ov['spearman'])}"
        )
        lines.append(f"| {rep['labeler']} | {_ci(g['position_bias'])} | {spread} | {over} |")
    why: dict[tuple[str, str], list[str]] = defaultdict(list)  # (figure, reason) -> labelers
    for rep in reps:
        for key, label in WHY.items():
            if reason := rep["without_ground_truth"][key].get("why"):
                why[(label, reason)].append(rep["labeler"])
    if why:
        notes = [
            f"{label}{'' if len(who) == len(reps) else ' (' + ', '.join(who) + ')'}: {reason}"
            for (label, reason), who in why.items()
        ]
        lines += ["", "n/a and partial figures: " + "; ".join(notes) + "."]
    if len(reps) > 1:
        names = [r["labeler"] for r in reps]
        lines += ["", "Agreement: mean per-episode Spearman of per-step rewards.", ""]
        lines += ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for rep in reps:
            ag = rep["without_ground_truth"]["agreement"]
            cells = ["—" if m == rep["labeler"] else _f(ag[m]["mean"]) for m in names]
            lines.append(f"| {rep['labeler']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# Ground-truth-free figures that should rise with label quality, for the check against the true rho.
RANKED = {
    "success-step rank": lambda g: g["success_step_rank"]["mean"],
    "agreement with other label sets": lambda g: g["agreement_mean"],
    "success AUROC of return": lambda g: g["success_auroc"]["auroc"],
    "VOC": lambda g: g["voc"]["mean"],
}


def orders(reports: list[dict]) -> dict[str, list[tuple[str, float]]]:
    """(labeler, value) best first, by the true rho and by each ground-truth-free figure every labeler has."""
    out = {}
    rho = {r["labeler"]: r.get("spearman_mean_over_k") for r in reports}
    if len(rho) > 1 and None not in rho.values():
        out["true Spearman rho"] = sorted(rho.items(), key=lambda kv: -kv[1])
    for name, get in RANKED.items():
        vals = {
            r["labeler"]: get(r["without_ground_truth"]) for r in reports if r.get("without_ground_truth")
        }
        if len(vals) > 1 and None not in vals.values():
            out[name] = sorted(vals.items(), key=lambda kv: -kv[1])
    return out


def same_order(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
    """The same labelers in the same order, each strictly below the one before in both (a tie orders nothing)."""
    strict = lambda o: all(x[1] > y[1] for x, y in zip(o, o[1:], strict=False))  # noqa: E731
    return [n for n, _ in a] == [n for n, _ in b] and strict(a) and strict(b)


def _chain(order: list[tuple[str, float]]) -> str:
    text = order[0][0]
    for (_, before), (name, value) in zip(order, order[1:], strict=False):
        text += f" {'>' if value < before else '='} {name}"
    return text


def orders_markdown(reports: list[dict]) -> str:
    """Where ground truth exists: do the ground-truth-free figures order the labelers as the true rho does?"""
    o = orders(reports)
    if "true Spearman rho" not in o or len(o) < 2:
        return ""
    truth = o["true Spearman rho"]
    lines = ["Labelers best first, by the true rho and by each figure without ground truth:", ""]
    for name, order in o.items():
        mark = "" if order is truth else (" (the true rho's order)" if same_order(order, truth) else "")
        lines.append(f"- {name}: {_chain(order)}{mark}")
    return "\n".join(lines) + "\n"
