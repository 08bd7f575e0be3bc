"""The study's corpus: the raw data (generated or given), the expert data for the BC ceiling, tiny stand-in
models, and one label set per labeler with its label quality."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, replace
from typing import Any

from rgvlm_ray import storage
from rgvlm_ray.config import Config, EngineConfig, LabelerConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.errors import UsageError
from rgvlm_ray.experiments.workspace import Stage, Workspace, has_shards, tiny_model

log = logging.getLogger(__name__)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def raw_data(ws: Workspace) -> str:
    from rgvlm_ray.data import generate as gen

    cfg = ws.cfg
    if cfg.study.in_path:
        return cfg.study.in_path
    raw = ws.path("data", "raw")
    if has_shards(raw, cfg):
        print(f"reusing {raw}")
        return raw
    ws.timed(
        "generate",
        "transitions",
        lambda: gen.run(replace(cfg, generate=replace(cfg.generate, out=raw)))["transitions"],
    )
    return raw


def expert_data(ws: Workspace) -> str:
    """Noise-free bot episodes on the raw data's missions (same generate.seed and k), for the BC ceiling."""
    from rgvlm_ray.data import generate as gen

    cfg = ws.cfg
    out = ws.path("data", "expert")
    if has_shards(out, cfg):
        print(f"reusing {out}")
        return out
    g = replace(cfg.generate, out=out, expert_noise=0.0, noise_levels=[], detour=0.0, abandon=0.0)
    ws.timed("generate (expert, for the BC ceiling)", "transitions",
             lambda: gen.run(replace(cfg, generate=g))["transitions"])  # fmt: skip
    return out


def models(ws: Workspace) -> None:
    """Tiny random stand-ins for the models a listed labeler needs and the config leaves empty (noise)."""
    from rgvlm_ray.labelers.tiny_vlm import build_blip2, build_clip, build_qwen2_vl, build_xclip

    cfg = ws.cfg
    if {"rgvlm", "gvl"} & set(cfg.study.labelers) and not cfg.engine.model:
        ws.tiny_vlm = True
        cfg.engine.model = tiny_model(ws, "tiny-qwen2-vl", build_qwen2_vl)
    if "clip" in cfg.study.labelers and not cfg.study.clip_model:
        ws.tiny_clip = True
        cfg.study.clip_model = tiny_model(ws, "tiny-clip", build_clip)
    if "blip2" in cfg.study.labelers and not cfg.study.blip2_model:
        ws.tiny_others.append("blip2")
        cfg.study.blip2_model = tiny_model(ws, "tiny-blip2", build_blip2)
    if "roboclip" in cfg.study.labelers and not cfg.study.roboclip_model:
        ws.tiny_others.append("roboclip")
        cfg.study.roboclip_model = tiny_model(ws, "tiny-xclip", build_xclip)


def labeler_settings(cfg: Config, name: str) -> tuple[EngineConfig, LabelerConfig]:
    """(engine, labeler) settings that write `name`'s columns."""
    percent = fmt.noisy_percent(name)
    if percent is not None:
        return replace(cfg.engine, kind="noisy_oracle", model=""), replace(
            cfg.labeler, oracle_noise=percent / 100
        )
    if name == "oracle":
        return replace(cfg.engine, kind="oracle", model=""), cfg.labeler
    if name in ("clip", "blip2", "roboclip"):
        model = {
            "clip": cfg.study.clip_model,
            "blip2": cfg.study.blip2_model,
            "roboclip": cfg.study.roboclip_model,
        }
        return replace(cfg.engine, kind=name, model=model[name]), cfg.labeler
    # rgvlm and gvl: the configured LVLM engine, with their prompting strategy
    return cfg.engine, replace(cfg.labeler, strategy=name)


@dataclass
class Corpus:
    """The raw dataset and one label set per labeler that succeeded."""

    raw: str
    labels: dict[str, str]
    expert: str = ""  # noise-free data for the ceiling arm

    def labels_for(self, reward: str) -> list[str]:
        """The label sets a reward mode reads: only those its terms name."""
        from rgvlm_ray.labelstore.rewards import labelers_in

        return [self.labels[name] for name in labelers_in(reward)]


def label_one(ws: Workspace, name: str, in_path: str, out_path: str) -> dict[str, Any]:
    from rgvlm_ray.labeling import job
    from rgvlm_ray.labeling.summary import exit_code as summary_exit_code

    cfg = ws.cfg
    engine, labeler = labeler_settings(cfg, name)
    label = replace(cfg.label, in_path=in_path, out_path=out_path)
    if engine.kind in ("oracle", "noisy_oracle"):  # computed from the data: no GPU to hold
        label = replace(label, num_gpus_per_actor=0.0)
    summary = job.run(replace(cfg, engine=engine, labeler=labeler, label=label))
    code = summary_exit_code(summary, cfg.label.allow_quarantine)
    if code != 0:
        raise RuntimeError(f"the labeling job exited {code}: see {storage.join(out_path, 'summary.json')}")
    if summary["labeler"] != name:
        raise RuntimeError(f"the labeling job wrote {summary['labeler']!r} columns, not {name!r}")
    return summary


def error_summary(exc: BaseException, limit: int = 400) -> str:
    """One line for a report: the exception's type and first line, and the root cause (a Ray error carries the
    remote traceback, whose last line is the original exception), without terminal colour codes."""
    lines = [ln.strip() for ln in ANSI.sub("", str(exc)).splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    if len(lines) > 1:
        text += f" ... {lines[-1]}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def label_all(ws: Workspace, raw: str) -> tuple[dict[str, dict[str, Any]], Corpus]:
    """Label the raw dataset with every labeler, each into its own label set (data/labels-NAME). A failure is
    recorded, not raised: that labeler's arms are skipped."""
    outcome: dict[str, dict[str, Any]] = {}
    corpus = Corpus(raw, {})
    for name in ws.cfg.study.labelers:
        out = ws.path("data", f"labels-{name}")
        start = time.perf_counter()
        print(f"\n=== label ({name}) {raw} -> {out} ===", flush=True)
        try:
            summary = label_one(ws, name, raw, out)
        except Exception as exc:  # one broken labeler must not sink the study: its arms are skipped
            log.exception("labeling with %s failed; its arms are skipped", name)
            outcome[name] = {
                "status": "failed",
                "error": error_summary(exc),
                "in": raw,
                "out": out,
                "seconds": round(time.perf_counter() - start, 1),
            }
            continue
        seconds = time.perf_counter() - start
        ws.stages.append(Stage(f"label ({name})", seconds, summary["transitions"], "transitions"))
        outcome[name] = {
            "status": "ok",
            "in": raw,
            "out": out,
            "seconds": round(seconds, 1),
            "transitions": summary["transitions"],
            "shards_labeled": summary["shards"]["labeled"],
            "shards_current": summary["shards"]["skipped_current"],
        }
        corpus.labels[name] = out
    return outcome, corpus


def label_quality(ws: Workspace, corpus: Corpus, names: list[str]) -> dict[str, Any]:
    """Per labeler: Spearman rho of cumulative labels vs. true progress (mean over k) and the shuffled baseline."""
    from rgvlm_ray.label_quality import report as label_report

    if not names:
        return {"reports": [], "by_labeler": {}}
    try:
        reports, _, _ = label_report.build(corpus.raw, list(corpus.labels.values()), ws.cfg.storage)
    except UsageError as exc:
        return {"error": str(exc), "reports": [], "by_labeler": {}}
    reports = [r for r in reports if r["labeler"] in names]
    by_labeler = {}
    for r in reports:
        shuffled = [
            row["spearman_shuffled_mean"] for row in r["by_k"] if row["spearman_shuffled_mean"] is not None
        ]
        by_labeler[r["labeler"]] = {
            "spearman": r["spearman_mean_over_k"],
            "spearman_shuffled": round(sum(shuffled) / len(shuffled), 4) if shuffled else None,
        }
    return {"reports": reports, "by_labeler": by_labeler}
