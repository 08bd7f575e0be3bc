"""The label columns every labeler writes (rgvlm_ray.data.format.LABEL_FIELDS under its own prefix, and
WINDOW_FIELDS for the labelers that judge in windows)."""

from __future__ import annotations

from rgvlm_ray.data.format import label_column, label_fields


def label_columns(
    name: str,
    *,
    score: list,
    reward: list,
    window: list,
    status: list,
    message: list,
    analysis: list,
    fingerprint: str,
    score_std: list | None = None,
    window_pos: list | None = None,
    score_alt: list | None = None,
    episode_status: str = "ok",
    episode_error: str = "",
) -> dict:
    values = {
        "score": score,
        "score_std": score_std if score_std is not None else [None] * len(score),
        "reward": reward,
        "window": window,
        "status": status,
        "message": message,
        "analysis": analysis,
        "fingerprint": fingerprint,
        "episode_status": episode_status,
        "episode_error": episode_error,
    }
    fields = label_fields(name)
    if "window_pos" in fields:  # null where not given: e.g. an episode that could not be labeled
        values["window_pos"] = window_pos if window_pos is not None else [None] * len(score)
        values["score_alt"] = score_alt if score_alt is not None else [None] * len(score)
    assert values.keys() == fields.keys(), "format.LABEL_FIELDS or WINDOW_FIELDS changed: update columns.py"
    return {label_column(name, k): v for k, v in values.items()}


def error_columns(name: str, num_actions: int, message: str, fingerprint: str) -> dict:
    """An episode whose input cannot be labeled (deterministic: e.g. an undecodable frame): kept, every step
    null with status `error`, episode_status `bad_input`."""
    t = max(0, num_actions)
    return label_columns(
        name,
        score=[None] * t,
        reward=[None] * t,
        window=[None] * t,
        status=["error"] * t,
        message=[message] * t,
        analysis=[],
        fingerprint=fingerprint,
        episode_status="bad_input",
        episode_error=message,
    )


def num_actions(row: dict) -> int:
    actions = row.get("actions")
    return len(actions) if actions is not None else 0


def token_free_stats(counters: dict) -> dict:
    """`Labeler.stats()` for labelers that prompt no language model (clip, oracle)."""
    return {"prompt_tokens": 0, "completion_tokens": 0, "windows": 0, "parse_failures": 0, **counters}
