"""An ALFRED-like BabyAI level: a mission is a chain of k = 1..6 sub-tasks (GoTo, Pickup, Open, PutNext).

ALFRED and its simulator cannot be installed here, so this is the closest stand-in from PyPI (minigrid).
Deviations from the stock BabyAI grammar, and why:
- Stock `SeqInstr` nests at most two levels (4 sub-tasks). `ChainInstr` skips that type assert, so
  `then(t1, then(t2, ...))` chains any length; the verifier, step budget and `BabyAIBot` handle it unchanged.
- `locations=False`: "on your left" phrases are relative to the start pose, meaningless to a judge later on.
- No locked rooms and no blocking objects, so every sub-task is reachable and the bot always can solve it.
- A mission is *accepted* only if the noise-free bot solves it and no sub-task completes on the same or the
  next step as the previous one; otherwise the sub-task count would not measure task length.
- A `randomized` episode re-places the objects and the agent of its `seen` twin and never redraws the mission.
  If no placement of that mission is accepted, the mission is replaced by the pool's next accepted draw for
  the same (k, index) that has one (`EpisodeSpec.substituted`; docs/iql.md, "Evaluation").
"""

from __future__ import annotations

import contextlib
import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from minigrid.core.grid import Grid
from minigrid.envs.babyai.core.levelgen import LevelGen
from minigrid.envs.babyai.core.roomgrid_level import RejectSampling
from minigrid.envs.babyai.core.verifier import ActionInstr, BeforeInstr
from minigrid.utils.baby_ai_bot import BabyAIBot
from PIL import Image

from rgvlm_ray.config import EnvConfig
from rgvlm_ray.data.actions import BABYAI_ACTIONS
from rgvlm_ray.errors import UsageError

ACTION_TEXTS = BABYAI_ACTIONS
NUM_ACTIONS = len(ACTION_TEXTS)
RANDOM_ACTIONS = 6  # the behaviour policy's random actions exclude "done"
MAX_SUBTASKS = 6
MAX_ATTEMPTS = 200  # mission seeds tried per (k, index) before giving up
PLACEMENT_TRIES = 100  # re-placements of one randomized draw before that draw counts as not accepted
SPLITS = ("seen", "randomized", "novel")
NOVEL_OFFSET = (
    1_000_000  # `novel` missions sit at pool indices from here on, which `rgvlm generate` never reaches
)
SPLIT_DEFINITIONS = {
    # recorded in eval.json; docs/study.md says which claim each split tests
    "seen": "the training data's own missions and initial states (pool indices 0..n-1, as generated)",
    "randomized": "the training data's own missions, objects and agent re-placed (a new initial state)",
    "novel": f"missions of the same generator at pool indices >= {NOVEL_OFFSET:,}, never in generated data",
}


class PlacementFailed(Exception):
    """No valid re-placement for a randomized draw. Deliberately not a `RejectSampling`: BabyAI's `_gen_grid`
    catches that (and RecursionError) and silently draws a *different mission*, which broke the randomized
    split's promise of the same task from another initial state (issue 27)."""


class MissionNotFound(UsageError):
    """(k, index) of a pool has no accepted mission (or, for `randomized`, no accepted placement)."""


LAYOUTS = {
    # name: (num_rows, num_cols, room_size, default distractors)
    "small": (2, 2, 6, 6),
    "boss": (3, 3, 8, 18),  # BossLevel's size
}


class ChainInstr(BeforeInstr):
    """`a, then b` where b may itself be a chain (stock SeqInstr asserts b is an action or an AND)."""

    def __init__(self, instr_a: ActionInstr, instr_b: ActionInstr | ChainInstr) -> None:
        self.instr_a = instr_a
        self.instr_b = instr_b
        self.strict = False


def chain(instrs: list[ActionInstr]) -> ActionInstr | ChainInstr:
    node: ActionInstr | ChainInstr = instrs[-1]
    for instr in reversed(instrs[:-1]):
        node = ChainInstr(instr, node)
    return node


def leaves(instr: ActionInstr | ChainInstr) -> list[ActionInstr]:
    out = []
    while isinstance(instr, ChainInstr):
        out.append(instr.instr_a)
        instr = instr.instr_b
    return [*out, instr]


class ChainLevel(LevelGen):
    """BabyAI level whose mission chains `num_subtasks` single-action instructions.

    `randomize_seed` re-places every object (within its room) and the agent with a separate RNG after the
    mission is drawn: the same task from a different initial state (the `randomized` split).
    """

    def __init__(
        self,
        num_subtasks: int,
        layout: str = "small",
        num_dists: int | None = None,
        max_steps: int | None = None,
        randomize_seed: int | None = None,
    ) -> None:
        if not 1 <= num_subtasks <= MAX_SUBTASKS:
            raise ValueError(f"num_subtasks must be in 1..{MAX_SUBTASKS}, got {num_subtasks}")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; expected one of {sorted(LAYOUTS)}")
        rows, cols, room_size, dists = LAYOUTS[layout]
        self.num_subtasks = num_subtasks
        self.randomize_seed = randomize_seed
        self.mission_done = False
        self.subtasks: list[str] = []
        super().__init__(
            room_size=room_size,
            num_rows=rows,
            num_cols=cols,
            num_dists=dists if num_dists is None else num_dists,
            locked_room_prob=0.0,
            locations=False,
            unblocking=False,
            implicit_unlock=False,
            action_kinds=("goto", "pickup", "open", "putnext"),
            instr_kinds=("action",),
            max_steps=max_steps,
        )

    def gen_mission(self) -> None:
        self.locked_room = None
        self.connect_all()
        self.add_distractors(num_distractors=self.num_dists, all_unique=False)
        self.place_agent()
        self.check_objs_reachable()
        subtasks = [self.rand_instr(self.action_kinds, ["action"]) for _ in range(self.num_subtasks)]
        self.instrs = chain(subtasks)
        if self.randomize_seed is not None:
            # Validate first, as `_gen_grid` does after this returns: a draw the seen split rejects must be
            # rejected here too (same RNG use), not re-placed; then only the accepted draw is re-placed.
            self.validate_instrs(self.instrs)
            self._randomize_initial_state()

    def _randomize_initial_state(self) -> None:
        """Re-place objects and agent until the mission is valid again; never redraw the mission itself."""
        main_rng = self.np_random
        self.np_random = np.random.default_rng(self.randomize_seed)
        try:
            for _ in range(PLACEMENT_TRIES):
                try:
                    for room in (r for row in self.room_grid for r in row):
                        for obj in room.objs:
                            self.grid.set(*obj.cur_pos, None)
                        for obj in room.objs:
                            self.place_obj(obj, room.top, room.size, max_tries=1000)
                    self.place_agent()
                    self.check_objs_reachable()
                    self.validate_instrs(self.instrs)
                    return
                except (RejectSampling, RecursionError):  # place_obj gives up with a RecursionError
                    continue
            raise PlacementFailed(f"no valid re-placement in {PLACEMENT_TRIES} tries")
        finally:
            self.np_random = main_rng

    def reset(self, **kwargs):  # type: ignore[override]
        self.mission_done = False
        with contextlib.redirect_stdout(io.StringIO()):  # BabyAI prints every sampling rejection
            out = super().reset(**kwargs)
        # Surface text needs the objects in place, so fix it before anything is picked up.
        self.subtasks = [instr.surface(self) for instr in leaves(self.instrs)]
        return out

    def step(self, action):  # type: ignore[override]
        obs, reward, terminated, truncated, info = super().step(action)
        self.mission_done = self.mission_done or (terminated and reward > 0)
        return obs, reward, terminated, truncated, info

    def progress(self) -> int:
        """Sub-tasks completed so far, from the chain verifier's `a_done`/`b_done` fields."""
        if self.mission_done:
            return self.num_subtasks
        done, node = 0, self.instrs
        while isinstance(node, ChainInstr):
            if node.a_done != "success":
                return done
            done += 1
            node = node.instr_b
        return done


@dataclass(frozen=True)
class EpisodeSpec:
    """Everything that fixes an episode's initial state. `index` numbers missions of one k in a pool."""

    num_subtasks: int
    index: int
    pool_seed: int
    split: str = "seen"
    attempt: int = 0  # which mission draw for (k, index) was accepted
    randomize_attempt: int = 0  # which re-placement draw (randomized split) was accepted
    seen_attempt: int | None = None  # randomized: the seen twin's draw, when this one had to replace it

    @property
    def mission_seed(self) -> int:
        return derive_seed(self.pool_seed, self.num_subtasks, self.index, self.attempt)

    @property
    def randomize_seed(self) -> int | None:
        if self.split != "randomized":
            return None
        tag = 0x52414E44  # a stream the seen split never uses
        return derive_seed(
            self.pool_seed, self.num_subtasks, self.index, self.attempt, tag, self.randomize_attempt
        )

    @property
    def substituted(self) -> bool:
        """A randomized episode whose seen twin's mission had no accepted placement: another mission of the
        pool stands in for it."""
        return self.seen_attempt is not None and self.seen_attempt != self.attempt

    @property
    def episode_id(self) -> str:
        return f"{self.split}-p{self.pool_seed}-k{self.num_subtasks}-{self.index:06d}"


def derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint32)[0])


def make_env(cfg: EnvConfig, spec: EpisodeSpec) -> ChainLevel:
    """A reset environment in the initial state `spec` names."""
    if spec.split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {spec.split!r}")
    env = ChainLevel(
        spec.num_subtasks, cfg.layout, cfg.num_dists, cfg.max_steps, randomize_seed=spec.randomize_seed
    )
    env.reset(seed=spec.mission_seed)
    return env


def expert_completion_steps(env: ChainLevel) -> list[int] | None:
    """Run the noise-free bot; the step at which each sub-task completed, or None if it failed."""
    bot = BabyAIBot(env)
    steps: list[int] = []
    for t in range(1, env.max_steps + 1):
        _, _, terminated, truncated, _ = env.step(bot.replan())
        while len(steps) < env.progress():
            steps.append(t)
        if terminated or truncated:
            break
    return steps if env.mission_done else None


def accepted(cfg: EnvConfig, spec: EpisodeSpec) -> bool:
    try:
        steps = expert_completion_steps(make_env(cfg, spec))
    except Exception:  # the bot gives up on rare layouts; such missions are simply not used
        return False
    return steps is not None and all(b - a > 1 for a, b in zip(steps, steps[1:], strict=False))


def find_mission(cfg: EnvConfig, num_subtasks: int, index: int, pool_seed: int, split: str) -> EpisodeSpec:
    """The first accepted mission for (k, index) in the pool: deterministic, so eval can re-create it.

    `novel` takes the same draws at index + NOVEL_OFFSET: missions no generated dataset holds.

    A randomized episode keeps its seen twin's mission and only redraws the initial placement. When none of
    MAX_ATTEMPTS placements of that mission is accepted (some chains, e.g. "put X next to Y, then pick up X",
    finish two sub-tasks one step apart from almost any placement), the next accepted mission draw of the same
    (k, index) that has an accepted placement stands in for it, and the spec says so (`substituted`).
    """
    where = f"k={num_subtasks} index={index} pool seed={pool_seed}"
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "novel":
        index += NOVEL_OFFSET
    base = "novel" if split == "novel" else "seen"
    draws = (
        EpisodeSpec(num_subtasks, index, pool_seed, base, attempt)
        for attempt in range(MAX_ATTEMPTS)
        if accepted(cfg, EpisodeSpec(num_subtasks, index, pool_seed, base, attempt))
    )  # lazy: seen and novel need only the first
    first = next(draws, None)
    if first is None:
        raise MissionNotFound(f"no accepted mission for {where} in {MAX_ATTEMPTS} draws; {_ADVICE}")
    if split != "randomized":
        return first
    for draw in itertools.chain([first], draws):
        for redraw in range(MAX_ATTEMPTS):
            spec = replace(draw, split=split, randomize_attempt=redraw, seen_attempt=first.attempt)
            if accepted(cfg, spec):
                return spec
    raise MissionNotFound(f"no accepted randomized placement for {where}, nor for a later draw; {_ADVICE}")


_ADVICE = "use another pool (generate.seed) or layout (env.layout / env.num_dists), or evaluate on split=seen"


# --- observations -------------------------------------------------------------------------------------


def encode_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def render_symbolic(symbolic: np.ndarray, tile_size: int) -> np.ndarray:
    """The agent-view RGB drawn from the 7x7x3 observation alone, so it shows exactly what the agent sees
    (minigrid's own POV render also draws objects hidden behind walls)."""
    grid, vis_mask = Grid.decode(symbolic)
    size = symbolic.shape[0]
    return grid.render(tile_size, agent_pos=(size // 2, size - 1), agent_dir=3, highlight_mask=vis_mask)


@dataclass
class FrameRenderer:
    """Agent-view PNGs, cached by the symbolic observation they are a pure function of."""

    tile_size: int = 8
    cache: dict[bytes, bytes] = field(default_factory=dict)
    max_entries: int = 50_000

    def png(self, symbolic: np.ndarray) -> bytes:
        key = symbolic.tobytes()
        hit = self.cache.get(key)
        if hit is None:
            if len(self.cache) >= self.max_entries:
                self.cache.clear()
            hit = self.cache[key] = encode_png(render_symbolic(symbolic, self.tile_size))
        return hit


def full_view_rgb(env: ChainLevel, tile_size: int) -> np.ndarray:
    return env.get_frame(highlight=True, tile_size=tile_size, agent_pov=False)


# --- rollouts ------------------------------------------------------------------------------------------

Policy = Callable[[dict], int]


@dataclass
class RolloutResult:
    spec: EpisodeSpec
    success: bool
    subtasks_done: int
    ret: float
    steps: int
    mission: str = ""
    repeats_subtask: bool = False  # the chain asks for one sub-task twice (which one is due needs memory)


def rollout(
    cfg: EnvConfig,
    spec: EpisodeSpec,
    policy: Policy,
    with_image: bool = False,
    stall_steps: int | None = None,
) -> RolloutResult:
    """Run `policy(obs) -> action` from the spec's initial state until the episode ends.

    `obs` has `symbolic` (7x7x3 uint8), `direction`, `mission`, and `image` (agent-view RGB) if asked.
    `stall_steps`: also end it (as a failure, with the sub-tasks done so far) once that many steps pass without a
    sub-task completed. Evaluation's cost is mostly failed episodes running to the step budget: a greedy policy
    stuck in a loop stays stuck (docs/iql.md, "Evaluation").
    """
    env = make_env(cfg, spec)
    obs = env.gen_obs()
    ret, t = 0.0, 0
    done_before, since = 0, 0
    while True:
        view = {"symbolic": obs["image"], "direction": obs["direction"], "mission": env.mission}
        if with_image:
            view["image"] = render_symbolic(obs["image"], cfg.tile_size)
        obs, reward, terminated, truncated, _ = env.step(int(policy(view)))
        ret += float(reward)
        t += 1
        if terminated or truncated:
            break
        if stall_steps:
            done = env.progress()
            since = 0 if done > done_before else since + 1
            done_before = done
            if since >= stall_steps:
                break
    repeats = len(set(env.subtasks)) < len(env.subtasks)
    return RolloutResult(spec, env.mission_done, env.progress(), ret, t, env.mission, repeats)
