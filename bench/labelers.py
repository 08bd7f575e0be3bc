"""Every labeler side by side on the same episodes, in one process, with its tiny offline model (CPU).

    python bench/labelers.py [--episodes 8] [--repeats 2] [--threads 1] [--json]

For each labeler: the model load (once), then `label_rows` on the same generated episodes, timed over
`--repeats` rounds interleaved across labelers (round 1 of every labeler, then round 2, ...), so a machine whose
load changes during the run slows them alike. Reported: seconds per 1,000 transitions (the median round) and the
model load. The LVLM judges (rgvlm, gvl) run the hf engine with the tiny Qwen2-VL at the demo's budgets
(engine.max_new_tokens_analysis=32, window 16 / overlap 4); the tiny models are random, so these are the costs of
the code paths and of tiny networks, not of the real models (docs/labeling.md lists those).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from rgvlm_ray.config import load_config
from rgvlm_ray.labelers import build_labeler
from rgvlm_ray.labelers.tiny_vlm import build_blip2, build_clip, build_qwen2_vl, build_xclip


def episodes(n: int) -> list[dict]:
    from rgvlm_ray.data.generate import build_shard

    cfg = load_config(dotlist=["generate.expert_noise=0.25", "generate.seed=7"])
    plan = [(1 + i % 3, i) for i in range(n)]  # k = 1..3 sub-tasks
    return build_shard(cfg, plan).to_pylist()


def labelers(models: Path) -> dict[str, tuple]:
    cfg = load_config()
    e, lab = cfg.engine, cfg.labeler
    qwen = str(build_qwen2_vl(models / "qwen"))
    lvlm = replace(e, kind="hf", model=qwen, max_new_tokens_analysis=32, batch_size=16)
    return {
        "oracle": (replace(e, kind="oracle", model=""), lab),
        "clip": (replace(e, kind="clip", model=str(build_clip(models / "clip"))), lab),
        "blip2": (replace(e, kind="blip2", model=str(build_blip2(models / "blip2"))), lab),
        "roboclip": (replace(e, kind="roboclip", model=str(build_xclip(models / "xclip"))), lab),
        "roboclip (window)": (
            replace(e, kind="roboclip", model=str(models / "xclip")),
            replace(lab, placement="window"),
        ),
        "rgvlm": (lvlm, lab),
        "gvl": (lvlm, replace(lab, strategy="gvl")),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    rows = episodes(args.episodes)
    transitions = sum(len(r["actions"]) for r in rows)
    with tempfile.TemporaryDirectory() as tmp:
        built = {}
        for name, (ecfg, lcfg) in labelers(Path(tmp)).items():
            start = time.perf_counter()
            built[name] = (build_labeler(ecfg, lcfg), time.perf_counter() - start)
        rounds: dict[str, list[float]] = {name: [] for name in built}
        for _ in range(args.repeats):
            for name, (lab, _) in built.items():
                start = time.perf_counter()
                out = lab.label_rows(rows)
                rounds[name].append(time.perf_counter() - start)
                assert all(o[f"{lab.name}_episode_status"] == "ok" for o in out), name
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}",
        "episodes": len(rows),
        "transitions": transitions,
        "repeats": args.repeats,
        "labelers": {
            name: {
                "s_per_1000_transitions": round(1000 * statistics.median(rounds[name]) / transitions, 2),
                "load_s": round(load, 2),
                "rounds_s": [round(s, 2) for s in rounds[name]],
            }
            for name, (_, load) in built.items()
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['machine']}; {len(rows)} episodes, {transitions} transitions, {args.repeats} rounds")
    print("| labeler | s per 1,000 transitions | model load, s |")
    print("|---|---|---|")
    for name, r in result["labelers"].items():
        print(f"| {name} | {r['s_per_1000_transitions']} | {r['load_s']} |")


if __name__ == "__main__":
    main()
