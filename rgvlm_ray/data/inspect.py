"""`rgvlm inspect PATH [--labels LABELS ...]`: what a dataset holds, which labels it carries (in its own columns or
in label sets joined to it), and whether it is valid."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from rgvlm_ray import storage
from rgvlm_ray.config import StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.actions import action_space
from rgvlm_ray.data.importing import source_metadata
from rgvlm_ray.errors import UsageError


def label_coverage(table: pa.Table, labeler: str) -> tuple[int, int]:
    """(steps with a non-null reward, steps) for one labeler."""
    rewards = pc.list_flatten(table.column(fmt.label_column(labeler, "reward")))
    return len(rewards) - rewards.null_count, len(rewards)


def summarize(
    path: str,
    cfg: StorageConfig,
    decode: bool = False,
    join: Callable[[str], pa.Table] | None = None,
    label_sets: list[str] | None = None,
) -> dict:
    """What the dataset at `path` holds. `join(shard)` reads a shard with its label sets (labelstore/join.py):
    their label columns are summarised too, and a label set that does not match is a validation error."""
    shards = fmt.list_shards(path, cfg)
    if not shards:
        raise UsageError(f"no .parquet shards under {path}")
    k_hist: Counter[int] = Counter()
    splits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    columns: list[str] = []
    meta: dict = {}
    coverage: dict[str, list[int]] = {}

    def add(shard: str, name: str, table: pa.Table) -> None:
        columns[:] = columns or table.column_names
        meta.setdefault("actions", json.loads(action_space(table.schema).to_json()))
        meta.setdefault("source", source_metadata(table.schema))
        totals["episodes"] += table.num_rows
        if "actions" in table.column_names:
            totals["transitions"] += int(pc.sum(pc.list_value_length(table.column("actions"))).as_py() or 0)
        if "num_subtasks" in table.column_names:
            k_hist.update(table.column("num_subtasks").to_pylist())
        if "split" in table.column_names:
            splits.update(table.column("split").to_pylist())
        if join is not None:
            try:
                table = join(shard)
            except UsageError as exc:
                join_errors.append(str(exc))
                return
        for labeler in fmt.labelers_present(table.schema):
            done, total = label_coverage(table, labeler)
            acc = coverage.setdefault(labeler, [0, 0])
            acc[0] += done
            acc[1] += total

    join_errors: list[str] = []
    found = fmt.validate(path, cfg, decode, on_table=add)
    issues = [str(i) for i in found] + join_errors
    unreadable = [str(i) for i in found if i.message.startswith("cannot read Parquet")]
    nbytes = 0
    for shard in shards:
        fs, p = storage.get_fs(shard, cfg)
        nbytes += fs.size(p)
    return {
        "path": path,
        "shards": len(shards),
        "episodes": totals["episodes"],
        "transitions": totals["transitions"],
        "bytes": nbytes,
        "k_histogram": dict(sorted(k_hist.items())),
        "splits": dict(splits),
        "columns": columns,
        "actions": meta.get("actions"),
        "source": meta.get("source"),
        "labels": {
            name: {"steps_labeled": d, "steps": t, "coverage": round(d / t, 4) if t else 0.0}
            for name, (d, t) in coverage.items()
        },
        "label_sets": list(label_sets or []),
        "validation_errors": issues,
        "unreadable": unreadable,  # shards no reader can use: the command exits 2 (docs/format.md)
    }


def render(summary: dict) -> str:
    lines = [
        f"dataset      {summary['path']}",
        f"shards       {summary['shards']}  ({summary['bytes'] / 1e6:.1f} MB)",
        f"episodes     {summary['episodes']}",
        f"transitions  {summary['transitions']}",
        f"splits       {summary['splits']}",
        "k histogram  " + "  ".join(f"k={k}: {n}" for k, n in summary["k_histogram"].items()),
        f"columns      {', '.join(summary['columns'])}",
        f"actions      {json.dumps(summary['actions'])}",
    ]
    if summary["source"]:
        lines.append(f"imported     {json.dumps(summary['source'])}")
    if summary["labels"]:
        for name, c in summary["labels"].items():
            lines.append(
                f"labels       {name}: {c['steps_labeled']}/{c['steps']} steps ({100 * c['coverage']:.1f}%)"
            )
    else:
        lines.append("labels       none (label with `rgvlm label --in PATH --out LABELS --engine ...`)")
    errors = summary["validation_errors"]
    lines.append(f"validation   {'ok' if not errors else f'{len(errors)} error(s)'}")
    lines.extend(f"  - {e}" for e in errors[:50])
    if len(errors) > 50:
        lines.append(f"  ... and {len(errors) - 50} more (use --json for all)")
    return "\n".join(lines)
