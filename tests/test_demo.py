"""`rgvlm run`, the README's demo, at a tiny size: every stage runs, each arm trains on its own reward (read back
from its checkpoint), and report.md names each row by the reward its run wrote."""

from __future__ import annotations

import json

from rgvlm_ray.cli import main


def test_demo_writes_report_with_tables_and_plots(ray_cluster, tmp_path, capsys):
    out = tmp_path / "demo"
    arms = {"sparse": "sparse", "rgvlm_sparse": "rgvlm+sparse"}  # run folder -> reward mode
    args = [
        "run", "--config", "local", "--out", str(out), "--episodes", "12", "--steps", "4",
        "--episodes-per-k", "1", "generate.episodes_per_shard=6", "generate.subtasks=1-2",
        f"run.rewards=[{','.join(arms.values())}]", "train.checkpoint_every=4", "train.log_every=2",
        "iql.batch_size=32", "eval.max_steps=40", "eval.agreement_episodes_per_k=1",
        "engine.max_new_tokens_analysis=4",  # the tiny VLM's words are noise: only that it labels is checked
    ]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "NOISE" in printed and "--engine vllm --model Qwen/Qwen2.5-VL-7B-Instruct" in printed

    # Each arm trained with its own reward: what its checkpoint and its evaluation say.
    read_back = {}
    for folder, mode in arms.items():
        (checkpoint,) = sorted((out / "runs" / folder).glob("checkpoint_0*"))
        run = json.loads((checkpoint / "run.json").read_text())
        assert run["reward"] == mode, f"runs/{folder} trained on {run['reward']!r}, not {mode!r}"
        assert json.loads((out / "eval" / folder / "eval.json").read_text())["reward"] == mode
        read_back[folder] = run["reward"]

    report = (out / "report.md").read_text()
    assert "NOISE" in report and "Qwen/Qwen2.5-VL-7B-Instruct" in report
    for reward in read_back.values():  # the Figure-4 table: one row per reward read back
        assert f"\n| {reward} | " in report
    for labeler in ("rgvlm", "clip", "oracle"):
        assert f"### {labeler}" in report  # label-quality tables, all from the chained dataset
        assert (out / f"scores_{labeler}.png").stat().st_size > 1000
    assert "| label (rgvlm) |" in report and "transitions/s" in report  # throughput
    # Weight diagnostics and expert agreement per arm, read from each run's run.json and eval.json.
    assert "## Does each learner select actions?" in report
    assert "| training agreement (fit) | expert agreement (held-out) |" in report
    for folder, mode in arms.items():
        ev = json.loads((out / "eval" / folder / "eval.json").read_text())
        assert ev["policy"] == "greedy" and ev["expert_agreement"] is not None
        assert ev["train_agreement"] is not None  # fit on its own training episodes, beside the held-out one
        assert f"\n| {mode} | " in report.split("## Does each learner select actions?")[1]
    assert "PlacementGroupCleaner" not in printed
    for png in ("success_by_k.png", "completion_by_k.png"):
        assert (out / png).stat().st_size > 1000


def test_compare_labels_come_from_what_each_run_wrote(tmp_path):
    from rgvlm_ray.iql.compare import unique_labels

    evals, paths = [], []
    for i, seed in enumerate((0, 1)):
        checkpoint = tmp_path / f"run{i}" / "checkpoint_00000004"
        checkpoint.mkdir(parents=True)
        (checkpoint / "config.json").write_text(json.dumps({"train": {"seed": seed}, "iql": {"context": 8}}))
        evals.append(
            {"reward": "oracle+sparse", "split": "seen", "checkpoint": str(checkpoint), "label": "x"}
        )
        paths.append(str(tmp_path / "sparse" / f"e{i}" / "eval.json"))  # folder names that lie
    assert unique_labels(evals, paths) == ["oracle+sparse (seen) [seed 0]", "oracle+sparse (seen) [seed 1]"]
    assert unique_labels(evals[:1], paths[:1], with_split=False) == ["oracle+sparse"]
    # Nothing tells two runs apart but their folders: the folder breaks the tie.
    same = [dict(evals[0]), dict(evals[0])]
    assert unique_labels(same, paths) == ["oracle+sparse (seen) [e0]", "oracle+sparse (seen) [e1]"]
