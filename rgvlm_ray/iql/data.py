"""Labeled episodes -> flat transitions (s, g, a, r, s', done) with Ray Data.

Frames are decoded here, once, into fixed-shape uint8 tensor columns (Ray's Arrow tensor type, not pickled
objects); each Ray Train worker then reads its shard once into an in-memory replay buffer, so no pass over
the data decodes a PNG again. The buffer holds a worker's share of the dataset: 1/N of the transitions,
about 300 B each in symbolic mode and 19 KB each in image mode.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from PIL import Image

from rgvlm_ray import storage
from rgvlm_ray.config import Config, EnvConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.actions import ActionSpace, action_space
from rgvlm_ray.data.env import NUM_ACTIONS
from rgvlm_ray.errors import UsageError
from rgvlm_ray.iql.memory import MEMORY_DIM, episode_memory, resolve_memory
from rgvlm_ray.iql.vocab import Vocab
from rgvlm_ray.labelstore.join import Source
from rgvlm_ray.labelstore.rewards import check_columns, episode_rewards, reward_columns

if TYPE_CHECKING:
    from rgvlm_ray.iql.update import ReplayBuffer

log = logging.getLogger(__name__)
GENERATOR_KEY = b"rgvlm.generator"  # written by rgvlm_ray.data.generate
OBS_COLUMNS = {"symbolic": "symbolic", "image": "frames"}
EPISODE_ID_RE = re.compile(r"^(seen|randomized)-p(\d+)-k\d+-\d+$")
TRANSITION_COLUMNS = (
    *("obs", "next_obs", "action", "reward", "done", "goal_ids", "goal_length"),
    *("episode", "step", "keep"),  # for history windows: rows stay in episode order, dropped ones too
)
MEMORY_COLUMNS = ("memory", "next_memory")  # iql.memory=events: event counts at s and at s' (iql/memory.py)
EPISODES_PER_BLOCK = 8  # small Parquet files arrive as one block; split them so decoding runs in parallel


@dataclass
class DatasetInfo:
    data: Source  # raw episodes joined with their label sets
    shards: list[str]
    columns: list[str]
    pool_seed: int | None  # the generator's seed pool: evaluation re-creates its missions from it
    env: dict[str, Any] | None  # the generator's EnvConfig
    source: str  # where pool_seed/env came from: metadata | episode_id | unknown
    actions: ActionSpace = field(default_factory=lambda: ActionSpace("discrete"))
    behaviour: dict[str, Any] | None = None  # the generator's behaviour policy (noise, detours, abandoning)


def inspect_dataset(source: Source) -> DatasetInfo:
    """Shards, columns and generator settings, from the first shard's footers (and ids, as a fallback)."""
    shards, cfg, path = source.shards(), source.cfg, source.raw
    columns = source.columns()
    fs, first = storage.get_fs(shards[0], cfg)
    with fs.open(first, "rb") as f:
        schema = pq.read_schema(f)
    try:
        space = action_space(schema)
    except ValueError as exc:
        raise fmt.FormatError(f"{shards[0]}: {exc}") from None
    meta = (schema.metadata or {}).get(GENERATOR_KEY)
    if meta is not None:
        data = json.loads(meta)
        behaviour = (
            {"expert_noise": data["expert_noise"], **data.get("behaviour", {})}
            if "expert_noise" in data
            else None
        )
        return DatasetInfo(
            source, shards, columns, int(data["pool_seed"]), data.get("env"), "metadata", space, behaviour
        )
    # Shards rewritten without the generator's metadata still name the pool in every episode id.
    ids = fmt.read_shard(shards[0], cfg, columns=["episode_id"])["episode_id"].to_pylist()
    match = EPISODE_ID_RE.match(ids[0]) if ids else None
    if match:
        log.warning("%s: no generator metadata; pool seed %s taken from episode ids", path, match.group(2))
        return DatasetInfo(source, shards, columns, int(match.group(2)), None, "episode_id", space)
    log.warning(
        "%s: no generator metadata and unrecognised episode ids: seen-split evaluation is unknown", path
    )
    return DatasetInfo(source, shards, columns, None, None, "unknown", space)


def check_dataset(info: DatasetInfo, reward: str, obs_mode: str) -> None:
    in_path = info.data.raw
    if info.actions.kind == "discrete" and (info.actions.n or 0) > NUM_ACTIONS:
        raise UsageError(
            f"{in_path} declares {info.actions.n} discrete actions; `rgvlm train` learns BabyAI's {NUM_ACTIONS}"
        )
    if info.actions.kind != "discrete":
        raise UsageError(
            f"{in_path} has continuous actions; `rgvlm train` learns discrete actions only (language-conditioned "
            "discrete IQL). Train with your own continuous-action learner (d3rlpy, CORL, TorchRL, LeRobot) on "
            "`rgvlm export minari|lerobot|parquet --in RAW --labels LABELS --reward MODE --out OUT`"
        )
    check_columns(reward, info.columns, in_path, bool(info.data.labels))
    needed = OBS_COLUMNS[obs_mode]
    if needed not in info.columns:
        other = "image" if obs_mode == "symbolic" else "symbolic"
        raise UsageError(
            f"iql.obs_mode={obs_mode} needs the column {needed!r}, which {in_path} lacks; "
            f"use iql.obs_mode={other} or regenerate the dataset with `rgvlm generate`"
        )


# --- pass 1: goals and returns, for the vocabulary and the reward scale -------------------------------
# Read on the driver with pyarrow: a few small columns, and it spares a Ray Data job's start-up (~5 s here).


@dataclass
class RewardStats:
    goals: list[str]
    episodes: int
    steps: int
    nulls: int
    min_return: float
    max_return: float
    longest: int  # steps in the longest episode
    returns: list[float] = field(default_factory=list)  # per episode, under train.reward

    def filter_threshold(self, top: float, reward: str) -> float:
        """filtered_bc (CORL's BC-N%): the return an episode needs to be in the top `top` share of episodes.
        Ties at the threshold are all kept, so slightly more than `top` may be."""
        if self.max_return - self.min_return <= 1e-12:
            raise UsageError(
                f"iql.learner=filtered_bc: every episode has the same return ({self.max_return:g}) under "
                f"--reward {reward}, so there is no top {top:.0%} to keep; use iql.learner=bc, or a reward "
                "whose returns differ between episodes"
            )
        return float(np.quantile(np.asarray(self.returns), 1.0 - top, method="lower"))

    def scale(self, normalize: bool) -> float:
        """IQL's return normalisation (paper, MuJoCo: r * 1000 / (max_return - min_return)).

        Deviation: we scale the spread of episode returns to 1, not 1000; our returns are O(1) to O(k).
        """
        spread = self.max_return - self.min_return
        return 1.0 / spread if normalize and spread > 1e-8 else 1.0


def reward_stats(info: DatasetInfo, cfg: Config) -> RewardStats:
    reward, weights, rule = cfg.train.reward, dict(cfg.iql.reward_weights), cfg.iql.null_reward
    # `actions` (and symbolic grids, small) are read too, so that the read's validation refuses a bad shard here,
    # in one line, rather than the Ray Data or Train workers failing on it later.
    light = ["actions", "symbolic"] if cfg.iql.obs_mode == "symbolic" else ["actions"]
    columns = ["goal", *light, *reward_columns(reward)]
    goals: list[str] = []
    rets: list[float] = []
    steps = nulls = longest = 0
    for shard in info.shards:
        table = info.data.read(shard, columns)
        check_action_ids(table, shard)
        cols = {c: table.column(c).to_pylist() for c in reward_columns(reward)}
        goals.extend(table.column("goal").to_pylist())
        for i in range(table.num_rows):
            r, keep, n = episode_rewards({c: v[i] for c, v in cols.items()}, reward, weights, rule)
            rets.append(float(r[keep].sum()))
            nulls += n
            steps += len(r)
            longest = max(longest, len(r))
    if not goals:
        raise UsageError(f"--in {cfg.train.in_path}: the dataset has no episodes")
    return RewardStats(goals, len(goals), steps, nulls, min(rets), max(rets), longest, rets)


def check_action_ids(table: pa.Table, shard: str) -> None:
    """The policy has NUM_ACTIONS outputs: an id beyond them (in data that declares no action space, so the read
    could not check it) would fail deep inside a Train worker."""
    top = pc.max(pc.list_flatten(table.column("actions"))).as_py()
    if top is not None and top >= NUM_ACTIONS:
        raise fmt.FormatError(
            f"{shard}: column 'actions': action id {top} is out of range: `rgvlm train` learns BabyAI's "
            f"{NUM_ACTIONS} actions (0..{NUM_ACTIONS - 1})"
        )


# --- pass 2: transitions ----------------------------------------------------------------------------------


def decode_observations(values: list[bytes], obs_mode: str) -> np.ndarray:
    """T+1 stored observations of one episode -> (T+1, 7, 7, 3) or (T+1, H, W, 3) uint8."""
    if obs_mode == "symbolic":
        return np.frombuffer(b"".join(values), dtype=np.uint8).reshape(-1, *fmt.SYMBOLIC_SHAPE)
    frames = []
    for png in values:
        with Image.open(io.BytesIO(png)) as im:
            frames.append(np.asarray(im.convert("RGB")))
    return np.stack(frames)


def episode_key(episode_id: str) -> int:
    """A stable int64 per episode id, so windows never join rows of two episodes."""
    return int.from_bytes(hashlib.blake2b(episode_id.encode(), digest_size=8).digest(), "little", signed=True)


def to_transitions(
    batch: pa.Table,
    obs_mode: str,
    reward: str,
    weights: dict[str, float],
    null_rule: str,
    scale: float,
    vocab: Vocab,
    min_return: float | None = None,
    memory: bool = False,
) -> dict[str, np.ndarray]:
    """A batch of episodes -> one row per step, in step order. Returns numpy arrays (Arrow tensors in Ray).
    With `memory`, also each step's episode-memory counts at s and at s' (MEMORY_COLUMNS), computed here where
    the whole episode is at hand (a Train worker's shard may hold only part of one).

    Rows that `null_reward=drop` leaves out are kept with keep=False: they are never sampled, but later
    steps' history windows still see their observations and actions. So are all rows of an episode whose
    return is below `min_return` (filtered_bc).
    """
    goal_ids, _ = vocab.encode(batch.column("goal").to_pylist(), length=vocab.max_len)
    obs_col = batch.column(OBS_COLUMNS[obs_mode]).to_pylist()
    actions = batch.column("actions").to_pylist()
    terminated = batch.column("terminated").to_pylist()
    ids = batch.column("episode_id").to_pylist()
    rcols = {c: batch.column(c).to_pylist() for c in reward_columns(reward)}
    columns = (*TRANSITION_COLUMNS, *(MEMORY_COLUMNS if memory else ()))
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    for i in range(batch.num_rows):
        t = len(actions[i])
        if t == 0:
            continue
        obs = decode_observations(obs_col[i], obs_mode)
        r, keep, _ = episode_rewards({c: v[i] for c, v in rcols.items()}, reward, weights, null_rule)
        if min_return is not None and float(r[keep].sum()) < min_return:
            keep = np.zeros_like(keep)
        done = np.zeros(t, dtype=np.float32)
        done[-1] = float(bool(terminated[i]))  # truncation (time limit) is not a terminal: bootstrap
        parts["obs"].append(obs[:-1])
        parts["next_obs"].append(obs[1:])
        parts["action"].append(np.asarray(actions[i], dtype=np.int64))
        parts["reward"].append((r * scale).astype(np.float32))
        parts["done"].append(done)
        parts["goal_ids"].append(np.repeat(goal_ids[i : i + 1].astype(np.int32), t, axis=0))
        parts["goal_length"].append(np.full(t, max(1, int((goal_ids[i] != 0).sum())), dtype=np.int32))
        parts["episode"].append(np.full(t, episode_key(ids[i]), dtype=np.int64))
        parts["step"].append(np.arange(t, dtype=np.int32))
        parts["keep"].append(keep)
        if memory:
            counts = episode_memory(obs, np.asarray(actions[i]))
            parts["memory"].append(counts[:-1])
            parts["next_memory"].append(counts[1:])
    if not parts["action"]:
        shape = (0, *fmt.SYMBOLIC_SHAPE) if obs_mode == "symbolic" else (0, 1, 1, 3)
        empty = {"obs": np.zeros(shape, np.uint8), "next_obs": np.zeros(shape, np.uint8)}
        empty.update(
            action=np.zeros(0, np.int64), reward=np.zeros(0, np.float32), done=np.zeros(0, np.float32)
        )
        empty.update(goal_ids=np.zeros((0, vocab.max_len), np.int32), goal_length=np.zeros(0, np.int32))
        empty.update(episode=np.zeros(0, np.int64), step=np.zeros(0, np.int32), keep=np.zeros(0, bool))
        for c in MEMORY_COLUMNS if memory else ():
            empty[c] = np.zeros((0, MEMORY_DIM), np.uint8)
        return empty
    return {c: np.concatenate(v) for c, v in parts.items()}


def transitions(
    episodes: ray.data.Dataset, cfg: Config, vocab: Vocab, scale: float, min_return: float | None = None
) -> ray.data.Dataset:
    return episodes.repartition(target_num_rows_per_block=EPISODES_PER_BLOCK).map_batches(
        to_transitions,
        batch_format="pyarrow",
        batch_size=EPISODES_PER_BLOCK,
        fn_kwargs={
            "obs_mode": cfg.iql.obs_mode,
            "reward": cfg.train.reward,
            "weights": dict(cfg.iql.reward_weights),
            "null_rule": cfg.iql.null_reward,
            "scale": scale,
            "vocab": vocab,
            "min_return": min_return,
            "memory": resolve_memory(cfg.iql.memory, cfg.iql.obs_mode) > 0,
        },
    )


def episode_columns(cfg: Config) -> list[str]:
    return [
        "episode_id",
        "goal",
        "actions",
        "terminated",
        OBS_COLUMNS[cfg.iql.obs_mode],
        *reward_columns(cfg.train.reward),
    ]


def load_buffer(batches: Any) -> ReplayBuffer:
    """Concatenate an iterator of numpy transition batches (a worker's whole shard) into a ReplayBuffer."""
    from rgvlm_ray.iql.update import ReplayBuffer  # torch: kept out of the Ray Data tasks that import us

    parts: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        for c in (*TRANSITION_COLUMNS, *(c for c in MEMORY_COLUMNS if c in batch)):
            parts.setdefault(c, []).append(batch[c])
    if not parts.get("action"):
        raise RuntimeError("this worker's dataset shard is empty: use fewer --workers or more episodes")
    return ReplayBuffer.from_numpy({c: np.concatenate(v) for c, v in parts.items()})


def env_config(info_env: dict[str, Any] | None, fallback: EnvConfig) -> dict[str, Any]:
    """The env settings to save for evaluation: the generator's, or the current config's if unknown."""
    return dict(info_env) if info_env else asdict(fallback)
