"""How actions reach the judge's prompt (docs/format.md, "Actions in the prompt").

- Discrete ids: the dataset's `action_texts` when present (and `labeler.action_text=auto`), else the action
  space's name for the id, else `action <id>`.
- Continuous vectors: `name=value` per dimension, rounded to `labeler.action_decimals`, with dimension names
  from the shard's action-space metadata (`a0`, `a1`, ... where it has none), e.g. `x=0.12, y=-0.50, grip=1.00`.
"""

from __future__ import annotations

from rgvlm_ray.config import LabelerConfig
from rgvlm_ray.data.actions import ActionSpace

ACTION_TEXT_MODES = ("auto", "render")
# The row key under which the labeling job hands each episode its shard's action space.
SPACE_KEY = "__action_space__"


def render(actions: list, space: ActionSpace | None, decimals: int) -> list[str]:
    space = space or ActionSpace("continuous" if actions and isinstance(actions[0], list) else "discrete")
    if space.kind == "discrete":
        names = space.names or []
        return [names[a] if 0 <= a < len(names) else f"action {a}" for a in actions]
    dims = len(actions[0]) if actions else 0
    names = space.dim_names(dims)
    return [", ".join(f"{n}={v:.{decimals}f}" for n, v in zip(names, a, strict=True)) for a in actions]


def action_texts(row: dict, cfg: LabelerConfig) -> list[str]:
    """One text per action of the episode row; raises ValueError for rows that cannot be rendered."""
    if cfg.action_text not in ACTION_TEXT_MODES:
        raise ValueError(f"labeler.action_text must be one of {ACTION_TEXT_MODES}, got {cfg.action_text!r}")
    actions = row.get("actions") or []
    texts = row.get("action_texts")
    if cfg.action_text == "auto" and texts is not None:
        if len(texts) != len(actions):
            raise ValueError(f"action_texts has {len(texts)} texts for {len(actions)} actions")
        return list(texts)
    if actions and isinstance(actions[0], list) and len({len(a) for a in actions}) > 1:
        raise ValueError("continuous actions of different sizes in one episode")
    return render(list(actions), row.get(SPACE_KEY), cfg.action_decimals)


def with_space(rows: list[dict], space: ActionSpace | None) -> list[dict]:
    """The rows, each carrying its shard's action space for `action_texts` (rows are not copied)."""
    for row in rows:
        row[SPACE_KEY] = space
    return rows
