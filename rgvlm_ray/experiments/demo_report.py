"""`report.md` for `rgvlm run`: the paper's Figure-4 style comparison, label quality, and stage throughput."""

from __future__ import annotations

import json
import os
import platform
import time

from rgvlm_ray.experiments.workspace import NOISE_WARNING, REAL_LVLM, Workspace
from rgvlm_ray.iql.compare import comparison_table, unique_labels
from rgvlm_ray.iql.evaluate import plot_png
from rgvlm_ray.label_quality import report as label_report


def _series(state: Workspace, evals: list[str]) -> dict[str, list[dict]]:
    """by_k per evaluation, each labelled with the reward its run wrote (eval.json's `reward`)."""
    loaded = []
    for folder in evals:
        with open(os.path.join(folder, "eval.json")) as f:
            loaded.append(json.load(f))
    paths = [os.path.join(folder, "eval.json") for folder in evals]
    labels = unique_labels(loaded, paths, state.cfg.storage, with_split=False)
    return dict(zip(labels, (e["by_k"] for e in loaded), strict=True))


def _selection(state: Workspace, evals: list[str]) -> str:
    """Per arm, from its checkpoint's run.json and its eval.json: did the actor's weights select actions, and
    does the policy pick the bot's action on held-out states?"""
    from rgvlm_ray.iql.checkpoint import read_json

    lines = [
        "| arm (read back) | weight ESS | β·sd(A) | clipped | weight on rewarded steps (× mean) "
        "| training agreement (fit) | expert agreement (held-out) |",
        "|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v, spec=".2f": "n/a" if v is None else format(v, spec)  # noqa: E731
    for folder in evals:
        with open(os.path.join(folder, "eval.json")) as f:
            ev = json.load(f)
        d = read_json(ev["checkpoint"], "run.json", state.cfg.storage).get("diagnostics") or {}
        lines.append(
            f"| {ev['reward']} | {fmt(d.get('awr_ess'))} | {fmt(d.get('beta_adv_std'))} "
            f"| {fmt(d.get('adv_clipped_frac'), '.1%')} | {fmt(d.get('reward_weight_ratio'))} "
            f"| {fmt(ev.get('train_agreement'))}{'' if ev.get('fits_training_data') is not False else ' (did not fit)'} "
            f"| {fmt(ev.get('expert_agreement'))} |"
        )
    return "\n".join(lines)


def _label_quality(state: Workspace, raw: str, labels: dict[str, str]) -> str:
    """One label-report over every label set, as `rgvlm label-report --labels A --labels B ...` gives it: the
    agreement between them, and one table per figure (one report per set left agreement always n/a)."""
    reports, table, _ = label_report.build(raw, list(labels.values()), state.cfg.storage)
    pictures = []
    for labeler in labels:
        label_report.histogram(table, [labeler], state.path(f"scores_{labeler}.png"))
        pictures.append(f"![{labeler} scores](scores_{labeler}.png)")
    return label_report.markdown(reports) + "\n" + "\n".join(pictures) + "\n"


def _throughput(state: Workspace) -> str:
    lines = ["| stage | seconds | work | rate | note |", "|---|---|---|---|---|"]
    for s in state.stages:
        rate = f"{s.rate:,.1f} {s.unit}/s" if s.work else "reused"
        lines.append(f"| {s.name} | {s.seconds:,.1f} | {s.work:,.0f} {s.unit} | {rate} | {s.note} |")
    return "\n".join(lines)


def half_width(n: int, p: float = 0.5) -> float:
    """95% half-width of a success rate from n episodes at its widest (p = 0.5), normal approximation."""
    return 1.96 * (p * (1 - p) / max(n, 1)) ** 0.5


def write_report(state: Workspace, seconds: float, evals: list[str], raw: str, labels: dict[str, str]) -> str:
    """report.md from the evaluation folders `evals`, the raw data and its label set per labeler."""
    cfg = state.cfg
    series = _series(state, evals)
    with open(state.path("success_by_k.png"), "wb") as f:
        f.write(plot_png(series, "Success rate by number of sub-tasks k"))
    with open(state.path("completion_by_k.png"), "wb") as f:
        f.write(plot_png(series, "Proportion of sub-tasks completed by k", metric="subtask_completion"))
    warning = f"> **Warning.** {NOISE_WARNING}\n" if state.tiny_vlm else ""
    clip_note = (
        "> The CLIP baseline also uses a tiny random CLIP here; set `run.clip_model=openai/clip-vit-base-patch32` "
        "for a real one.\n"
        if state.tiny_clip
        else ""
    )
    text = f"""# rgvlm-ray demo report

{warning}{clip_note}
Generated {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} on {platform.machine()} ({os.cpu_count()} cores) \
in {seconds / 60:.1f} minutes. Data: {cfg.generate.episodes} episodes, k = {cfg.generate.subtasks}, behaviour \
policy = BabyAI bot with {cfg.generate.expert_noise:.0%} random actions (detour {cfg.generate.detour}, \
abandon {cfg.generate.abandon}). IQL: {cfg.iql.obs_mode} observations, \
{cfg.train.steps} updates per reward source, {cfg.train.workers} worker(s). Evaluation: \
{cfg.eval.episodes_per_k} episodes per k, `{cfg.run.eval_split}` initial states, {cfg.eval.policy} policy, at most \
{cfg.eval.max_steps or "the environment's"} steps.

To label with a real LVLM instead, change one thing, the engine: `rgvlm run --config gpu-node --out DIR` on a
GPU node, or add `{REAL_LVLM}` to this command.

## Task success by sub-task count (the paper's Figure 4)

**What this scale can show.** One training run per reward mode (one seed), {cfg.train.steps} updates, {cfg.eval.episodes_per_k} evaluation episodes per k: a rate from {cfg.eval.episodes_per_k} episodes carries about ±{half_width(cfg.eval.episodes_per_k):.2f} at 95%, so rows that differ by less cannot be told apart here. The demo shows that every stage runs and that each arm trained on its own reward (the row names come from each run's checkpoint). Whether labels help, and by how much, is what `rgvlm study` measures: several seeds per arm, means with 95% confidence intervals (docs/study.md, BENCHMARKS.md).

{comparison_table(series)}
![success by k](success_by_k.png)

![proportion of sub-tasks completed by k](completion_by_k.png)

## Does each learner select actions?

The actor's weights over the last training steps (run.json `diagnostics`): an effective sample size near 1 and
β·sd(A) below ~0.3 mean nearly flat weights, i.e. behaviour cloning whatever the reward; the weight on steps with a
non-zero reward, relative to the mean, shows whether rewarded transitions count for more. Training agreement: the
share of the run's own training states where the policy's most likely action is the one the data took; below 0.97
the learner did not fit its data ("did not fit"), and its success says little about its reward (on data with random
actions, as here, only memorising the noise reaches it: read it against the data's own noise). Expert agreement:
the share of held-out behaviour states where the policy's most likely action is the BabyAI bot's (docs/iql.md).

{_selection(state, evals)}

## Label quality against ground-truth progress (`rgvlm label-report`)

Spearman correlation of the cumulative labeled reward with true sub-task progress per episode (mean over
episodes), next to the same statistic with the episode's rewards shuffled in time (a null baseline), and the mean
reward on steps that complete a sub-task against all other steps.

{_label_quality(state, raw, labels)}
## Throughput of each stage

{_throughput(state)}

Files: raw data under `{os.path.relpath(raw, state.out)}`, one label set per labeler under `data/labels-*` (labels
only, joined to the raw data by shard and episode id; each with `_manifest.json` and `summary.json`), training runs under `runs/`, evaluations under `eval/`, the comparison under `compare/`.
"""
    path = state.path("report.md")
    with open(path, "w") as f:
        f.write(text)
    return path
