"""The learner's sections of the one structured config: IQL (rgvlm_ray/iql), `rgvlm train`, `rgvlm evaluate` and
`rgvlm compare`. rgvlm_ray/config/__init__.py imports them into `Config`; import them from `rgvlm_ray.config`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class IQLConfig:
    """Language-conditioned discrete IQL (rgvlm_ray/iql). docs/iql.md gives the source of every default."""

    obs_mode: str = "symbolic"  # symbolic (BabyAI 7x7x3 grid, fast on CPU) | image (56x56 agent-view frames)
    context: int = 8  # observations per window (and the actions between them); 1: memoryless (docs/iql.md)
    history: str = "transformer"  # sequence model over the window: transformer | gru
    # Episode memory beside the window (iql/memory.py, docs/iql.md "Episode memory"): none | events = counts of
    # the objects the agent picked up, dropped and toggled so far (symbolic obs only). Off: it did not help (measured)
    memory: str = "none"
    token_dim: int = 128  # width of one step's token in the window
    obs_encoder: str = "mlp"  # symbolic cells -> token: mlp (cheapest) | conv (docs/iql.md; 4x the CPU)
    hidden: int = 256
    goal_encoder: str = "attn"  # attn (position-aware, attended by the history) | gru | mean
    embed_dim: int = 64
    max_vocab: int = 1000  # most frequent goal words kept; the rest map to <unk>
    discount: float = 0.97  # BOSS/SPRINT ALFRED (paper: 0.99)
    expectile: float = 0.8  # BOSS/SPRINT ALFRED, TorchRL discrete IQL (paper: 0.7 MuJoCo, 0.9 AntMaze)
    beta: float = 5.0  # inverse temperature in exp(beta * A); BOSS/SPRINT ALFRED (paper: 3 / 10 / 0.5)
    exp_adv_max: float = 100.0  # paper, CORL
    # iql | bc (behaviour cloning) | filtered_bc (BC on the top iql.filter_top of episodes by return, CORL's BC-N%)
    learner: str = "iql"
    adv_norm: str = (
        "none"  # none | std: A -> (A - mean A) / sd A per batch before exp(beta * A) (docs/iql.md)
    )
    weighting: str = "exp"  # exp: exp(beta * A) (IQL) | binary: 1[A > 0] (CRR's filter)
    filter_top: float = 0.1  # filtered_bc: share of episodes kept, by return under train.reward
    tau: float = 0.005  # Polyak rate of the target Q; paper, CORL
    lr: float = 1e-3  # CORL: 3e-4; 1e-3 fits in a quarter of the updates (bench/iql_fit.py, docs/iql.md)
    actor_cosine: bool = True  # CORL: cosine decay of the actor's lr over train.steps
    warmup_steps: int = 0  # linear warm-up of every lr over this many updates (0: none; bench/iql_fit.py)
    grad_clip: float = 0.0  # clip the global gradient norm to this (0: off; bench/iql_fit.py)
    batch_size: int = 256  # paper, CORL (BOSS/SPRINT ALFRED: 64)
    # >1: sample runs of this many consecutive windows and encode each observation once (cheaper; docs/iql.md)
    sample_runs: int = 1
    actor_trains_encoder: bool = True  # the policy loss trains the shared encoder too (docs/iql.md)
    # shared: one encoder for actor and critic (cheap) | separate: the critic's own (CORL; iql only, docs/iql.md)
    critic_encoder: str = "shared"
    # Q in V's target and the advantage: target (Polyak heads, paper) | online (detached online heads; docs/iql.md)
    advantage_q: str = "target"
    reward_weights: dict[str, float] = field(default_factory=lambda: {"rgvlm": 1.0, "sparse": 1.0})
    normalize_reward: bool = False  # scale rewards so episode returns span 1 (IQL paper's return scaling)
    null_reward: str = "zero"  # unscored steps (null reward): zero | drop (the transition)
    compile: bool = False  # torch.compile the update's forward pass (GPU; slow to start on CPU)


@dataclass
class TrainConfig:
    in_path: str = ""  # required: episodes, folder or s3:// prefix
    labels: list[str] = field(default_factory=list)  # label sets joined to it (rgvlm label --out)
    out_path: str = ""  # required: run folder or s3:// prefix; checkpoints land here, a rerun resumes
    reward: str = "sparse"  # TERM or TERM+TERM (labelstore/rewards.py), e.g. rgvlm+sparse
    workers: int = 1
    steps: int = 1000  # total updates; a resumed run continues up to this count
    cpus_per_worker: float | None = None  # None: fractional so Ray Data keeps a CPU (2-core deadlock trap)
    use_gpu: bool | None = None  # None: use GPUs when the cluster has them
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 100
    seed: int = 0


@dataclass
class EvalConfig:
    checkpoint: str = ""  # required: a run folder (latest checkpoint) or one checkpoint folder
    out: str = ""  # required
    episodes_per_k: int = 10
    split: str = "seen"  # seen | randomized | novel (env.SPLIT_DEFINITIONS)
    num_cpus_per_task: float = 0.5
    episodes_per_task: int = 5  # one Ray task per (k, chunk of this many missions)
    max_steps: int | None = None  # None: the environment's budget
    # End an episode (a failure, its sub-tasks so far kept) after this many steps without a sub-task completed;
    # None: off. Failed episodes running to max_steps were most of evaluation's cost (docs/iql.md).
    stall_steps: int | None = None
    policy: str = (
        "greedy"  # greedy: the mode of pi (offline-RL papers) | sample: sample pi, seeded per episode
    )
    # Expert-action agreement (docs/iql.md): the share of held-out states where argmax pi is the bot's action.
    agreement_in: str = (
        ""  # a dataset with `expert_actions` to measure it on; empty: fresh behaviour episodes
    )
    agreement_episodes_per_k: int = (
        4  # those fresh episodes, replayed from the training data's behaviour; 0: off
    )
    # Fit (issue 23): agreement of argmax pi with the run's own training actions, on this many training episodes
    train_agreement_episodes: int = 60
    seed: int = 0


@dataclass
class CompareConfig:
    runs: list[str] = field(default_factory=list)  # run folders or eval folders (holding eval.json)
    out: str = ""  # required
    title: str = "Success rate by number of sub-tasks"
