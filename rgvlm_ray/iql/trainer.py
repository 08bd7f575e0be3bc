"""`rgvlm train`: language-conditioned IQL on Ray Train (TorchTrainer, DDP), resuming from `--out`."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import ray
import torch

from rgvlm_ray import storage
from rgvlm_ray.config import Config
from rgvlm_ray.data.env import NUM_ACTIONS
from rgvlm_ray.errors import UsageError
from rgvlm_ray.iql import checkpoint as ckpt
from rgvlm_ray.iql import data
from rgvlm_ray.iql.memory import resolve_memory
from rgvlm_ray.iql.model import (
    CRITIC_ENCODERS,
    GOAL_ENCODERS,
    HISTORIES,
    OBS_ENCODERS,
    OBS_MODES,
    IQLNet,
    ModelSpec,
    target_heads,
)
from rgvlm_ray.iql.update import (
    ADV_NORMS,
    ADVANTAGE_QS,
    LEARNERS,
    WEIGHTINGS,
    MetricMeans,
    iql_update,
    make_optimizer,
)
from rgvlm_ray.iql.vocab import Vocab
from rgvlm_ray.labelstore.join import Source, read_dataset
from rgvlm_ray.labelstore.rewards import NULL_RULES, check_weights, reward_columns

log = logging.getLogger(__name__)
# What run.json keeps of the last report: whether the actor's weights selected (docs/iql.md, "Diagnostics").
DIAGNOSTICS = (
    "awr_ess",
    "beta_adv_std",
    "adv_clipped_frac",
    "reward_weight_ratio",
    "adv_std",
    "q_mean",
    "v_mean",
)


def model_spec(cfg: Config, vocab: Vocab) -> ModelSpec:
    i = cfg.iql
    return ModelSpec(
        *(i.obs_mode, len(vocab), NUM_ACTIONS, i.hidden, i.embed_dim, i.goal_encoder),
        *(i.context, i.history, i.token_dim, vocab.clause_separator()),
        memory=resolve_memory(i.memory, i.obs_mode),
        obs_encoder=i.obs_encoder,
        # bc and filtered_bc have no critic loss: a second encoder would only cost time
        critic_encoder=i.critic_encoder if i.learner == "iql" else "shared",
    )


def log_line(metrics: dict[str, float]) -> str:
    """One concise line per report (the full dict goes to Ray Train's result and the checkpoint)."""
    return (
        f"step {int(metrics['step'])}: q {metrics['q_loss']:.4f}  v {metrics['v_loss']:.4f}  "
        f"pi {metrics['policy_loss']:.4f}  adv {metrics['adv_mean']:+.3f}±{metrics['adv_std']:.3f}  "
        f"weights: ess {metrics['awr_ess']:.2f} beta·sd(A) {metrics['beta_adv_std']:.2f} "
        f"clipped {metrics['adv_clipped_frac']:.1%} rewarded x{metrics['reward_weight_ratio']:.2f}  "
        f"{metrics['updates_per_s']:.1f} upd/s"
    )


def quiet_reports() -> None:
    """Ray Train logs each report's whole metrics dict at INFO (its logger is named after its file); log_line
    already gives one line per report."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: its logs stay as they are
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    quiet_reports()
    cfg: Config = config["cfg"]
    vocab = Vocab.from_json(config["vocab"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        # One intra-op thread per reserved CPU: fractional workers sharing two cores otherwise spin OpenMP
        # threads against each other (measured on our busy 2-core machine: 0.2 vs 13 updates/s).
        torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    torch.manual_seed(cfg.train.seed + rank)

    # Read this worker's shard once; every later batch is sampled from memory (CORL's replay buffer).
    shard = ray.train.get_dataset_shard("train")
    buffer = data.load_buffer(shard.iter_batches(batch_size=4096, batch_format="numpy"))
    if device.type != "cpu":
        buffer = buffer.to(device)

    spec = model_spec(cfg, vocab)
    net = IQLNet(spec).to(device)
    target = target_heads(net).to(device)
    optimizer, scheduler = make_optimizer(net, cfg.iql, cfg.train.steps)
    start = 0
    resumed = ray.train.get_checkpoint()
    if resumed:
        with resumed.as_directory() as directory:
            start = int(ckpt.load_training_state(directory, net, target, optimizer, scheduler)["step"])
    model = ray.train.torch.prepare_model(net)  # DDP when there are several workers
    if cfg.iql.compile:
        model = torch.compile(model)

    generator = torch.Generator(device=buffer.action.device).manual_seed(
        cfg.train.seed * 1_000_003 + rank + start
    )
    run = {
        **config["run"],
        "resumed_from": start,
        "world_size": ctx.get_world_size(),
        "transitions_rank0": len(buffer),
    }
    tick, done_since = time.perf_counter(), 0
    means = MetricMeans()
    for step in range(start + 1, cfg.train.steps + 1):
        values = iql_update(
            model,
            net,
            target,
            optimizer,
            scheduler,
            buffer.sample(cfg.iql.batch_size, spec.context, generator, cfg.iql.sample_runs),
            cfg.iql,
        )
        means.add(values)  # the diagnostics average every batch; no host sync until the report
        done_since += 1
        save = step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps
        if not (save or step % cfg.train.log_every == 0):
            continue
        elapsed = time.perf_counter() - tick
        metrics = {"step": step, **means.pop(), "updates_per_s": done_since / max(elapsed, 1e-9)}
        metrics["samples_per_s"] = metrics["updates_per_s"] * cfg.iql.batch_size * ctx.get_world_size()
        metrics["lr_actor"] = scheduler.get_last_lr()[1]
        if rank == 0:
            log.info("%s", log_line(metrics))
        # Every worker reports at the same steps: report() is a barrier in Train V2.
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if save and rank == 0:
                diagnostics = {k: metrics[k] for k in DIAGNOSTICS}
                ckpt.save_checkpoint(
                    directory, net, target, optimizer, scheduler, vocab, cfg,
                    {**run, "step": step, "diagnostics": diagnostics},
                )  # fmt: skip
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=ckpt.checkpoint_name(step))
        tick, done_since = time.perf_counter(), 0


def run_location(out: str, cfg: Config) -> tuple[str, Any, str]:
    """(storage_path, storage_filesystem, name) for RunConfig so that checkpoints land in `out` itself."""
    if storage.is_remote(out):
        parent, name = out.rstrip("/").rsplit("/", 1)
        if parent.endswith(":/"):
            raise UsageError(f"--out {out}: give a folder inside the bucket, e.g. s3://bucket/runs/name")
        fs, path = storage.arrow_fs(parent, cfg.storage)
        return path, fs, name
    # RunConfig(storage_path) must be absolute (Ray Train V2).
    path = os.path.abspath(out)
    return os.path.dirname(path), None, os.path.basename(path)


METRICS_ENV = "RAY_TRAIN_METRICS_ENABLED"


@contextlib.contextmanager
def metrics_for(name: str) -> Iterator[None]:
    """Ray Train tags its Prometheus metrics with the run's name, and Ray 2.60 encodes metric tags as ASCII: a
    run folder such as `rün B` failed in the controller ("'ascii' codec can't encode"). Such a run trains
    without Ray Train's metrics (RAY_TRAIN_METRICS_ENABLED, read when the trainer is built); ours are unchanged."""
    if name.isascii():
        yield
        return
    log.info("run name %r is not ASCII: Ray Train's own metrics are off for this run", name)
    before = os.environ.get(METRICS_ENV)
    os.environ[METRICS_ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(METRICS_ENV, None)
        else:
            os.environ[METRICS_ENV] = before


def resources(cfg: Config) -> tuple[bool, float]:
    """(use_gpu, CPUs per worker). Auto CPUs leave one CPU free for Ray Data's read and map tasks, or the
    workers can hold every CPU while they wait for data that no task can run to produce (2-core trap)."""
    from rgvlm_ray.ray_utils import cluster_cpus

    use_gpu = cfg.train.use_gpu
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) >= cfg.train.workers
    cpus = cfg.train.cpus_per_worker
    if cpus is None:
        cpus = min(1.0, max(0.1, (cluster_cpus() - 1.0) / cfg.train.workers))
    return bool(use_gpu), float(cpus)


def validate(cfg: Config) -> None:
    if not cfg.train.in_path or not cfg.train.out_path:
        raise UsageError("training needs train.in_path (--in) and train.out_path (--out)")
    reward_columns(cfg.train.reward)
    check_weights(cfg.train.reward, cfg.iql.reward_weights)
    t, i = cfg.train, cfg.iql
    if i.obs_mode not in OBS_MODES:
        raise UsageError(f"iql.obs_mode must be one of {OBS_MODES}, got {i.obs_mode!r}")
    if i.goal_encoder not in GOAL_ENCODERS:
        raise UsageError(f"iql.goal_encoder must be one of {GOAL_ENCODERS}, got {i.goal_encoder!r}")
    if i.history not in HISTORIES:
        raise UsageError(f"iql.history must be one of {HISTORIES}, got {i.history!r}")
    if i.context < 1:
        raise UsageError(f"iql.context must be >= 1 (1: memoryless), got {i.context}")
    if i.sample_runs < 1 or i.batch_size % i.sample_runs:
        raise UsageError(
            f"iql.sample_runs must be >= 1 and divide iql.batch_size ({i.batch_size}), got {i.sample_runs}"
        )
    if i.obs_encoder == "conv" and i.obs_mode != "symbolic":
        raise UsageError(
            "iql.obs_encoder=conv applies to symbolic observations; image observations already go through a "
            "CNN: drop the override or set iql.obs_mode=symbolic"
        )
    try:
        resolve_memory(i.memory, i.obs_mode)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for key, value, allowed in (
        ("learner", i.learner, LEARNERS),
        ("adv_norm", i.adv_norm, ADV_NORMS),
        ("weighting", i.weighting, WEIGHTINGS),
        ("advantage_q", i.advantage_q, ADVANTAGE_QS),
        ("critic_encoder", i.critic_encoder, CRITIC_ENCODERS),
        ("obs_encoder", i.obs_encoder, OBS_ENCODERS),
    ):
        if value not in allowed:
            raise UsageError(f"iql.{key} must be one of {allowed}, got {value!r}")
    if i.warmup_steps < 0 or not i.grad_clip >= 0:
        raise UsageError(
            f"iql.warmup_steps and iql.grad_clip must be >= 0 (0: off), got {i.warmup_steps}, {i.grad_clip}"
        )
    if not 0 < i.filter_top <= 1:
        raise UsageError(f"iql.filter_top must be in (0, 1], got {i.filter_top}")
    if i.null_reward not in NULL_RULES:
        raise UsageError(f"iql.null_reward must be one of {NULL_RULES}, got {i.null_reward!r}")
    if t.workers < 1 or t.steps < 1 or t.checkpoint_every < 1 or t.log_every < 1:
        raise UsageError("--workers, --steps, train.checkpoint_every and train.log_every must be positive")


def check_context(context: int, longest: int, in_path: str) -> None:
    """Windows reaching before an episode's start are padded (masked); a window longer than every episode is
    mostly padding and trains nothing that context <= the longest episode would not."""
    if context > longest + 1:
        raise UsageError(
            f"iql.context={context} is longer than any episode in {in_path} (the longest has {longest} "
            f"steps, so {longest + 1} observations): set iql.context <= {longest + 1}"
        )


def check_runs(runs: int, longest: int, in_path: str) -> None:
    """A run of iql.sample_runs windows lies inside one episode: some episode must be that long."""
    if runs > longest:
        raise UsageError(
            f"iql.sample_runs={runs} needs episodes of at least {runs} steps, and the longest in {in_path} has "
            f"{longest}: set iql.sample_runs <= {longest} (1: independent windows)"
        )


def train(cfg: Config) -> dict:
    """Train (or resume) one run; returns {out, checkpoint, metrics} or {out, checkpoint, already_at_step}."""
    from rgvlm_ray.ray_utils import init_ray

    validate(cfg)
    t = cfg.train
    info = data.inspect_dataset(Source(t.in_path, list(t.labels), cfg.storage))
    data.check_dataset(info, t.reward, cfg.iql.obs_mode)
    previous = ckpt.latest_checkpoint(t.out_path, cfg.storage)
    vocab = None
    if previous:
        run = ckpt.read_json(previous, "run.json", cfg.storage)
        if run.get("reward") != t.reward:
            raise UsageError(
                f"--out {t.out_path} holds a run trained with --reward {run.get('reward')}; "
                "resume it with the same --reward or choose a new --out"
            )
        if int(run["step"]) >= t.steps:
            return {"out": t.out_path, "checkpoint": previous, "already_at_step": run["step"]}
        vocab = Vocab.from_json(ckpt.read_file(previous, "vocab.json", cfg.storage).decode())
        log.info("resuming from %s (step %s)", previous, run.get("step"))

    stats = data.reward_stats(info, cfg)
    check_context(cfg.iql.context, stats.longest, t.in_path)
    check_runs(cfg.iql.sample_runs, stats.longest, t.in_path)
    vocab = vocab or Vocab.build(stats.goals, cfg.iql.max_vocab)
    scale = stats.scale(cfg.iql.normalize_reward)
    log.info(
        "%d episodes, %d steps, %d null rewards (rule: %s), returns %.3f..%.3f, reward scale %.4g, vocab %d",
        stats.episodes, stats.steps, stats.nulls, cfg.iql.null_reward, stats.min_return, stats.max_return,
        scale, len(vocab),
    )  # fmt: skip
    threshold = kept = None
    if cfg.iql.learner == "filtered_bc":
        threshold = stats.filter_threshold(cfg.iql.filter_top, t.reward)
        kept = sum(r >= threshold for r in stats.returns)
        log.info("filtered_bc: %d of %d episodes have return >= %.4g", kept, stats.episodes, threshold)
    init_ray(cfg.ray)
    # The read-and-flatten job takes a second; its progress bars (Ray Data copies its context when a dataset is
    # made) printed over a thousand lines per demo from the train workers' split coordinator.
    context = ray.data.DataContext.get_current()
    shown, context.enable_progress_bars = context.enable_progress_bars, False
    try:
        episodes = read_dataset(info.data, data.episode_columns(cfg), cfg.ray)
        transitions = data.transitions(episodes, cfg, vocab, scale, threshold)
    finally:
        context.enable_progress_bars = shown

    use_gpu, cpus = resources(cfg)
    storage_path, fs, name = run_location(t.out_path, cfg)
    run_meta = {
        "reward": t.reward,
        "seed": t.seed,
        "context": cfg.iql.context,
        "reward_scale": scale,
        "null_reward": cfg.iql.null_reward,
        "in_path": t.in_path,
        "labels": list(t.labels),
        "pool_seed": info.pool_seed,
        "env": data.env_config(info.env, cfg.env),
        "env_source": info.source,
        "behaviour": info.behaviour,
        "episodes": stats.episodes,
        "null_steps": stats.nulls,
        "learner": cfg.iql.learner,
        "adv_norm": cfg.iql.adv_norm,
        "weighting": cfg.iql.weighting,
        "advantage_q": cfg.iql.advantage_q,
        "beta": cfg.iql.beta,
        "discount": cfg.iql.discount,
        "filter_min_return": threshold,
        "filter_episodes_kept": kept,
    }
    with metrics_for(name):
        result = fit(cfg, name, storage_path, fs, transitions, vocab, run_meta, use_gpu, cpus)
    latest = ckpt.latest_checkpoint(t.out_path, cfg.storage)
    return {"out": t.out_path, "checkpoint": latest, "metrics": result.metrics}


def fit(cfg: Config, name: str, storage_path: str, fs: Any, transitions: Any, vocab: Vocab, run_meta: dict,
        use_gpu: bool, cpus: float) -> Any:  # fmt: skip
    from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = cfg.train
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": cfg, "vocab": vocab.to_json(), "run": run_meta, "cpus_per_worker": cpus},
        scaling_config=ScalingConfig(
            num_workers=t.workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
        ),
        datasets={"train": transitions},
        # One worker reads the whole dataset anyway: unsplit, its shard is read in the worker itself, without
        # Ray Data's split coordinator (an actor of its own, a process start each run).
        dataset_config=DataConfig(datasets_to_split=[] if t.workers == 1 else "all"),
    )
    log.info("training: %d worker(s), %.2g CPU each, GPU %s -> %s", t.workers, cpus, use_gpu, t.out_path)
    return trainer.fit()
