"""`rgvlm study`: the paper's experiment as one command on Ray (docs/study.md).

1. Data (corpus.py): `study.in_path`, or a dataset generated into OUT/data/raw (reused when present).
2. Labels (corpus.py): every labeler in `study.labelers` labels the raw data into its own label set,
   OUT/data/labels-<name>. A labeler that fails is recorded and its arms are skipped; the others go on.
   `rgvlm label-report` statistics (Spearman rho of the labels against true progress, and its shuffled baseline)
   join every label set. Each run joins the raw data with the label sets its reward names (`train.labels`).
3. Arms (arms.py) and runs (runs.py): `sparse`; for each labeler X that succeeded and each template of
   `study.modes`, the mode with X put in; `oracle+sparse` at each `study.contexts` value (a history-length
   ablation). Each arm x seed is one Ray Train run in OUT/runs/<arm>/seed<i>, evaluated on every split into
   OUT/eval/<arm>/seed<i>/<split>. Up to `study.parallel` of them run side by side, each from a driver thread:
   Ray Train V2's `TorchTrainer.fit()` works from threads, and threads cost nothing while they wait. After
   training, each run's checkpoint is read back and the study stops with an error naming the run if its reward,
   seed or context is not its arm's.
4. study.md, plots and study.json (report.py, tables.py, plots.py).

A rerun on the same OUT reuses everything finished: data, labels the manifests say are current, runs whose latest
checkpoint reached `train.steps` (not retrained) and evaluations of that very checkpoint step (not recomputed).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from typing import Any

from rgvlm_ray import storage
from rgvlm_ray.config import Config, redacted
from rgvlm_ray.experiments.study.arms import plan_arms, validate
from rgvlm_ray.experiments.study.corpus import expert_data, label_all, label_quality, models, raw_data
from rgvlm_ray.experiments.study.runs import run_arms
from rgvlm_ray.experiments.workspace import NOISE_WARNING, Stage, Workspace


def reused_lists(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    train = [f"{r['arm']}/seed{r['seed']}" for r in records if r["train_reused"]]
    evals = [f"{r['arm']}/seed{r['seed']}/{s}" for r in records for s, e in r["evals"].items() if e["reused"]]
    return {"train": train, "eval": evals}


def run(cfg: Config) -> dict[str, Any]:
    """The whole study; returns what study.json holds (also written to OUT/study.json with study.md)."""
    from rgvlm_ray.experiments.study.report import report_files
    from rgvlm_ray.iql.evaluate import write_outputs
    from rgvlm_ray.ray_utils import init_ray

    validate(cfg)
    cfg = copy.deepcopy(cfg)  # tiny model paths are filled in below
    out = cfg.study.out if storage.is_remote(cfg.study.out) else storage.get_fs(cfg.study.out)[1]
    ws = Workspace(cfg, out)
    start = time.perf_counter()
    init_ray(cfg.ray)
    raw = raw_data(ws)
    models(ws)
    if ws.tiny_vlm:
        print(f"\nNOTE: {NOISE_WARNING}")
    from rgvlm_ray.data.inspect import summarize as inspect_data

    behaviour = inspect_data(raw, cfg.storage).get("behaviour")
    outcome, corpus = label_all(ws, raw)
    ok = [name for name in cfg.study.labelers if outcome[name]["status"] == "ok"]
    quality = label_quality(ws, corpus, ok)
    # The ceiling replays the generator's missions without noise: there is none to replay for a given --in.
    ceiling = cfg.study.expert_ceiling and not cfg.study.in_path
    if cfg.study.expert_ceiling and not ceiling:
        print("no BC ceiling: study.in_path is not generated here, so there are no noise-free episodes of it")
    arms = plan_arms(
        ok, cfg.study.modes, cfg.study.contexts, cfg.iql.context, dict(cfg.study.modes_for),
        list(cfg.study.baselines), ceiling,
    )  # fmt: skip
    if ceiling:
        corpus.expert = expert_data(ws)
    records, timing = run_arms(ws, arms, corpus)
    ws.stages.append(Stage("train + evaluate (all runs)", timing["seconds"], len(records), "runs"))
    study = {
        "out": out,
        "created_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": round(time.perf_counter() - start, 1),
        "settings": {
            "labelers": cfg.study.labelers,
            "modes": cfg.study.modes,
            "seeds": cfg.study.seeds,
            "splits": cfg.study.splits,
            "contexts": cfg.study.contexts,
            "baselines": list(cfg.study.baselines),
            "expert_ceiling": cfg.study.expert_ceiling,
            "learner": {
                k: getattr(cfg.iql, k) for k in ("adv_norm", "weighting", "beta", "discount", "expectile")
            },
            "eval_policy": cfg.eval.policy,
            "behaviour": {
                "expert_noise": cfg.generate.expert_noise,
                "noise_levels": list(cfg.generate.noise_levels),
                "detour": cfg.generate.detour,
                "abandon": cfg.generate.abandon,
            },
            "default_context": cfg.iql.context,
            "parallel": cfg.study.parallel,
            "train_steps": cfg.train.steps,
            "train_workers": cfg.train.workers,
            "episodes_per_k": cfg.eval.episodes_per_k,
            "eval_max_steps": cfg.eval.max_steps,
            "eval_stall_steps": cfg.eval.stall_steps,
            "generated": not cfg.study.in_path,
            "episodes": cfg.generate.episodes,
            "subtasks": cfg.generate.subtasks,
        },
        "behaviour_data": behaviour,
        "tiny_vlm": ws.tiny_vlm,
        "tiny_clip": ws.tiny_clip,
        "data": {"raw": raw, "labels": corpus.labels, "expert": corpus.expert},
        "labelers": outcome,
        "label_quality": quality,
        "arms": [asdict(a) for a in arms],
        "skipped_labelers": [n for n in cfg.study.labelers if n not in ok],
        "runs": records,
        "reused": reused_lists(records),
        "timing": timing,
        "stages": [{**asdict(s), "rate": s.rate} for s in ws.stages],
        "config": redacted(cfg),
    }
    files = report_files(study)
    files["study.json"] = json.dumps(study, indent=2, default=str).encode()
    write_outputs(out, files, cfg.storage)
    return study
