"""`rgvlm generate`: an offline dataset from the BabyAI bot with epsilon-noise, one Ray task per shard."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import pyarrow as pa
from minigrid.envs.babyai.core.verifier import GoToInstr, ObjDesc
from minigrid.utils.baby_ai_bot import BabyAIBot

from rgvlm_ray import storage
from rgvlm_ray.config import Config, EnvConfig, GenerateConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.env import (
    ACTION_TEXTS,
    MAX_SUBTASKS,
    NOVEL_OFFSET,
    RANDOM_ACTIONS,
    ChainLevel,
    EpisodeSpec,
    FrameRenderer,
    derive_seed,
    encode_png,
    find_mission,
    full_view_rgb,
    leaves,
    make_env,
)
from rgvlm_ray.errors import UsageError

log = logging.getLogger(__name__)
GENERATOR_KEY = b"rgvlm.generator"
NOISE_STREAM = 0x4E4F4953
DROP = ACTION_TEXTS.index("drop")
DONE = ACTION_TEXTS.index("done")
BEHAVIOUR_STREAM = 0x42454856
ABANDON_DECOYS = 2  # objects an abandoning behaviour wanders to before its episode is cut off
MAX_DECOY_STEPS = 64  # a decoy walk that has not arrived by then is given up


def parse_subtasks(text: str) -> list[int]:
    """ "1-6" -> [1..6], "3" -> [3], "1,2,5" -> [1, 2, 5]."""
    try:
        ks: list[int] = []
        for part in str(text).split(","):
            lo, _, hi = part.strip().partition("-")
            ks.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UsageError(f"--subtasks must look like '1-6', '3' or '1,2,5', got {text!r}") from None
    if not ks or min(ks) < 1 or max(ks) > MAX_SUBTASKS:
        raise UsageError(f"--subtasks must be within 1..{MAX_SUBTASKS}, got {text!r}")
    return sorted(set(ks))


def check_behaviour(g: GenerateConfig) -> None:
    probs = {"expert_noise": g.expert_noise, "detour": g.detour, "abandon": g.abandon}
    probs.update({f"noise_levels[{i}]": p for i, p in enumerate(g.noise_levels)})
    bad = [f"generate.{k}={v}" for k, v in probs.items() if not 0.0 <= float(v) <= 1.0]
    if bad:
        raise UsageError(f"{', '.join(bad)}: probabilities must lie in [0, 1]")
    if g.episodes_per_mission < 1:
        raise UsageError(f"generate.episodes_per_mission must be >= 1, got {g.episodes_per_mission}")


def episode_plan(cfg: GenerateConfig) -> list[tuple[int, int, int]]:
    """(k, index within k, repeat) for every episode, cycling through the requested k so each shard mixes
    them; with `episodes_per_mission` r, each mission is recorded r times (repeat 0..r-1), each its own draw
    of the behaviour."""
    ks, r = parse_subtasks(cfg.subtasks), cfg.episodes_per_mission
    return [(ks[g % len(ks)], g // len(ks) // r, g // len(ks) % r) for g in range(cfg.episodes)]


def _bot_action(
    env: ChainLevel, bot: BabyAIBot, prev: int | None, rng: np.random.Generator
) -> tuple[BabyAIBot, int]:
    """The bot's suggestion. After random actions confuse its plan, a fresh bot replans from here; if even
    that fails (e.g. it refuses to start while carrying), drop what is carried or act randomly, then retry."""
    try:
        return bot, int(bot.replan(prev))
    except Exception:
        pass
    bot = BabyAIBot(env)
    try:
        return bot, int(bot.replan())
    except Exception:
        return bot, DROP if env.carrying is not None else int(rng.integers(RANDOM_ACTIONS))


def decoy_bot(env: ChainLevel, obj_type: str, color: str) -> BabyAIBot | None:
    """A bot that walks to an object of this type and colour: the bot reads its plan from `env.instrs` once,
    when built, so it is built on a GoTo instruction swapped in for that moment. None if it cannot plan."""
    instr = GoToInstr(ObjDesc(obj_type, color))
    real = env.instrs
    try:
        instr.reset_verifier(env)
        env.instrs = instr
        return BabyAIBot(env)
    except Exception:
        return None
    finally:
        env.instrs = real


def target_of(instr: object) -> tuple[str, str] | None:
    """(type, colour) of the object a sub-task is about (PutNext: the object to move)."""
    desc = getattr(instr, "desc", None) or getattr(instr, "desc_move", None)
    return (desc.type, desc.color) if desc is not None and desc.color is not None else None


def random_object(env: ChainLevel, rng: np.random.Generator) -> tuple[str, str]:
    objs = [o for row in env.room_grid for room in row for o in room.objs]
    obj = objs[int(rng.integers(len(objs)))]
    return obj.type, obj.color


def extra(repeat: int) -> tuple[int, ...]:
    """Seed components of a repeated recording; none for repeat 0, so single recordings keep their streams."""
    return (repeat,) if repeat else ()


class Behaviour:
    """The mixture's per-episode choices: whether to abandon after j sub-tasks, and when to take a detour to a
    wrong sub-task's object. Draws from its own stream, and only when asked for, so the plain noisy bot's
    episodes are the same as before the mixture existed."""

    def __init__(self, cfg: GenerateConfig, spec: EpisodeSpec, repeat: int = 0) -> None:
        seed = derive_seed(spec.mission_seed, spec.index, BEHAVIOUR_STREAM, *extra(repeat))
        self.rng = np.random.default_rng(seed)
        self.detour = cfg.detour
        self.noise = cfg.expert_noise
        if cfg.noise_levels:
            self.noise = float(cfg.noise_levels[int(self.rng.integers(len(cfg.noise_levels)))])
        self.abandon_at = (
            int(self.rng.integers(spec.num_subtasks))
            if cfg.abandon and self.rng.random() < cfg.abandon
            else None
        )
        self.abandoned = False
        self.decoys_left = ABANDON_DECOYS
        self.decoy: BabyAIBot | None = None
        self.decoy_steps = 0
        self.subtask = -1

    def start_subtask(self, env: ChainLevel) -> None:
        """Called when sub-task `progress` begins: maybe abandon, maybe walk to a later sub-task's object first."""
        j = env.progress()
        if j == self.subtask:
            return
        self.subtask = j
        if self.abandon_at is not None and j >= self.abandon_at and not self.abandoned:
            self.abandoned = True
            self.new_decoy(env, random_object(env, self.rng))
        elif self.detour and not self.abandoned and self.rng.random() < self.detour:
            later = [target_of(t) for t in leaves(env.instrs)[j + 1 :]]
            target = next((t for t in later if t is not None), None) or random_object(env, self.rng)
            self.new_decoy(env, target)

    def new_decoy(self, env: ChainLevel, target: tuple[str, str]) -> None:
        self.decoy, self.decoy_steps = decoy_bot(env, *target), 0

    def action(self, env: ChainLevel, prev: int | None, expert: int) -> tuple[int | None, bool]:
        """(the behaviour's action before noise, or None when it stops; whether the episode is cut off here)."""
        while self.decoy is not None:
            try:
                a = int(self.decoy.replan(prev))
            except Exception:
                a = DONE
            self.decoy_steps += 1
            if a != DONE and self.decoy_steps <= MAX_DECOY_STEPS:
                return a, False
            self.decoy = None  # arrived (or lost): back to the mission, or on to the next decoy
            if self.abandoned:
                self.decoys_left -= 1
                if self.decoys_left <= 0:
                    return None, True
                self.new_decoy(env, random_object(env, self.rng))
            prev = None
        if self.abandoned:  # no decoy it could plan a walk to: the recording stops here
            return None, True
        return expert, False


def generate_episode(
    env_cfg: EnvConfig,
    spec: EpisodeSpec,
    noise: float,
    renderer: FrameRenderer,
    gen: GenerateConfig | None = None,
    repeat: int = 0,
) -> dict:
    """One behaviour-policy episode as a format row. `gen` adds the behaviour mixture (detours, abandoning,
    per-episode noise levels); without it the behaviour is the bot with `noise`. `repeat` > 0: another
    recording of the same mission and layout, with its own noise and behaviour draws (repeat 0 is the episode
    as it was before repeats existed)."""
    env = make_env(env_cfg, spec)
    rng = np.random.default_rng(derive_seed(spec.mission_seed, spec.index, NOISE_STREAM, *extra(repeat)))
    behaviour = Behaviour(gen, spec, repeat) if gen is not None else None
    if behaviour is not None:
        noise = behaviour.noise
    bot = BabyAIBot(env)
    obs = env.gen_obs()
    frames, symbolic, directions = (
        [renderer.png(obs["image"])],
        [obs["image"].tobytes()],
        [obs["direction"]],
    )
    full = [encode_png(full_view_rgb(env, env_cfg.full_tile_size))] if env_cfg.full_view else None
    actions, rewards, progress, experts = [], [], [], []
    prev: int | None = None
    terminated = truncated = False
    while not (terminated or truncated):
        bot, expert = _bot_action(env, bot, prev, rng)
        action: int | None = expert
        if behaviour is not None:
            behaviour.start_subtask(env)
            action, cut = behaviour.action(env, prev, expert)
            if cut or action is None:
                truncated = True  # the recording stops: a truncated episode, not a terminal
                break
        if rng.random() < noise:
            action = int(rng.integers(RANDOM_ACTIONS))
        obs, reward, terminated, truncated, _ = env.step(action)
        prev = action
        actions.append(action)
        experts.append(expert)
        rewards.append(float(reward))
        progress.append(env.progress())
        frames.append(renderer.png(obs["image"]))
        symbolic.append(obs["image"].tobytes())
        directions.append(obs["direction"])
        if full is not None:
            full.append(encode_png(full_view_rgb(env, env_cfg.full_tile_size)))
    return {
        "episode_id": spec.episode_id + (f"-r{repeat}" if repeat else ""),
        "goal": env.mission,
        "subtasks": list(env.subtasks),
        "num_subtasks": spec.num_subtasks,
        "frames": frames,
        "actions": actions,
        "action_texts": [ACTION_TEXTS[a] for a in actions],
        "rewards": rewards,
        "terminated": bool(terminated),
        "truncated": bool(truncated and not terminated),
        "progress": progress,
        "seed": spec.mission_seed,
        "split": spec.split,
        "frames_full": full,
        "symbolic": symbolic,
        "directions": directions,
        "expert_actions": experts,
    }


def generator_metadata(cfg: Config) -> dict[bytes, bytes]:
    """Stored in each shard so evaluation can rebuild the same environment and seed pool."""
    g = cfg.generate
    meta = {
        "pool_seed": g.seed,
        "env": asdict(cfg.env),
        "expert_noise": g.expert_noise,
        "behaviour": {
            "noise_levels": list(g.noise_levels),
            "detour": g.detour,
            "abandon": g.abandon,
            "episodes_per_mission": g.episodes_per_mission,
        },
    }
    return {GENERATOR_KEY: json.dumps(meta).encode()}


def build_shard(cfg: Config, plan: Sequence[tuple[int, ...]]) -> pa.Table:
    renderer = FrameRenderer(cfg.env.tile_size)
    rows, g = [], cfg.generate
    for k, index, *repeat in plan:  # (k, index) pairs are repeat 0
        spec = find_mission(cfg.env, k, index, g.seed, g.split)
        rows.append(generate_episode(cfg.env, spec, g.expert_noise, renderer, g, *repeat))
    table = pa.Table.from_pylist(rows, schema=fmt.EPISODE_SCHEMA)
    if not cfg.env.full_view:
        table = table.drop_columns(["frames_full"])
    return table.replace_schema_metadata(generator_metadata(cfg))


def shard_stats(table: pa.Table) -> dict:
    success = [
        bool(t) and r[-1] > 0
        for t, r in zip(table["terminated"].to_pylist(), table["rewards"].to_pylist(), strict=True)
    ]
    return {
        "episodes": table.num_rows,
        "transitions": sum(len(a) for a in table["actions"].to_pylist()),
        "k": table["num_subtasks"].to_pylist(),
        "success": success,
    }


def _generate_shard(cfg: Config, plan: Sequence[tuple[int, ...]], path: str) -> dict:
    table = build_shard(cfg, plan)
    nbytes = fmt.write_shard(table, path, cfg.storage)
    return {**shard_stats(table), "bytes": nbytes, "path": path}


def summarize(results: list[dict], seconds: float) -> dict:
    by_k: dict[int, list[bool]] = defaultdict(list)
    for r in results:
        for k, ok in zip(r["k"], r["success"], strict=True):
            by_k[k].append(ok)
    transitions = sum(r["transitions"] for r in results)
    episodes = sum(r["episodes"] for r in results)
    return {
        "shards": len(results),
        "episodes": episodes,
        "transitions": transitions,
        "success_rate": round(sum(sum(v) for v in by_k.values()) / max(episodes, 1), 3),
        "success_rate_by_k": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_k.items())},
        "episodes_by_k": {k: len(v) for k, v in sorted(by_k.items())},
        "bytes_written": sum(r["bytes"] for r in results),
        "seconds": round(seconds, 2),
        "transitions_per_s": round(transitions / max(seconds, 1e-9), 1),
    }


def run(cfg: Config) -> dict:
    """Generate the dataset; returns the summary."""
    import ray
    from tqdm import tqdm

    from rgvlm_ray.ray_utils import init_ray

    g = cfg.generate
    if g.split not in fmt.SPLITS:
        raise UsageError(f"--split must be one of {fmt.SPLITS}, got {g.split!r}")
    if g.episodes < 1 or g.episodes_per_shard < 1:
        raise UsageError("--episodes and --episodes-per-shard must be positive")
    if g.episodes >= NOVEL_OFFSET:
        raise UsageError(
            f"--episodes must stay below {NOVEL_OFFSET:,}: pool indices from there on are the `novel` evaluation "
            "split's missions, which no generated dataset may hold; generate in several pools (generate.seed)"
        )
    check_behaviour(g)
    plan = episode_plan(g)
    fmt.refuse_existing(g.out, g.overwrite, cfg.storage)
    init_ray(cfg.ray)
    task = ray.remote(num_cpus=g.num_cpus_per_task)(_generate_shard)
    start = time.perf_counter()
    pending = [
        task.remote(
            cfg,
            plan[i : i + g.episodes_per_shard],
            storage.join(g.out, f"shard-{i // g.episodes_per_shard:05d}.parquet"),
        )
        for i in range(0, len(plan), g.episodes_per_shard)
    ]
    results = []
    with tqdm(total=len(plan), desc="generate", unit="episode") as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for r in ray.get(done):
                results.append(r)
                bar.update(r["episodes"])
    return {"out": g.out, **summarize(results, time.perf_counter() - start)}
