"""`oracle`: privileged rewards from ground-truth `progress`, an upper bound for the other labelers.

Reward: +1 on each step whose action completes a sub-task (progress increases), else 0. The raw score is
the number of sub-tasks that step completed. It needs the `progress` column, which real datasets may lack.
"""

from __future__ import annotations

import hashlib

from rgvlm_ray.data.format import label_column
from rgvlm_ray.errors import UsageError

NAME = "oracle"
VERSION = "oracle-v1"


def fingerprint() -> str:
    return hashlib.sha256(VERSION.encode()).hexdigest()[:16]


def oracle_label(row: dict) -> dict:
    """Label columns (see rgvlm_ray.data.format.LABEL_FIELDS) for one episode row."""
    progress = row.get("progress")
    if progress is None:
        raise UsageError(
            f"episode {row.get('episode_id')}: the oracle labeler needs ground-truth `progress`, which this "
            "dataset lacks; label it with an LVLM instead (`rgvlm label --engine hf|vllm|openai ...`)"
        )
    before = [0, *progress[:-1]]
    gains = [float(p - b) for p, b in zip(progress, before, strict=True)]
    t = len(gains)
    col = lambda suffix: label_column(NAME, suffix)  # noqa: E731
    return {
        col("score"): gains,
        col("score_std"): [None] * t,
        col("reward"): [1.0 if g > 0 else 0.0 for g in gains],
        col("window"): [0] * t,
        col("status"): ["ok"] * t,
        col("message"): [""] * t,
        col("analysis"): [],
        col("fingerprint"): fingerprint(),
        col("episode_status"): "ok",
        col("episode_error"): "",
    }
