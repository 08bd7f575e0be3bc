"""RG-VLM labeling throughput with the hf engine, with and without stage-1 prefix reuse, side by side.

    python bench/label_engine.py [--model DIR] [--size tiny|small] [--episodes 6] [--window 16]
                                 [--analysis-tokens 64] [--batch-sizes 1,8] [--repeats 2]

Without --model it builds a random Qwen2-VL in a temp dir: `tiny` is `rgvlm make-tiny-vlm`'s, `small` a wider
and deeper one (bench only) whose compute, not Python overhead, dominates on a CPU. It labels real generator
episodes at each engine batch size, with `engine.hf.prefix_reuse` off and on (two engines, same weights, same
episodes), interleaved `--repeats` times so machine load hits both alike; each figure is the median.

Per window it reports the stage-1 vs stage-2 prompt tokens: stage 2 repeats stage 1 verbatim. "re-encoded" is
the share of stage-2 prompt tokens that repeat the stage-1 prompt and were computed again (all of them without
reuse); "cached" the share served from stage 1's KV cache (`stage2_cached_tokens`).
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
from rgvlm_ray.data.generate import build_shard
from rgvlm_ray.labelers import labeler_fingerprint
from rgvlm_ray.labelers.engines.hf import HFEngine, to_hf_messages
from rgvlm_ray.labelers.labeler import RGVLMLabeler


class TimedEngine:
    """Wraps an engine to split wall time between stage 1 (free text) and stage 2 (constrained scores).

    It also counts, per stage-2 request, the stage-1 prompt tokens it repeats that were not served from cache.
    A stage-2 conversation holds its stage-1 messages (the same objects), which pairs the two requests.
    """

    def __init__(self, engine) -> None:
        self.engine, self.model_id, self.supports_schema = engine, engine.model_id, engine.supports_schema
        self.seconds = {1: 0.0, 2: 0.0}
        self.cpu_seconds = {1: 0.0, 2: 0.0}
        self.stage1_prompt: dict[int, int] = {}
        self.stage2 = {"prompt": 0, "cached": 0, "reencoded": 0}

    def generate(self, requests):
        start, cpu = time.perf_counter(), time.process_time()
        out = self.engine.generate(requests)
        stage = 1 if requests[0].schema is None else 2
        self.seconds[stage] += time.perf_counter() - start
        self.cpu_seconds[stage] += time.process_time() - cpu
        for r, c in zip(requests, out, strict=True):
            key = id(r.messages[1])
            if stage == 1:
                self.stage1_prompt[key] = c.prompt_tokens
            else:
                cached = c.cached_tokens or 0
                self.stage2["prompt"] += c.prompt_tokens
                self.stage2["cached"] += cached
                self.stage2["reencoded"] += max(0, self.stage1_prompt.get(key, 0) - cached)
        return out

    def close(self) -> None:
        pass


def prompt_ids(engine: HFEngine, conv) -> list[int]:
    text = engine.processor.apply_chat_template(
        to_hf_messages(conv), tokenize=False, add_generation_prompt=True
    )
    images = [
        p["image"]
        for m in conv
        if not isinstance(m["content"], str)
        for p in m["content"]
        if p["type"] == "image"
    ]
    return engine.processor(text=[text], images=images, return_tensors="pt")["input_ids"][0].tolist()


def build_model(size: str) -> str:
    from rgvlm_ray.labelers.tiny_vlm import build_qwen2_vl

    out = Path(tempfile.mkdtemp(prefix="bench-vlm-")) / "vlm"
    return str(build_qwen2_vl(out, **SIZES[size]))


# `small`: about 7M parameters, sized so that a 2-core CPU spends its time in matrix products, as a GPU
# serving a 7B model does, rather than in per-token Python overhead as with the 0.1M-parameter `tiny`.
SIZES = {
    "tiny": {},
    "small": {
        "text": {
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 6,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "mrope_section": [4, 6, 6],
        },
        "vision": {"depth": 2, "embed_dim": 128, "hidden_size": 256, "num_heads": 4},
    },
}


def label_once(engine, ecfg, lcfg, fp, rows, steps) -> dict:
    if engine.prefixes is not None:
        # Start cold: the kept caches of the last run (or the warm-up) hold these very stage-1 prompts, and
        # stage 1 would continue them too.
        engine.prefixes.clear()
    timed = TimedEngine(engine)
    labeler = RGVLMLabeler(ecfg, lcfg, fp, timed)
    start, cpu = time.perf_counter(), time.process_time()
    eps = labeler.label_episodes(rows)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    s = labeler.stats()
    tokens = s["prompt_tokens"] + s["completion_tokens"]
    p2 = timed.stage2["prompt"]
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "windows_per_s": s["windows"] / seconds,
        "steps_per_s": steps / seconds,
        "tokens_per_s": tokens / seconds,
        "completion_tokens_per_s": s["completion_tokens"] / seconds,
        "stage1_s": timed.seconds[1],
        "stage2_s": timed.seconds[2],
        "stage1_cpu_s": timed.cpu_seconds[1],
        "stage2_cpu_s": timed.cpu_seconds[2],
        "stage2_reencoded": timed.stage2["reencoded"] / p2,
        "stage2_cached": timed.stage2["cached"] / p2,
        "ok_windows": sum(w.status == "ok" for ep in eps for w in ep.windows),
        "scores": [w.scores for ep in eps for w in ep.windows],
        "stats": s,
        "episodes": eps,
    }


def median_run(runs: list[dict]) -> dict:
    """Per-figure medians over repeats (the first repeat's counts and scores)."""
    keys = (
        "seconds",
        "cpu_seconds",
        "stage1_cpu_s",
        "stage2_cpu_s",
        "windows_per_s",
        "steps_per_s",
        "tokens_per_s",
        "completion_tokens_per_s",
        "stage1_s",
        "stage2_s",
    )
    out = {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}
    out.update(
        stage2_reencoded=round(runs[0]["stage2_reencoded"], 4),
        stage2_cached=round(runs[0]["stage2_cached"], 4),
        ok_windows=runs[0]["ok_windows"],
        seconds_each=[round(r["seconds"], 2) for r in runs],
        cpu_seconds_each=[round(r["cpu_seconds"], 2) for r in runs],
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="")
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--episodes", type=int, default=6)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--analysis-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    # On a shared machine, 1 thread makes CPU seconds (process time) a fair measure of work: idle OpenMP
    # threads spin, and their spinning would count.
    torch.set_num_threads(args.threads or max(1, torch.get_num_threads()))

    model = args.model or build_model(args.size)
    cfg = load_config(dotlist=["generate.expert_noise=0.25"])
    plan = [(1 + i % 3, i // 3) for i in range(args.episodes)]  # k = 1, 2, 3, 1, 2, 3, ...
    rows = build_shard(cfg, plan).to_pylist()
    steps = sum(len(r["actions"]) for r in rows)

    base = replace(cfg.engine, kind="hf", model=model, max_new_tokens_analysis=args.analysis_tokens)
    lcfg = replace(cfg.labeler, window=args.window)
    fp = labeler_fingerprint(base, lcfg)
    engines = {
        reuse: HFEngine(replace(base, hf=replace(base.hf, prefix_reuse=reuse))) for reuse in (False, True)
    }
    for engine in engines.values():
        RGVLMLabeler(engine.cfg, lcfg, fp, engine).label_rows(rows[:1])  # warm-up

    results = []
    same_scores = True
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for repeat in range(args.repeats):
            for reuse in (False, True) if repeat % 2 == 0 else (True, False):  # alternate who goes first
                engine = engines[reuse]
                engine.cfg = replace(engine.cfg, batch_size=bs)
                runs[reuse].append(label_once(engine, engine.cfg, lcfg, fp, rows, steps))
        same_scores &= runs[False][0]["scores"] == runs[True][0]["scores"]
        off, on = median_run(runs[False]), median_run(runs[True])
        results += [
            {"batch_size": bs, "prefix_reuse": False, **off},
            {"batch_size": bs, "prefix_reuse": True, **on},
        ]
        results[-1]["speedup_vs_off"] = round(off["seconds"] / on["seconds"], 2)
        results[-1]["cpu_speedup_vs_off"] = round(off["cpu_seconds"] / on["cpu_seconds"], 2)
        # Stage 1 is the same work in both modes, so its spread across all runs is machine noise; with it
        # pooled, only stage 2 (the part reuse changes) differs between the two totals.
        stage1 = statistics.median(r["stage1_cpu_s"] for r in runs[False] + runs[True])
        results[-1]["cpu_speedup_stage1_pooled"] = round(
            (stage1 + off["stage2_cpu_s"]) / (stage1 + on["stage2_cpu_s"]), 2
        )
    last = runs[False][0]
    s, eps = last["stats"], last["episodes"]
    engine = engines[False]
    w = s["windows"]
    # One full window: the stage-1 prompt is a token prefix of its stage-2 prompt.
    full = next(win for ep in eps for win in ep.windows if win.window.size == args.window and win.stage2)
    a, b = prompt_ids(engine, full.stage1), prompt_ids(engine, full.stage2)
    prefix = {
        "stage1_prompt_tokens_per_window": round(s["stage1_prompt_tokens"] / w, 1),
        "stage2_prompt_tokens_per_window": round(s["stage2_prompt_tokens"] / w, 1),
        "stage2_share_served_by_prefix": round(s["stage1_prompt_tokens"] / s["stage2_prompt_tokens"], 3),
        "full_window_stage1_tokens": len(a),
        "full_window_stage2_tokens": len(b),
        "full_window_prefix_holds": b[: len(a)] == a,
    }
    by = {(r["batch_size"], r["prefix_reuse"]): r for r in results}
    sizes = sorted({r["batch_size"] for r in results})
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                f"cuda={torch.cuda.is_available()}",
                "load_average_at_start": load_at_start,
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                "model": model,
                "size": args.size if not args.model else "given",
                "parameters": sum(p.numel() for p in engine.model.parameters()),
                "episodes": len(rows),
                "steps": steps,
                "windows": w,
                "window": args.window,
                "analysis_tokens": args.analysis_tokens,
                "repeats": args.repeats,
                "runs": results,
                "prefix": prefix,
                "scores_identical_with_and_without_reuse": same_scores,
                "batched_speedup": round(
                    by[(sizes[-1], False)]["windows_per_s"] / by[(sizes[0], False)]["windows_per_s"], 2
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
