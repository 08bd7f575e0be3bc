"""One OmegaConf structured config for every command, job and test.

Precedence (lowest first): dataclass defaults < `--config` YAML files < command flags < `key=value` overrides.
Each issue owns its section; keep sections flat and typed so `key=value` overrides stay obvious.
The learner's sections (iql, train, eval, compare) live in training.py and are re-exported here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rgvlm_ray.config.training import CompareConfig, EvalConfig, IQLConfig, TrainConfig

CONFIG_DIR = Path(__file__).parents[1] / "configs"
SECRET_KEYS = ("access_key_id", "secret_access_key", "session_token", "api_key")


@dataclass
class StorageConfig:
    """Object storage. Unset fields fall back to the standard AWS environment variables."""

    endpoint_url: str | None = None  # else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL
    region: str | None = None  # else AWS_DEFAULT_REGION / AWS_REGION
    # Prefer the environment (AWS_ACCESS_KEY_ID, ...). Values set here are redacted from logs and dumps.
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    # Bounded waits, the same on the driver and every Ray worker (storage.py `_s3_options`): an attempt that gets
    # no byte for read_timeout_s is abandoned, and a call gives up after max_attempts attempts (the first
    # included), with botocore's jittered backoff of at most 1, 2, 4 s between them. At these defaults a call to
    # an S3 that answers 503 gives up within about 7 s, one to an S3 that hangs within about 47 s, and
    # `rgvlm label` ends with exit 4 within 2 minutes either way (BENCHMARKS.md, "S3 faults"). A bucket that
    # throttles in earnest: raise max_attempts (backoff grows to 20 s) and use retry_mode=adaptive.
    max_attempts: int = 4  # covers SlowDown, 5xx, timeouts and dropped connections
    retry_mode: str = "standard"  # botocore: standard | adaptive (adds a client-side rate limiter)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0  # per request: no byte for this long and the attempt is abandoned


@dataclass
class RayConfig:
    address: str | None = None  # None: join RAY_ADDRESS if set, else start a local Ray
    num_cpus: int | None = None  # only for a local Ray started by us
    # Ray Data's V2 Parquet reader starts footer-reader actors (a process each) on every read: on small clusters
    # each read paid their start-up (BENCHMARKS.md "Test suite"). V1 reads footers in tasks. True: V2.
    parquet_reader_v2: bool = False


@dataclass
class EnvConfig:
    """The ALFRED-like BabyAI chain environment (rgvlm_ray/data/env.py)."""

    layout: str = "small"  # small: 2x2 rooms of 6 (11x11) | boss: BossLevel size, 3x3 rooms of 8
    num_dists: int | None = None  # distractor objects; None: the layout's default
    tile_size: int = 8  # agent view 7x7 tiles -> 56x56 RGB
    full_view: bool = False  # also store `frames_full`, the top-down view for the LVLM judge
    full_tile_size: int = 8
    max_steps: int | None = None  # None: BabyAI's budget, rooms x room_size^2 per navigation


@dataclass
class GenerateConfig:
    out: str = ""  # required
    episodes: int = 120
    episodes_per_shard: int = 40
    seed: int = 0
    subtasks: str = "1-6"  # "1-6", "3" or "1,2,5"
    expert_noise: float = 0.5  # P(random action) per step (the bot replans); 0.5: ~80% success
    split: str = "seen"  # seen | randomized
    # A mixture of behaviours, as real offline data is (docs/format.md, "Behaviour"). All 0 / empty: the noisy bot.
    noise_levels: list[float] = field(default_factory=list)  # per-episode expert_noise drawn from these
    detour: float = 0.0  # P(per sub-task) the bot first walks to a later sub-task's object (a wrong sub-task)
    abandon: float = 0.0  # P(per episode) it gives up after j < k sub-tasks, wanders to 2 objects, and stops
    episodes_per_mission: int = 1  # recordings of each mission (same layout), each its own behaviour draw
    num_cpus_per_task: float = 1.0
    overwrite: bool = False


@dataclass
class InspectConfig:
    path: str = ""  # required
    labels: list[str] = field(default_factory=list)  # label sets to check against it and summarise
    decode: bool = False  # also decode every PNG (slow)
    json: bool = False


@dataclass
class ImportConfig:
    """`rgvlm import minari|lerobot SOURCE --out RAW`: a dataset in its own format -> our shards (docs/import.md)."""

    format: str = ""  # required: minari | lerobot
    source: str = ""  # required: Minari dataset id or folder; LeRobot dataset folder or s3:// prefix
    out: str = ""  # required: folder or s3:// prefix
    goal: str = (
        ""  # goal text for episodes that carry none; the dataset's own missions win unless override_goal
    )
    override_goal: bool = False  # use `goal` for every episode, in place of the dataset's own missions
    camera: str = ""  # LeRobot video key, e.g. observation.images.top; empty: the dataset's only camera
    frame_stride: int = (
        1  # keep every Nth frame; the kept step's action is the first of its N (docs/import.md)
    )
    image_size: int = 0  # downscale frames whose longest side exceeds this before PNG-encoding; 0: keep
    fps: float = 0.0  # LeRobot: the frame rate to use when meta/info.json's `fps` is wrong; 0: info.json's
    episodes_per_shard: int = 50  # Minari: episodes per Ray task and shard (LeRobot: one task per data file)
    num_cpus_per_task: float = 0.5
    overwrite: bool = False


@dataclass
class ExportConfig:
    """`rgvlm export [parquet|minari|lerobot]`: raw episodes with rewards from label sets (docs/export.md)."""

    format: str = "parquet"  # parquet (joined shards) | minari | lerobot
    in_path: str = ""  # required: raw dataset
    labels: list[str] = field(default_factory=list)
    out: str = (
        ""  # required: folder or s3:// prefix; minari: a dataset id (written under MINARI_DATASETS_PATH)
    )
    reward: str = (
        "sparse"  # minari/lerobot: the reward mode written as the dataset's reward (train.reward's grammar)
    )
    source: str = (
        ""  # minari/lerobot: the imported dataset; empty: where `rgvlm import` read it (shard metadata)
    )
    overwrite: bool = False


@dataclass
class HFEngineConfig:
    """transformers `generate` (CPU or one GPU per actor)."""

    # Stage 2 continues stage 1's KV cache instead of re-encoding the shared prefix (images included).
    # Labels are the same either way; false re-encodes (for comparison, or a model where reuse misbehaves).
    prefix_reuse: bool = True
    # Tokens of kept stage-1 caches, oldest dropped first. Should hold every window of one actor call
    # (label.episodes_per_batch episodes); Qwen2.5-VL-7B in bfloat16 needs 57 KB of KV per token.
    prefix_cache_tokens: int = 131072


@dataclass
class VLLMEngineConfig:
    """vLLM (GPU nodes, `pip install 'rgvlm-ray[vllm]'`). Prefix caching is always on: stage 2 reuses stage 1."""

    max_model_len: int = 16384
    limit_mm_per_prompt: int | None = None  # images per prompt; None: labeler.window + 1
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9


@dataclass
class OpenAIEngineConfig:
    """Any OpenAI-compatible chat endpoint (vLLM serve, SGLang, a hosted API)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this env var only, never from config
    max_concurrency: int = 8
    max_retries: int = 5  # on 429, 5xx, timeouts and connection errors
    backoff_s: float = 1.0  # first retry delay; doubles each retry (a larger Retry-After wins)
    response_format_json_schema: bool = True  # false for endpoints without json_schema support


@dataclass
class EngineConfig:
    """The LVLM (or baseline) that labels episodes."""

    kind: str = "hf"  # hf | vllm | openai (LVLM judges) | clip | blip2 | roboclip | oracle | noisy_oracle
    model: str = ""  # hub id (e.g. Qwen/Qwen2.5-VL-7B-Instruct) or a local directory
    revision: str | None = None
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    device: str = "auto"  # auto: cuda when present, else cpu
    max_new_tokens_analysis: int = 512
    max_new_tokens_scores: int = 128  # raised to what the window's JSON needs, so it never truncates it
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8  # conversations per generate call (hf)
    timeout_s: float = 600.0  # one engine call (an hf generate batch, a vLLM chat, one HTTP request)
    hf: HFEngineConfig = field(default_factory=HFEngineConfig)
    vllm: VLLMEngineConfig = field(default_factory=VLLMEngineConfig)
    openai: OpenAIEngineConfig = field(default_factory=OpenAIEngineConfig)


@dataclass
class LabelerConfig:
    """How episodes are shown to the judge and its answers turned into rewards (docs/labeling.md)."""

    window: int = 16  # at most this many actions per judge call
    overlap: int = 4  # actions shared by consecutive windows; each step is still scored once
    image_size: int = 112  # frames larger than this (longest side) are downscaled
    view: str = "frames"  # frames (agent view) | frames_full (top-down)
    # LVLM engines: rgvlm (RG-VLM's two-stage per-action scores) | gvl (GVL's per-frame progress on shuffled frames)
    strategy: str = "rgvlm"
    prompt_version: str = "v1"  # rgvlm_ray/labelers/prompts/<version>.txt (gvl: prompts/gvl/<version>.txt)
    reward_scale: float = 1.0  # rgvlm: reward = scale * score / 10 + shift (clip: see docs/labeling.md)
    reward_shift: float = 0.0
    num_samples: int = 1  # self-consistency: scoring samples per window (mean kept, std in score_std)
    max_parse_retries: int = 2  # extra scoring attempts when an answer is not JSON of the right shape
    max_goal_chars: int = 500  # longer goals are truncated before they reach the prompt
    # How actions reach the prompt (docs/format.md): auto uses `action_texts` when a dataset has them, else renders
    # them; render always renders: discrete ids by name, continuous vectors as `name=value` per dimension.
    action_text: str = "auto"  # auto | render
    action_decimals: int = 2  # continuous values are rounded to this many decimals
    oracle_noise: float = (
        0.3  # noisy_oracle: P(a step is chosen); chosen steps swap labels within the episode
    )
    oracle_noise_seed: int = 0
    # roboclip: episode (RoboCLIP's: the whole episode scored once, its reward on the last step) | window (each
    # non-overlapping window of labeler.window actions scored, its reward on the window's last step)
    placement: str = "episode"
    demo_in: str = (
        ""  # roboclip: a dataset holding a demonstration episode to score against; empty: the goal text
    )
    demo_episode: str = ""  # its episode id; empty: the dataset's first episode


@dataclass
class ViewConfig:
    """`rgvlm view`: one self-contained HTML page per sampled episode, frames, actions, scores and analyses."""

    in_path: str = ""  # required: raw dataset (or a joined one)
    labels: list[str] = field(default_factory=list)  # label sets joined to it
    out: str = ""  # required: folder (or s3:// prefix) for index.html and one page per episode
    episodes: int = 5  # sampled episodes (all when there are fewer)
    episode: list[str] = field(default_factory=list)  # these episode ids instead of a sample
    seed: int = 0  # of the sample
    frame_size: int = 112  # frames are shown at most this large (longest side, px)


@dataclass
class LabelEpisodeConfig:
    """`rgvlm label-episode`: label one episode and print everything."""

    in_path: str = ""  # required: dataset folder, s3:// prefix or shard
    episode: str = ""  # episode id; empty: the first episode
    json: bool = False


@dataclass
class TinyModelConfig:
    """`rgvlm make-tiny-vlm`: a tiny random model of a real architecture for tests and the CPU demo."""

    out: str = ""  # required
    kind: str = "qwen2_vl"  # qwen2_vl | clip | blip2 | xclip
    seed: int = 0


@dataclass
class LabelConfig:
    """The distributed labeling job (rgvlm label)."""

    in_path: str = ""  # required
    out_path: str = ""  # required
    force: bool = False  # relabel every shard, even those the manifest says are current
    allow_quarantine: bool = False  # exit 0 even if some shards were quarantined
    min_actors: int = 1
    max_actors: int = 2  # on a GPU cluster: one actor per GPU
    num_cpus_per_actor: float = 0.5  # fractional on small machines, or actors starve the read tasks
    num_gpus_per_actor: float = 0.0  # 1 for hf/vllm engines on GPU nodes (vllm TP: tensor_parallel_size)
    episodes_per_batch: int = 4  # episodes per actor call; each yields ceil(T/window) windows x 2 stages
    max_restarts: int = 3  # actor restarts after a crash or OOM kill (-1: Ray's default, unbounded)
    max_task_retries: int = 3  # retries of a batch whose actor died (-1: Ray's default, unbounded)
    batch_timeout_s: float = (
        1800.0  # a batch taking longer is recorded as engine_error and the actor restarts
    )
    # A dead run's leases expire after this (at once if it ran on this host); live runs renew every ttl/6.
    lease_ttl_s: float = 60.0
    retry_errors: bool = (
        False  # also relabel shards whose only errors were bad input (e.g. undecodable frames)
    )
    status: bool = False  # print what the output holds for every input shard, over all runs; label nothing
    prune: bool = False  # remove records, parts, leases and label shards of raw shards that no longer exist
    num_cpus_per_check: float = 0.25
    chaos: str = (
        ""  # fault injection for rehearsals: crash-once:PATH | hang-once:PATH (rgvlm_ray/labeling/chaos.py)
    )
    plan: bool = False  # print what the run would cost (PlanConfig, docs/labeling.md); label nothing


@dataclass
class PlanConfig:
    """`rgvlm label --plan`: the bill of a labeling run before it starts (docs/labeling.md, "Before a large run").

    Counts come from the data and the model's own processor (no weights are loaded). Times need a throughput:
    `tokens_per_s` or `windows_per_s` per actor, or `calibrate` > 0 (a real labeling run on that many windows).
    """

    # Per actor: prompt tokens computed (prefix-cached ones excluded) + completion tokens per second, e.g.
    # bench/label_engine.py's `tokens_per_s` for the same model, engine, batch size and hardware. 0: unknown.
    tokens_per_s: float = 0.0
    windows_per_s: float = 0.0  # per actor, the other measure bench/label_engine.py reports; 0: unknown
    calibrate: int = 0  # label this many windows of the data here, timed, and take the throughput from it
    # Share of stage 2's shared prefix (the whole stage-1 prompt) served from a prefix cache instead of being
    # recomputed. None: measured by --calibrate, else the engine's: vllm 1.0, hf and openai 0.0.
    prefix_cache: float | None = None
    # Analysis tokens per window (stage 1's output, repeated in stage 2's prompt). None: measured by
    # --calibrate, else engine.max_new_tokens_analysis (an upper bound).
    analysis_tokens: float | None = None
    startup_s: float | None = None  # per actor (model load); None: measured by --calibrate, else 0
    processor: str = (
        ""  # processor files to count tokens with; empty: engine.model (a dir or a cached hub id)
    )
    # CPU actors share the CPUs with the driver, Ray Data's read tasks and the writers: those take about this many
    # CPUs (measured on cpu-2core, BENCHMARKS.md "Does rgvlm label --plan hold?"). GPU actors are not capped.
    driver_cpus: float = 0.5
    cluster_cpus: int | None = None  # CPUs the actors share; None: ray.num_cpus, else this machine's count
    json: bool = False


@dataclass
class RelabelConfig:
    """The scheduled job (rgvlm relabel): label what is new, then optionally retrain."""

    then_train: bool = False
    train_root: str = ""  # each retrain writes a new run folder <train_root>/<UTC timestamp>
    train_always: bool = False  # retrain even when nothing new was labeled


@dataclass
class LabelReportConfig:
    in_path: str = ""  # required: a dataset (raw, or exported with labels)
    labels: list[str] = field(default_factory=list)  # label sets joined to it (rgvlm label --out)
    labeler: str = ""  # a labeler name (rgvlm, gvl, clip, blip2, ...); empty: every one present
    out: str = "label-report"  # local folder for label_report.{md,json} and scores_hist.png
    # What marks a successful episode: auto (a sparse reward > 0; with no reward, `terminated`; a dense reward: none)
    # | reward | terminated | none (docs/labeling-job.md, "Label quality")
    success: str = "auto"
    json: bool = False


@dataclass
class RunConfig:
    """The end-to-end demo (rgvlm run)."""

    out: str = ""  # required: a local folder
    # One training run per reward mode (train.reward), each labelled in report.md by what the run wrote.
    rewards: list[str] = field(
        default_factory=lambda: ["sparse", "oracle+sparse", "rgvlm+sparse", "clip+sparse", "oracle", "rgvlm"]
    )
    clip_model: str = (
        ""  # empty: a tiny random CLIP built on the spot (noise); e.g. openai/clip-vit-base-patch32
    )
    eval_split: str = "seen"  # seen | randomized
    parallel: int = 2  # arms trained (and evaluated) side by side


@dataclass
class StudyConfig:
    """`rgvlm study`: the paper's experiment, labelers x reward modes x seeds, on Ray (docs/study.md)."""

    out: str = ""  # required: folder or s3:// prefix for data, labels, runs, evals, study.md and study.json
    in_path: str = ""  # raw dataset; empty: generated into OUT/data/raw with generate.* (reused if there)
    # Labelers, each labeling the raw data into its own label set OUT/data/labels-NAME: oracle | noisyNN (the
    # oracle with NN% of its steps shuffled, engine kind noisy_oracle) | clip | blip2 | roboclip (study.*_model)
    # | rgvlm | gvl (engine.*; gvl: labeler.strategy=gvl).
    labelers: list[str] = field(
        default_factory=lambda: ["oracle", "noisy10", "noisy30", "noisy60", "clip", "rgvlm"]
    )
    # Reward-mode templates; X is replaced by each labeler that succeeded. `sparse` always runs.
    modes: list[str] = field(default_factory=lambda: ["X", "X+sparse"])
    # Per-labeler overrides of `modes`, e.g. {noisy30: [X+sparse]}: fewer arms where a mode says nothing new.
    modes_for: dict[str, list[str]] = field(default_factory=dict)
    seeds: int = 3  # training runs per arm, train.seed = 0 .. seeds-1
    # each run is evaluated on all (docs/study.md, "Which claim each split tests")
    splits: list[str] = field(default_factory=lambda: ["seen", "randomized", "novel"])
    contexts: list[int] = field(default_factory=lambda: [1])  # ablation: oracle+sparse at these iql.context
    # Baselines on the sparse reward (docs/study.md): bc (behaviour cloning) and filtered_bc (BC on the top
    # iql.filter_top of episodes by return, CORL's BC-N%); and BC on noise-free expert data of the same missions,
    # once (seed 0): the architecture's ceiling.
    baselines: list[str] = field(default_factory=lambda: ["bc", "filtered_bc"])
    expert_ceiling: bool = True
    # Learning curves: these arms' seed-0 runs at `curve_points` evenly spaced budgets (docs/study.md).
    curve_arms: list[str] = field(default_factory=lambda: ["sparse", "oracle+sparse"])
    curve_points: int = 4
    # Trainings side by side (each its own Ray Train run, from a driver thread). On small machines keep
    # parallel x train.workers x train.cpus_per_worker <= CPUs - 1, or Ray Data's tasks starve (stack.md).
    parallel: int = 2
    clip_model: str = ""  # empty: a tiny random CLIP built under OUT/models (noise)
    blip2_model: str = ""  # empty: a tiny random BLIP-2 (e.g. Salesforce/blip2-itm-vit-g on a GPU)
    roboclip_model: str = ""  # empty: a tiny random X-CLIP (e.g. microsoft/xclip-base-patch32 on a GPU)


@dataclass
class Config:
    storage: StorageConfig = field(default_factory=StorageConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    inspect: InspectConfig = field(default_factory=InspectConfig)
    importer: ImportConfig = field(default_factory=ImportConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    labeler: LabelerConfig = field(default_factory=LabelerConfig)
    label_episode: LabelEpisodeConfig = field(default_factory=LabelEpisodeConfig)
    view: ViewConfig = field(default_factory=ViewConfig)
    tiny_model: TinyModelConfig = field(default_factory=TinyModelConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    label_report: LabelReportConfig = field(default_factory=LabelReportConfig)
    relabel: RelabelConfig = field(default_factory=RelabelConfig)
    iql: IQLConfig = field(default_factory=IQLConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    run: RunConfig = field(default_factory=RunConfig)
    study: StudyConfig = field(default_factory=StudyConfig)


def resolve_config_path(name: str) -> Path:
    """`local` -> the packaged configs/local.yaml; anything else is a path."""
    packaged = CONFIG_DIR / f"{name}.yaml"
    if packaged.exists() and os.sep not in name and not name.endswith((".yaml", ".yml")):
        return packaged
    path = Path(name)
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"config {name!r} not found: pass a YAML path or one of: {known}")
    return path


def load_config(
    config_files: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    dotlist: list[str] | None = None,
) -> Config:
    """Merge defaults, YAML files, flag values (by dotted key) and `key=value` strings into a typed Config."""
    cfg: DictConfig = OmegaConf.structured(Config)
    for name in config_files or []:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(resolve_config_path(name)))
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value, merge=True)
    if dotlist:
        bad = [item for item in dotlist if "=" not in item]
        if bad:
            raise ValueError(f"overrides must look like key=value, got: {' '.join(bad)}")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def redacted(cfg: Config | DictConfig) -> dict[str, Any]:
    """The config as a plain dict with every credential replaced, safe to log or save."""
    data = OmegaConf.to_container(OmegaConf.structured(cfg) if not isinstance(cfg, DictConfig) else cfg)

    def scrub(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("***" if k in SECRET_KEYS and v else scrub(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [scrub(v) for v in node]
        return node

    return scrub(data)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(redacted(cfg)))
