"""`rgvlm label-report` on an imported dataset: called from the Minari and LeRobot round trips, which already
imported it and labeled it with CLIP, so the check costs one more label set (the tiny VLM) and the report."""

from __future__ import annotations

import json
from pathlib import Path

from rgvlm_ray import cli
from rgvlm_ray.data import format as fmt
from rgvlm_ray.labelers.windows import make_windows
from tests.label_fixtures import tiny_qwen_dir

WINDOW, OVERLAP = 2, 1  # episodes of a few steps still get overlapping windows


def report_with_the_tiny_vlm_too(raw: str, clip_labels: str, tmp: Path) -> dict:
    """Label `raw` with the tiny VLM (overlapping windows, two samples each), report on it and on `clip_labels`,
    check the figures without ground truth are printed and written, and return the dataset summary."""
    vlm = str(tmp / "labels-rgvlm")
    hf = ["--engine", "hf", "--model", tiny_qwen_dir(), "engine.max_new_tokens_analysis=4"]
    hf += [
        f"labeler.window={WINDOW}",
        f"labeler.overlap={OVERLAP}",
        "labeler.num_samples=2",
        "engine.temperature=1.0",
    ]
    assert cli.main(["label", "--in", raw, "--out", vlm, *hf]) == 0
    out = tmp / "report"
    argv = ["label-report", "--in", raw, "--labels", clip_labels, "--labels", vlm, "--out", str(out)]
    assert cli.main(argv) == 0
    written = (out / "label_report.md").read_text()
    assert "### Without ground truth" in written and "| rgvlm |" in written and "| clip |" in written
    assert "Against ground truth" not in written  # imported data has no progress
    reports = json.loads((out / "label_report.json").read_text())
    assert [r["labeler"] for r in reports] == ["rgvlm", "clip"] and all(r["by_k"] == [] for r in reports)
    by = {r["labeler"]: r["without_ground_truth"] for r in reports}
    actions = [
        len(r["actions"])
        for s in fmt.list_shards(raw)
        for r in fmt.read_shard(s, columns=["actions"]).to_pylist()
    ]
    # Each pair of neighbouring windows shares OVERLAP steps, and every one of them keeps both windows' scores.
    shared = sum(OVERLAP * (len(make_windows(t, WINDOW, OVERLAP)) - 1) for t in actions)
    assert shared > 0 and by["rgvlm"]["overlap"]["steps"] == shared
    assert by["rgvlm"]["sample_spread"]["steps"] == sum(actions)  # two samples on every step
    assert by["clip"]["overlap"]["steps"] == 0 and by["clip"]["sample_spread"]["std_mean"] is None
    assert by["rgvlm"]["agreement"]["clip"]["n"] <= len(actions) and set(by["clip"]["agreement"]) == {"rgvlm"}
    assert by["rgvlm"]["episodes_labeled"] == by["clip"]["episodes_labeled"] == len(actions)
    return by["rgvlm"]["dataset"]
