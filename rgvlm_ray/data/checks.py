"""The checks behind `format.validate_table` that look at values: text that is not UTF-8, per-frame binary
columns measured in Arrow, action ids against the action space, finite rewards, whole symbolic grids
(docs/format.md#validation). Kept apart from the schema and the shard I/O in format.py."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from rgvlm_ray.data.actions import ActionSpace


@dataclass(frozen=True)
class ValidationIssue:
    shard: str
    episode: str | None
    column: str | None
    message: str
    # The shard cannot be read as episodes at all (a missing column, a wrong type, text that is not UTF-8):
    # nothing of it may be summarised or converted to Python.
    fatal: bool = False

    def __str__(self) -> str:
        where = [self.shard]
        if self.episode is not None:
            where.append(f"episode {self.episode}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        return f"{': '.join(where)}: {self.message}"


def decodes(png: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(png)) as im:
            im.load()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# Per-frame binary columns: their lengths are checked from Arrow, their bytes never copied into Python.
BINARY_COLUMNS = ("frames", "frames_full", "symbolic")
PNG_COLUMNS = ("frames", "frames_full")
SYMBOLIC_SHAPE = (7, 7, 3)
SYMBOLIC_BYTES = SYMBOLIC_SHAPE[0] * SYMBOLIC_SHAPE[1] * SYMBOLIC_SHAPE[2]


def binary_sizes(table: pa.Table) -> dict[str, tuple[list, list]]:
    """Per binary column: (list length per episode, per episode the (shortest, longest) item or None)."""
    out = {}
    for c in BINARY_COLUMNS:
        if c not in table.column_names:
            continue
        col = table[c].combine_chunks()
        extent = []
        if c == "symbolic":
            for i in range(len(col)):
                items = col[i].values
                if items is None or len(items) == 0:
                    extent.append(None)
                    continue
                n = pc.binary_length(items)
                extent.append((pc.min(n).as_py(), pc.max(n).as_py()))
        out[c] = (pc.list_value_length(col).to_pylist(), extent)
    return out


def invalid_text(table: pa.Table, shard: str) -> list[ValidationIssue]:
    """Text columns (string, list<string>) whose bytes are not valid UTF-8, naming the first episode of each."""
    issues = []
    for name in table.column_names:
        col = table[name]
        if not _holds_text(col.type):
            continue
        try:
            col.validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        issues.append(
            ValidationIssue(
                shard, _first_bad_text(table, name), name, "text that is not valid UTF-8", fatal=True
            )
        )
    return issues


def _holds_text(t: pa.DataType) -> bool:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _holds_text(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _first_bad_text(table: pa.Table, name: str) -> str | None:
    """The id of the first episode whose `name` is not valid UTF-8 (its row number if its id is bad too)."""
    col = table[name].combine_chunks()
    for i in range(len(col)):
        try:
            col.slice(i, 1).validate(full=True)
        except pa.ArrowInvalid:
            try:
                return (
                    str(table["episode_id"][i].as_py()) if "episode_id" in table.column_names else f"row {i}"
                )
            except UnicodeDecodeError:
                return f"row {i}"
    return None


def check_values(row: dict, space: ActionSpace, sizes: dict, index: int, bad: Callable) -> None:
    """Values a learner would index or sum with: action ids in the declared range, finite rewards, whole
    symbolic grids, headings 0..3."""
    actions = row["actions"]
    if isinstance(actions[0], list):
        if len({len(a) for a in actions if a is not None}) > 1:
            bad(
                "actions",
                f"continuous actions of different sizes {sorted({len(a) for a in actions if a is not None})}",
            )
        if any(a is None or any(x is None or not math.isfinite(x) for x in a) for a in actions):
            bad("actions", "a null, NaN or infinite value")
    else:
        if any(a is None for a in actions):
            bad("actions", "a null action")
        ids = [a for a in actions if a is not None]
        if ids and min(ids) < 0:
            bad("actions", f"action id {min(ids)} is negative")
        elif ids and space.n is not None and max(ids) >= space.n:
            bad(
                "actions",
                f"action id {max(ids)} is out of range: the action space has {space.n} (0..{space.n - 1})",
            )
    for column in ("rewards", "expert_actions"):
        values = row.get(column) or []
        if any(v is None or (column == "rewards" and not math.isfinite(v)) for v in values):
            bad(column, "a null, NaN or infinite value" if column == "rewards" else "a null action")
    extent = sizes.get("symbolic", (None, []))[1]
    if extent and extent[index] is not None and extent[index] != (SYMBOLIC_BYTES, SYMBOLIC_BYTES):
        bad(
            "symbolic",
            f"grids of {extent[index][0]}..{extent[index][1]} bytes, expected {SYMBOLIC_BYTES} (7x7x3)",
        )
    directions = [d for d in row.get("directions") or [] if d is not None]
    if directions and not all(0 <= d <= 3 for d in directions):
        bad("directions", "a heading outside 0..3")


def one_line(issues: list[ValidationIssue]) -> str:
    """The first problem, and how many more: what a reader prints before it exits 2."""
    more = f" (and {len(issues) - 1} more problem(s): `rgvlm inspect` lists them)" if len(issues) > 1 else ""
    return f"{issues[0]}{more}"
