"""`rgvlm <command> [flags] [key=value ...]`.

Every flag is a shortcut for one key of the structured config in rgvlm_ray/config.py; any other key can be
set with `key=value`. Implementations live beside their code as `main(cfg: Config) -> int` and are imported
lazily so `rgvlm --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass, field
from typing import Any

from omegaconf.errors import OmegaConfBaseException

from rgvlm_ray.config import Config, load_config
from rgvlm_ray.errors import UsageError
from rgvlm_ray.storage import resolved


@dataclass(frozen=True)
class Flag:
    name: str  # e.g. "--out"
    key: str  # dotted config key, e.g. "generate.out"
    type: Any = str  # str | int | float | bool (bool flags take no value)
    help: str = ""
    positional: bool = False


@dataclass(frozen=True)
class Command:
    help: str
    target: str | None  # "module:function"; None = not built yet
    flags: list[Flag] = field(default_factory=list)


STORAGE_FLAGS = [Flag("--endpoint-url", "storage.endpoint_url", help="S3 endpoint (else AWS_ENDPOINT_URL)")]

COMMANDS: dict[str, Command] = {
    "generate": Command(
        "generate an ALFRED-like multi-sub-task BabyAI dataset with Ray",
        "rgvlm_ray.data.generate:main",
        [
            Flag("--out", "generate.out", help="output folder or s3:// prefix"),
            Flag("--episodes", "generate.episodes", int),
            Flag("--seed", "generate.seed", int),
            Flag("--episodes-per-shard", "generate.episodes_per_shard", int),
            Flag("--subtasks", "generate.subtasks", help='sub-task counts, e.g. "1-6", "3", "1,2,5"'),
            Flag("--expert-noise", "generate.expert_noise", float, "probability of a random action"),
            Flag("--split", "generate.split", help="seen | randomized"),
            Flag("--overwrite", "generate.overwrite", bool, "replace existing shards"),
            *STORAGE_FLAGS,
        ],
    ),
    "inspect": Command(
        "summarise and validate a dataset (raw or labeled)",
        "rgvlm_ray.data.inspect:main",
        [
            Flag("path", "inspect.path", positional=True, help="folder, s3:// prefix or shard"),
            Flag("--decode", "inspect.decode", bool, "also decode every PNG"),
            Flag("--json", "inspect.json", bool, "print JSON"),
            *STORAGE_FLAGS,
        ],
    ),
    "make-tiny-vlm": Command("build a tiny random Qwen2-VL for tests and the CPU demo", None),
    "label-episode": Command("label one episode and print prompts, analysis and scores", None),
    "label": Command("label a corpus of shards with Ray Data actor pools", None),
    "label-report": Command("label-quality report against ground-truth progress", None),
    "train": Command("train language-conditioned IQL with Ray Train", None),
    "evaluate": Command("evaluate a checkpoint by sub-task count k = 1..6", None),
    "compare": Command("compare runs in one table and plot", None),
    "run": Command("the end-to-end demo: generate, label, train, evaluate, report", None),
    "relabel": Command("label only new shards, for scheduled runs", None),
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
                p.add_argument(flag.key, nargs="?", default=None, help=kwargs["help"], metavar=flag.name)
            elif flag.type is bool:
                p.add_argument(flag.name, action="store_const", const=True, default=None, **kwargs)
            else:
                p.add_argument(flag.name, type=flag.type, default=None, **kwargs)
        p.add_argument("overrides", nargs="*", metavar="key=value", help="any config key")
    return parser


def _split_overrides(args: argparse.Namespace, cmd: Command) -> tuple[dict[str, Any], list[str]]:
    flags = {f.key: getattr(args, f.key) for f in cmd.flags if getattr(args, f.key) is not None}
    return flags, list(args.overrides)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS and not COMMANDS[argv[0]].target:
        print(f"rgvlm {argv[0]}: not available yet in this version of rgvlm-ray.", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
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
        print(f"rgvlm {args.command}: bad configuration: {exc}", file=sys.stderr)
        return 2
    cfg.storage = resolved(cfg.storage)
    module, func = cmd.target.split(":")  # type: ignore[union-attr]
    run = getattr(importlib.import_module(module), func)
    try:
        return int(run(cfg) or 0)
    except UsageError as exc:
        print(f"rgvlm {args.command}: {exc}", file=sys.stderr)
        return 2


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
