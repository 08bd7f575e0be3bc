"""`rgvlm evaluate` (Ray tasks over k = 1..6) and `rgvlm compare` on a small checkpoint."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace

import pytest
import torch

from rgvlm_ray.cli import main as cli
from rgvlm_ray.config import Config, EnvConfig
from rgvlm_ray.data.env import NUM_ACTIONS, SPLIT_DEFINITIONS, find_mission, make_env
from rgvlm_ray.iql.checkpoint import checkpoint_name, latest_checkpoint, load_policy, save_checkpoint
from rgvlm_ray.iql.model import IQLNet, ModelSpec, target_heads
from rgvlm_ray.iql.update import make_optimizer
from rgvlm_ray.iql.vocab import Vocab

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_checkpoint(run_dir: str, step: int = 3, reward: str = "oracle", pool_seed: int | None = 0) -> str:
    """A small untrained checkpoint, saved the way the trainer saves one."""
    cfg = Config()
    vocab = Vocab.build(
        ["go to the red ball, then pick up a key", "open a door, then put the box next to it"]
    )
    net = IQLNet(
        ModelSpec("symbolic", len(vocab), NUM_ACTIONS, 32, 8, context=4, clause_sep=vocab.clause_separator())
    )
    optimizer, scheduler = make_optimizer(net, cfg.iql, 10)
    run = {
        "step": step,
        "reward": reward,
        "pool_seed": pool_seed,
        "env": asdict(EnvConfig()),
        "reward_scale": 1.0,
    }
    path = os.path.join(run_dir, checkpoint_name(step))
    save_checkpoint(path, net, target_heads(net), optimizer, scheduler, vocab, cfg, run)
    return path


def test_latest_checkpoint_and_safe_loading(tmp_path) -> None:
    run_dir = str(tmp_path / "run")
    write_checkpoint(run_dir, step=3)
    newest = write_checkpoint(run_dir, step=12)
    os.makedirs(os.path.join(run_dir, checkpoint_name(20)))  # incomplete: no run.json, must be skipped
    assert latest_checkpoint(run_dir) == newest
    assert latest_checkpoint(newest) == newest
    assert latest_checkpoint(str(tmp_path / "missing")) is None
    net, vocab, run = load_policy(newest)
    assert run["step"] == 12 and len(vocab) > 2 and net.spec.hidden == 32


def test_checkpoint_on_s3(s3_server, tmp_path) -> None:
    import fsspec

    local = write_checkpoint(str(tmp_path / "run"), step=5)
    fs = fsspec.filesystem(
        "s3", key="testing", secret="testing", client_kwargs={"endpoint_url": s3_server.endpoint_url}
    )
    fs.put(local, "rgvlm-test/iql-eval/run/", recursive=True)
    latest = latest_checkpoint("s3://rgvlm-test/iql-eval/run", s3_server)
    assert latest == "s3://rgvlm-test/iql-eval/run/checkpoint_00000005"
    net, _, run = load_policy(latest, s3_server)
    assert run["step"] == 5
    ref, _, _ = load_policy(local)
    assert all(
        torch.equal(a, b) for a, b in zip(net.state_dict().values(), ref.state_dict().values(), strict=True)
    )


def test_evaluate_reports_every_k_and_compare_plots_runs(ray_cluster, tmp_path, capsys) -> None:
    run_dir = str(tmp_path / "run")
    write_checkpoint(run_dir)
    out = str(tmp_path / "eval")
    args = ["evaluate", "--checkpoint", run_dir, "--episodes-per-k", "2", "--out", out]
    assert cli([*args, "--max-steps", "30", "eval.episodes_per_task=1"]) == 0

    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert [r["k"] for r in result["by_k"]] == [1, 2, 3, 4, 5, 6]
    assert all(r["episodes"] == 2 for r in result["by_k"])
    for r in result["by_k"]:
        assert 0.0 <= r["success_rate"] <= r["subtask_completion"] + 1e-9 <= 1.0 + 1e-9
        assert r["mean_steps"] <= 30
    assert result["reward"] == "oracle" and result["split"] == "seen"
    assert result["split_definition"] == SPLIT_DEFINITIONS["seen"] and result["substitutions"] == []
    # the checkpoint's vocabulary holds two missions' words: most evaluation missions have unseen words
    vocab = load_policy(result["checkpoint"])[1]
    unknown = sum(bool(vocab.unknown_words(e["mission"])) for e in result["episodes"])
    assert result["unknown_word_missions"] == unknown > 0
    table = (tmp_path / "eval" / "eval.md").read_text()
    assert table.count("\n| ") == 7  # header + k = 1..6
    # Chains that repeat a sub-task, apart from the others (k >= 2): each episode's flag is its mission's own.
    env_cfg = EnvConfig()
    for e in result["episodes"]:
        subtasks = make_env(env_cfg, find_mission(env_cfg, e["k"], e["index"], 0, "seen")).subtasks
        assert e["repeats_subtask"] == (len(set(subtasks)) < len(subtasks)), (e["mission"], subtasks)
    kinds = result["by_chain_kind"]
    assert (
        kinds["repeats_subtask"]["episodes"] + kinds["distinct_subtasks"]["episodes"] == 10
    )  # k = 2..6, 2 each
    assert "chains that repeat a sub-task" in table
    assert (tmp_path / "eval" / "eval.png").read_bytes().startswith(PNG_MAGIC)

    # Same seeds, same chunk-independent sampling: a rerun with other chunking gives the same episodes.
    out2 = str(tmp_path / "eval2")
    assert (
        cli(
            ["evaluate", "--checkpoint", run_dir, "--episodes-per-k", "2", "--out", out2, "--max-steps", "30"]
        )
        == 0
    )
    again = json.loads((tmp_path / "eval2" / "eval.json").read_text())
    key = lambda e: (e["k"], e["index"])  # noqa: E731
    assert sorted(result["episodes"], key=key) == sorted(again["episodes"], key=key)

    # A second "run" with another reward source: compare draws one line each.
    other = dict(result, reward="sparse", label="sparse (seen)")
    os.makedirs(tmp_path / "sparse-run" / "eval-seen")
    (tmp_path / "sparse-run" / "eval-seen" / "eval.json").write_text(json.dumps(other))
    capsys.readouterr()
    cmp_out = str(tmp_path / "cmp")
    rc = cli(["compare", out, str(tmp_path / "sparse-run"), "compare.title=Fig 4", "--out", cmp_out])
    assert rc == 0
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert list(summary["series"]) == ["oracle (seen)", "sparse (seen)"] and summary["title"] == "Fig 4"
    assert (tmp_path / "cmp" / "compare.png").read_bytes().startswith(PNG_MAGIC)
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| oracle (seen) |" in md and "| sparse (seen) |" in md


def test_chains_that_repeat_a_sub_task_are_told_apart() -> None:
    """A chain that asks for one sub-task twice is flagged by the rollout and counted apart by by_chain_kind."""
    from rgvlm_ray.data.env import rollout
    from rgvlm_ray.iql.evaluate import by_chain_kind

    env_cfg, found = EnvConfig(), {}
    for index in range(200):
        spec = find_mission(env_cfg, 4, index, 0, "seen")
        subtasks = make_env(env_cfg, spec).subtasks
        found.setdefault(len(set(subtasks)) < len(subtasks), spec)
        if len(found) == 2:
            break
    assert set(found) == {True, False}, "no k = 4 chain among 200 repeats a sub-task"
    episodes = []
    for repeats, spec in found.items():
        r = rollout(replace(env_cfg, max_steps=5), spec, lambda obs: 2)  # forward only: nothing done
        assert r.repeats_subtask is repeats
        episodes.append(
            {"k": 4, "success": r.success, "subtasks": r.subtasks_done, "repeats_subtask": repeats}
        )
    episodes.append({"k": 1, "success": True, "subtasks": 1, "repeats_subtask": False})  # k = 1 is left out
    kinds = by_chain_kind(episodes)
    assert kinds["repeats_subtask"]["episodes"] == 1 and kinds["distinct_subtasks"]["episodes"] == 1
    assert kinds["distinct_subtasks"]["success_rate"] == 0.0


def test_evaluate_and_compare_usage_errors(tmp_path, capsys) -> None:
    assert cli(["evaluate", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "e")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert cli(["compare", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "no eval.json" in capsys.readouterr().err


@pytest.mark.parametrize("split", ["bogus"])
def test_evaluate_rejects_unknown_split(tmp_path, capsys, split) -> None:
    assert (
        cli(["evaluate", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "e"), "--split", split]) == 2
    )
    assert "--split" in capsys.readouterr().err


def test_novel_split_draws_missions_beyond_the_generated_pool(ray_cluster, tmp_path) -> None:
    run_dir = str(tmp_path / "run")
    write_checkpoint(run_dir)
    runs = {}
    for split in ("seen", "novel"):
        args = ["evaluate", "--checkpoint", run_dir, "--episodes-per-k", "2", "--split", split]
        assert cli([*args, "--out", str(tmp_path / split), "--max-steps", "5", "eval.stall_steps=null"]) == 0
        runs[split] = json.loads((tmp_path / split / "eval.json").read_text())
    assert runs["novel"]["split_definition"] == SPLIT_DEFINITIONS["novel"]
    long_missions = {s: {e["mission"] for e in r["episodes"] if e["k"] >= 3} for s, r in runs.items()}
    assert long_missions["seen"] and not long_missions["seen"] & long_missions["novel"]


@pytest.mark.parametrize("split", ["randomized", "novel"])
def test_new_missions_are_refused_without_a_mission_pool(tmp_path, capsys, split) -> None:
    run_dir = str(tmp_path / "run")
    write_checkpoint(run_dir, pool_seed=None)  # as trained on imported data
    assert cli(["evaluate", "--checkpoint", run_dir, "--out", str(tmp_path / "e"), "--split", split]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--split {split}" in err and "--split seen" in err and "Traceback" not in err and "\n" not in err
