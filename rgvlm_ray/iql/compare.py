"""`rgvlm compare`: several evaluations side by side, one line per reward source (like the paper's Fig. 4)."""

from __future__ import annotations

import json
from typing import Any

from rgvlm_ray import storage
from rgvlm_ray.config import Config, StorageConfig
from rgvlm_ray.errors import UsageError
from rgvlm_ray.iql.checkpoint import read_json
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


def run_identity(ev: dict[str, Any], cfg: StorageConfig) -> dict[str, Any]:
    """What the evaluated run was trained with, as the run wrote it: `reward` (eval.json copies it from the
    checkpoint's run.json) and, from the checkpoint's config.json when it is readable, its seed and context."""
    ident: dict[str, Any] = {"reward": ev.get("reward"), "split": ev.get("split")}
    try:
        conf = read_json(ev["checkpoint"], "config.json", cfg)
    except (KeyError, OSError, ValueError):
        return ident
    ident["context"] = conf.get("iql", {}).get("context")
    ident["seed"] = conf.get("train", {}).get("seed")
    return ident


def unique_labels(
    evals: list[dict[str, Any]], paths: list[str], cfg: StorageConfig | None = None, with_split: bool = True
) -> list[str]:
    """One row label per evaluation, from what its run wrote (never from folder names): "reward (split)".
    Runs that share it are told apart by the settings that differ between them (context, seed), read back from
    their checkpoints; only when those agree too does the folder name decide."""
    cfg = cfg or StorageConfig()
    idents = [run_identity(e, cfg) for e in evals]
    labels = [f"{i['reward']} ({i['split']})" if with_split else str(i["reward"]) for i in idents]
    out = []
    for label, ident, path in zip(labels, idents, paths, strict=True):
        group = [idents[n] for n, j in enumerate(labels) if j == label]
        if len(group) > 1:
            differing = [k for k in ("context", "seed") if len({str(g.get(k)) for g in group}) > 1]
            if differing:
                label += " [" + ", ".join(f"{k} {ident.get(k)}" for k in differing) + "]"
            else:
                label += f" [{storage.basename(path.rsplit('/', 1)[0])}]"
        out.append(label)
    return out


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


def compare(cfg: Config) -> tuple[dict[str, Any], str]:
    """Evals of `cfg.compare.runs` in one table and plot, written to compare.out; returns (summary, table)."""
    if not cfg.compare.runs:
        raise UsageError("give at least one run or eval folder: rgvlm compare RUN_OR_EVAL_DIR ... --out DIR")
    paths = [p for run in cfg.compare.runs for p in find_evals(run, cfg.storage)]
    evals = [load_eval(p, cfg.storage) for p in paths]
    series = dict(zip(unique_labels(evals, paths, cfg.storage), (e["by_k"] for e in evals), strict=True))
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
    return summary, table
