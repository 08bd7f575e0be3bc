"""`rgvlm relabel`: label what is new, then (with --then-train) retrain on the raw data joined with the label set."""

from __future__ import annotations

import json
from dataclasses import replace

from rgvlm_ray.cli import require
from rgvlm_ray.config import Config
from rgvlm_ray.iql.trainer import train
from rgvlm_ray.labeling import relabel
from rgvlm_ray.labeling.summary import exit_code as summary_exit_code


def main(cfg: Config) -> int:
    require(cfg, "label.in_path", "label.out_path")
    summary = relabel.label_new(cfg)
    labeled = summary["shards"]["labeled"]
    print(json.dumps(summary, indent=2))
    print(
        f"relabel: {labeled} new or changed shard(s) labeled, {summary['shards']['skipped_current']} current, "
        f"{len(summary['shards']['skipped_leased_by_other_run'])} leased by another run"
    )
    rc = summary_exit_code(summary, cfg.label.allow_quarantine)
    if not cfg.relabel.then_train or rc != 0:
        return rc
    if not (labeled or cfg.relabel.train_always):
        print("nothing new labeled: no retraining")
        return rc
    with relabel.training_slot(cfg, summary["run_id"]) as out:
        if out is None:
            print("retraining skipped: another run holds the training lease")
            return rc
        labels = [cfg.label.out_path, *(x for x in cfg.train.labels if x != cfg.label.out_path)]
        t = replace(cfg.train, in_path=cfg.label.in_path, labels=labels, out_path=out)
        train(replace(cfg, train=t))
        print(f"retrained: {out}")
    return rc
