"""`rgvlm <command> [flags] [key=value ...]`.

Every flag is a shortcut for one key of the structured config in rgvlm_ray/config/; any other key can be
set with `key=value`. Handlers live in rgvlm_ray/commands/ as `main(cfg: Config) -> int` and are imported
lazily so `rgvlm --help` stays fast; the domain modules they call never import this one.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

from omegaconf.errors import OmegaConfBaseException

from rgvlm_ray.config import Config, load_config
from rgvlm_ray.errors import StorageError, UsageError, message
from rgvlm_ray.storage import check, resolved
from rgvlm_ray.storage import fault as storage_fault


@dataclass(frozen=True)
class Flag:
    name: str  # e.g. "--out"
    key: str  # dotted config key, e.g. "generate.out"
    type: Any = str  # str | int | float | bool (bool flags take no value) | list (repeatable, appends)
    help: str = ""
    positional: bool = False
    nargs: str | None = None  # positional only: "*" collects several values into a list key


@dataclass(frozen=True)
class Command:
    help: str
    target: str | None  # "module:function"; None = not built yet
    flags: list[Flag] = field(default_factory=list)


STORAGE_FLAGS = [Flag("--endpoint-url", "storage.endpoint_url", help="S3 endpoint (else AWS_ENDPOINT_URL)")]

COMMANDS: dict[str, Command] = {
    "generate": Command(
        "generate an ALFRED-like multi-sub-task BabyAI dataset with Ray",
        "rgvlm_ray.commands.generate:main",
        [
            Flag("--out", "generate.out", help="output folder or s3:// prefix"),
            Flag("--episodes", "generate.episodes", int),
            Flag("--seed", "generate.seed", int),
            Flag("--episodes-per-shard", "generate.episodes_per_shard", int),
            Flag("--subtasks", "generate.subtasks", help='sub-task counts, e.g. "1-6", "3", "1,2,5"'),
            Flag("--expert-noise", "generate.expert_noise", float, "probability of a random action"),
            Flag(
                "--detour",
                "generate.detour",
                float,
                "P(per sub-task) of first walking to a wrong sub-task's object",
            ),
            Flag("--abandon", "generate.abandon", float, "P(per episode) of giving up after j < k sub-tasks"),
            Flag("--split", "generate.split", help="seen | randomized"),
            Flag("--overwrite", "generate.overwrite", bool, "replace existing shards"),
            *STORAGE_FLAGS,
        ],
    ),
    "inspect": Command(
        "summarise and validate a dataset (raw or labeled)",
        "rgvlm_ray.commands.inspect:main",
        [
            Flag("path", "inspect.path", positional=True, help="folder, s3:// prefix or shard"),
            Flag("--labels", "inspect.labels", list, "label set joined to --in (repeatable)"),
            Flag("--decode", "inspect.decode", bool, "also decode every PNG"),
            Flag("--json", "inspect.json", bool, "print JSON"),
            *STORAGE_FLAGS,
        ],
    ),
    "make-tiny-vlm": Command(
        "build a tiny random Qwen2-VL (or CLIP) for tests and the CPU demo",
        "rgvlm_ray.commands.make_tiny_vlm:main",
        [
            Flag("--out", "tiny_model.out", help="output directory"),
            Flag("--kind", "tiny_model.kind", help="qwen2_vl | clip | blip2 | xclip"),
            Flag("--seed", "tiny_model.seed", int),
        ],
    ),
    "label-episode": Command(
        "label one episode and print prompts, analysis and scores",
        "rgvlm_ray.commands.label_episode:main",
        [
            Flag("--in", "label_episode.in_path", help="dataset folder, s3:// prefix or shard"),
            Flag("--episode", "label_episode.episode", help="episode id (default: the first one)"),
            Flag(
                "--engine",
                "engine.kind",
                help="hf | vllm | openai | clip | blip2 | roboclip | oracle | noisy_oracle",
            ),
            Flag("--model", "engine.model", help="hub id or local model directory"),
            Flag("--window", "labeler.window", int, "actions per judge call"),
            Flag("--view", "labeler.view", help="frames | frames_full"),
            Flag("--json", "label_episode.json", bool, "print one JSON object"),
            *STORAGE_FLAGS,
        ],
    ),
    "label": Command(
        "label a corpus of shards with Ray Data actor pools (resumable; see docs/labeling-job.md)",
        "rgvlm_ray.commands.label:main",
        [
            Flag("--in", "label.in_path", help="raw dataset: folder or s3:// prefix"),
            Flag("--out", "label.out_path", help="label set: folder or s3:// prefix, beside the raw data"),
            Flag(
                "--status", "label.status", bool, "report every input shard's state in --out; label nothing"
            ),
            Flag(
                "--prune",
                "label.prune",
                bool,
                "remove what --out holds for raw shards that no longer exist (--status lists it); label nothing",
            ),
            Flag("--retry-errors", "label.retry_errors", bool, "relabel shards with bad-input episodes too"),
            Flag(
                "--engine",
                "engine.kind",
                help="hf | vllm | openai | clip | blip2 | roboclip | oracle | noisy_oracle",
            ),
            Flag("--model", "engine.model", help="hub id or local model directory"),
            Flag("--force", "label.force", bool, "relabel every shard"),
            Flag("--allow-quarantine", "label.allow_quarantine", bool, "exit 0 despite quarantined shards"),
            Flag("--actors", "label.max_actors", int, "max actors in the pool"),
            Flag("--episodes-per-batch", "label.episodes_per_batch", int),
            Flag(
                "--plan",
                "label.plan",
                bool,
                "print windows, images, tokens per stage and the time on N actors; label nothing (--out optional)",
            ),
            Flag("--calibrate", "plan.calibrate", int, "--plan: time a real labeling run on N windows here"),
            Flag("--tokens-per-s", "plan.tokens_per_s", float, "--plan: measured throughput per actor"),
            Flag("--windows-per-s", "plan.windows_per_s", float, "--plan: measured throughput per actor"),
            Flag("--json", "plan.json", bool, "--plan: print JSON"),
            *STORAGE_FLAGS,
        ],
    ),
    "view": Command(
        "write a self-contained HTML page per sampled episode: frames, actions, scores, analyses",
        "rgvlm_ray.commands.view:main",
        [
            Flag("--in", "view.in_path", help="raw dataset: folder or s3:// prefix"),
            Flag("--labels", "view.labels", list, "label set joined to --in (repeatable)"),
            Flag("--out", "view.out", help="folder (or s3:// prefix) for index.html and the pages"),
            Flag("--episodes", "view.episodes", int, "episodes sampled"),
            Flag("--episode", "view.episode", list, "this episode id instead of a sample (repeatable)"),
            Flag("--seed", "view.seed", int, "of the sample"),
            *STORAGE_FLAGS,
        ],
    ),
    "label-report": Command(
        "label-quality report: success separation, agreement, consistency, bias; and vs ground truth where present",
        "rgvlm_ray.commands.label_report:main",
        [
            Flag("--in", "label_report.in_path", help="dataset: folder or s3:// prefix"),
            Flag("--labels", "label_report.labels", list, "label set joined to --in (repeatable)"),
            Flag(
                "--labeler",
                "label_report.labeler",
                help="rgvlm | gvl | clip | blip2 | roboclip | oracle | noisyNN (default: all present)",
            ),
            Flag(
                "--success",
                "label_report.success",
                help="auto | reward | terminated | none: what marks success",
            ),
            Flag("--out", "label_report.out", help="local folder for the report files"),
            Flag("--json", "label_report.json", bool, "print JSON"),
            *STORAGE_FLAGS,
        ],
    ),
    "train": Command(
        "train language-conditioned IQL with Ray Train",
        "rgvlm_ray.commands.train:main",
        [
            Flag("--in", "train.in_path", help="episodes: folder or s3:// prefix"),
            Flag("--labels", "train.labels", list, "label set joined to --in (repeatable)"),
            Flag("--out", "train.out_path", help="run folder or s3:// prefix; a rerun resumes from it"),
            Flag(
                "--reward",
                "train.reward",
                help="TERM or TERM+TERM..., TERM = sparse | rgvlm | gvl | clip | blip2 | roboclip | oracle | noisyNN (e.g. rgvlm+sparse)",
            ),
            Flag("--workers", "train.workers", int, "Ray Train workers (DDP)"),
            Flag("--steps", "train.steps", int, "total updates"),
            Flag("--cpus-per-worker", "train.cpus_per_worker", float, "default: leave a CPU for Ray Data"),
            Flag("--obs-mode", "iql.obs_mode", help="symbolic | image"),
            Flag("--batch-size", "iql.batch_size", int),
            *STORAGE_FLAGS,
        ],
    ),
    "evaluate": Command(
        "evaluate a checkpoint by sub-task count k = 1..6",
        "rgvlm_ray.commands.evaluate:main",
        [
            Flag("--checkpoint", "eval.checkpoint", help="run folder or one checkpoint"),
            Flag("--out", "eval.out", help="folder for eval.json, eval.md and eval.png"),
            Flag("--episodes-per-k", "eval.episodes_per_k", int),
            Flag("--split", "eval.split", help="seen | randomized | novel (docs/study.md)"),
            Flag("--max-steps", "eval.max_steps", int, "episode step limit (default: the env's)"),
            Flag("--policy", "eval.policy", help="greedy (the mode of pi, default) | sample"),
            *STORAGE_FLAGS,
        ],
    ),
    "compare": Command(
        "compare runs in one table and plot",
        "rgvlm_ray.commands.compare:main",
        [
            Flag("runs", "compare.runs", positional=True, nargs="*", help="run or eval folders"),
            Flag("--out", "compare.out", help="folder for compare.json, compare.md and compare.png"),
            Flag("--title", "compare.title"),
            *STORAGE_FLAGS,
        ],
    ),
    "run": Command(
        "the end-to-end demo: generate, label three ways, train per reward, evaluate by k, write report.md",
        "rgvlm_ray.commands.run:main",
        [
            Flag("--out", "run.out", help="local folder for data, runs, evals and report.md"),
            Flag("--engine", "engine.kind", help="RG-VLM engine: hf | vllm | openai (default hf)"),
            Flag("--model", "engine.model", help="LVLM for RG-VLM labels (default: a tiny random Qwen2-VL)"),
            Flag("--episodes", "generate.episodes", int),
            Flag("--steps", "train.steps", int, "IQL updates per reward source"),
            Flag("--episodes-per-k", "eval.episodes_per_k", int),
            *STORAGE_FLAGS,
        ],
    ),
    "study": Command(
        "the paper's experiment on Ray: labelers x reward modes x seeds, with CIs (docs/study.md)",
        "rgvlm_ray.commands.study:main",
        [
            Flag("--out", "study.out", help="folder or s3:// prefix for data, runs, evals and study.md"),
            Flag("--in", "study.in_path", help="raw dataset (default: generate one into OUT/data/raw)"),
            Flag("--seeds", "study.seeds", int, "training runs per arm (train.seed = 0..N-1)"),
            Flag("--steps", "train.steps", int, "IQL updates per run"),
            Flag("--episodes-per-k", "eval.episodes_per_k", int, "evaluation missions per k and split"),
            Flag("--parallel", "study.parallel", int, "trainings side by side"),
            *STORAGE_FLAGS,
        ],
    ),
    "import": Command(
        "import a Minari or LeRobot dataset as raw episodes for `rgvlm label` (docs/minari.md, docs/lerobot.md)",
        "rgvlm_ray.commands.import_data:main",
        [
            Flag("FORMAT", "importer.format", help="minari | lerobot", positional=True),
            Flag(
                "SOURCE",
                "importer.source",
                help="Minari id or folder; LeRobot folder or s3:// prefix",
                positional=True,
            ),
            Flag("--out", "importer.out", help="raw dataset: folder or s3:// prefix"),
            Flag("--goal", "importer.goal", help="goal text for episodes without a mission of their own"),
            Flag(
                "--override-goal",
                "importer.override_goal",
                bool,
                "use --goal for every episode, in place of the dataset's own missions",
            ),
            Flag("--camera", "importer.camera", help="LeRobot video key (default: the only camera)"),
            Flag("--frame-stride", "importer.frame_stride", int, "keep every Nth frame"),
            Flag(
                "--fps",
                "importer.fps",
                float,
                "LeRobot: the true frame rate when meta/info.json's fps is wrong (checked against the videos)",
            ),
            Flag("--image-size", "importer.image_size", int, "downscale frames to this longest side"),
            Flag("--overwrite", "importer.overwrite", bool, "replace existing shards"),
            *STORAGE_FLAGS,
        ],
    ),
    "export": Command(
        "write raw episodes with rewards from label sets: joined Parquet shards, or a Minari or LeRobot dataset",
        "rgvlm_ray.commands.export:main",
        [
            Flag("FORMAT", "export.format", help="parquet (default) | minari | lerobot", positional=True),
            Flag("--in", "export.in_path", help="raw dataset: folder or s3:// prefix"),
            Flag("--labels", "export.labels", list, "label set joined to --in (repeatable)"),
            Flag("--reward", "export.reward", help="minari/lerobot: reward mode written, e.g. rgvlm+sparse"),
            Flag(
                "--source",
                "export.source",
                help="minari/lerobot: the imported dataset (default: as imported)",
            ),
            Flag("--out", "export.out", help="folder or s3:// prefix (minari: a dataset id)"),
            Flag("--overwrite", "export.overwrite", bool, "replace an existing output"),
            *STORAGE_FLAGS,
        ],
    ),
    "relabel": Command(
        "label only new or changed shards, then optionally retrain: safe to run from cron",
        "rgvlm_ray.commands.relabel:main",
        [
            Flag("--in", "label.in_path", help="raw dataset: folder or s3:// prefix"),
            Flag("--out", "label.out_path", help="label set: folder or s3:// prefix"),
            Flag(
                "--engine",
                "engine.kind",
                help="hf | vllm | openai | clip | blip2 | roboclip | oracle | noisy_oracle",
            ),
            Flag("--model", "engine.model", help="hub id or local model directory"),
            Flag("--then-train", "relabel.then_train", bool, "retrain when something new was labeled"),
            Flag("--train-root", "relabel.train_root", help="folder or s3:// prefix for new training runs"),
            Flag("--reward", "train.reward", help="reward mode for retraining"),
            Flag("--steps", "train.steps", int, "updates for retraining"),
            Flag("--allow-quarantine", "label.allow_quarantine", bool, "exit 0 despite quarantined shards"),
            *STORAGE_FLAGS,
        ],
    ),
}


def build_parser() -> argparse.ArgumentParser:
    ready = [n for n, c in COMMANDS.items() if c.target]
    planned = [n for n, c in COMMANDS.items() if not c.target]
    parser = argparse.ArgumentParser(
        prog="rgvlm",
        description="RG-VLM on Ray: LVLM reward labeling and language-conditioned IQL.",
        epilog=(f"not available yet: {', '.join(planned)}" if planned else None),
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(ready) + "}")
    for name in ready:
        cmd = COMMANDS[name]
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        p.add_argument(
            "--config", action="append", default=[], help="YAML file or packaged name (repeatable)"
        )
        for flag in cmd.flags:
            kwargs: dict[str, Any] = {"help": f"{flag.help} [{flag.key}]".strip(), "dest": flag.key}
            if flag.positional:
                nargs = flag.nargs or "?"
                p.add_argument(flag.key, nargs=nargs, default=None, help=kwargs["help"], metavar=flag.name)
            elif flag.type is bool:
                p.add_argument(flag.name, action="store_const", const=True, default=None, **kwargs)
            elif flag.type is list:
                p.add_argument(flag.name, action="append", default=None, **kwargs)
            else:
                p.add_argument(flag.name, type=flag.type, default=None, **kwargs)
        p.add_argument("overrides", nargs="*", metavar="key=value", help="any config key")
    return parser


def _split_overrides(args: argparse.Namespace, cmd: Command) -> tuple[dict[str, Any], list[str]]:
    flags = {f.key: getattr(args, f.key) for f in cmd.flags if getattr(args, f.key) is not None}
    positional = {f.key for f in cmd.flags if f.positional}
    dotlist = list(args.overrides)
    for key, value in list(flags.items()):
        if isinstance(value, str) and "=" in value and key in positional:  # an override, not the positional
            dotlist.insert(0, flags.pop(key))
        elif isinstance(value, list):  # a list positional swallows the key=value overrides after it
            flags[key] = [v for v in value if "=" not in v]
            dotlist = [v for v in value if "=" in v] + dotlist
    return flags, dotlist


def main(argv: list[str] | None = None) -> int:
    """`rgvlm ARGV`. Called without argv (the `rgvlm` program, `python -m rgvlm_ray.cli`), the process ends here
    once the command has returned (exit_process); called with argv (tests, jobs/*.py), it returns the code."""
    if argv is not None:
        return run_command(argv)
    exit_process(run_command(sys.argv[1:]))


def exit_process(code: int) -> NoReturn:
    """End a finished `rgvlm` process without the interpreter's teardown. Under load, about one `rgvlm inspect`
    in 30 that had printed everything and chosen its exit code died in that teardown with "terminate called
    without an active exception" (exit 134: a native library's thread destroyed while joinable). The command's
    work is done and its output flushed first; a Ray this process joined or started is shut down first too."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # a reader that went away (`rgvlm inspect x | head`): nothing left to flush to
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def config_error(exc: Exception) -> str:
    """One line: OmegaConf's messages go on with full_key / reference_type / object_type lines."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    key = getattr(exc, "full_key", None)
    return f"{lines[0]} (key {key})" if key and key not in lines[0] else lines[0]


def run_command(argv: list[str]) -> int:
    if argv and argv[0] in COMMANDS and not COMMANDS[argv[0]].target:
        print(f"rgvlm {argv[0]}: not available yet in this version of rgvlm-ray.", file=sys.stderr)
        return 2
    parser = build_parser()
    # argparse gives a `key=value` positional list one stretch of argv: overrides after a later flag
    # (`--steps 10 iql.lr=1e-3 --reward sparse train.seed=1`) came back "unrecognized". Any left-over `key=value`
    # joins the overrides, in argv order; anything else left over is still an error.
    args, rest = parser.parse_known_args(argv)
    extra = [r for r in rest if "=" in r and not r.startswith("-")]
    if len(extra) < len(rest):
        parser.error(f"unrecognized arguments: {' '.join(r for r in rest if r not in extra)}")
    if extra:
        args.overrides = [*getattr(args, "overrides", []), *extra]
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    cmd = COMMANDS[args.command]
    flags, dotlist = _split_overrides(args, cmd)
    try:
        cfg = load_config(args.config, flags, dotlist)
    except (OmegaConfBaseException, ValueError, FileNotFoundError) as exc:
        print(f"rgvlm {args.command}: bad configuration: {config_error(exc)}", file=sys.stderr)
        return 2
    module, func = cmd.target.split(":")  # type: ignore[union-attr]
    run = getattr(importlib.import_module(module), func)
    try:
        cfg.storage = check(resolved(cfg.storage))
        return int(run(cfg) or 0)
    except UsageError as exc:
        print(f"rgvlm {args.command}: {message(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        # A storage fault anywhere under a command (disk full, S3 down) is the user's to fix: one line, exit 4.
        # Anything else is a bug: its traceback is wanted.
        fault = storage_fault(exc, "", cfg.storage)
        if fault is None:
            raise
        logging.getLogger("rgvlm_ray").debug("storage fault", exc_info=True)
        print(f"rgvlm {args.command}: {fault}", file=sys.stderr)
        return StorageError.exit_code


def require(cfg: Config, *keys: str) -> None:
    """Fail naming the flag (or key) to pass when a required setting is empty."""
    from omegaconf import OmegaConf

    conf = OmegaConf.structured(cfg)
    missing = [k for k in keys if OmegaConf.select(conf, k) in (None, "")]
    if missing:
        names = {f.key: f.name for c in COMMANDS.values() for f in c.flags}
        raise UsageError(
            "missing required setting(s): " + ", ".join(f"{names.get(k, k)} ({k})" for k in missing)
        )


if __name__ == "__main__":
    sys.exit(main())
