"""RG-VLM labeling throughput with the hf engine, and what a prefix cache would save in stage 2.

    python bench/label_engine.py [--model DIR] [--episodes 6] [--window 16] [--analysis-tokens 64]

Without --model it builds the tiny random Qwen2-VL (`rgvlm make-tiny-vlm`) in a temp dir. It labels real
generator episodes with engine batch sizes side by side (same engine, same episodes) and reports windows/s,
tokens/s, and per window the stage-1 vs stage-2 prompt tokens: stage 2 repeats stage 1 verbatim, so a prefix
cache (vLLM's, on by default in our vllm engine) serves that share of the stage-2 prompt from cache.
"""

from __future__ import annotations

import argparse
import json
import platform
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
    """Wraps an engine to split wall time between stage 1 (free text) and stage 2 (constrained scores)."""

    def __init__(self, engine) -> None:
        self.engine, self.model_id, self.supports_schema = engine, engine.model_id, engine.supports_schema
        self.seconds = {1: 0.0, 2: 0.0}

    def generate(self, requests):
        start = time.perf_counter()
        out = self.engine.generate(requests)
        self.seconds[1 if requests[0].schema is None else 2] += time.perf_counter() - start
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="")
    ap.add_argument("--episodes", type=int, default=6)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--analysis-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,8")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    model = args.model
    if not model:
        from rgvlm_ray.labelers.tiny_vlm import build_qwen2_vl

        model = str(build_qwen2_vl(Path(tempfile.mkdtemp(prefix="bench-vlm-")) / "vlm"))
    cfg = load_config(dotlist=["generate.expert_noise=0.25"])
    plan = [(1 + i % 3, i // 3) for i in range(args.episodes)]  # k = 1, 2, 3, 1, 2, 3, ...
    rows = build_shard(cfg, plan).to_pylist()
    steps = sum(len(r["actions"]) for r in rows)

    ecfg = replace(cfg.engine, kind="hf", model=model, max_new_tokens_analysis=args.analysis_tokens)
    lcfg = replace(cfg.labeler, window=args.window)
    engine = HFEngine(ecfg)
    fp = labeler_fingerprint(ecfg, lcfg)
    RGVLMLabeler(ecfg, lcfg, fp, engine).label_rows(rows[:1])  # warm-up

    results = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        engine.cfg = replace(ecfg, batch_size=bs)
        timed = TimedEngine(engine)
        labeler = RGVLMLabeler(engine.cfg, lcfg, fp, timed)
        start = time.perf_counter()
        eps = labeler.label_episodes(rows)
        seconds = time.perf_counter() - start
        s = labeler.stats()
        tokens = s["prompt_tokens"] + s["completion_tokens"]
        results.append(
            {
                "batch_size": bs,
                "seconds": round(seconds, 2),
                "windows_per_s": round(s["windows"] / seconds, 2),
                "steps_per_s": round(steps / seconds, 1),
                "tokens_per_s": round(tokens / seconds, 0),
                "completion_tokens_per_s": round(s["completion_tokens"] / seconds, 1),
                "stage1_s": round(timed.seconds[1], 2),
                "stage2_s": round(timed.seconds[2], 2),
                "ok_windows": sum(w.status == "ok" for ep in eps for w in ep.windows),
            }
        )
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
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                f"cuda={torch.cuda.is_available()}",
                "model": model,
                "episodes": len(rows),
                "steps": steps,
                "windows": w,
                "window": args.window,
                "analysis_tokens": args.analysis_tokens,
                "runs": results,
                "prefix": prefix,
                "batched_speedup": round(results[-1]["windows_per_s"] / results[0]["windows_per_s"], 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
