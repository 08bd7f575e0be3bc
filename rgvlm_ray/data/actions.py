"""A dataset's action space: discrete ids (with names) or continuous vectors (with dimension names and bounds).

It lives in each shard's footer metadata under `rgvlm.actions` (JSON), written by the importers. A shard without
it (e.g. from `rgvlm generate`) is discrete if its `actions` are integers and continuous if they are lists.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pyarrow as pa

ACTIONS_KEY = b"rgvlm.actions"
GENERATOR_KEY = b"rgvlm.generator"  # written by `rgvlm generate` (rgvlm_ray/data/generate.py)
KINDS = ("discrete", "continuous")
# BabyAI's (MiniGrid's) seven actions, by id: what `rgvlm generate` records.
BABYAI_ACTIONS = ("turn left", "turn right", "move forward", "pick up", "drop", "toggle", "done")


@dataclass(frozen=True)
class ActionSpace:
    kind: str  # discrete | continuous
    names: list[str] | None = None  # discrete: one per id; continuous: one per dimension
    low: list[float] | None = None  # continuous bounds per dimension, if known
    high: list[float] | None = None
    n: int | None = None  # discrete: number of ids; continuous: dimensions

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"action space kind must be one of {KINDS}, got {self.kind!r}")

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None})

    @classmethod
    def from_json(cls, text: str | bytes) -> ActionSpace:
        return cls(**json.loads(text))

    def dim_names(self, dims: int) -> list[str]:
        """Continuous dimension names, falling back to a0..aN-1 where metadata has none (or too few)."""
        names = list(self.names or [])
        return names if len(names) == dims else [f"a{i}" for i in range(dims)]


def is_continuous_type(t: pa.DataType) -> bool:
    """`actions` of type list<list<float>> (or fixed-size lists) hold one vector per step."""
    value = t.value_type if (pa.types.is_list(t) or pa.types.is_large_list(t)) else None
    return value is not None and (
        pa.types.is_list(value) or pa.types.is_large_list(value) or pa.types.is_fixed_size_list(value)
    )


def action_space(schema: pa.Schema) -> ActionSpace:
    """The shard's declared space, or the one its `actions` type implies. Shards from `rgvlm generate` (before it
    declared one) hold BabyAI's seven actions: their ids are checked against that range."""
    meta = (schema.metadata or {}).get(ACTIONS_KEY)
    if meta is not None:
        try:
            return ActionSpace.from_json(meta)
        except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
            raise ValueError(f"its {ACTIONS_KEY.decode()} metadata is not an action space ({exc})") from None
    if GENERATOR_KEY in (schema.metadata or {}):
        return ActionSpace("discrete", list(BABYAI_ACTIONS), n=len(BABYAI_ACTIONS))
    if "actions" in schema.names and is_continuous_type(schema.field("actions").type):
        return ActionSpace("continuous")
    return ActionSpace("discrete")


def with_action_space(table: pa.Table, space: ActionSpace) -> pa.Table:
    meta = dict(table.schema.metadata or {})
    meta[ACTIONS_KEY] = space.to_json().encode()
    return table.replace_schema_metadata(meta)
