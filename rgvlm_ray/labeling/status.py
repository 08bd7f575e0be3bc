"""`rgvlm label --status`: what a label set holds for every input shard, over every run that wrote to it.

Each input shard is in one state:
- `labeled`: a label shard made from this version of the input;
- `bad_input`: labeled, but some episodes' input cannot be labeled (final until the input changes);
- `quarantined`: the input is unreadable or invalid (final until it changes);
- `engine_errors`: labeled, but the engine failed on some episodes (the next run retries them);
- `failed`: a run broke before writing it; `leased`: a live run is labeling it now;
- `stale`: labeled from another version of the input; `missing`: never labeled.
The first three are done; the others mean a run has work to do.
"""

from __future__ import annotations

import json
import time
from collections import Counter

from rgvlm_ray import storage
from rgvlm_ray.config import StorageConfig
from rgvlm_ray.labeling import manifest as mf
from rgvlm_ray.labeling.leases import Lease, holder_is_dead

DONE_STATES = ("labeled", "bad_input", "quarantined")
BY_RECORD = {
    mf.DONE: "labeled",
    mf.DONE_BAD_INPUT: "bad_input",
    mf.QUARANTINED: "quarantined",
    mf.DONE_WITH_ERRORS: "engine_errors",
    mf.FAILED: "failed",
}


def shard_state(name: str, record: mf.ShardRecord | None, out: str, cfg: StorageConfig, identity: str) -> str:
    holder = Lease(out, name, "", 0, cfg).holder()
    if holder is not None and holder.get("expires", 0) > time.time() and not holder_is_dead(holder):
        return "leased"
    if record is None:
        return "missing"
    if record.identity != identity:
        return "stale"
    return BY_RECORD[record.status]


def shard_states(
    inputs: list[str], records: dict[str, mf.ShardRecord], out: str, cfg: StorageConfig, in_path: str = ""
) -> dict[str, str]:
    """Each input shard's state. With `in_path`, identities are read from the inputs (else: records')."""
    states = {}
    for name in inputs:
        record = records.get(name)
        if in_path:
            identity = storage.content_identity(storage.join(in_path, name), cfg)
        else:
            identity = record.identity if record else ""
        states[name] = shard_state(name, record, out, cfg, identity)
    return states


def totals(states: dict[str, str]) -> dict:
    counts = Counter(states.values())
    return {
        "input_shards": len(states),
        "done": sum(counts[s] for s in DONE_STATES),
        "by_state": dict(sorted(counts.items())),
        "to_do": sorted(n for n, s in states.items() if s not in DONE_STATES),
    }


def report(inputs: list[str], in_path: str, out: str, cfg: StorageConfig) -> tuple[dict, str]:
    records = mf.load_records(out, cfg)
    states = shard_states(inputs, records, out, cfg, in_path)
    summary = {"in": in_path, "out": out, **totals(states), "shards": states}
    labelers = sorted({f"{r.labeler}@{r.fingerprint}" for r in records.values() if r.shard in states})
    lines = [
        f"{out}: {summary['done']} of {summary['input_shards']} input shards done "
        f"({', '.join(f'{k} {v}' for k, v in summary['by_state'].items())}); labelers: {', '.join(labelers) or '-'}"
    ]
    lines += [f"  {name}: {states[name]}" for name in summary["to_do"]]
    return summary, "\n".join(lines)


def as_json(summary: dict) -> str:
    return json.dumps(summary, indent=2)
