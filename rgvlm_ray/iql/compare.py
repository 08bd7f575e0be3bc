"""`rgvlm compare`: several evaluations side by side, one line per reward source (like the paper's Fig. 4)."""

from __future__ import annotations

import json
from typing import Any

from rgvlm_ray import storage
from rgvlm_ray.config import Config, StorageConfig
from rgvlm_ray.errors import UsageError
from rgvlm_ray.iql.evaluate import KS, plot_png, write_outputs


def find_evals(path: str, cfg: StorageConfig) -> list[str]:
    """eval.json paths in an eval folder, or anywhere below a run folder."""
    fs, p = storage.get_fs(path, cfg)
    if fs.exists(f"{p}/eval.json"):
        return [storage.with_scheme(path, f"{p}/eval.json")]
    if not fs.exists(p):
        raise UsageError(f"{path}: no such folder")
    found = sorted(f for f in fs.find(p) if storage.basename(f) == "eval.json")
    if not found:
        raise UsageError(
            f"{path}: no eval.json inside; run `rgvlm evaluate --checkpoint {path} --out DIR` first"
        )
    return [storage.with_scheme(path, f) for f in found]


def load_eval(path: str, cfg: StorageConfig) -> dict[str, Any]:
    fs, p = storage.get_fs(path, cfg)
    with fs.open(p, "rb") as f:
        return json.load(f)


def unique_labels(evals: list[dict[str, Any]], paths: list[str]) -> list[str]:
    labels = [e.get("label") or f"{e.get('reward')} ({e.get('split')})" for e in evals]
    # Two runs with the same reward source: tell them apart by folder.
    return [
        f"{label} [{storage.basename(path.rsplit('/', 1)[0])}]" if labels.count(label) > 1 else label
        for label, path in zip(labels, paths, strict=True)
    ]


def comparison_table(series: dict[str, list[dict[str, Any]]]) -> str:
    header = "| reward source | " + " | ".join(f"k={k}" for k in KS) + " | mean |"
    lines = ["Success rate (proportion of sub-tasks completed) by number of sub-tasks k.", "", header]
    lines.append("|---" * (len(KS) + 2) + "|")
    for label, rows in series.items():
        by_k = {r["k"]: r for r in rows}
        cells = [
            f"{by_k[k]['success_rate']:.2f} ({by_k[k]['subtask_completion']:.2f})" if k in by_k else "-"
            for k in KS
        ]
        mean = sum(r["success_rate"] for r in rows) / max(len(rows), 1)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean:.2f} |")
    return "\n".join(lines) + "\n"


def main(cfg: Config) -> int:
    from rgvlm_ray.cli import require

    require(cfg, "compare.out")
    if not cfg.compare.runs:
        raise UsageError("give at least one run or eval folder: rgvlm compare RUN_OR_EVAL_DIR ... --out DIR")
    paths = [p for run in cfg.compare.runs for p in find_evals(run, cfg.storage)]
    evals = [load_eval(p, cfg.storage) for p in paths]
    series = dict(zip(unique_labels(evals, paths), (e["by_k"] for e in evals), strict=True))
    table = comparison_table(series)
    summary = {"title": cfg.compare.title, "evals": dict(zip(series, paths, strict=True)), "series": series}
    write_outputs(
        cfg.compare.out,
        {
            "compare.json": json.dumps(summary, indent=2).encode(),
            "compare.md": f"## {cfg.compare.title}\n\n{table}".encode(),
            "compare.png": plot_png(series, cfg.compare.title),
        },
        cfg.storage,
    )
    print(table)
    print(f"wrote compare.json, compare.md, compare.png to {cfg.compare.out}")
    return 0
