"""The labeler interface the distributed job calls: `build_labeler(engine_cfg, labeler_cfg).label_rows(rows)`.

`engine.kind` picks the labeler: hf | vllm | openai -> an LVLM judge, `rgvlm` or, with labeler.strategy=gvl,
`gvl`; clip -> `clip`, blip2 -> `blip2`, roboclip -> `roboclip` (embedding models), oracle -> `oracle`,
noisy_oracle -> `noisyNN` (the oracle with NN% of its steps shuffled). Every labeler
returns, per episode row, the columns of format.LABEL_FIELDS under its own prefix, and never raises for one
bad episode: it gets episode_status="error" and null scores instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Protocol

from rgvlm_ray.config import EngineConfig, LabelerConfig
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelers import gvl, noisy_oracle, oracle, prompts, rgvlm, windows
from rgvlm_ray.labelers.columns import error_columns, num_actions, token_free_stats
from rgvlm_ray.labelers.engines import LVLM_ENGINES, Engine, make_engine

log = logging.getLogger(__name__)
EMBEDDING_KINDS = ("clip", "blip2", "roboclip")  # engine kinds whose labeler has the same name
KINDS = (*LVLM_ENGINES, *EMBEDDING_KINDS, "oracle", noisy_oracle.KIND)
STRATEGIES = (rgvlm.NAME, gvl.NAME)
ROBOCLIP_PLACEMENTS = ("episode", "window")
# Small files that identify a local checkpoint; weights are identified by name and size (hashing a 15 GB
# checkpoint would make the fingerprint expensive).
IDENTITY_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
)


class Labeler(Protocol):
    name: str  # rgvlm | gvl | clip | blip2 | roboclip | oracle | noisyNN
    fingerprint: str

    def label_rows(self, rows: list[dict]) -> list[dict]: ...
    def stats(self) -> dict: ...
    def close(self) -> None: ...


def labeler_name(kind: str, lcfg: LabelerConfig | None = None) -> str:
    """The column prefix `kind` writes; noisy_oracle's depends on `lcfg.oracle_noise` and an LVLM engine's on
    `lcfg.strategy`, so those need `lcfg` (without it, an LVLM engine is `rgvlm`)."""
    if kind in LVLM_ENGINES:
        return gvl.NAME if lcfg is not None and lcfg.strategy == gvl.NAME else rgvlm.NAME
    if kind in (*EMBEDDING_KINDS, "oracle"):
        return kind
    if kind == noisy_oracle.KIND:
        if lcfg is None:
            raise ValueError(
                "labeler_name('noisy_oracle') needs the LabelerConfig (its name is its noise level)"
            )
        return noisy_oracle.noisy_name(lcfg.oracle_noise)
    raise UsageError(f"engine.kind must be one of {KINDS}, got {kind!r}")


def model_identity(model: str, revision: str | None) -> dict:
    """The model id or dir, its revision, and for a local dir a digest of its contents (cheap)."""
    ident: dict = {"model": model, "revision": revision}
    path = Path(model).expanduser()
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = str(f.relative_to(path))
            h.update(f"{rel}\0{f.stat().st_size}\0".encode())
            if f.name in IDENTITY_FILES:
                h.update(f.read_bytes())
        ident["model"] = str(path.resolve())
        ident["contents"] = h.hexdigest()
    return ident


def fingerprint_spec(ecfg: EngineConfig, lcfg: LabelerConfig) -> dict:
    """Everything that can change a label; batch size, timeouts and concurrency are left out."""
    name = labeler_name(ecfg.kind, lcfg)
    if name == "oracle":
        return {"labeler": "oracle", "version": oracle.VERSION}
    if ecfg.kind == noisy_oracle.KIND:
        return noisy_oracle.spec(lcfg.oracle_noise, lcfg.oracle_noise_seed)
    common = {
        "labeler": name,
        "model": model_identity(ecfg.model, ecfg.revision),
        "dtype": ecfg.dtype,
        "image_size": lcfg.image_size,
        "view": lcfg.view,
        "reward": [lcfg.reward_scale, lcfg.reward_shift],
        "max_goal_chars": lcfg.max_goal_chars,
    }
    if name in ("clip", "blip2"):
        return common
    if name == "roboclip":
        spec = {**common, "placement": lcfg.placement}
        if lcfg.placement == "window":
            spec["window"] = lcfg.window
        if lcfg.demo_in:  # the demonstration replaces the goal text
            spec["demo"] = [lcfg.demo_in, lcfg.demo_episode]
        return spec
    spec = {
        **common,
        "engine": ecfg.kind,
        "prompt": [lcfg.prompt_version, prompts.prompt_digest(lcfg.prompt_version)],
        "sampling": {
            "temperature": ecfg.temperature,
            "top_p": ecfg.top_p,
            "seed": ecfg.seed,
            "max_new_tokens": [ecfg.max_new_tokens_analysis, ecfg.max_new_tokens_scores],
            "num_samples": lcfg.num_samples,
            "max_parse_retries": lcfg.max_parse_retries,
        },
        "windows": [lcfg.window, lcfg.overlap],
    }
    if name == gvl.NAME:  # frames only: no actions in the prompt; the shuffle follows engine.seed
        spec["prompt"] = ["gvl", lcfg.prompt_version, gvl.prompt_digest(lcfg.prompt_version)]
    elif (lcfg.action_text, lcfg.action_decimals) != (
        "auto",
        2,
    ):  # absent at the defaults: older sets stay current
        spec["actions"] = [lcfg.action_text, lcfg.action_decimals]
    if ecfg.kind == "openai":  # one model name can mean different models on different endpoints
        spec["endpoint"] = [ecfg.openai.base_url, ecfg.openai.response_format_json_schema]
    return spec


def labeler_fingerprint(ecfg: EngineConfig, lcfg: LabelerConfig) -> str:
    """Changes whenever anything that can change the labels changes; loads no model."""
    if ecfg.kind == "oracle":
        return oracle.fingerprint()
    if ecfg.kind == noisy_oracle.KIND:
        return noisy_oracle.fingerprint(lcfg.oracle_noise, lcfg.oracle_noise_seed)
    blob = json.dumps(fingerprint_spec(ecfg, lcfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class RGVLMLabeler:
    """An LVLM judge through the two-stage driver (rgvlm.py): RG-VLM's prompts, or GVL's (labeler.strategy)."""

    def __init__(self, ecfg: EngineConfig, lcfg: LabelerConfig, fingerprint: str, engine: Engine) -> None:
        self.ecfg, self.lcfg, self.fingerprint, self.engine = ecfg, lcfg, fingerprint, engine
        self.counters = rgvlm.Counters()
        self.name = labeler_name(ecfg.kind, lcfg)
        self.judge = gvl.JUDGE if self.name == gvl.NAME else rgvlm.JUDGE

    def label_episodes(self, rows: list[dict]) -> list[rgvlm.EpisodeLabel]:
        """The full trace (conversations, analyses, replies) for inspection (`rgvlm label-episode`)."""
        return rgvlm.label_episodes(self.engine, self.ecfg, self.lcfg, rows, self.counters, self.judge)

    def columns(self, ep: rgvlm.EpisodeLabel) -> dict:
        to_columns = gvl.to_columns if self.name == gvl.NAME else rgvlm.to_columns
        return to_columns(ep, self.lcfg, self.fingerprint)

    def label_rows(self, rows: list[dict]) -> list[dict]:
        return [self.columns(ep) for ep in self.label_episodes(rows)]

    def stats(self) -> dict:
        return self.counters.as_dict()

    def close(self) -> None:
        self.engine.close()


class OracleLabeler:
    """`oracle`, or with `label` = noisy_oracle.noisy_label bound to a level, `noisyNN`: pure functions of a row."""

    def __init__(
        self, fingerprint: str, name: str = oracle.NAME, label: Callable[[dict], dict] = oracle.oracle_label
    ) -> None:
        self.fingerprint, self.name, self.label = fingerprint, name, label
        self.counters = {"episodes": 0, "errors": 0}

    def label_rows(self, rows: list[dict]) -> list[dict]:
        out = []
        for row in rows:
            try:
                out.append(self.label(row))
                self.counters["episodes"] += 1
            except (UsageError, TypeError, ValueError) as exc:
                self.counters["errors"] += 1
                out.append(error_columns(self.name, num_actions(row), str(exc), self.fingerprint))
        return out

    def stats(self) -> dict:
        return token_free_stats(self.counters)

    def close(self) -> None:
        pass


def check_config(ecfg: EngineConfig, lcfg: LabelerConfig) -> None:
    name = labeler_name(ecfg.kind, lcfg)  # also validates labeler.oracle_noise for noisy_oracle
    if ecfg.kind in ("oracle", noisy_oracle.KIND):
        return
    if lcfg.strategy not in STRATEGIES:
        raise UsageError(f"labeler.strategy must be one of {STRATEGIES}, got {lcfg.strategy!r}")
    if not ecfg.model:
        raise UsageError("engine.model is empty: pass --model with a hub id or a local model directory")
    if lcfg.view not in rgvlm.VIEWS:
        raise UsageError(f"labeler.view must be one of {rgvlm.VIEWS}, got {lcfg.view!r}")
    if lcfg.image_size < 1:
        raise UsageError(f"labeler.image_size must be positive, got {lcfg.image_size}")
    if name == "roboclip":
        if lcfg.placement not in ROBOCLIP_PLACEMENTS:
            raise UsageError(
                f"labeler.placement must be one of {ROBOCLIP_PLACEMENTS}, got {lcfg.placement!r}"
            )
        if lcfg.placement == "window":
            windows.check(lcfg.window, 0)
    if name in STRATEGIES:
        windows.check(lcfg.window, lcfg.overlap)
        if name == gvl.NAME:
            gvl.load_prompts(lcfg.prompt_version)
        else:
            prompts.load_prompts(lcfg.prompt_version)
        if lcfg.num_samples < 1 or lcfg.max_parse_retries < 0:
            raise UsageError("labeler.num_samples must be >= 1 and labeler.max_parse_retries >= 0")
        if lcfg.num_samples > 1 and ecfg.temperature <= 0:
            log.warning("labeler.num_samples=%d with temperature 0: the samples will agree", lcfg.num_samples)


def build_labeler(ecfg: EngineConfig, lcfg: LabelerConfig) -> Labeler:
    """Check the settings and load the engine once (call it in a Ray actor's __init__)."""
    check_config(ecfg, lcfg)
    fp = labeler_fingerprint(ecfg, lcfg)
    name = labeler_name(ecfg.kind, lcfg)
    if name == "oracle":
        return OracleLabeler(fp)
    if ecfg.kind == noisy_oracle.KIND:
        label = partial(noisy_oracle.noisy_label, p=lcfg.oracle_noise, seed=lcfg.oracle_noise_seed)
        return OracleLabeler(fp, name, label)
    if name == "clip":
        from rgvlm_ray.labelers.clip import ClipLabeler

        return ClipLabeler(ecfg, lcfg, fp)
    if name == "blip2":
        from rgvlm_ray.labelers.blip2 import Blip2Labeler

        return Blip2Labeler(ecfg, lcfg, fp)
    if name == "roboclip":
        from rgvlm_ray.labelers.roboclip import RoboCLIPLabeler

        return RoboCLIPLabeler(ecfg, lcfg, fp)
    return RGVLMLabeler(ecfg, lcfg, fp, make_engine(ecfg, lcfg))
