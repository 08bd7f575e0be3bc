"""`rgvlm label --status`: what a label set holds for every input shard, over every run that wrote to it.

Each input shard is in one state:
- `labeled`: a label shard made from this version of the input;
- `bad_input`: labeled, but some episodes' input cannot be labeled (final until the input changes);
- `quarantined`: the input is unreadable or invalid (final until it changes);
- `engine_errors`: labeled, but the engine failed on some episodes (the next run retries them);
- `failed`: a run broke before writing it; `leased`: a live run is labeling it now;
- `stale`: labeled from another version of the input; `missing`: never labeled;
- `label_missing`, `truncated`, `damaged`: its record says labeled, but a reader would refuse the label shard
  (deleted, cut short, or unreadable / not matching the input: the checks of labelstore/join.py).
The first three are done; the others mean a run has work to do. What is left behind (labeling/orphans.py:
records, parts, leases and label shards of raw shards that no longer exist, parts and leases of dead runs) is
listed too, and removed by `rgvlm label --prune`.
"""

from __future__ import annotations

import json
from collections import Counter

from rgvlm_ray.config import StorageConfig
from rgvlm_ray.labeling import exits, orphans
from rgvlm_ray.labeling import manifest as mf
from rgvlm_ray.labeling.leases import Lease
from rgvlm_ray.labelstore.join import label_shard_problem

DONE_STATES = ("labeled", "bad_input", "quarantined")
DAMAGED_STATES = ("label_missing", "truncated", "damaged")
BY_RECORD = {
    mf.DONE: "labeled",
    mf.DONE_BAD_INPUT: "bad_input",
    mf.QUARANTINED: "quarantined",
    mf.DONE_WITH_ERRORS: "engine_errors",
    mf.FAILED: "failed",
}


def shard_state(
    name: str,
    record: mf.ShardRecord | None,
    out: str,
    cfg: StorageConfig,
    identity: str,
    in_path: str = "",
) -> tuple[str, str]:
    """(state, why). With `in_path`, a labeled shard's label shard is also checked as a reader would."""
    lease = Lease(out, name, "", 0, cfg)
    holder = lease.holder()
    if lease.is_live(holder):
        return "leased", f"held by {holder.get('run_id')}"  # type: ignore[union-attr]
    if record is None:
        return "missing", ""
    if record.identity != identity:
        return "stale", "the input changed since it was labeled"
    if in_path and record.status in mf.LABELED:
        problem = label_shard_problem(out, name, identity, in_path, cfg, record.bytes_out, record.rows_out)
        if problem is not None:
            return problem
    return BY_RECORD[record.status], record.error


def shard_states(
    inputs: list[str],
    records: dict[str, mf.ShardRecord],
    out: str,
    cfg: StorageConfig,
    in_path: str = "",
    identities: dict[str, str] | None = None,
) -> dict[str, tuple[str, str]]:
    """Each input shard's (state, why). With `in_path` and the inputs' current `identities`, label shards are
    checked too; without, identities are the records' own."""
    states = {}
    for name in inputs:
        record = records.get(name)
        own = record.identity if record else ""
        identity = identities[name] if identities is not None else own
        states[name] = shard_state(name, record, out, cfg, identity, in_path)
    return states


def totals(states: dict[str, tuple[str, str]]) -> dict:
    counts = Counter(s for s, _ in states.values())
    return {
        "input_shards": len(states),
        "done": sum(counts[s] for s in DONE_STATES),
        "by_state": dict(sorted(counts.items())),
        "to_do": sorted(n for n, (s, _) in states.items() if s not in DONE_STATES),
        "quarantined": sorted(n for n, (s, _) in states.items() if s == "quarantined"),
    }


def exit_code(by_state: dict[str, int], allow_quarantine: bool) -> int:
    """The label set's exit code (exits.py): 1 needs a look, 3 a rerun has work to do, 0 done."""
    attention = ("failed", *DAMAGED_STATES) + (() if allow_quarantine else ("quarantined",))
    if any(by_state.get(s) for s in attention):
        return exits.FAILED
    if any(n for s, n in by_state.items() if s not in DONE_STATES):
        return exits.INCOMPLETE
    return exits.OK


def report(
    identities: dict[str, str], records: dict[str, mf.ShardRecord], in_path: str, out: str, cfg: StorageConfig
) -> tuple[dict, str]:
    """`identities`: every input shard's name and current content identity (plan.inventory)."""
    inputs = list(identities)
    states = shard_states(inputs, records, out, cfg, in_path, identities)
    left = orphans.find(inputs, out, cfg)
    summary = {
        "in": in_path,
        "out": out,
        **totals(states),
        "shards": {n: s for n, (s, _) in states.items()},
        "orphans": left,
    }
    labelers = sorted({f"{r.labeler}@{r.fingerprint}" for r in records.values() if r.shard in states})
    lines = [
        f"{out}: {summary['done']} of {summary['input_shards']} input shards done "
        f"({', '.join(f'{k} {v}' for k, v in summary['by_state'].items())}); labelers: {', '.join(labelers) or '-'}"
    ]
    shown = summary["to_do"] + summary["quarantined"]
    for name in shown:
        state, why = states[name]
        lines.append(f"  {name}: {state}" + (f" ({one_line(why)})" if why else ""))
    if orphans.count(left):
        kinds = ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in left.items() if v)
        lines.append(
            f"left behind by raw shards that no longer exist or by runs that broke: {kinds}; "
            "`rgvlm label --prune` removes them"
        )
        lines += [f"  {p}" for kind in orphans.KINDS for p in left[kind]]
    return summary, "\n".join(lines)


def one_line(text: str, limit: int = 300) -> str:
    """The first line of a reason, short enough for a terminal (older records hold whole tracebacks)."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def as_json(summary: dict) -> str:
    return json.dumps(summary, indent=2)
