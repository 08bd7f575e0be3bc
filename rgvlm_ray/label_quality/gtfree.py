"""Label quality without ground truth: the figures `rgvlm label-report` gives on any dataset (docs/labeling-job.md).

A user's own data has no `progress` column, so labels are judged against what every dataset has (its own reward
and `terminated`), against each other, and against themselves:
- success separation: the AUROC of each episode's labeled return for successful vs failed episodes, with a
  Hanley-McNeil 95% CI (Robometer's success/failure discrimination, RoboReward's end-of-episode outcome);
- success-step rank: within each successful episode, the rank of the labeled reward on the step where the
  dataset marks success among the episode's other steps (0.5 is chance). Unlike the return, it sees timing;
- VOC: GVL's value-order correlation, Spearman of the cumulative labeled reward with time, on successful
  episodes (GVL scores expert demonstrations, whose progress rises with time);
- agreement: per-episode Spearman of per-step rewards between label sets, and with the dataset's reward where it
  is dense;
- consistency: the spread over self-consistency samples (`score_std`) and the disagreement of two overlapping
  windows on the steps both saw (`score`, `score_alt`);
- position bias: per window, Spearman of the score with the step's position in the window (`window_pos`).
Time-resolved figures come with the same figure on the episode's rewards shuffled in time, the null baseline the
ground-truth report also gives. Unscored steps count as 0 reward, as in the ground-truth report; score-based
figures skip them. Episodes a labeler could not label (episode_status not ok) are left out of its figures.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow as pa
from scipy.stats import mannwhitneyu, spearmanr

from rgvlm_ray.data import format as fmt
from rgvlm_ray.errors import UsageError

SUCCESS_SIGNALS = ("auto", "reward", "terminated", "none")
Z95 = 1.959963984540054  # two-sided 95% normal quantile
SHUFFLE_SEED = 0
# Label columns the figures read; window_pos and score_alt only labelers with windows write (format.WINDOW_FIELDS), and
# label sets written before they existed lack them.
COLUMNS = ("score", "reward", "score_std", "window", "window_pos", "score_alt", "episode_status")


def reward_kind(rewards: list[np.ndarray]) -> str:
    """`none` (all zero), `sparse` (at most one non-zero step per episode, none negative), else `dense`."""
    if all(not r.any() for r in rewards):
        return "none"
    if all(np.count_nonzero(r) <= 1 and (r >= 0).all() for r in rewards):
        return "sparse"
    return "dense"


def success_signal(
    rewards: list[np.ndarray], terminated: list, requested: str
) -> tuple[str, list[int | None] | None]:
    """(signal used, per episode the step where success is marked or None for a failure); None: no signal.

    auto: a sparse reward marks success where it is positive; with no reward, `terminated` does (its last step);
    a dense reward gives no success signal, since `terminated` means failure in many dense-reward tasks (a fall)."""
    if requested not in SUCCESS_SIGNALS:
        raise UsageError(f"label_report.success must be one of {SUCCESS_SIGNALS}, got {requested!r}")
    kind = reward_kind(rewards)
    signal = requested
    if requested == "auto":
        signal = {"sparse": "reward", "none": "terminated", "dense": "none"}[kind]
    if signal == "none":
        return signal, None
    if signal == "reward":
        return signal, [int(np.flatnonzero(r > 0)[-1]) if (r > 0).any() else None for r in rewards]
    return signal, [
        len(r) - 1 if bool(t) and len(r) else None for r, t in zip(rewards, terminated, strict=True)
    ]


def mean_ci(values: list[float | None], low: float = -1.0, high: float = 1.0) -> dict:
    """Mean, normal-approximation 95% CI over independent units (episodes or windows) clipped to the figure's
    range [low, high], and n."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return {"mean": None, "ci": None, "n": 0}
    mean = float(v.mean())
    if len(v) < 2:
        return {"mean": _r(mean), "ci": None, "n": 1}
    half = Z95 * v.std(ddof=1) / np.sqrt(len(v))
    return {"mean": _r(mean), "ci": [_r(max(low, mean - half)), _r(min(high, mean + half))], "n": int(len(v))}


def auroc(pos: list[float], neg: list[float]) -> dict:
    """P(a positive scores above a negative), ties half, with the Hanley-McNeil (1982) 95% CI."""
    n1, n0 = len(pos), len(neg)
    if not n1 or not n0:
        return {"auroc": None, "ci": None, "positive": n1, "negative": n0}
    a = float(mannwhitneyu(pos, neg).statistic) / (n1 * n0)
    if min(n1, n0) < AUROC_MIN_PER_CLASS:  # Hanley-McNeil's normal approximation does not hold there
        why = f"no CI below {AUROC_MIN_PER_CLASS} episodes of each kind"
        return {"auroc": _r(a), "ci": None, "positive": n1, "negative": n0, "ci_why": why}
    # At a = 0 or 1 Hanley-McNeil's variance is 0, a zero-width interval: half a pair keeps it honest.
    a_se = min(max(a, 0.5 / (n1 * n0)), 1 - 0.5 / (n1 * n0))
    q1, q2 = a_se / (2 - a_se), 2 * a_se * a_se / (1 + a_se)
    var = a_se * (1 - a_se) + (n1 - 1) * (q1 - a_se**2) + (n0 - 1) * (q2 - a_se**2)
    se = np.sqrt(max(0.0, var) / (n1 * n0))
    ci = [_r(max(0.0, a - Z95 * se)), _r(min(1.0, a + Z95 * se))]
    return {"auroc": _r(a), "ci": ci, "positive": n1, "negative": n0}


AUROC_MIN_PER_CLASS = 5  # successful and failed episodes each, for the AUROC's CI (docs/labeling-job.md)


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def step_rank(r: np.ndarray, step: int) -> float | None:
    """The share of the episode's other steps whose reward is below the reward at `step` (ties count half)."""
    others = np.delete(r, step)
    if not len(others):
        return None
    return float(((others < r[step]).sum() + 0.5 * (others == r[step]).sum()) / len(others))


def voc(r: np.ndarray) -> float | None:
    """GVL's value-order correlation with the cumulative reward as the value, over the T+1 states."""
    value = np.concatenate([[0.0], np.cumsum(r)])
    return spearman(value, np.arange(len(value), dtype=float))


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def _floats(values: list | None) -> np.ndarray:
    return np.array([0.0 if x is None else float(x) for x in values or []])


class Columns:
    """One labeler's columns over the report's episodes, as Python lists (None where absent)."""

    def __init__(self, table: pa.Table, name: str) -> None:
        columns = {s: fmt.label_column(name, s) for s in COLUMNS}
        self.present = {s: c in table.column_names for s, c in columns.items()}
        self.values = {
            s: table.column(c).to_pylist() if self.present[s] else [None] * table.num_rows
            for s, c in columns.items()
        }
        status = self.values["episode_status"]
        self.labeled = [
            r is not None and (s is None or s == "ok")
            for r, s in zip(self.values["reward"], status, strict=True)
        ]
        self.rewards = [
            _floats(r) if ok else None for r, ok in zip(self.values["reward"], self.labeled, strict=True)
        ]


def dataset_summary(
    table: pa.Table, requested: str
) -> tuple[dict, list[np.ndarray], list[int | None] | None]:
    rewards = [_floats(r) for r in table.column("rewards").to_pylist()]
    terminated = (
        table.column("terminated").to_pylist()
        if "terminated" in table.column_names
        else [None] * len(rewards)
    )
    signal, steps = success_signal(rewards, terminated, requested)
    summary = {
        "episodes": len(rewards),
        "reward": reward_kind(rewards),
        "success_signal": signal,
        "success_requested": requested,
        "successful": None if steps is None else sum(s is not None for s in steps),
        "failed": None if steps is None else sum(s is None for s in steps),
    }
    return summary, rewards, steps


def labeler_figures(
    cols: Columns,
    rewards: list[np.ndarray],
    steps: list[int | None] | None,
    dense: bool,
    seed: int = SHUFFLE_SEED,
) -> dict:
    """Every per-labeler figure that needs neither ground truth nor another label set."""
    rng = np.random.default_rng(seed)
    labeled = [i for i, ok in enumerate(cols.labeled) if ok]
    out: dict = {"episodes_labeled": len(labeled), "episodes_unlabeled": len(cols.labeled) - len(labeled)}

    if steps is None:
        out["success_auroc"] = {"auroc": None, "ci": None, "why": "no success signal"}
        out["success_step_rank"] = {"mean": None, "ci": None, "n": 0, "why": "no success signal"}
    else:
        pos = [float(cols.rewards[i].sum()) for i in labeled if steps[i] is not None]
        neg = [float(cols.rewards[i].sum()) for i in labeled if steps[i] is None]
        out["success_auroc"] = auroc(pos, neg)
        if not pos or not neg:
            out["success_auroc"]["why"] = "needs successful and failed episodes"
        ranks, null = [], []
        for i in labeled:
            s, r = steps[i], cols.rewards[i]
            if s is not None and len(r) == len(rewards[i]):
                ranks.append(step_rank(r, s))
                null.append(step_rank(rng.permutation(r), s))
        out["success_step_rank"] = {**mean_ci(ranks, 0.0, 1.0), "shuffled": mean_ci(null)["mean"]}

    # GVL scores expert demonstrations: successful episodes where the dataset says which they are.
    voc_eps = labeled if steps is None else [i for i in labeled if steps[i] is not None]
    out["voc"] = {
        **mean_ci([voc(cols.rewards[i]) for i in voc_eps]),
        "shuffled": mean_ci([voc(rng.permutation(cols.rewards[i])) for i in voc_eps])["mean"],
        "episodes": "all" if steps is None else "successful",
    }

    if dense:
        pairs = [(cols.rewards[i], rewards[i]) for i in labeled if len(cols.rewards[i]) == len(rewards[i])]
        out["reward_agreement"] = {
            **mean_ci([spearman(a, b) for a, b in pairs]),
            "shuffled": mean_ci([spearman(rng.permutation(a), b) for a, b in pairs])["mean"],
        }
    else:
        out["reward_agreement"] = {
            "mean": None,
            "ci": None,
            "n": 0,
            "why": "the dataset's reward is not dense",
        }

    out["position_bias"] = position_bias(cols, labeled)
    out["sample_spread"] = sample_spread(cols, labeled)
    out["overlap"] = overlap_disagreement(cols, labeled)
    return out


def _scores(cols: Columns, labeled: list[int]) -> np.ndarray:
    return np.array([s for i in labeled for s in cols.values["score"][i] or [] if s is not None], dtype=float)


def positions(window: list | None, pos: list | None) -> list | None:
    """Each step's position in the window that scored it: `window_pos`, or the step index where the whole episode
    is window 0 (labelers without windows, and RG-VLM episodes short enough for one window); None if unknown."""
    if pos is not None:
        return pos
    if window is not None and all(w == 0 for w in window):
        return list(range(len(window)))
    return None


def position_bias(cols: Columns, labeled: list[int]) -> dict:
    """Mean over windows (3+ scored steps) of Spearman(score, position in the window)."""
    corrs, unknown = [], 0
    for i in labeled:
        pos = positions(cols.values["window"][i], cols.values["window_pos"][i])
        if pos is None:
            unknown += 1
            continue
        groups: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for s, w, p in zip(cols.values["score"][i] or [], cols.values["window"][i], pos, strict=False):
            if s is not None and w is not None and p is not None:
                groups[w].append((p, s))
        for members in groups.values():
            if len(members) >= 3:
                p, s = np.array(members, dtype=float).T
                corrs.append(spearman(p, s))
    out = mean_ci(corrs)
    if unknown:  # RG-VLM labels from before `window_pos` was recorded
        out["why"] = f"{unknown} episode(s) without window_pos left out (relabel with --force to record it)"
    return out


def sample_spread(cols: Columns, labeled: list[int]) -> dict:
    """Mean std over self-consistency samples, and that as a share of the scores' spread over steps."""
    stds = [s for i in labeled for s in cols.values["score_std"][i] or [] if s is not None]
    if not stds:
        return {
            "steps": 0,
            "std_mean": None,
            "ratio": None,
            "why": "one sample per window (labeler.num_samples=1)",
        }
    spread = float(_scores(cols, labeled).std())
    mean = float(np.mean(stds))
    return {"steps": len(stds), "std_mean": _r(mean), "ratio": _r(mean / spread) if spread > 0 else None}


def overlap_disagreement(cols: Columns, labeled: list[int]) -> dict:
    """Steps two windows both scored: mean |difference|, that over the scores' spread, and their Spearman."""
    if not cols.present["score_alt"]:
        return {"steps": 0, "abs_diff_mean": None, "why": "no overlapping windows recorded (score_alt)"}
    pairs = [
        (s, a)
        for i in labeled
        for s, a in zip(cols.values["score"][i] or [], cols.values["score_alt"][i] or [], strict=False)
        if s is not None and a is not None
    ]
    if not pairs:
        return {"steps": 0, "abs_diff_mean": None, "why": "no step was scored by two windows"}
    s, a = np.array(pairs, dtype=float).T
    diff = float(np.abs(s - a).mean())
    spread = float(_scores(cols, labeled).std())
    return {
        "steps": len(pairs),
        "abs_diff_mean": _r(diff),
        "ratio": _r(diff / spread) if spread > 0 else None,
        "spearman": _r(spearman(s, a)),
    }


def agreement(a: Columns, b: Columns) -> dict:
    """Per-episode Spearman of the two label sets' per-step rewards, over episodes both labeled."""
    corrs = [
        spearman(ra, rb)
        for ra, rb in zip(a.rewards, b.rewards, strict=True)
        if ra is not None and rb is not None and len(ra) == len(rb)
    ]
    return mean_ci(corrs)


def figures(table: pa.Table, names: list[str], present: list[str], success: str = "auto") -> dict[str, dict]:
    """Per labeler in `names`: the dataset summary and every ground-truth-free figure, with its agreement with
    each other labeler `present` in the table."""
    summary, rewards, steps = dataset_summary(table, success)
    cols = {n: Columns(table, n) for n in dict.fromkeys([*names, *present])}
    out = {}
    for n in names:
        f = labeler_figures(cols[n], rewards, steps, summary["reward"] == "dense")
        f["agreement"] = {m: agreement(cols[n], cols[m]) for m in cols if m != n}
        means = [v["mean"] for v in f["agreement"].values() if v["mean"] is not None]
        f["agreement_mean"] = _r(np.mean(means)) if means else None
        out[n] = {"dataset": summary, **f}
    return out
