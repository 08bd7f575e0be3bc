"""`rgvlm run`, the README's demo, at a tiny size: every stage runs and report.md has its tables and plots."""

from __future__ import annotations

from rgvlm_ray.cli import main


def test_demo_writes_report_with_tables_and_plots(ray_cluster, tmp_path, capsys):
    out = tmp_path / "demo"
    args = [
        "run", "--config", "local", "--out", str(out), "--episodes", "12", "--steps", "4",
        "--episodes-per-k", "1", "generate.episodes_per_shard=6", "generate.subtasks=1-2",
        "run.rewards=[sparse,rgvlm+sparse]", "train.checkpoint_every=4", "train.log_every=2",
        "iql.batch_size=32", "eval.max_steps=40",
    ]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "NOISE" in printed and "--engine vllm --model Qwen/Qwen2.5-VL-7B-Instruct" in printed
    report = (out / "report.md").read_text()
    assert "NOISE" in report and "Qwen/Qwen2.5-VL-7B-Instruct" in report
    assert "| sparse |" in report and "| rgvlm+sparse |" in report  # the Figure-4 table
    for labeler in ("rgvlm", "clip", "oracle"):
        assert f"### {labeler}" in report  # label-quality tables
        assert (out / f"scores_{labeler}.png").stat().st_size > 1000
    assert "| label (rgvlm) |" in report and "transitions/s" in report  # throughput
    for png in ("success_by_k.png", "completion_by_k.png"):
        assert (out / png).stat().st_size > 1000
