"""`rgvlm inspect`."""

from __future__ import annotations

import json

from rgvlm_ray.cli import require
from rgvlm_ray.config import Config
from rgvlm_ray.data.inspect import render, summarize
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelstore.join import Source
from rgvlm_ray.labelstore.layout import is_label_set


def main(cfg: Config) -> int:
    require(cfg, "inspect.path")
    i = cfg.inspect
    if is_label_set(i.path, cfg.storage):
        raise UsageError(
            f"{i.path} is a label set: inspect it with the raw data, `rgvlm inspect RAW --labels {i.path}`"
        )
    join = Source(i.path, list(i.labels), cfg.storage).read if i.labels else None
    try:
        summary = summarize(i.path, cfg.storage, i.decode, join, list(i.labels))
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps(summary, indent=2) if i.json else render(summary))
    if summary["unreadable"]:  # train, export and label-report would refuse the dataset: the same code, 2
        raise UsageError(
            f"{summary['unreadable'][0]} (fix or remove the shard; {len(summary['unreadable'])} unreadable)"
        )
    return 1 if summary["validation_errors"] else 0
