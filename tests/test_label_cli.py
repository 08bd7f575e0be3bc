"""`rgvlm make-tiny-vlm` and `rgvlm label-episode` through the real CLI entry point."""

from __future__ import annotations

import json

import pytest

from rgvlm_ray import cli
from tests.label_fixtures import dataset_dir, episodes, long_episode, tiny_clip_dir, tiny_qwen_dir


def run_json(capsys, *argv) -> tuple[int, dict]:
    capsys.readouterr()
    rc = cli.main(list(argv))
    return rc, json.loads(capsys.readouterr().out)


def test_make_tiny_vlm_builds_a_loadable_model(tmp_path, capsys):
    rc, out = run_json(capsys, "make-tiny-vlm", "--out", str(tmp_path / "m"))
    assert rc == 0 and out["bytes"] < 2_000_000
    from transformers import AutoModelForImageTextToText

    from rgvlm_ray.labelers.engines.hf import load_processor

    processor = load_processor(str(tmp_path / "m"))
    model = AutoModelForImageTextToText.from_pretrained(str(tmp_path / "m"))
    assert type(processor).__name__ == "ImageOnlyQwen2VLProcessor"
    assert model.config.model_type == "qwen2_vl"
    assert sum(p.numel() for p in model.parameters()) < 500_000


def test_make_tiny_vlm_rejects_unknown_kind(tmp_path, capsys):
    assert cli.main(["make-tiny-vlm", "--out", str(tmp_path), "--kind", "gpt"]) == 2
    assert "--kind" in capsys.readouterr().err


def test_label_episode_hf_json(capsys):
    long = long_episode()
    assert len(long["actions"]) >= 40
    rc, out = run_json(
        capsys,
        "label-episode",
        "--in",
        dataset_dir(),
        "--episode",
        long["episode_id"],
        "--engine",
        "hf",
        "--model",
        tiny_qwen_dir(),
        "--json",
        "engine.max_new_tokens_analysis=8",
    )
    assert rc == 0
    t = len(long["actions"])
    assert out["num_actions"] == t and len(out["scores"]) == t
    assert all(isinstance(s, float) and 0 <= s <= 10 for s in out["scores"])
    assert len(out["analysis"]) == len(out["windows"]) >= 2
    assert "<image 56x56>" in out["prompts"][0]["stage1"] and "[assistant]" in out["prompts"][0]["stage2"]


def test_label_episode_text_output(capsys):
    rc = cli.main(["label-episode", "--in", dataset_dir(), "--engine", "hf", "--model", tiny_qwen_dir(),
                   "engine.max_new_tokens_analysis=4", "--view", "frames_full"])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    assert "stage-1 prompt" in text and "analysis" in text and "step  action" in text


@pytest.mark.parametrize("engine", ["oracle", "clip"])
def test_label_episode_reference_labelers(capsys, engine):
    extra = ["--model", tiny_clip_dir()] if engine == "clip" else []
    rc, out = run_json(capsys, "label-episode", "--in", dataset_dir(), "--engine", engine, "--json", *extra)
    first = episodes()[0]
    assert rc == 0 and out["episode_id"] == first["episode_id"]
    assert len(out["scores"]) == len(first["actions"]) and out["analysis"] == []


def test_label_episode_unknown_episode_lists_ids(capsys):
    rc = cli.main(["label-episode", "--in", dataset_dir(), "--episode", "nope", "--engine", "oracle"])
    err = capsys.readouterr().err
    assert rc == 2 and "nope" in err and episodes()[0]["episode_id"] in err


def test_label_episode_missing_model_is_a_usage_error(capsys):
    assert cli.main(["label-episode", "--in", dataset_dir(), "--engine", "hf"]) == 2
    assert "--model" in capsys.readouterr().err
