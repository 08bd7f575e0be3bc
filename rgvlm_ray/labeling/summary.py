"""A label run's summary.json (counts, the episode balance, tokens per stage) and the exit code it gives, over the
whole label set (codes: job.py's docstring, exits.py)."""

from __future__ import annotations

from rgvlm_ray import storage
from rgvlm_ray.labeling import exits, orphans
from rgvlm_ray.labeling import manifest as mf
from rgvlm_ray.labeling import status as st
from rgvlm_ray.labeling.actors import TOKEN_KEYS
from rgvlm_ray.labeling.plan import RunState

EXIT_OK, EXIT_FAILED, EXIT_INCOMPLETE = exits.OK, exits.FAILED, exits.INCOMPLETE


def summarize(state: RunState, seconds: float) -> dict:
    records = [r for r in state.records.values() if r.run_id == state.run_id]
    quarantined = [r for r in records if r.status == mf.QUARANTINED]
    failed = [r for r in records if r.status == mf.FAILED]
    episodes_in = sum(r.rows_in or 0 for r in records)
    labeled_ok = state.episode_status.get("ok", 0)
    errored = state.episode_status.get("error", 0)
    bad_input = state.episode_status.get("bad_input", 0)
    in_quarantine = sum(r.rows_in or 0 for r in quarantined)
    in_failed = sum(r.rows_in or 0 for r in failed)
    steps = sum(state.step_status.values())
    return {
        "run_id": state.run_id,
        "labeler": state.name,
        "fingerprint": state.fingerprint,
        "in": state.cfg.label.in_path,
        "out": state.out,
        "actors": None if state.actors is None else {"min": state.actors[0], "max": state.actors[1]},
        "shards": {
            "labeled": sum(r.status in mf.LABELED for r in records),
            "quarantined": [r.shard for r in quarantined],
            "unreadable": [r.shard for r in quarantined if r.rows_in is None],
            "failed": [r.shard for r in failed],
            "with_engine_errors": [r.shard for r in records if r.status == mf.DONE_WITH_ERRORS],
            "skipped_current": len(state.skipped_current),
            "skipped_leased_by_other_run": state.skipped_leased,
        },
        "episodes": {
            "in": episodes_in,
            "labeled": labeled_ok,
            "errored": errored,
            "bad_input": bad_input,
            "in_quarantined_shards": in_quarantine,
            "in_failed_shards": in_failed,
            "balanced": episodes_in == labeled_ok + errored + bad_input + in_quarantine + in_failed,
        },
        "transitions": state.totals.get("transitions", 0),
        "windows": state.totals.get("windows", 0),
        **{k: state.totals.get(k, 0) for k in TOKEN_KEYS},
        # goals longer than the text encoder takes (clip, blip2, roboclip), truncated: labelers/encoders.py
        "goals_truncated": state.totals.get("goals_truncated", 0),
        "seconds": round(seconds, 2),
        "transitions_per_s": round(state.totals.get("transitions", 0) / max(seconds, 1e-9), 1),
        "parse_failure_rate": round(state.step_status.get("parse_error", 0) / steps, 4) if steps else 0.0,
        "step_status": dict(state.step_status),
        "episode_status": dict(state.episode_status),
    }


def exit_code(summary: dict, allow_quarantine: bool) -> int:
    """Print the balance check and what needs attention; 0 only if nothing does (codes: module docstring)."""
    ep, shards = summary["episodes"], summary["shards"]
    print(
        f"episodes in {ep['in']} = labeled {ep['labeled']} + engine errors {ep['errored']} + bad input "
        f"{ep['bad_input']} + in quarantined shards {ep['in_quarantined_shards']} + in failed shards "
        f"{ep['in_failed_shards']}: " + ("balanced" if ep["balanced"] else "NOT BALANCED")
    )
    if shards["unreadable"]:
        print(f"note: unreadable shards have unknown episode counts: {', '.join(shards['unreadable'])}")
    if ep["bad_input"]:
        print(
            f"{ep['bad_input']} episode(s) have input that cannot be labeled (see *_episode_error); they are "
            "not retried until the input or the labeler changes (or label.retry_errors=true)"
        )
    if summary.get("left_behind"):
        print(orphans.advice(summary["left_behind"], summary["in"], summary["out"]))
    if not ep["balanced"]:
        return EXIT_FAILED
    if shards["failed"]:
        print(f"failed shards (rerun to retry): {', '.join(shards['failed'])}")
        return EXIT_FAILED
    # The rest describes the whole label set, not this run: a shard quarantined by an earlier run is still there.
    whole = summary["status"]
    quarantined = whole.get("quarantined", shards["quarantined"])
    if quarantined and not allow_quarantine:
        manifest = storage.join(summary["out"], "_manifest.json")
        print(f"quarantined shards (see {manifest}): {', '.join(quarantined)}")
        print("exiting non-zero; pass --allow-quarantine to accept them")
        return EXIT_FAILED
    code = st.exit_code(whole["by_state"], allow_quarantine)
    if code == EXIT_FAILED:
        print(f"shards that need a look (`rgvlm label --status` says why): {', '.join(whole['to_do'])}")
        return code
    if code == EXIT_INCOMPLETE:
        print(
            f"INCOMPLETE (exit {EXIT_INCOMPLETE}): {len(shards['skipped_leased_by_other_run'])} shard(s) leased by "
            f"another run, {len(shards['with_engine_errors'])} with engine errors, "
            f"{len(whole['to_do'])} in all not done: rerun to finish them (`rgvlm label --status` lists every shard)"
        )
    return code
