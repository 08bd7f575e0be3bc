"""`rgvlm study`: the arms it plans, the CI math, the report's labels, and a tiny study end to end on Ray
(a failing labeler, each run read back from its checkpoint, and a rerun that trains nothing)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats

from rgvlm_ray.cli import main
from rgvlm_ray.config import load_config
from rgvlm_ray.experiments.study.arms import Arm, plan_arms
from rgvlm_ray.experiments.study.corpus import Corpus, labeler_settings
from rgvlm_ray.experiments.study.report import markdown
from rgvlm_ray.experiments.study.runs import check_treatment, curve_source, curve_steps, run_config
from rgvlm_ray.experiments.study.tables import diagnostics_table, figure4_table, mean_ci, targets, told_apart
from rgvlm_ray.experiments.workspace import Workspace

# --- CI math, against scipy's own t interval and a value worked out by hand -------------------------------------


def test_ci_half_width_is_the_t_interval_over_seeds():
    # [0.2, 0.4, 0.6]: mean 0.4, sd 0.2, sem 0.2 / sqrt(3), t(0.975, df=2) = 4.302653 -> 0.496828
    mean, half = mean_ci([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4) and half == pytest.approx(0.4968275, abs=1e-6)
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 10):
        x = rng.random(n)
        low, high = stats.t.interval(0.95, df=n - 1, loc=x.mean(), scale=stats.sem(x))
        mean, half = mean_ci(x)
        assert (mean - half, mean + half) == pytest.approx((low, high), abs=1e-12)
    assert mean_ci([0.7]) == (0.7, None)  # one seed: no interval
    assert math.isnan(mean_ci([])[0])


# --- planning -------------------------------------------------------------------------------------------------------


def test_plan_arms_puts_each_labeler_into_each_mode_and_adds_the_context_ablation():
    arms = plan_arms(["oracle", "noisy30"], ["X", "X+sparse"], [1, 8], default_context=8)
    assert [(a.name, a.reward, a.context) for a in arms] == [
        ("sparse", "sparse", 8),
        ("oracle", "oracle", 8),
        ("oracle_sparse", "oracle+sparse", 8),
        ("noisy30", "noisy30", 8),
        ("noisy30_sparse", "noisy30+sparse", 8),
        ("oracle_sparse-ctx1", "oracle+sparse", 1),  # the default context (8) is not repeated
    ]
    assert arms[-1].ablation and arms[-1].labeler == "oracle"
    # Each arm x seed trains with the arm's own reward, context and seed, into its own folder.
    ws = Workspace(load_config(dotlist=["iql.context=8"]), "/out")
    corpus = Corpus(
        "/out/data/raw", {"oracle": "/out/data/labels-oracle", "noisy30": "/out/data/labels-noisy30"}
    )
    cfg = run_config(ws, arms[-1], 2, corpus, 0.5)
    assert (cfg.train.reward, cfg.iql.context, cfg.train.seed) == ("oracle+sparse", 1, 2)
    # it joins the raw data with the label set its reward names, and no other
    assert cfg.train.in_path == "/out/data/raw" and cfg.train.labels == ["/out/data/labels-oracle"]
    assert cfg.train.out_path == "/out/runs/oracle_sparse-ctx1/seed2" and cfg.train.cpus_per_worker == 0.5
    assert ws.cfg.iql.context == 8 and ws.cfg.train.reward == "sparse"  # the shared config is left alone
    # Without a successful oracle there is no ablation; a failed labeler simply has no arms.
    assert [a.name for a in plan_arms(["clip"], ["X+sparse"], [1], 8)] == ["sparse", "clip_sparse"]
    # A labeler can have its own modes (study.modes_for): here the noisy oracle only in X+sparse.
    names = [
        a.name for a in plan_arms(["oracle", "noisy30"], ["X", "X+sparse"], [8], 8, {"noisy30": ["X+sparse"]})
    ]
    assert names == ["sparse", "oracle", "oracle_sparse", "noisy30_sparse"]


def test_labeler_settings_pick_the_engine_that_writes_the_labelers_columns():
    cfg = load_config(dotlist=["study.clip_model=/models/clip", "engine.kind=hf", "engine.model=/models/vlm"])
    engine, labeler = labeler_settings(cfg, "noisy30")
    assert engine.kind == "noisy_oracle" and labeler.oracle_noise == pytest.approx(0.3)
    assert labeler_settings(cfg, "noisy60")[1].oracle_noise == pytest.approx(0.6)
    assert labeler_settings(cfg, "oracle")[0].kind == "oracle"
    assert labeler_settings(cfg, "clip")[0].model == "/models/clip"
    assert labeler_settings(cfg, "rgvlm")[0].model == "/models/vlm"


def test_study_rejects_unknown_labelers_and_modes_before_starting_anything(tmp_path, capsys):
    out = str(tmp_path / "s")
    assert main(["study", "--out", out, "study.labelers=[oracle,gpt4]"]) == 2
    assert "unknown labeler 'gpt4'" in capsys.readouterr().err
    assert main(["study", "--out", out, "study.modes=[X+sparse,sparse]"]) == 2
    assert "has no X term" in capsys.readouterr().err
    assert main(["study", "--out", out, "study.modes=[X+bogus]"]) == 2
    assert not (tmp_path / "s").exists()


def test_a_run_that_did_not_get_its_arms_treatment_fails_loudly_naming_it():
    arm = Arm("oracle_sparse-ctx1", "oracle+sparse", 1, "oracle", "X+sparse", True)
    good = {"reward": "oracle+sparse", "seed": 2, "config_seed": 2, "context": 1}
    good |= {"config_context": 1, "spec_context": 1}
    check_treatment(good, arm, 2, "runs/oracle_sparse-ctx1/seed2")
    check_treatment(good | {"context": None, "config_context": None, "spec_context": None}, arm, 2, "r")
    for bad in (
        {"reward": "sparse"},
        {"config_seed": 0},
        {"spec_context": 8},
        {"seed": None, "config_seed": None},
        {"learner": "bc"},
    ):
        with pytest.raises(RuntimeError, match="runs/oracle_sparse-ctx1/seed2"):
            check_treatment(good | bad, arm, 2, "runs/oracle_sparse-ctx1/seed2")
    # A baseline must have trained as its learner, and the ceiling on the expert data.
    ceiling = Arm("bc_expert", "sparse", 8, learner="bc", data="expert", seeds=1)
    back = {"reward": "sparse", "seed": 0, "config_seed": 0, "context": 8, "learner": "bc", "in_path": "/e"}
    back |= {"config_context": 8, "spec_context": 8}
    check_treatment(back, ceiling, 0, "r", expected_in="/e")
    with pytest.raises(RuntimeError, match="learner 'iql', expected 'bc'"):
        check_treatment(back | {"learner": "iql"}, ceiling, 0, "r", expected_in="/e")
    with pytest.raises(RuntimeError, match="data '/raw', expected '/e'"):
        check_treatment(back | {"in_path": "/raw"}, ceiling, 0, "r", expected_in="/e")


def test_baselines_and_the_ceiling_are_planned_and_configured_as_their_learner():
    arms = plan_arms(["oracle"], ["X+sparse"], [], 8, baselines=["bc", "filtered_bc"], expert_ceiling=True)
    assert [(a.name, a.reward, a.learner, a.data, a.seeds) for a in arms] == [
        ("sparse", "sparse", "iql", "raw", None),
        ("bc", "sparse", "bc", "raw", None),
        ("filtered_bc", "sparse", "filtered_bc", "raw", None),
        ("bc_expert", "sparse", "bc", "expert", 1),
        ("oracle_sparse", "oracle+sparse", "iql", "raw", None),
    ]
    ws = Workspace(load_config(dotlist=["study.curve_points=3", "train.steps=300"]), "/out")
    corpus = Corpus("/out/data/raw", {"oracle": "/out/data/labels-oracle"}, expert="/out/data/expert")
    cfg = run_config(ws, arms[3], 0, corpus, 0.5)
    assert (cfg.iql.learner, cfg.train.in_path, cfg.train.labels) == ("bc", "/out/data/expert", [])
    assert run_config(ws, arms[2], 1, corpus, 0.5).iql.learner == "filtered_bc"
    # The curve's budgets: 100 and 200 of 300 updates. With the cosine actor lr each is a run of its own, so the
    # arm's run checkpoints as any other; at a constant lr, seed 0 of a curve arm checkpoints at those steps and
    # keeps them all, and the others do not.
    assert curve_steps(run_config(ws, arms[4], 0, corpus, 0.5)) == [100, 200]
    assert curve_source(ws.cfg) == "budgets"
    assert run_config(ws, arms[4], 0, corpus, 0.5).train.checkpoint_every == ws.cfg.train.checkpoint_every
    ws = Workspace(
        load_config(dotlist=["study.curve_points=3", "train.steps=300", "iql.actor_cosine=false"]), "/out"
    )
    assert curve_source(ws.cfg) == "checkpoints"
    curve = run_config(ws, arms[4], 0, corpus, 0.5).train
    assert (curve.checkpoint_every, curve.keep_checkpoints >= 4) == (100, True)
    assert run_config(ws, arms[4], 1, corpus, 0.5).train.checkpoint_every == ws.cfg.train.checkpoint_every
    assert run_config(ws, arms[1], 0, corpus, 0.5).train.checkpoint_every == ws.cfg.train.checkpoint_every


# --- the report, on hand-made runs ----------------------------------------------------------------------------------


def _run(
    folder: str, reward: str, seed: int, value: float, context: int = 8, learner: str = "iql", **extra: object
) -> dict:
    by_k = [{"k": k, "success_rate": value, "subtask_completion": value} for k in range(1, 7)]
    back = {
        "reward": reward,
        "seed": seed,
        "context": context,
        "step": 4,
        "learner": learner,
        "in_path": "raw",
    }
    back |= {k: v for k, v in extra.items() if k in ("diagnostics", "in_path")}
    fit = extra.get("fit")
    ev = {"by_k": by_k, "expert_agreement": extra.get("agreement"), "train_agreement": fit,
          "fits_training_data": None if fit is None else fit >= 0.97}  # fmt: skip
    return {"arm": folder, "seed": seed, "read_back": back, "evals": {"seen": ev}}


def _study(runs: list[dict]) -> dict:
    arms = [
        {"name": "sparse", "reward": "sparse", "context": 8, "labeler": None, "template": "sparse", "ablation": False},
        {"name": "a", "reward": "oracle+sparse", "context": 8, "labeler": "oracle", "template": "X+sparse", "ablation": False},
    ]  # fmt: skip
    settings = {
        "labelers": ["oracle"], "modes": ["X+sparse"], "seeds": 3, "splits": ["seen"], "contexts": [1],
        "default_context": 8, "parallel": 2, "train_steps": 4, "episodes_per_k": 1, "eval_max_steps": 30,
    }  # fmt: skip
    timing = {"seconds": 1.0, "cpus_per_worker": 0.5, "parallel": 2, "trainings_run": 0}
    timing |= {"max_concurrent_trainings": 0, "train_seconds_sum": 0.0}
    quality = {"reports": [], "by_labeler": {"oracle": {"spearman": 1.0, "spearman_shuffled": 0.4}}}
    return {
        "settings": settings, "runs": runs, "arms": arms, "label_quality": quality, "timing": timing,
        "labelers": {"oracle": {"status": "ok", "in": "raw", "out": "l", "seconds": 1.0}},
        "skipped_labelers": [], "tiny_vlm": False, "tiny_clip": False, "created_utc": "now", "seconds": 1.0,
        "reused": {"train": [], "eval": []}, "stages": [], "data": {"raw": "raw", "labels": {}, "expert": "expert"},
    }  # fmt: skip


def test_report_rows_come_from_what_the_runs_read_back_not_from_folders():
    # Folder names lie on purpose: the rows must follow read_back.
    runs = [_run("oracle_sparse", "sparse", s, v) for s, v in enumerate([0.10, 0.12, 0.11])]
    runs += [_run("sparse", "oracle+sparse", s, v) for s, v in enumerate([0.60, 0.62, 0.61])]
    runs += [_run("sparse", "oracle+sparse", 0, 0.5, context=1)]
    study = _study(runs)
    table = figure4_table(study, "seen", "subtask_completion")
    mean, half = mean_ci([0.60, 0.62, 0.61])
    assert f"| oracle+sparse | n=3 (seeds 0, 1, 2) | {mean:.2f} ± {half:.2f} |" in table
    assert "| sparse | n=3 (seeds 0, 1, 2) | 0.11 ± 0.02 |" in table
    assert "| oracle+sparse, context 1 | n=1, no CI (seeds 0) | 0.50 |" in table
    verdict = told_apart(study, "seen")
    assert "do not overlap: `oracle+sparse` is higher" in verdict and "cannot be told apart" not in verdict
    assert "## Split `seen`" in markdown(study) and "tiny random model" not in markdown(study)
    assert "The blip2 labeler is a tiny random model" in markdown({**study, "tiny_others": ["blip2"]})

    close = [_run("s", "sparse", s, v) for s, v in enumerate([0.1, 0.5, 0.3])]
    close += [_run("o", "oracle+sparse", s, v) for s, v in enumerate([0.2, 0.6, 0.4])]
    assert "the CIs overlap: **cannot be told apart**" in told_apart(_study(close), "seen")
    single = [_run("s", "sparse", 0, 0.1), _run("o", "oracle+sparse", 0, 0.9)]
    assert "**cannot be told apart** (too few seeds for a CI)" in told_apart(_study(single), "seen")


def test_targets_report_the_measured_distance_of_each():
    runs = [_run("a", "sparse", s, v) for s, v in enumerate([0.10, 0.12, 0.11])]
    runs += [_run("b", "oracle+sparse", s, v) for s, v in enumerate([0.30, 0.32, 0.31])]
    runs += [_run("c", "noisy30+sparse", s, v) for s, v in enumerate([0.20, 0.22, 0.21])]
    runs += [_run("d", "noisy60+sparse", s, v) for s, v in enumerate([0.25, 0.27, 0.26])]
    runs += [_run("e", "oracle+sparse", s, v, context=1) for s, v in enumerate([0.30, 0.33, 0.31])]
    text = targets(_study(runs), "seen")
    assert "0.310 vs 0.110, ratio **2.82x**; higher, CIs do not overlap. **Met.**" in text
    assert "context 1" in text and "CIs overlap: cannot be told apart" in text
    assert "0%: 0.310, 30%: 0.210, 60%: 0.260; does **not** fall monotonically" in text
    runs[3:6] = [_run("b", "oracle+sparse", s, v) for s, v in enumerate([0.12, 0.13, 0.11])]
    assert "**Not met.**" in targets(_study(runs), "seen")


def test_baseline_rows_and_weight_diagnostics_come_from_what_each_run_read_back():
    diag = {"awr_ess": 0.5, "beta_adv_std": 1.2, "adv_clipped_frac": 0.0, "reward_weight_ratio": 2.0}
    runs = [_run("x", "oracle+sparse", s, 0.4, diagnostics=diag, agreement=0.8, fit=0.99) for s in range(3)]
    runs += [_run("x", "sparse", s, 0.2, learner="bc", agreement=a, fit=f)
             for s, (a, f) in enumerate([(0.6, 0.99), (0.62, 0.9), (0.61, 0.98)])]  # fmt: skip
    runs += [_run("x", "sparse", 0, 0.7, learner="bc", in_path="expert", agreement=0.9)]
    study = _study(runs)
    table = diagnostics_table(study)
    assert (
        "| oracle+sparse | n=3 (seeds 0, 1, 2) | 0.50 ± 0.00 | 1.20 ± 0.00 | 0.00 ± 0.00 | 2.00 ± 0.00 "
        "| 0.99 ± 0.00 | 3 of 3 seeds | 0.80 ± 0.00 |" in table
    )
    assert "| bc | n=3 (seeds 0, 1, 2) | BC: weights 1 |" in table
    assert "| 2 of 3 seeds — **did not fit** |" in table  # one bc seed stayed below 0.97
    assert (
        "| bc (expert data) | n=1, no CI (seeds 0) | BC: weights 1 | BC: weights 1 | BC: weights 1 | BC: weights 1 | n/a | n/a |"
        in table
    )
    assert "| bc (expert data) | n=1, no CI (seeds 0) |" in table
    text = targets(study, "seen")
    assert (
        "`oracle+sparse` above `bc` at k >= 3 (IQL uses the reward): 0.400 vs 0.200; higher, CIs do not overlap. **Met.**"
        in text
    )
    assert (
        "expert-action agreement, `oracle+sparse` above `bc`: 0.800 vs 0.610; higher, CIs do not overlap. **Met.**"
        in text
    )
    # A higher mean whose CI overlaps bc's is not met (the issue-23 study printed "CIs overlap ... Met.").
    for seed, agreement in enumerate([0.5, 0.8, 0.65]):
        runs[seed]["evals"]["seen"]["expert_agreement"] = agreement
    text = targets(_study(runs), "seen")
    assert "0.650 vs 0.610; CIs overlap: cannot be told apart. **Not met.**" in text
    assert "ceiling (BC on noise-free expert data, one seed) at k >= 3: 0.700" in text


# --- end to end -------------------------------------------------------------------------------------------------------


def _checkpoint_files(out: Path, name: str) -> dict[str, dict]:
    """`name` (run.json, config.json) of each run's latest checkpoint, read straight from disk, by arm/seed."""
    found = {}
    for run in sorted(out.glob("runs/*/seed*")):
        latest = sorted(run.glob("checkpoint_0*"))[-1]
        found[f"{run.parent.name}/{run.name}"] = json.loads((latest / name).read_text())
    return found


def test_tiny_study_end_to_end_with_a_failing_labeler_and_a_rerun(ray_cluster, tmp_path, capsys):
    out = tmp_path / "study"
    args = [
        "study", "--config", "local", "--out", str(out), "--seeds", "2", "--steps", "4", "--episodes-per-k", "1",
        "generate.episodes=12", "generate.episodes_per_shard=6", "generate.subtasks=1-2",
        "study.labelers=[oracle,clip]", f"study.clip_model={tmp_path / 'no-such-clip'}",  # clip fails to load
        "study.modes=[X+sparse]", "study.splits=[seen]", "study.contexts=[]", "study.parallel=5",
        "study.baselines=[]", "study.expert_ceiling=true", "study.curve_arms=[sparse]", "study.curve_points=2",
        "label.max_restarts=0",
        "label.max_task_retries=0", "iql.batch_size=32", "iql.hidden=32", "eval.max_steps=30", "eval.agreement_episodes_per_k=1",
        "train.checkpoint_every=4", "train.log_every=2",
    ]  # fmt: skip
    rc = main(args)
    printed, err = capsys.readouterr()
    assert rc == 1, err[-3000:]  # a labeler failed: everything else ran, and the exit code says so
    assert "labeler clip FAILED" in printed, (printed[-3000:], err[-3000:])

    study = json.loads((out / "study.json").read_text())
    assert study["labelers"]["oracle"]["status"] == "ok"
    assert study["labelers"]["clip"]["status"] == "failed" and study["skipped_labelers"] == ["clip"]
    # Each training costs ~20-45 s of Ray Train start-up on 2 cores, so few arms: the X mode and the bc and
    # filtered_bc baselines are planned and configured above; the ceiling runs here as a BC learner.
    expected = {"sparse": "sparse", "bc_expert": "sparse", "oracle_sparse": "oracle+sparse"}
    learners = {"sparse": "iql", "bc_expert": "bc", "oracle_sparse": "iql"}
    assert [a["name"] for a in study["arms"]] == list(expected)

    # Every run trained with its arm's reward, learner, data and seed, as its own checkpoint says.
    runs = _checkpoint_files(out, "run.json")
    configs = _checkpoint_files(out, "config.json")
    seeds = {arm: (0,) if arm == "bc_expert" else (0, 1) for arm in expected}  # the ceiling runs once
    assert sorted(runs) == sorted(f"{arm}/seed{s}" for arm in expected for s in seeds[arm])
    for key, run in runs.items():
        arm, seed = key.split("/")
        assert run["reward"] == expected[arm] and run["step"] == 4 and run["learner"] == learners[arm]
        assert run["in_path"] == str(out / "data" / ("expert" if arm == "bc_expert" else "raw"))
        assert set(run["diagnostics"]) >= {
            "awr_ess",
            "beta_adv_std",
            "adv_clipped_frac",
            "reward_weight_ratio",
        }
        assert configs[key]["train"]["seed"] == int(seed.removeprefix("seed"))
        assert configs[key]["iql"]["context"] == study["settings"]["default_context"]
    for arm in expected:
        for seed in seeds[arm]:
            ev = json.loads((out / "eval" / arm / f"seed{seed}" / "seen" / "eval.json").read_text())
            assert ev["reward"] == expected[arm] and [r["k"] for r in ev["by_k"]] == [1, 2, 3, 4, 5, 6]
            assert ev["policy"] == "greedy" and 0 <= ev["expert_agreement"] <= 1
            assert (
                0 <= ev["train_agreement"] <= 1 and ev["train_agreement_states"] > 0
            )  # fit, on its own data
    # The noise-free expert data really is noise-free: every action is the bot's.
    expert = pq.read_table(out / "data" / "expert", columns=["actions", "expert_actions"]).to_pylist()
    assert all(r["actions"] == r["expert_actions"] for r in expert)
    # Learning curve: seed 0 of sparse at a budget of 2 updates. The actor's lr decays to 0 at train.steps, so the
    # point is a run of its own whose schedule ends at step 2, not a checkpoint inside the 4-step run: read back
    # from what that run and its evaluation wrote.
    curves = {r["arm"]: r["curve"] for r in study["runs"] if r["curve"]}
    assert list(curves) == ["sparse"]
    for arm, (point,) in curves.items():
        budget = out / "runs" / arm / "seed0" / "budget-00000002" / "checkpoint_00000002"
        assert point["step"] == 2 and point["source"] == "budgets" and point["checkpoint"] == str(budget)
        assert json.loads((budget / "config.json").read_text())["train"]["steps"] == 2
        assert json.loads((budget / "run.json").read_text())["reward"] == expected[arm]
    assert study["timing"]["curve_trainings_run"] == 1
    assert (out / "learning_curves.png").read_bytes().startswith(b"\x89PNG")
    assert "a run of its own, trained with that budget" in (out / "study.md").read_text()

    md = (out / "study.md").read_text()
    assert "clip" in md and "FAILED" in md and "its arms were skipped" in md
    for reward in ("sparse", "oracle+sparse"):
        assert f"\n| {reward} | n=2 (seeds 0, 1) | " in md
    assert (
        "\n| bc (expert data) | n=1, no CI (seeds 0) | " in md and "Does each learner select actions?" in md
    )
    assert " ± " in md and "Can these arms be told apart?" in md and "`oracle+sparse` vs `sparse`" in md
    # chains that repeat a sub-task, apart (k >= 2: 5 episodes a run), from each run's eval.json
    for r in study["runs"]:
        kinds = r["evals"]["seen"]["by_chain_kind"]
        assert kinds["repeats_subtask"]["episodes"] + kinds["distinct_subtasks"]["episodes"] == 5
    chains = md.split("### Chains that repeat a sub-task")[1].split("###")[0]
    assert "| oracle+sparse | n=2 (seeds 0, 1) |" in chains and "not recorded" not in chains
    for png in ("seen_by_k.png", "rho_vs_success_seen.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG")
    assert study["timing"]["trainings_run"] == 5
    assert study["timing"]["max_concurrent_trainings"] >= 2  # the trainings overlapped (5 threads, 5 runs)

    # A rerun trains and evaluates nothing: every run is finished and every eval.json matches its checkpoint.
    # The reruns leave out the broken labeler (it had no arms, so the plan is the same): its failure is checked
    # above, and each failure costs a label actor's start-up. With every labeler ok, a rerun exits 0.
    rerun = [*args, "study.labelers=[oracle]"]
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed*/checkpoint_0*/model.safetensors")}
    assert main(rerun) == 0
    again = json.loads((out / "study.json").read_text())
    assert sorted(again["reused"]["train"]) == sorted(runs)
    assert sorted(again["reused"]["eval"]) == sorted(f"{k}/seen" for k in runs)
    assert again["timing"]["trainings_run"] == 0 and again["timing"]["curve_trainings_run"] == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # A curve point whose eval.json evaluated another checkpoint (the 4-step run's own step 2, as a study from
    # before budget runs did) is evaluated again, from its budget run, which is not retrained.
    curve_eval = out / "eval" / "sparse" / "seed0" / "curve" / "step00000002" / "eval.json"
    inside = str(out / "runs" / "sparse" / "seed0" / "checkpoint_00000002")
    curve_eval.write_text(json.dumps(json.loads(curve_eval.read_text()) | {"checkpoint": inside}))
    assert main(rerun) == 0
    again = json.loads((out / "study.json").read_text())
    (point,) = next(r["curve"] for r in again["runs"] if r["arm"] == "sparse" and r["seed"] == 0)
    assert point["checkpoint"].endswith("budget-00000002/checkpoint_00000002")
    assert json.loads(curve_eval.read_text())["checkpoint"] == point["checkpoint"]
    assert again["timing"]["curve_trainings_run"] == 0

    # A run whose checkpoint says another reward stops the study, naming it.
    tampered = sorted((out / "runs" / "oracle_sparse" / "seed1").glob("checkpoint_0*"))[-1] / "run.json"
    tampered.write_text(json.dumps(runs["oracle_sparse/seed1"] | {"reward": "sparse"}))
    with pytest.raises(RuntimeError, match="oracle_sparse/seed1"):
        main(rerun)
