"""`rgvlm evaluate`: roll a checkpoint's policy out on k = 1..6 sub-task missions, one Ray task per chunk.

Per k it reports the success rate, the proportion of sub-tasks completed (the paper's "proportion of task
completion", ALFRED-style) and the mean environment return. `seen` re-creates the training data's missions
from its seed pool; `randomized` keeps those missions but draws held-out initial placements; `novel` draws
missions no generated dataset holds (env.SPLIT_DEFINITIONS). Agreement without rollouts: iql/agreement.py.
"""

from __future__ import annotations

import io
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from rgvlm_ray import storage
from rgvlm_ray.config import Config, EnvConfig, StorageConfig
from rgvlm_ray.data.env import (
    MAX_SUBTASKS,
    NUM_ACTIONS,
    SPLIT_DEFINITIONS,
    SPLITS,
    EpisodeSpec,
    Policy,
    derive_seed,
    find_mission,
    rollout,
)
from rgvlm_ray.errors import UsageError
from rgvlm_ray.iql.agreement import agreement_task
from rgvlm_ray.iql.checkpoint import latest_checkpoint, load_policy, read_json
from rgvlm_ray.iql.memory import advance
from rgvlm_ray.iql.model import IQLNet
from rgvlm_ray.iql.vocab import Vocab

log = logging.getLogger(__name__)
KS = tuple(range(1, MAX_SUBTASKS + 1))
POLICY_STREAM = 0x504F4C49  # per-episode sampling seeds, independent of how missions are chunked

POLICIES = ("greedy", "sample")

PolicyFor = Callable[[EpisodeSpec], Policy]


def checkpoint_policy(net: IQLNet, vocab: Vocab, greedy: bool, seed: int) -> PolicyFor:
    """spec -> policy(obs) -> action, over the same rolling window of `context` observations (and the
    actions that led to them) as training. Sampling is seeded per episode, so results do not depend on
    chunking."""
    image = net.spec.obs_mode == "image"
    context = net.spec.context

    def policy_for(spec: EpisodeSpec) -> Policy:
        gen = torch.Generator().manual_seed(derive_seed(seed, POLICY_STREAM, spec.num_subtasks, spec.index))
        goals: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        window: deque[tuple[torch.Tensor, int]] = deque(maxlen=context)
        last_action = [0]  # 0: none yet; else action + 1, as in training windows
        # Episode memory (iql/memory.py): counts of the events of the steps taken so far, as training built them.
        counts = np.zeros(net.spec.memory, dtype=np.uint8)
        last_symbolic: list[np.ndarray] = []

        @torch.no_grad()
        def act(view: dict) -> int:
            mission = view["mission"]
            if mission not in goals:
                unknown = vocab.unknown_words(mission)
                if unknown:
                    log.warning("goal words unseen in training map to <unk>: %s", ", ".join(unknown))
                ids, lengths = vocab.encode([mission])
                goals[mission] = torch.from_numpy(ids), torch.from_numpy(lengths)
            window.append(
                (
                    torch.from_numpy(np.ascontiguousarray(view["image" if image else "symbolic"])),
                    last_action[0],
                )
            )
            memory = None
            if net.spec.memory:
                symbolic = np.asarray(view["symbolic"])
                if last_symbolic:
                    counts[:] = advance(counts, last_symbolic[0], last_action[0] - 1, symbolic)
                last_symbolic[:] = [symbolic]
                memory = torch.from_numpy(counts.copy())[None]
            pad = context - len(window)
            obs = torch.stack([window[0][0]] * pad + [o for o, _ in window])[None]
            prev = torch.tensor([[0] * pad + [a for _, a in window]])
            valid = torch.tensor([[False] * pad + [True] * len(window)])
            logits = net.logits(obs, prev, valid, *goals[mission], memory=memory)[0]
            if greedy:
                action = int(logits.argmax())
            else:
                action = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
            last_action[0] = action + 1
            return action

        return act

    return policy_for


def random_policy(seed: int) -> PolicyFor:
    """Uniform over all actions: the baseline a learned policy must beat."""

    def policy_for(spec: EpisodeSpec) -> Policy:
        rng = np.random.default_rng(derive_seed(seed, POLICY_STREAM, spec.num_subtasks, spec.index))
        return lambda view: int(rng.integers(NUM_ACTIONS))

    return policy_for


def run_missions(
    env: EnvConfig,
    policy_for: PolicyFor,
    k: int,
    indices: list[int],
    pool_seed: int,
    split: str,
    max_steps: int | None = None,
    image: bool = False,
    stall_steps: int | None = None,
) -> list[dict[str, Any]]:
    rollout_env = replace(env, max_steps=max_steps) if max_steps else env
    out = []
    for index in indices:
        spec = find_mission(env, k, index, pool_seed, split)  # the mission pool's own env settings
        r = rollout(rollout_env, spec, policy_for(spec), with_image=image, stall_steps=stall_steps)
        out.append(
            {
                "k": k,
                "index": index,
                "success": r.success,
                "subtasks": r.subtasks_done,
                "ret": r.ret,
                "steps": r.steps,
                "mission": r.mission,
                "repeats_subtask": r.repeats_subtask,
                "mission_attempt": spec.attempt,
                "substituted": spec.substituted,
            }
        )
    return out


def _chunk_task(
    checkpoint: str,
    storage_cfg: StorageConfig,
    env: dict[str, Any],
    k: int,
    indices: list[int],
    pool_seed: int,
    split: str,
    max_steps: int | None,
    greedy: bool,
    seed: int,
    stall_steps: int | None = None,
) -> list[dict[str, Any]]:
    torch.set_num_threads(1)  # many small tasks share the CPUs; batch-1 inference gains nothing from threads
    net, vocab, _ = load_policy(checkpoint, storage_cfg)
    policy_for = checkpoint_policy(net, vocab, greedy, seed)
    image = net.spec.obs_mode == "image"
    env_cfg = EnvConfig(**env)
    rows = run_missions(env_cfg, policy_for, k, indices, pool_seed, split, max_steps, image, stall_steps)
    for row in rows:  # mapped to <unk> by the policy (a warning each); counted in eval.json
        row["unknown_words"] = vocab.unknown_words(row["mission"])
    return rows


def summarize(episodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for k in sorted({e["k"] for e in episodes}):
        eps = [e for e in episodes if e["k"] == k]
        rows.append(
            {
                "k": k,
                "episodes": len(eps),
                "success_rate": float(np.mean([e["success"] for e in eps])),
                "subtask_completion": float(np.mean([e["subtasks"] / k for e in eps])),
                "mean_return": float(np.mean([e["ret"] for e in eps])),
                "mean_steps": float(np.mean([e["steps"] for e in eps])),
            }
        )
    return rows


def by_chain_kind(episodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Chains that ask for one sub-task twice ("open the red door, then ..., then open the red door") apart from
    the others, k >= 2: after the first, only memory of what was done says which occurrence is due, and a window
    of recent steps may hold none of it (issue 23, item 6)."""
    out = {}
    for kind, repeats in (("repeats_subtask", True), ("distinct_subtasks", False)):
        eps = [e for e in episodes if e["k"] >= 2 and bool(e.get("repeats_subtask")) == repeats]
        out[kind] = {
            "episodes": len(eps),
            "success_rate": float(np.mean([e["success"] for e in eps])) if eps else None,
            "subtask_completion": float(np.mean([e["subtasks"] / e["k"] for e in eps])) if eps else None,
        }
    return out


def chain_kind_line(kinds: dict[str, dict[str, Any]]) -> str:
    def cell(name: str) -> str:
        c = kinds[name]
        if not c["episodes"]:
            return "no episodes"
        return f"success {c['success_rate']:.2f}, sub-tasks {c['subtask_completion']:.2f} ({c['episodes']} episodes)"

    return (
        f"k >= 2, chains that repeat a sub-task: {cell('repeats_subtask')}; "
        f"the others: {cell('distinct_subtasks')}.\n"
    )


def markdown_table(rows: list[dict[str, Any]], title: str) -> str:
    lines = [
        f"## {title}",
        "",
        "| k | episodes | success rate | sub-tasks completed | mean return | mean steps |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['k']} | {r['episodes']} | {r['success_rate']:.3f} | {r['subtask_completion']:.3f} "
            f"| {r['mean_return']:.3f} | {r['mean_steps']:.1f} |"
        )
    return "\n".join(lines) + "\n"


METRIC_TITLES = {"success_rate": "success rate", "subtask_completion": "proportion of sub-tasks completed"}


def plot_png(series: dict[str, list[dict[str, Any]]], title: str, metric: str | None = None) -> bytes:
    """One line per series by k (the paper's Fig. 4): `metric` alone, or success and sub-task completion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [metric] if metric else list(METRIC_TITLES)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], metrics, strict=True):
        for label, rows in series.items():
            ax.plot([r["k"] for r in rows], [r[name] for r in rows], marker="o", label=label)
        ax.set_xlabel("number of sub-tasks k")
        ax.set_ylabel(METRIC_TITLES[name])
        ax.set_xticks(list(KS))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_outputs(out: str, files: dict[str, bytes], cfg: StorageConfig) -> None:
    for name, data in files.items():
        with storage.atomic_open(storage.join(out, name), cfg) as f:
            f.write(data)


def evaluate(cfg: Config) -> tuple[dict[str, Any], str]:
    """Run the missions of `cfg.eval`; writes eval.json/md/png and returns (result, markdown table)."""
    import ray

    from rgvlm_ray.ray_utils import init_ray

    if not cfg.eval.checkpoint or not cfg.eval.out:
        raise UsageError("evaluation needs eval.checkpoint (--checkpoint) and eval.out (--out)")
    e = cfg.eval
    if e.split not in SPLITS:
        raise UsageError(f"--split must be one of {SPLITS}, got {e.split!r}")
    if e.policy not in POLICIES:
        raise UsageError(f"eval.policy (--policy) must be one of {POLICIES}, got {e.policy!r}")
    if e.episodes_per_k < 1 or e.episodes_per_task < 1:
        raise UsageError("--episodes-per-k and eval.episodes_per_task must be positive")
    if e.stall_steps is not None and e.stall_steps < 1:
        raise UsageError(
            f"eval.stall_steps must be a positive number of steps or null (off), got {e.stall_steps}"
        )
    checkpoint = latest_checkpoint(e.checkpoint, cfg.storage)
    if checkpoint is None:
        raise UsageError(
            f"--checkpoint {e.checkpoint}: no checkpoint there (run `rgvlm train --out ...` first)"
        )
    run = read_json(checkpoint, "run.json", cfg.storage)
    if e.split != "seen" and run.get("pool_seed") is None:
        raise UsageError(
            f"--split {e.split}: the checkpoint's training data was not made by `rgvlm generate` (imported, or "
            "without its generator metadata), so there is no mission pool to draw new missions or placements from; "
            "evaluate it with --split seen, or in your own environment"
        )
    pool_seed = run.get("pool_seed")
    if pool_seed is None:
        pool_seed = cfg.generate.seed
        log.warning("the training data's seed pool is unknown; using generate.seed=%d", pool_seed)

    init_ray(cfg.ray)
    # A task, not the driver: the study evaluates from several driver threads, and BabyAI's mission sampling
    # swaps sys.stdout (env.ChainLevel.reset), which is process-wide: concurrent swaps left the driver's stdout
    # pointing at a discarded buffer.
    agreement_ref = ray.remote(num_cpus=e.num_cpus_per_task)(agreement_task).remote(checkpoint, run, cfg)
    task = ray.remote(num_cpus=e.num_cpus_per_task)(_chunk_task)
    pending = [
        task.remote(
            checkpoint,
            cfg.storage,
            run["env"],
            k,
            list(range(i, min(i + e.episodes_per_task, e.episodes_per_k))),
            pool_seed,
            e.split,
            e.max_steps,
            e.policy == "greedy",
            e.seed,
            e.stall_steps,
        )  # fmt: skip
        for k in reversed(KS)  # the long k = 6 chunks first, so they do not finish last alone
        for i in range(0, e.episodes_per_k, e.episodes_per_task)
    ]
    episodes = [ep for chunk in ray.get(pending) for ep in chunk]
    agreement = ray.get(agreement_ref)
    rows = summarize(episodes)
    label = f"{run.get('reward', '?')} ({e.split})"
    result = {
        "checkpoint": checkpoint,
        "step": run.get("step"),
        "reward": run.get("reward"),
        "seed": run.get("seed"),
        "context": run.get("context"),
        "split": e.split,
        "split_definition": SPLIT_DEFINITIONS[e.split],
        # randomized: missions whose seen twin had no accepted placement, replaced by the pool's next draw
        "substitutions": [
            {"k": ep["k"], "index": ep["index"], "mission_attempt": ep["mission_attempt"]}
            for ep in episodes
            if ep["substituted"]
        ],
        "unknown_word_missions": sum(bool(ep["unknown_words"]) for ep in episodes),
        "label": label,
        "episodes_per_k": e.episodes_per_k,
        "policy": e.policy,
        "max_steps": e.max_steps,
        "stall_steps": e.stall_steps,
        **agreement,
        "pool_seed": pool_seed,
        "by_k": rows,
        "by_chain_kind": by_chain_kind(episodes),
        "success_rate": float(np.mean([r["success_rate"] for r in rows])),
        "subtask_completion": float(np.mean([r["subtask_completion"] for r in rows])),
        "episodes": episodes,
    }
    title = f"IQL, reward {label}, step {run.get('step')}"
    md = markdown_table(rows, title) + "\n" + chain_kind_line(result["by_chain_kind"])
    write_outputs(
        e.out,
        {
            "eval.json": json.dumps(result, indent=2).encode(),
            "eval.md": md.encode(),
            "eval.png": plot_png({label: rows}, title),
        },
        cfg.storage,
    )
    return result, md
