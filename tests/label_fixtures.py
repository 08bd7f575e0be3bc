"""Shared, built-once test data for the tests/test_label_*.py files: tiny models and real episodes.

Builders are cached per process, so every test file that imports them reuses one copy per session.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from rgvlm_ray.config import Config, EngineConfig, LabelerConfig, load_config


@functools.cache
def tiny_qwen_dir() -> str:
    from rgvlm_ray.labelers.tiny_vlm import build_qwen2_vl

    return str(build_qwen2_vl(Path(tempfile.mkdtemp(prefix="rgvlm-tiny-qwen-")) / "vlm"))


@functools.cache
def tiny_clip_dir() -> str:
    from rgvlm_ray.labelers.tiny_vlm import build_clip

    return str(build_clip(Path(tempfile.mkdtemp(prefix="rgvlm-tiny-clip-")) / "clip"))


# Noise and plan are pinned here so these episodes do not change when the generator's defaults do.
NOISE = 0.25
PLAN = [(3, 0), (1, 0), (3, 1)]  # 33, 4 and 67 actions


@functools.cache
def _table():
    """Real generator episodes with both views (frames and frames_full)."""
    from rgvlm_ray.data.generate import build_shard

    cfg = load_config(dotlist=["env.full_view=true", f"generate.expert_noise={NOISE}"])
    return build_shard(cfg, PLAN)


def episodes() -> list[dict]:
    """The two episodes most tests label: 33 actions (several windows) and 4 (one window)."""
    return _table().slice(0, 2).to_pylist()


def long_episode() -> dict:
    """67 actions: the size of the acceptance check (`label-episode` on a 40+ step episode)."""
    return _table().slice(2, 1).to_pylist()[0]


@functools.cache
def dataset_dir() -> str:
    """All three episodes as a one-shard dataset on disk."""
    from rgvlm_ray.data import format as fmt

    out = Path(tempfile.mkdtemp(prefix="rgvlm-label-data-"))
    fmt.write_shard(_table(), str(out / "shard-00000.parquet"))
    return str(out)


def hf_config(**labeler) -> tuple[EngineConfig, LabelerConfig]:
    """Small generation budgets keep the tiny model's CPU time low; everything else is the default."""
    cfg: Config = load_config()
    ecfg, lcfg = cfg.engine, cfg.labeler
    ecfg.kind, ecfg.model = "hf", tiny_qwen_dir()
    ecfg.max_new_tokens_analysis = 8
    ecfg.batch_size = 16
    for key, value in labeler.items():
        setattr(lcfg, key, value)
    return ecfg, lcfg


@functools.cache
def tiny_blip2_dir() -> str:
    from rgvlm_ray.labelers.tiny_vlm import build_blip2

    return str(build_blip2(Path(tempfile.mkdtemp(prefix="rgvlm-tiny-blip2-")) / "blip2"))


@functools.cache
def tiny_xclip_dir() -> str:
    from rgvlm_ray.labelers.tiny_vlm import build_xclip

    return str(build_xclip(Path(tempfile.mkdtemp(prefix="rgvlm-tiny-xclip-")) / "xclip"))
