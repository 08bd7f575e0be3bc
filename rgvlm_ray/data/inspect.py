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


class Behaviour:
    """Success, sub-task completion by k and agreement with the bot's actions, for data that records them."""

    def __init__(self) -> None:
        self.by_k: dict[int, list[tuple[bool, float]]] = {}
        self.agree = [0, 0]
        self.missions: dict[tuple, bool] = {}  # (k, mission seed, goal) -> any successful episode

    def add(self, table: pa.Table) -> None:
        names = table.column_names
        if "num_subtasks" in names and "progress" in names:
            cols = [
                table.column(c).to_pylist() for c in ("num_subtasks", "progress", "terminated", "rewards")
            ]
            n = table.num_rows
            seeds = table.column("seed").to_pylist() if "seed" in names else [None] * n
            goals = table.column("goal").to_pylist() if "goal" in names else [None] * n
            for k, progress, term, rewards, seed, goal in zip(*cols, seeds, goals, strict=True):
                if k:  # null values are validation errors, reported beside this summary
                    success = bool(term) and bool(rewards) and (rewards[-1] or 0) > 0
                    done = (progress[-1] or 0) if progress else 0
                    self.by_k.setdefault(k, []).append((success, done / k))
                    key = (k, seed, goal)
                    self.missions[key] = self.missions.get(key, False) or success
        if "expert_actions" in names:
            for a, e in zip(
                table.column("actions").to_pylist(), table.column("expert_actions").to_pylist(), strict=True
            ):
                if e is not None:
                    self.agree[0] += sum(int(x == y) for x, y in zip(a, e, strict=False))
                    self.agree[1] += len(e)

    def result(self) -> dict | None:
        if not self.by_k and not self.agree[1]:
            return None
        rows = {
            k: {"episodes": len(v), "success_rate": round(sum(s for s, _ in v) / len(v), 3),
                "subtask_completion": round(sum(c for _, c in v) / len(v), 3)}
            for k, v in sorted(self.by_k.items())
        }  # fmt: skip
        return {
            "by_k": rows,
            "expert_agreement": round(self.agree[0] / self.agree[1], 4) if self.agree[1] else None,
            "missions": len(self.missions),
            "episodes_per_mission": round(
                sum(len(v) for v in self.by_k.values()) / max(1, len(self.missions)), 2
            ),
            "missions_with_a_success": sum(self.missions.values()),
        }


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
    behaviour = Behaviour()

    def add(shard: str, name: str, table: pa.Table) -> None:
        behaviour.add(table)
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
        "behaviour": behaviour.result(),
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
    b = summary.get("behaviour")
    if b:
        agree = "n/a (no expert_actions)" if b["expert_agreement"] is None else f"{b['expert_agreement']:.3f}"
        lines.append(f"behaviour    actions equal to the bot's: {agree}")
        lines.append(
            f"  missions: {b['missions']} ({b['episodes_per_mission']:.1f} episodes each), "
            f"{b['missions_with_a_success']} with a successful episode"
        )
        for k, r in b["by_k"].items():
            lines.append(
                f"  k={k}: {r['episodes']} episodes, success {r['success_rate']:.2f}, "
                f"sub-tasks completed {r['subtask_completion']:.2f}"
            )
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
