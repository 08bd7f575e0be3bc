"""`rgvlm study`."""

from __future__ import annotations

from rgvlm_ray import storage
from rgvlm_ray.cli import require
from rgvlm_ray.config import Config
from rgvlm_ray.experiments.study.pipeline import run
from rgvlm_ray.experiments.workspace import NOISE_WARNING


def main(cfg: Config) -> int:
    require(cfg, "study.out")
    storage.require_folder(cfg.study.out, "--out", cfg.storage)
    study = run(cfg)
    reused = study["reused"]
    trained = study["timing"]["trainings_run"]
    print(
        f"\nruns: {len(study['runs'])}; trained {trained}, reused {len(reused['train'])}; evaluations reused "
        f"{len(reused['eval'])}; at most {study['timing']['max_concurrent_trainings']} trainings at once"
    )
    print(f"wrote study.md, study.json and plots to {study['out']}")
    if study["tiny_vlm"]:
        print(f"NOTE: {NOISE_WARNING}")
    if study["skipped_labelers"]:
        for name in study["skipped_labelers"]:
            print(f"labeler {name} FAILED, its arms were skipped: {study['labelers'][name]['error']}")
        return 1
    return 0
