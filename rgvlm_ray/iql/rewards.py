"""`--reward MODE`: which dataset column(s) give the per-step reward IQL trains on.

Null-reward rule (unscored steps: an LVLM window that failed to parse, or a step no window covered):
- `iql.null_reward=zero` (default): the step's labeler reward counts as 0, i.e. "no evidence of progress",
  the value the sparse reward has on every non-final step. The transition is kept, so the data the policy
  clones is unchanged.
- `iql.null_reward=drop`: the transition is left out of training.
Either way the number of null steps is logged at the start of `rgvlm train`.
The environment's sparse `rewards` column is never null.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rgvlm_ray.errors import UsageError

SPARSE_COLUMN = "rewards"
REWARD_MODES: dict[str, tuple[str, ...]] = {
    "sparse": (SPARSE_COLUMN,),
    "rgvlm": ("rgvlm_reward",),
    "rgvlm+sparse": ("rgvlm_reward", SPARSE_COLUMN),
    "clip": ("clip_reward",),
    "oracle": ("oracle_reward",),
}
LABEL_ENGINES = {"rgvlm_reward": "hf", "clip_reward": "clip", "oracle_reward": "oracle"}
NULL_RULES = ("zero", "drop")


def reward_columns(mode: str) -> tuple[str, ...]:
    if mode not in REWARD_MODES:
        raise UsageError(f"--reward must be one of {' | '.join(REWARD_MODES)}, got {mode!r}")
    return REWARD_MODES[mode]


def check_columns(mode: str, available: Sequence[str], in_path: str) -> None:
    """Fail with the labeling command to run when the dataset lacks the mode's reward column."""
    for column in reward_columns(mode):
        if column in available:
            continue
        present = sorted(c for c in available if c.endswith("_reward"))
        engine = LABEL_ENGINES[column]
        hint = " (or --engine vllm|openai)" if engine == "hf" else ""
        raise UsageError(
            f"--reward {mode} needs the column {column!r}, which {in_path} lacks "
            f"(label columns present: {', '.join(present) or 'none'}). Label the dataset first: "
            f"rgvlm label --in {in_path} --out LABELED_PATH --engine {engine}{hint}, "
            "then train with --in LABELED_PATH"
        )


def episode_rewards(
    columns: dict[str, Sequence[float | None]], mode: str, weights: dict[str, float], null_rule: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """(reward per step, keep mask per step, null count) for one episode under `mode`.

    `rgvlm+sparse` is w_rgvlm * r_rgvlm + w_sparse * r_sparse (weights: `iql.reward_weights`); the paper's
    RG-VLM+Sparse adds the two, which is the default 1.0 / 1.0.
    """
    if null_rule not in NULL_RULES:
        raise UsageError(f"iql.null_reward must be one of {NULL_RULES}, got {null_rule!r}")
    names = reward_columns(mode)
    t = len(columns[names[0]])
    total = np.zeros(t, dtype=np.float32)
    keep = np.ones(t, dtype=bool)
    nulls = 0
    for name in names:
        raw = columns[name]
        values = np.array([np.nan if v is None else v for v in raw], dtype=np.float32)
        missing = np.isnan(values)
        nulls += int(missing.sum())
        keep &= ~missing if null_rule == "drop" else True
        key = "sparse" if name == SPARSE_COLUMN else name.removesuffix("_reward")
        weight = 1.0 if len(names) == 1 else float(weights[key])
        total += weight * np.where(missing, 0.0, values).astype(np.float32)
    return total, keep, nulls


def check_weights(mode: str, weights: dict[str, float]) -> None:
    if mode == "rgvlm+sparse":
        missing = [k for k in ("rgvlm", "sparse") if k not in weights]
        if missing:
            raise UsageError(f"iql.reward_weights needs keys rgvlm and sparse, missing: {missing}")
