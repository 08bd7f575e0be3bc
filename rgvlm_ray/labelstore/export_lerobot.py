"""`rgvlm export lerobot --in RAW --labels ... --reward MODE --out OUT`: the source LeRobot v3 dataset copied to
OUT with a float32 `reward` column in every data file and a `reward` feature in meta/info.json (docs/lerobot.md).

A source frame's reward is the reward of the step that starts at it (`source_frames[j]`), and 0 for frames that
start no step: between kept frames at `--frame-stride` > 1, each episode's last frame, and episodes skipped at
import. So an episode's return is the same in both formats. Videos and the other metadata are copied unchanged.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from rgvlm_ray import storage
from rgvlm_ray.config import Config, StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.import_lerobot import load_info
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelstore.rewards_out import open_source, rewards

REWARD = "reward"
FEATURE = {"dtype": "float32", "shape": [1], "names": None}


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


def copy_tree(src: str, dst: str, cfg: StorageConfig | None, skip: str) -> int:
    """Copy every file under src to dst (local or s3://), except the data files under `skip`."""
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


def with_reward(table: pa.Table, by_frame: dict[tuple[int, int], float]) -> pa.Table:
    keys = zip(table["episode_index"].to_pylist(), table["frame_index"].to_pylist(), strict=True)
    column = pa.array([by_frame.get((int(e), int(f)), 0.0) for e, f in keys], pa.float32())
    if REWARD in table.column_names:
        table = table.drop_columns([REWARD])
    table = table.append_column(REWARD, column)
    meta = dict(table.schema.metadata or {})
    hf = meta.get(b"huggingface")
    if hf:  # `datasets` checks its features against the columns
        spec = json.loads(hf)
        spec.setdefault("info", {}).setdefault("features", {})[REWARD] = {
            "dtype": "float32",
            "_type": "Value",
        }
        meta[b"huggingface"] = json.dumps(spec).encode()
    return table.replace_schema_metadata(meta)


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
    copied = copy_tree(src, e.out, scfg, skip="data/")
    files = 0
    sfs, sroot = storage.get_fs(storage.join(src, "data"), scfg)
    for path in sorted(p for p in sfs.find(sroot) if p.endswith(".parquet")):
        rel = "data/" + path[len(sroot.rstrip("/")) + 1 :]
        table = with_reward(fmt.read_shard(storage.join(src, rel), scfg), by_frame)
        with storage.atomic_open(storage.join(e.out, rel), scfg) as f:
            pq.write_table(table, f)
        files += 1
    info["features"][REWARD] = FEATURE
    with storage.atomic_open(storage.join(e.out, "meta/info.json"), scfg) as f:
        f.write(json.dumps(info, indent=4).encode())
    return {
        "out": e.out,
        "reward": e.reward,
        "data_files": files,
        "files_copied": copied,
        "steps": len(by_frame),
    }
