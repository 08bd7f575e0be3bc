"""What every importer shares: one Ray task writes one shard, and every source episode is accounted for.

An importer turns a slice of its source (Minari episodes, a LeRobot data file) into episode rows plus `Skipped`
entries, each with its reason. `run_tasks` runs the tasks with a progress bar, and `finish` writes
OUT/_import.json with the balance: source episodes = written + skipped. Nothing is dropped silently.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from rgvlm_ray import storage
from rgvlm_ray.config import StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.actions import ActionSpace, with_action_space
from rgvlm_ray.errors import UsageError

log = logging.getLogger(__name__)
SOURCE_KEY = b"rgvlm.source"
SUMMARY_NAME = "_import.json"


@dataclass
class Skipped:
    episode: str  # the source's own id for it, e.g. "episode 12" or "data/chunk-000/file-001.parquet ep 3"
    reason: str


@dataclass
class ShardResult:
    shard: str | None  # None when every episode of the task was skipped
    written: int
    skipped: list[Skipped] = field(default_factory=list)
    bytes: int = 0
    # Episodes written, but with something of the source lost (e.g. Minari metadata that cannot be read): why.
    warnings: list[Skipped] = field(default_factory=list)

    @property
    def source_episodes(self) -> int:
        return self.written + len(self.skipped)


def one_line(exc: BaseException) -> str:
    """An exception as `Type: message` on one line (h5py's and pyarrow's messages can run over several)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def goal_rule(goal: str, override: bool, has_missions: bool) -> str:
    """Which goal each episode gets, in one line: the dataset's own missions win over --goal, which fills only
    episodes without one, unless --override-goal."""
    if override and not goal:
        raise UsageError("--override-goal needs --goal TEXT: the goal to use for every episode")
    if not goal:
        return "goal: each episode's own mission"
    if override:
        return f"goal: --goal {goal!r} for every episode (--override-goal: the dataset's own missions are not used)"
    if has_missions:
        return (
            f"goal: the dataset's own missions win; --goal {goal!r} only fills episodes without one "
            "(pass --override-goal to use it for every episode)"
        )
    return f"goal: --goal {goal!r} for every episode (the dataset has no missions)"


def resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Downscale so the longest side is at most `size` (0: keep), before PNG-encoding."""
    if not size or max(rgb.shape[:2]) <= size:
        return rgb
    im = Image.fromarray(rgb)
    im.thumbnail((size, size))
    return np.asarray(im)


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def episodes_table(rows: list[dict], space: ActionSpace, source: dict[str, Any]) -> pa.Table:
    """Rows (dicts of format columns) as a table in the canonical types, with the action space and source."""
    names = list(rows[0])
    types = {f.name: f.type for f in fmt.EPISODE_SCHEMA}
    if space.kind == "continuous":
        types["actions"] = fmt.CONTINUOUS_ACTIONS
    unknown = [n for n in names if n not in types]
    if unknown:
        raise ValueError(f"importer produced columns outside docs/format.md: {unknown}")
    table = pa.Table.from_pylist(rows, schema=pa.schema([pa.field(n, types[n]) for n in names]))
    table = with_action_space(table, space)
    meta = dict(table.schema.metadata or {})
    meta[SOURCE_KEY] = json.dumps(source).encode()
    return table.replace_schema_metadata(meta)


def write_episodes(
    rows: list[dict],
    skipped: list[Skipped],
    out: str,
    index: int,
    space: ActionSpace,
    source: dict[str, Any],
    cfg: StorageConfig | None,
) -> ShardResult:
    """Write one shard of imported episodes (nothing when all were skipped). Runs inside the Ray task."""
    if not rows:
        return ShardResult(None, 0, skipped)
    name = shard_name(index)
    nbytes = fmt.write_shard(episodes_table(rows, space, source), storage.join(out, name), cfg)
    return ShardResult(name, len(rows), skipped, nbytes)


def source_metadata(schema: pa.Schema) -> dict[str, Any] | None:
    """Where an imported shard came from (format, dataset, camera, stride), or None for other shards."""
    raw = (schema.metadata or {}).get(SOURCE_KEY)
    return json.loads(raw) if raw else None


def run_tasks(calls: Sequence[Callable[[], Any]], num_cpus: float, desc: str) -> list[ShardResult]:
    """Run each zero-argument call as a Ray task, with a progress bar over source episodes."""
    import ray
    from tqdm import tqdm

    task = ray.remote(num_cpus=num_cpus)(lambda call: call())
    pending = [task.remote(c) for c in calls]
    results = []
    with tqdm(total=len(pending), desc=desc, unit="task") as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results.extend(ray.get(done))
            bar.update(len(done))
    return results


def finish(
    out: str,
    results: list[ShardResult],
    source_episodes: int,
    source: dict,
    cfg: StorageConfig | None,
    start: float,
    goal: str = "",
) -> dict:
    """Write OUT/_import.json and return it; raises if any source episode is unaccounted for. `goal` is the
    goal_rule line."""
    written = sum(r.written for r in results)
    skipped = [s for r in results for s in r.skipped]
    summary = {
        "source": source,
        "out": out,
        "shards": sorted(r.shard for r in results if r.shard),
        "source_episodes": source_episodes,
        "written": written,
        "skipped": len(skipped),
        "skipped_reasons": dict(Counter(s.reason.split(":")[0] for s in skipped)),
        "skipped_episodes": [asdict(s) for s in skipped],
        "warnings": [asdict(w) for r in results for w in r.warnings],
        "bytes": sum(r.bytes for r in results),
        "seconds": round(time.perf_counter() - start, 2),
        "balance": f"{source_episodes} source episodes = {written} written + {len(skipped)} skipped",
        "goal": goal,
    }
    with storage.atomic_open(storage.join(out, SUMMARY_NAME), cfg) as f:
        f.write(json.dumps(summary, indent=2).encode())
    if written + len(skipped) != source_episodes:
        raise RuntimeError(f"import lost episodes: {summary['balance']} does not hold")
    for s in skipped:
        log.warning("skipped %s: %s", s.episode, s.reason)
    for w in (w for r in results for w in r.warnings):
        log.warning("imported %s, but %s", w.episode, w.reason)
    return summary
