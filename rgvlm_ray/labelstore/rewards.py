"""`--reward MODE`: which dataset column(s) give the per-step reward IQL trains on.

Grammar: MODE is `TERM` or `TERM+TERM+...`, each TERM `sparse` (the environment's `rewards` column) or a labeler
name (`rgvlm`, `gvl`, `clip`, `blip2`, `roboclip`, `oracle`, `noisyNN`; its `<name>_reward` column), each at
most once. So `sparse`, `rgvlm`, `rgvlm+sparse`, `oracle+sparse`, `noisy30`, `noisy30+sparse`, `clip+sparse`,
`blip2+sparse`, `gvl+sparse` are all modes.
A one-term mode is that column as is. A multi-term mode is sum_term w_term * r_term with
w_term = `iql.reward_weights.get(term, 1.0)`; the paper's RG-VLM+Sparse adds the two, i.e. 1.0 / 1.0.

Null-reward rule (unscored steps: an LVLM window that failed to parse, or a step no window covered):
- `iql.null_reward=zero` (default): the step's labeler reward counts as 0, i.e. "no evidence of progress",
  the value the sparse reward has on every non-final step. The transition is kept, so the data the policy
  clones is unchanged.
- `iql.null_reward=drop`: the transition is left out of training.
Either way the number of null steps is logged at the start of `rgvlm train`.
The environment's sparse `rewards` column is never null.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from rgvlm_ray.data import format as fmt
from rgvlm_ray.errors import UsageError

SPARSE = "sparse"
SPARSE_COLUMN = "rewards"
VALID_FORMS = (
    "TERM or TERM+TERM+..., each TERM one of sparse | rgvlm | gvl | clip | blip2 | roboclip | oracle | noisyNN "
    "(NN = the noisy oracle's level in percent, two digits: noisy10, noisy30, noisy100), each at most once; "
    "e.g. sparse, rgvlm+sparse, oracle+sparse, noisy30+sparse"
)
NULL_RULES = ("zero", "drop")


def reward_terms(mode: str) -> tuple[str, ...]:
    """The terms of a mode, in order: "oracle+sparse" -> ("oracle", "sparse")."""
    terms = tuple(str(mode).split("+"))
    unknown = [t for t in terms if t != SPARSE and not fmt.is_labeler(t)]
    if unknown:
        raise UsageError(f"--reward {mode!r}: unknown term(s) {unknown}; expected {VALID_FORMS}")
    repeated = sorted({t for t in terms if terms.count(t) > 1})
    if repeated:
        raise UsageError(f"--reward {mode!r}: term(s) {repeated} repeated; expected {VALID_FORMS}")
    return terms


def term_column(term: str) -> str:
    return SPARSE_COLUMN if term == SPARSE else fmt.label_column(term, "reward")


def reward_columns(mode: str) -> tuple[str, ...]:
    return tuple(term_column(t) for t in reward_terms(mode))


def labelers_in(mode: str) -> list[str]:
    """The labelers whose labels a mode reads: "noisy30+sparse" -> ["noisy30"]."""
    return [t for t in reward_terms(mode) if t != SPARSE]


# The classic modes, by name (any mode of the grammar works; this is not a whitelist).
REWARD_MODES: dict[str, tuple[str, ...]] = {
    m: reward_columns(m) for m in ("sparse", "rgvlm", "rgvlm+sparse", "clip", "oracle")
}


def label_engine_args(labeler: str) -> str:
    """The `rgvlm label` flags that write `labeler`'s columns."""
    if labeler == "rgvlm":
        return "--engine hf (or --engine vllm|openai)"
    if labeler == "gvl":
        return "--engine hf labeler.strategy=gvl (or --engine vllm|openai)"
    percent = fmt.noisy_percent(labeler)
    if percent is not None:
        return f"--engine noisy_oracle labeler.oracle_noise={percent / 100:g}"
    return f"--engine {labeler}"


def check_columns(mode: str, available: Sequence[str], in_path: str, with_labels: bool = False) -> None:
    """Fail with the labeling command to run when the dataset (and its label sets) lack a mode's column."""
    for term in reward_terms(mode):
        column = term_column(term)
        if column in available:
            continue
        present = sorted(c for c in available if c.endswith("_reward"))
        raise UsageError(
            f"--reward {mode} needs the column {column!r}, which {in_path}"
            f"{' and its --labels' if with_labels else ''} lack (label columns present: "
            f"{', '.join(present) or 'none'}). Label the dataset first: "
            f"rgvlm label --in {in_path} --out LABELS {label_engine_args(term)}, "
            f"then pass --in {in_path} --labels LABELS"
        )


def episode_rewards(
    columns: dict[str, Sequence[float | None]], mode: str, weights: dict[str, float], null_rule: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """(reward per step, keep mask per step, null count) for one episode under `mode`.

    A multi-term mode is sum_term w_term * r_term, w_term = `weights.get(term, 1.0)` (`iql.reward_weights`); the
    paper's RG-VLM+Sparse adds the two, which is the default 1.0 / 1.0. A one-term mode ignores the weights.
    """
    if null_rule not in NULL_RULES:
        raise UsageError(f"iql.null_reward must be one of {NULL_RULES}, got {null_rule!r}")
    terms = reward_terms(mode)
    t = len(columns[term_column(terms[0])])
    total = np.zeros(t, dtype=np.float32)
    keep = np.ones(t, dtype=bool)
    nulls = 0
    for term in terms:
        raw = columns[term_column(term)]
        values = np.array([np.nan if v is None else v for v in raw], dtype=np.float32)
        missing = np.isnan(values)
        nulls += int(missing.sum())
        keep &= ~missing if null_rule == "drop" else True
        weight = 1.0 if len(terms) == 1 else float(weights.get(term, 1.0))
        total += weight * np.where(missing, 0.0, values).astype(np.float32)
    return total, keep, nulls


def check_weights(mode: str, weights: Mapping[str, float]) -> None:
    """`iql.reward_weights` keys must be terms (a typo would silently weigh 1.0) and the values numbers."""
    reward_terms(mode)
    bad_keys = [k for k in weights if k != SPARSE and not fmt.is_labeler(str(k))]
    if bad_keys:
        raise UsageError(
            f"iql.reward_weights: unknown key(s) {bad_keys}; keys are reward terms ({VALID_FORMS})"
        )
    for key, value in weights.items():
        try:
            ok = math.isfinite(float(value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise UsageError(f"iql.reward_weights.{key} must be a finite number, got {value!r}")
