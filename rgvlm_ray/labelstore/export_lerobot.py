"""`rgvlm export lerobot --in RAW --labels ... --reward MODE --out OUT`: the source LeRobot v3 dataset copied to
OUT with a float32 `reward` column in every data file and a `reward` feature in meta/info.json (docs/lerobot.md).

A source frame's reward is the reward of the step that starts at it (`source_frames[j]`), and 0 for frames that
start no step: between kept frames at `--frame-stride` > 1, each episode's last frame, and episodes skipped at
import. So an episode's return is the same in both formats. The statistics LeRobot normalises with are kept in
step: `meta/stats.json` gains `reward`, and each episode's row in `meta/episodes/` gains `stats/reward/<stat>`,
with the same statistics the source keeps for its other features (min, max, mean, std, count, and quantiles
`qNN` where it has them), computed from the new column. Videos and the other metadata are copied unchanged.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rgvlm_ray import storage
from rgvlm_ray.config import Config, StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.import_lerobot import load_info, read_json
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelstore.rewards_out import open_source, rewards

REWARD = "reward"
FEATURE = {"dtype": "float32", "shape": [1], "names": None}
STATS = "meta/stats.json"
EPISODES = "meta/episodes/"
BASIC_STATS = ("min", "max", "mean", "std", "count")
QUANTILE = re.compile(r"^q(\d{2})$")  # q01, q10, q50, q90, q99: newer LeRobot versions keep these too


def frame_rewards(source, cfg: Config) -> dict[tuple[int, int], float]:
    """(episode_index, frame_index) -> reward, for the frames that start a step."""
    out = {}
    for ep in rewards(source, cfg):
        if ep.source_frames is None:
            raise UsageError(
                "the raw dataset has no `source_frames`: re-import it with `rgvlm import lerobot`"
            )
        for frame, r in zip(ep.source_frames[:-1], ep.reward, strict=True):
            out[(ep.source_episode, frame)] = float(r)
    return out


def copy_tree(src: str, dst: str, cfg: StorageConfig | None, skip: tuple[str, ...]) -> int:
    """Copy every file under src to dst (local or s3://), except those under the `skip` prefixes."""
    fs, root = storage.get_fs(src, cfg)
    copied = 0
    for path in fs.find(root):
        rel = path[len(root.rstrip("/")) + 1 :]
        if rel.startswith(skip):
            continue
        with fs.open(path, "rb") as f, storage.atomic_open(storage.join(dst, rel), cfg) as g:
            while chunk := f.read(16 << 20):
                g.write(chunk)
        copied += 1
    return copied


def parquet_files(root: str, folder: str, cfg: StorageConfig | None) -> list[str]:
    """The .parquet files under root/folder, relative to root."""
    fs, base = storage.get_fs(storage.join(root, folder), cfg)
    if not fs.exists(base):
        return []
    return sorted(
        folder.rstrip("/") + "/" + p[len(base.rstrip("/")) + 1 :]
        for p in fs.find(base)
        if p.endswith(".parquet")
    )


def with_hf_feature(table: pa.Table, name: str, spec: dict) -> pa.Table:
    """Declare a new column in the `huggingface` schema metadata, when the file has it: `datasets` checks its
    features against the columns."""
    meta = dict(table.schema.metadata or {})
    hf = meta.get(b"huggingface")
    if not hf:
        return table
    info = json.loads(hf)
    info.setdefault("info", {}).setdefault("features", {})[name] = spec
    meta[b"huggingface"] = json.dumps(info).encode()
    return table.replace_schema_metadata(meta)


def hf_feature(table: pa.Table, name: str) -> dict | None:
    hf = (table.schema.metadata or {}).get(b"huggingface")
    return json.loads(hf).get("info", {}).get("features", {}).get(name) if hf else None


def with_reward(table: pa.Table, by_frame: dict[tuple[int, int], float]) -> pa.Table:
    keys = zip(table["episode_index"].to_pylist(), table["frame_index"].to_pylist(), strict=True)
    column = pa.array([by_frame.get((int(e), int(f)), 0.0) for e, f in keys], pa.float32())
    if REWARD in table.column_names:
        table = table.drop_columns([REWARD])
    table = table.append_column(REWARD, column)
    return with_hf_feature(table, REWARD, {"dtype": "float32", "_type": "Value"})


def feature_stats(values: np.ndarray, names: list[str]) -> dict[str, list | None]:
    """LeRobot's statistics of a shape-[1] feature over frames, each a 1-element list (as compute_stats keeps
    them); `names` picks which, from min, max, mean, std, count and quantiles qNN."""
    v = np.asarray(values, dtype=np.float64)
    out: dict[str, list | None] = {}
    for name in names:
        q = QUANTILE.match(name)
        if name != "count" and len(v) == 0:  # an episode with no frames in the data: nothing to describe
            out[name] = None
        elif name == "count":
            out[name] = [int(len(v))]
        elif name in ("min", "max", "mean", "std"):
            out[name] = [float(getattr(np, name)(v))]
        elif q:
            out[name] = [float(np.quantile(v, int(q.group(1)) / 100))]
    return out


def stat_names(keys: list[str]) -> list[str]:
    """The statistics the source keeps (that we know how to compute), in a stable order; the basic five when it
    keeps none."""
    known = [k for k in keys if k in BASIC_STATS or QUANTILE.match(k)]
    ordered = [k for k in BASIC_STATS if k in known] + sorted(k for k in set(known) if QUANTILE.match(k))
    return ordered or list(BASIC_STATS)


def write_stats(src: str, out: str, values: np.ndarray, cfg: StorageConfig | None) -> dict:
    """meta/stats.json with a `reward` entry holding the statistics the source keeps for its other features."""
    try:
        stats = read_json(src, STATS, cfg)
    except FileNotFoundError:
        stats = {}
    keys = [k for feature, s in stats.items() if feature != REWARD and isinstance(s, dict) for k in s]
    stats[REWARD] = feature_stats(values, stat_names(keys))
    with storage.atomic_open(storage.join(out, STATS), cfg) as f:
        f.write(json.dumps(stats, indent=4).encode())
    return stats[REWARD]


def with_episode_stats(table: pa.Table, per_episode: dict[int, np.ndarray]) -> pa.Table:
    """One meta/episodes file with `stats/reward/<stat>` for each statistic the file keeps per episode for other
    features, each column typed (and declared to `datasets`) like another feature's column of that statistic."""
    like: dict[str, str] = {}
    for c in table.column_names:
        parts = c.split("/")
        if len(parts) == 3 and parts[0] == "stats" and parts[1] != REWARD:
            like.setdefault(parts[2], c)
    names = [n for n in stat_names(list(like)) if n in like]
    if not names:  # the source keeps no per-episode stats: nothing to keep in step
        return table
    empty = np.zeros(0)
    rows = [feature_stats(per_episode.get(int(e), empty), names) for e in table["episode_index"].to_pylist()]
    for name in names:
        column = f"stats/{REWARD}/{name}"
        if column in table.column_names:
            table = table.drop_columns([column])
        values = pa.array([r.get(name) for r in rows]).cast(table.schema.field(like[name]).type)
        table = table.append_column(column, values)
        spec = hf_feature(table, like[name])
        if spec is not None:
            table = with_hf_feature(table, column, spec)
    return table


def run(cfg: Config) -> dict:
    e, scfg = cfg.export, cfg.storage
    source, meta = open_source(cfg, "lerobot")
    src = e.source or meta.get("path", "")
    info = load_info(src, scfg)
    if storage.join(src, "") == storage.join(e.out, ""):
        raise UsageError("--out must differ from the source dataset: the export writes a copy")
    fs, out_root = storage.get_fs(e.out, scfg)
    if fs.exists(storage.join(out_root, "meta/info.json")) and not e.overwrite:
        raise UsageError(f"{e.out} already holds a LeRobot dataset; pass --overwrite to replace it")
    by_frame = frame_rewards(source, cfg)
    episodes = parquet_files(src, EPISODES, scfg)
    copied = copy_tree(src, e.out, scfg, skip=("data/", STATS, *episodes))
    per_episode: dict[int, list[np.ndarray]] = defaultdict(list)
    data_files = parquet_files(src, "data/", scfg)
    for rel in data_files:
        table = with_reward(fmt.read_shard(storage.join(src, rel), scfg), by_frame)
        with storage.atomic_open(storage.join(e.out, rel), scfg) as f:
            pq.write_table(table, f)
        eps, values = table["episode_index"].to_numpy(), table[REWARD].to_numpy()
        for ep in np.unique(eps):
            per_episode[int(ep)].append(values[eps == ep])
    by_episode = {ep: np.concatenate(v) for ep, v in per_episode.items()}
    everything = np.concatenate(list(by_episode.values())) if by_episode else np.zeros(0)
    reward_stats = write_stats(src, e.out, everything, scfg)
    for rel in episodes:
        table = with_episode_stats(fmt.read_shard(storage.join(src, rel), scfg), by_episode)
        with storage.atomic_open(storage.join(e.out, rel), scfg) as f:
            pq.write_table(table, f)
    info["features"][REWARD] = FEATURE
    with storage.atomic_open(storage.join(e.out, "meta/info.json"), scfg) as f:
        f.write(json.dumps(info, indent=4).encode())
    return {
        "out": e.out,
        "reward": e.reward,
        "data_files": len(data_files),
        "files_copied": copied,
        "steps": len(by_frame),
        "reward_stats": reward_stats,
    }
