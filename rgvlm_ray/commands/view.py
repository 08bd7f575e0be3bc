"""`rgvlm view`: write a self-contained HTML page per sampled episode (rgvlm_ray/label_quality/view.py)."""

from __future__ import annotations

from rgvlm_ray import storage
from rgvlm_ray.cli import require
from rgvlm_ray.config import Config
from rgvlm_ray.label_quality.view import visible, write_pages


def main(cfg: Config) -> int:
    require(cfg, "view.in_path", "view.out")
    storage.require_folder(cfg.view.out, "--out", cfg.storage)
    summary = write_pages(cfg)
    for e in summary["episodes"]:
        print(f"{visible(e['episode_id'])}: {e['actions']} actions, {e['outcome']}")
    print(f"{len(summary['episodes'])} page(s); open {summary['index']}")
    return 0
