"""The plan as text (`rgvlm label --plan` without --json)."""

from __future__ import annotations

import math


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.1f} min"
    return f"{math.floor(minutes / 60)} h {round(minutes % 60):02d} min"


def render(plan: dict) -> str:
    s1, s2, a = plan["stage1"], plan["stage2"], plan["assumptions"]
    src = a["sources"]
    lines = [
        f"plan: label {plan['in']}" + (f" into {plan['out']}" if plan["out"] else ""),
        f"  engine {plan['engine']}, model {plan['model']}, window {plan['window']} (overlap {plan['overlap']})",
        f"  shards {plan['shards']['to_label']} to label of {plan['shards']['total']}"
        + (
            f" ({plan['shards']['already_labeled']} already labeled)"
            if plan["shards"]["already_labeled"]
            else ""
        )
        + f"; episodes {plan['episodes']:,}, actions {plan['actions']:,}"
        + (f", {plan['bad_input_episodes']} unlabelable (bad input)" if plan["bad_input_episodes"] else ""),
        "",
        f"  {'':8s} {'windows':>9s} {'images':>9s} {'prompt tokens':>14s} {'cached':>12s} {'completion':>11s} {'budget':>11s}",
        f"  {'stage 1':8s} {s1['windows']:9,d} {s1['images']:9,d} {s1['prompt_tokens']:14,d} {'-':>12s}"
        f" {s1['completion_expected']:11,d} {s1['completion_budget']:11,d}",
        f"  {'stage 2':8s} {s2['windows'] * s2['samples_per_window']:9,d} {s2['images']:9,d} {s2['prompt_tokens']:14,d}"
        f" {s2['cached_tokens']:12,d} {s2['completion_expected']:11,d} {s2['completion_budget']:11,d}",
        "",
        f"  stage 2 repeats stage 1's prompt: {s2['shared_prefix_tokens']:,} tokens"
        f" ({s2['shared_prefix_tokens'] / max(1, s2['prompt_tokens']):.0%} of its prompt);"
        f" served from a prefix cache: {a['prefix_cache']:.0%} ({src['prefix_cache']})",
        f"  analysis tokens per window {a['analysis_tokens']:.1f} ({src['analysis_tokens']}); prompt tokens counted by"
        f" {plan['processor']}'s processor",
    ]
    cal = plan["calibration"]
    if cal:
        lines.append(
            f"  calibration: {cal['windows']} windows in {cal['seconds']:.2f} s after a {cal['load_s']:.1f} s load"
            f" and a warm-up ({cal['warmup_s']:.1f} s more than its work), on {cal.get('threads', 1)} torch"
            " thread(s) as an actor:"
            f" {cal['tokens_per_s']:,.0f} tokens/s, {cal['windows_per_s']:.2f} windows/s"
            + (f", {cal['failed_windows']} windows failed" if cal["failed_windows"] else "")
        )
    lines += [f"  warning: {w}" for w in plan.get("warnings", [])]
    if not plan["estimates"]:
        lines += [
            "",
            "  no throughput given: pass plan.tokens_per_s=N or plan.windows_per_s=N per actor (bench/label_engine.py"
            " measures both), or --calibrate N to time a real run on N windows here",
        ]
        return "\n".join(lines)
    rate = (
        f"{a['tokens_per_s']:,.0f} tokens/s" if a["tokens_per_s"] else f"{a['windows_per_s']:,.2f} windows/s"
    )
    lines += [
        "",
        f"  time at {rate} per actor ({src['throughput']}), startup {a['startup_s']:.1f} s per actor:",
        f"  {'actors':>6s} {'GPUs':>6s} {'wall time':>12s} {'actor-hours':>12s} {'GPU-hours':>10s} {'no prefix cache':>16s}",
    ]
    for e in plan["estimates"]:
        lines.append(
            f"  {e['actors']:6d} {e['gpus']:6g} {duration(e['wall_s']):>12s} {e['actor_hours']:12.3f}"
            f" {e['gpu_hours']:10.3f} {duration(e['wall_s_without_prefix_cache']):>16s}"
        )
    capped = [e for e in plan["estimates"] if e.get("cpu_share", 1.0) < 1.0]
    if capped:
        lines.append(
            f"  CPU actors from {capped[0]['actors']} on share the CPUs left after the driver (plan.driver_cpus): "
            + ", ".join(f"{e['actors']} at {e['cpu_share']:.0%} speed" for e in capped)
        )
    return "\n".join(lines)
