"""Episode memory: what the agent has done so far, as counts of egocentric events (`iql.memory=events`).

A chain that repeats a sub-task ("open the red door, then go to the ball, then open the red door") is not
solvable from a window of the last `iql.context` steps: once the first occurrence has left the window, only a
memory of it says which occurrence is due (BENCHMARKS.md, "Chains that repeat a sub-task"). This memory is
carried through the whole episode at no encoder cost: every pickup, drop or toggle is counted against the object
it acted on (read from the cell in front of the agent in its own 7x7 view, so nothing privileged). The policy
reads each (event, object) count, capped at CAP, beside its window.

Off by default (`iql.memory=none`): measured, it did not help the repeating chains and cost the others
(docs/iql.md, "Episode memory"; BENCHMARKS.md). It stays as an option for the experiments that follow.

Numpy only: Ray Data tasks compute it for training (rgvlm_ray.iql.data, `episode_memory`), evaluation updates it
step by step (rgvlm_ray.iql.evaluate, `advance`), both through `step_events` and CAP, so the two cannot drift apart.
"""

from __future__ import annotations

import numpy as np

FRONT = (3, 5)  # the cell in front of the agent in BabyAI's 7x7 egocentric grid (agent at (3, 6), facing up)
OBJECT_TYPES = (4, 5, 6, 7)  # door, key, ball, box (minigrid OBJECT_TO_IDX): what a sub-task names
COLOURS = 6
PICKUP, DROP, TOGGLE = 3, 4, 5  # minigrid Actions
EVENTS = ("pickup", "drop", "toggle")
CAP = 3  # enough to tell a first, a second and a later occurrence apart
OBJECTS = len(OBJECT_TYPES) * COLOURS
MEMORY_DIM = len(EVENTS) * OBJECTS
KINDS = ("none", "events")


def resolve_memory(kind: str, obs_mode: str) -> int:
    """iql.memory -> the model's memory width (0: none)."""
    if kind not in KINDS:
        raise ValueError(f"iql.memory must be one of {KINDS}, got {kind!r}")
    if kind == "events" and obs_mode != "symbolic":
        raise ValueError(
            "iql.memory=events reads objects from BabyAI's symbolic grid: use iql.obs_mode=symbolic, or "
            "iql.memory=none for image observations"
        )
    return MEMORY_DIM if kind == "events" else 0


def _object(cells: np.ndarray) -> np.ndarray:
    """Front cells (T, 3) -> object index 0..OBJECTS-1, or -1 where the cell holds no door/key/ball/box."""
    kind = cells[:, 0].astype(np.int64) - OBJECT_TYPES[0]
    named = (kind >= 0) & (kind < len(OBJECT_TYPES)) & (cells[:, 1] < COLOURS)
    return np.where(named, kind * COLOURS + cells[:, 1].astype(np.int64), -1)


def step_events(before: np.ndarray, actions: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Observations before (T, 7, 7, 3), actions (T,), observations after (T, 7, 7, 3) -> events (T, MEMORY_DIM).

    pickup and toggle: the object in front before the step (what was acted on); drop: the object in front after
    it (what was put down).
    """
    t = len(actions)
    out = np.zeros((t, MEMORY_DIM), dtype=np.uint8)
    rows = np.arange(t)
    actions = np.asarray(actions)
    front_before = _object(before[:, FRONT[0], FRONT[1]])
    front_after = _object(after[:, FRONT[0], FRONT[1]])
    channels = (
        (0, front_before, actions == PICKUP),
        (1, front_after, actions == DROP),
        (2, front_before, actions == TOGGLE),
    )
    for channel, obj, when in channels:
        hit = when & (obj >= 0)
        out[rows[hit], channel * OBJECTS + obj[hit]] = 1
    return out


def episode_memory(obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """An episode's T + 1 observations and T actions -> memory (T + 1, MEMORY_DIM) uint8: row t counts the events
    of steps 0..t-1 (row 0 is empty), capped at CAP."""
    events = step_events(obs[:-1], actions, obs[1:]).astype(np.int32)
    counts = np.concatenate([np.zeros((1, MEMORY_DIM), np.int32), np.cumsum(events, axis=0)])
    return np.minimum(counts, CAP).astype(np.uint8)


def advance(counts: np.ndarray, before: np.ndarray, action: int, after: np.ndarray) -> np.ndarray:
    """Counts (MEMORY_DIM,) uint8 after one more step: step by step, the rows `episode_memory` computes at once
    (capping each step's sum is capping the running total, since events only add)."""
    step = step_events(before[None], np.array([action]), after[None])[0]
    return np.minimum(counts.astype(np.int32) + step, CAP).astype(np.uint8)
