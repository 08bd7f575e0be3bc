"""`rgvlm label-report`: how good labels are, without training anything.

Against ground truth, per labeler (rgvlm, clip, oracle) and per sub-task count k:
- Spearman rank correlation between the cumulative labeled reward and true `progress` over an episode's T+1
  states, the initial one included (in the spirit of GVL's value-order correlation). Caveat: any strictly positive reward makes the cumulative
  sum increase, which ranks well against monotone progress even when the rewards are random. So the report
  also gives the same statistic for the episode's own rewards shuffled in time, a null baseline; the gap
  between the two is the informative part.
- Mean reward on steps that complete a sub-task, against all other steps.
- A histogram of raw scores (PNG).
Unscored steps (null reward) count as 0 in the cumulative sum. Episodes whose progress or cumulative reward is
constant have no defined correlation and are counted separately.

Those figures need `progress` and `num_subtasks`, which only generated data has. Every dataset also gets the
figures of gtfree.py, which need no ground truth; where ground truth exists both stand side by side,
with a check of whether the ground-truth-free figures order the labelers as the true rho does.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow as pa
from scipy.stats import spearmanr

from rgvlm_ray.config import StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.errors import UsageError
from rgvlm_ray.label_quality import gtfree, gtfree_markdown
from rgvlm_ray.labelstore.join import Source

SHUFFLE_SEED = 0
GROUND_TRUTH = ("progress", "num_subtasks")


def load(source: Source) -> pa.Table:
    """Only the columns the report needs (no frames), joined with the label sets."""
    names = source.columns()
    wanted = ["episode_id", "rewards", "terminated", *GROUND_TRUTH]
    for n in fmt.labelers_present(names):
        wanted += [fmt.label_column(n, s) for s in gtfree.COLUMNS]
    tables = [source.read(shard, [c for c in wanted if c in names]) for shard in source.shards()]
    return pa.concat_tables(tables, promote_options="permissive")


def has_ground_truth(table: pa.Table) -> bool:
    if any(c not in table.column_names for c in GROUND_TRUTH):
        return False
    return table.column("progress").null_count < table.num_rows


def _spearman(cum: np.ndarray, progress: np.ndarray) -> float | None:
    if len(cum) < 2 or np.ptp(cum) == 0 or np.ptp(progress) == 0:
        return None
    return float(spearmanr(cum, progress).statistic)


def episode_metrics(rewards: list, progress: list, rng: np.random.Generator) -> dict:
    r = np.array([0.0 if x is None else float(x) for x in rewards])
    # Over all T+1 states: the initial one has cumulative reward 0 and progress 0.
    p = np.concatenate([[0.0], np.asarray(progress, dtype=float)])
    completes = np.diff(p) > 0
    cum = lambda x: np.concatenate([[0.0], np.cumsum(x)])  # noqa: E731
    return {
        "spearman": _spearman(cum(r), p),
        "spearman_shuffled": _spearman(cum(rng.permutation(r)), p),
        "completing": r[completes].tolist(),
        "other": r[~completes].tolist(),
    }


def _mean(values: list) -> float | None:
    clean = [v for v in values if v is not None]
    return round(float(np.mean(clean)), 4) if clean else None


def labeler_report(table: pa.Table, name: str) -> dict:
    reward_col = fmt.label_column(name, "reward")
    rng = np.random.default_rng(SHUFFLE_SEED)
    by_k: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for k, rewards, progress in zip(
        table.column("num_subtasks").to_pylist(),
        table.column(reward_col).to_pylist(),
        table.column("progress").to_pylist(),
        strict=True,
    ):
        if progress is None or rewards is None:
            by_k[k]["no_progress"].append(1)
            continue
        m = episode_metrics(rewards, progress, rng)
        acc = by_k[k]
        acc["spearman"].append(m["spearman"])
        acc["spearman_shuffled"].append(m["spearman_shuffled"])
        acc["completing"].extend(m["completing"])
        acc["other"].extend(m["other"])
    rows = []
    for k in sorted(by_k):
        acc = by_k[k]
        defined = [v for v in acc["spearman"] if v is not None]
        rows.append(
            {
                "k": k,
                "episodes": len(acc["spearman"]) + len(acc["no_progress"]),
                "episodes_with_correlation": len(defined),
                "spearman_mean": _mean(defined),
                "spearman_median": round(float(np.median(defined)), 4) if defined else None,
                "spearman_shuffled_mean": _mean(acc["spearman_shuffled"]),
                "reward_completing_mean": _mean(acc["completing"]),
                "reward_other_mean": _mean(acc["other"]),
                "steps_completing": len(acc["completing"]),
                "steps_other": len(acc["other"]),
            }
        )
    return {"labeler": name, "by_k": rows, "spearman_mean_over_k": _mean([r["spearman_mean"] for r in rows])}


def markdown(reports: list[dict]) -> str:
    """The ground-truth-free tables, then (where ground truth exists) the tables by k and the check of the order."""
    lines = [gtfree_markdown.markdown(reports)]
    with_truth = [rep for rep in reports if rep["by_k"]]
    if with_truth:
        lines += ["### Against ground truth (`progress`)", "", gtfree_markdown.orders_markdown(reports)]
    for rep in with_truth:
        lines += [
            f"### {rep['labeler']}",
            "",
            "| k | episodes | Spearman (cum. reward vs progress) | shuffled baseline | mean reward, completing steps | mean reward, other steps |",
            "|---|---|---|---|---|---|",
        ]
        fmt_ = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        for r in rep["by_k"]:
            lines.append(
                f"| {r['k']} | {r['episodes']} | {fmt_(r['spearman_mean'])} (n={r['episodes_with_correlation']}) "
                f"| {fmt_(r['spearman_shuffled_mean'])} | {fmt_(r['reward_completing_mean'])} "
                f"| {fmt_(r['reward_other_mean'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def histogram(table: pa.Table, names: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        scores = [
            s
            for ep in table.column(fmt.label_column(name, "score")).to_pylist()
            for s in (ep or [])
            if s is not None
        ]
        ax.hist(scores, bins=min(40, max(5, len(set(scores)))), color="tab:blue")
        ax.set_title(f"{name} raw scores (n={len(scores)})")
        ax.set_xlabel("score")
        ax.set_ylabel("steps")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build(
    path: str, labels: list[str], cfg: StorageConfig, labeler: str = "", success: str = "auto"
) -> tuple[list[dict], pa.Table, list[str]]:
    """Reports for `labeler` (or every labeler present) over the dataset at `path` joined with `labels`: the
    ground-truth-free figures always, the figures against `progress` where the dataset has it."""
    if success not in gtfree.SUCCESS_SIGNALS:
        raise UsageError(f"--success must be one of {' | '.join(gtfree.SUCCESS_SIGNALS)}, got {success!r}")
    source = Source(path, list(labels), cfg)
    table = load(source)
    present = fmt.labelers_present(table.schema)
    names = [labeler] if labeler else present
    if not names:
        raise UsageError(
            f"{path} carries no labels: label it (`rgvlm label --in {path} --out LABELS --engine hf|vllm|clip|...`) "
            "and pass --labels LABELS"
        )
    missing = [n for n in names if n not in present]
    if missing:
        raise UsageError(f"{path} has no {missing[0]} labels; present: {present or 'none'}")
    free = gtfree.figures(table, names, present, success)
    truth = has_ground_truth(table)
    reports = []
    for n in names:
        rep = labeler_report(table, n) if truth else {"labeler": n, "by_k": [], "spearman_mean_over_k": None}
        reports.append({**rep, "without_ground_truth": free[n]})
    return reports, table, names
