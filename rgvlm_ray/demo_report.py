"""`report.md` for `rgvlm run`: the paper's Figure-4 style comparison, label quality, and stage throughput."""

from __future__ import annotations

import json
import os
import platform
import time

from rgvlm_ray.demo import NOISE_WARNING, REAL_LVLM, DemoState
from rgvlm_ray.iql.compare import comparison_table
from rgvlm_ray.iql.evaluate import plot_png
from rgvlm_ray.labeling import report as label_report


def _series(state: DemoState) -> dict[str, list[dict]]:
    series = {}
    for reward in state.cfg.run.rewards:
        with open(state.path("eval", reward.replace("+", "_"), "eval.json")) as f:
            series[reward] = json.load(f)["by_k"]
    return series


def _label_quality(state: DemoState) -> str:
    blocks = []
    for labeler in ("rgvlm", "clip", "oracle"):
        reports, table, _ = label_report.build(
            state.path("data", f"labeled-{labeler}"), state.cfg.storage, labeler
        )
        label_report.histogram(table, [labeler], state.path(f"scores_{labeler}.png"))
        blocks.append(label_report.markdown(reports) + f"\n![{labeler} scores](scores_{labeler}.png)\n")
    return "\n".join(blocks)


def _throughput(state: DemoState) -> str:
    lines = ["| stage | seconds | work | rate | note |", "|---|---|---|---|---|"]
    for s in state.stages:
        rate = f"{s.rate:,.1f} {s.unit}/s" if s.work else "reused"
        lines.append(f"| {s.name} | {s.seconds:,.1f} | {s.work:,.0f} {s.unit} | {rate} | {s.note} |")
    return "\n".join(lines)


def write_report(state: DemoState, seconds: float) -> str:
    cfg = state.cfg
    series = _series(state)
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
policy = BabyAI bot with {cfg.generate.expert_noise:.0%} random actions. IQL: {cfg.iql.obs_mode} observations, \
{cfg.train.steps} updates per reward source, {cfg.train.workers} worker(s). Evaluation: \
{cfg.eval.episodes_per_k} episodes per k, `{cfg.run.eval_split}` initial states, at most \
{cfg.eval.max_steps or "the environment's"} steps.

To label with a real LVLM instead, change one thing, the engine: `rgvlm run --config gpu-node --out DIR` on a
GPU node, or add `{REAL_LVLM}` to this command.

## Task success by sub-task count (the paper's Figure 4)

{comparison_table(series)}
![success by k](success_by_k.png)

![proportion of sub-tasks completed by k](completion_by_k.png)

## Label quality against ground-truth progress (`rgvlm label-report`)

Spearman correlation of the cumulative labeled reward with true sub-task progress per episode (mean over
episodes), next to the same statistic with the episode's rewards shuffled in time (a null baseline), and the mean
reward on steps that complete a sub-task against all other steps.

{_label_quality(state)}
## Throughput of each stage

{_throughput(state)}

Files: data under `data/`, labeled datasets `data/labeled-*` (each with `_manifest.json` and `summary.json`),
training runs under `runs/`, evaluations under `eval/`, the comparison under `compare/`.
"""
    path = state.path("report.md")
    with open(path, "w") as f:
        f.write(text)
    return path
