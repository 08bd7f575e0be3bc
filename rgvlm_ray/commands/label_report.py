"""`rgvlm label-report`."""

from __future__ import annotations

import json
import os

from rgvlm_ray import storage
from rgvlm_ray.cli import require
from rgvlm_ray.config import Config
from rgvlm_ray.label_quality.report import build, histogram, markdown


def main(cfg: Config) -> int:
    require(cfg, "label_report.in_path")
    rc = cfg.label_report
    storage.require_folder(rc.out, "--out")
    reports, table, names = build(rc.in_path, list(rc.labels), cfg.storage, rc.labeler, rc.success)
    os.makedirs(rc.out, exist_ok=True)
    hist = os.path.join(rc.out, "scores_hist.png")
    histogram(table, names, hist)
    with open(os.path.join(rc.out, "label_report.json"), "w") as f:
        json.dump(reports, f, indent=2)
    text = markdown(reports)
    with open(os.path.join(rc.out, "label_report.md"), "w") as f:
        f.write(text + f"\n![scores]({os.path.basename(hist)})\n")
    print(json.dumps(reports, indent=2) if rc.json else text + f"\nhistogram: {hist}")
    return 0
