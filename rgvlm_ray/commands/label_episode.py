"""`rgvlm label-episode`: label one episode and show everything: prompts, analysis, scores, rewards."""

from __future__ import annotations

import json
import time

from rgvlm_ray.config import Config, StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.actions import action_space
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelers import prompts
from rgvlm_ray.labelers.action_text import with_space
from rgvlm_ray.labelers.labeler import RGVLMLabeler, build_labeler
from rgvlm_ray.labelers.rgvlm import EpisodeLabel


def find_episode(path: str, episode: str, storage: StorageConfig) -> dict:
    """The row of `episode` (or of the first episode when empty), reading one shard in full at most."""
    try:
        shards = fmt.list_shards(path, storage)
    except FileNotFoundError as exc:
        raise UsageError(f"{exc}; pass --in with a dataset folder, s3:// prefix or shard") from None
    examples: list[str] = []
    for shard in shards:
        ids = fmt.read_shard(shard, storage, columns=["episode_id"]).column("episode_id").to_pylist()
        if ids and (not episode or episode in ids):
            index = ids.index(episode) if episode else 0
            table = fmt.read_shard(shard, storage)
            return with_space(table.slice(index, 1).to_pylist(), action_space(table.schema))[0]
        examples.extend(ids[: 5 - len(examples)])
    if not shards:
        raise UsageError(f"no shards under {path}")
    raise UsageError(f"episode {episode!r} is not in {path}; ids look like: {', '.join(examples)}")


def trace(ep: EpisodeLabel) -> dict:
    return {
        "windows": [
            {
                "id": w.window.id,
                "steps": [w.window.start + 1, w.window.end],
                "scored_steps": [w.window.own_start + 1, w.window.own_end],
                "status": w.status,
                "message": w.message,
                "replies": [s.replies for s in w.samples],
                **({"shown_order": [w.window.start + k for k in w.order]} if w.order is not None else {}),
            }
            for w in ep.windows
        ],
        "prompts": [
            {"stage1": prompts.render(w.stage1), "stage2": prompts.render(w.stage2) if w.stage2 else None}
            for w in ep.windows
        ],
    }


def report(cfg: Config, row: dict, labeler, cols: dict, extra: dict, seconds: float) -> dict:
    col = lambda s: cols[fmt.label_column(labeler.name, s)]  # noqa: E731
    return {
        "episode_id": row["episode_id"],
        "goal": row.get("goal"),
        "labeler": labeler.name,
        "engine": cfg.engine.kind,
        "model": cfg.engine.model,
        "fingerprint": labeler.fingerprint,
        "num_actions": len(row.get("actions") or []),
        "actions": row.get("action_texts"),
        "analysis": col("analysis"),
        "scores": col("score"),
        "score_std": col("score_std"),
        "rewards": col("reward"),
        "window": col("window"),
        "status": col("status"),
        "messages": col("message"),
        "episode_status": col("episode_status"),
        "episode_error": col("episode_error"),
        **extra,
        "stats": {**labeler.stats(), "seconds": round(seconds, 3)},
    }


def print_text(out: dict) -> None:
    print(f"episode {out['episode_id']}  ({out['num_actions']} actions)  labeler {out['labeler']}")
    print(f"goal: {out['goal']}")
    print(f"fingerprint: {out['fingerprint']}")
    if out["episode_status"] != "ok":
        print(f"ERROR: {out['episode_error']}")
    for i, p in enumerate(out.get("prompts", [])):
        print(f"\n===== window {i}: stage-1 prompt =====\n{p['stage1']}")
        print(f"\n----- window {i}: analysis -----\n{out['analysis'][i]}")
        if p["stage2"]:
            print(
                f"\n----- window {i}: stage-2 prompt (after the analysis) -----\n{p['stage2'].split('[assistant]')[-1]}"
            )
    print("\n step  action            score  reward  window  status")
    for t in range(out["num_actions"]):
        score, reward = out["scores"][t], out["rewards"][t]
        print(
            f"{t + 1:5d}  {str((out['actions'] or [''] * (t + 1))[t])[:16]:16s}"
            f"  {'-' if score is None else f'{score:5.2f}':>5s}  {'-' if reward is None else f'{reward:6.3f}':>6s}"
            f"  {'' if out['window'][t] is None else out['window'][t]:>6}  {out['status'][t]}"
        )
    print(f"\nstats: {json.dumps(out['stats'])}")


def main(cfg: Config) -> int:
    from rgvlm_ray.cli import require

    require(cfg, "label_episode.in_path")
    row = find_episode(cfg.label_episode.in_path, cfg.label_episode.episode, cfg.storage)
    if (
        cfg.labeler.view == "frames_full"
        and row.get("frames_full") is None
        and cfg.engine.kind not in ("oracle", "noisy_oracle")
    ):
        raise UsageError(
            "labeler.view=frames_full but this dataset has no frames_full column: generate it with "
            "env.full_view=true, or use labeler.view=frames"
        )
    labeler = build_labeler(cfg.engine, cfg.labeler)
    start = time.perf_counter()
    try:
        if isinstance(labeler, RGVLMLabeler):
            ep = labeler.label_episodes([row])[0]
            cols, extra = labeler.columns(ep), trace(ep)
        else:
            cols, extra = labeler.label_rows([row])[0], {}
        out = report(cfg, row, labeler, cols, extra, time.perf_counter() - start)
    finally:
        labeler.close()
    if cfg.label_episode.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print_text(out)
    return 0 if out["episode_status"] == "ok" else 1
