"""Prompt templates, the stage-2 prefix property, and the labeler fingerprint."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
from PIL import Image

from rgvlm_ray.config import load_config
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelers import labeler_fingerprint, prompts
from tests.label_fixtures import tiny_qwen_dir


def _conv(goal="go to the red ball", n=3):
    images = [Image.new("RGB", (56, 56), (i * 40, 0, 0)) for i in range(n + 1)]
    return prompts.stage1_messages("v1", goal, ["turn left"] * n, images, 5, 40, "frames", 500)


def test_stage1_interleaves_observations_and_actions():
    conv = _conv(n=3)
    parts = conv[1]["content"]
    assert [p["type"] for p in parts].count("image") == 4
    text = prompts.render(conv)
    assert "steps 5 to 7 of an episode that has 40 steps" in text
    assert text.index("[Observation 4]") < text.index("Step 5: turn left") < text.index("[Observation 5]")
    assert "<goal>go to the red ball</goal>" in text


def test_stage2_extends_stage1_verbatim():
    s1 = _conv()
    s2 = prompts.stage2_messages("v1", s1, "The agent turns.", 3, 5)
    assert s2[: len(s1)] == s1
    assert s2[len(s1)] == {"role": "assistant", "content": "The agent turns."}
    assert "exactly 3 numbers" in s2[-1]["content"]
    retry = prompts.retry_messages("v1", s2, "nope", "no JSON", 3)
    assert retry[: len(s2)] == s2


def test_stage2_prompt_tokens_start_with_the_stage1_prompt():
    """What a prefix cache needs: the rendered stage-1 prompt is a token prefix of the stage-2 prompt."""
    from rgvlm_ray.labelers.engines.hf import load_processor, to_hf_messages

    processor = load_processor(tiny_qwen_dir())
    s1 = _conv()
    s2 = prompts.stage2_messages("v1", s1, "The agent turns left.", 3, 5)
    images = [p["image"] for p in s1[1]["content"] if p["type"] == "image"]

    def ids(conv):
        text = processor.apply_chat_template(to_hf_messages(conv), tokenize=False, add_generation_prompt=True)
        return processor(text=[text], images=images, return_tensors="pt")["input_ids"][0].tolist()

    a, b = ids(s1), ids(s2)
    assert len(b) > len(a) and b[: len(a)] == a


def test_unknown_prompt_version_is_a_usage_error():
    with pytest.raises(UsageError, match="v1"):
        prompts.load_prompts("v999")


def _cfgs():
    cfg = load_config()
    cfg.engine.model = "Qwen/Qwen2.5-VL-7B-Instruct"
    return cfg.engine, cfg.labeler


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("engine", "model", "Qwen/Qwen2.5-VL-3B-Instruct"),
        ("engine", "revision", "abc123"),
        ("engine", "kind", "vllm"),
        ("engine", "temperature", 0.7),
        ("engine", "seed", 1),
        ("engine", "max_new_tokens_analysis", 100),
        ("labeler", "window", 8),
        ("labeler", "overlap", 2),
        ("labeler", "image_size", 224),
        ("labeler", "view", "frames_full"),
        ("labeler", "num_samples", 3),
        ("labeler", "reward_scale", 2.0),
        ("labeler", "max_goal_chars", 100),
    ],
)
def test_fingerprint_changes_with_every_setting_that_changes_labels(section, key, value):
    e, lab = _cfgs()
    base = labeler_fingerprint(e, lab)
    if section == "engine":
        e = replace(e, **{key: value})
    else:
        lab = replace(lab, **{key: value})
    assert labeler_fingerprint(e, lab) != base


def test_fingerprint_ignores_throughput_settings():
    e, lab = _cfgs()
    assert labeler_fingerprint(replace(e, batch_size=64, timeout_s=5), lab) == labeler_fingerprint(e, lab)


def test_fingerprint_changes_with_prompt_contents(tmp_path, monkeypatch):
    e, lab = _cfgs()
    base = labeler_fingerprint(e, lab)
    edited = tmp_path / "prompts"
    shutil.copytree(prompts.PROMPT_DIR, edited)
    (edited / "v1.txt").write_text((edited / "v1.txt").read_text().replace("short", "brief"))
    monkeypatch.setattr(prompts, "PROMPT_DIR", edited)
    prompts.load_prompts.cache_clear()
    try:
        assert labeler_fingerprint(e, lab) != base
        (edited / "v2.txt").write_text((edited / "v1.txt").read_text())
        assert labeler_fingerprint(e, replace(lab, prompt_version="v2")) != labeler_fingerprint(e, lab)
    finally:
        prompts.load_prompts.cache_clear()


def test_fingerprint_of_a_local_model_changes_when_the_model_changes(tmp_path):
    e, lab = _cfgs()
    model = tmp_path / "m"
    shutil.copytree(tiny_qwen_dir(), model)
    e = replace(e, kind="hf", model=str(model))
    base = labeler_fingerprint(e, lab)
    assert labeler_fingerprint(e, lab) == base  # stable
    cfg = model / "config.json"
    cfg.write_text(cfg.read_text().replace('"depth": 1', '"depth": 2'))
    assert labeler_fingerprint(e, lab) != base


def test_fingerprint_needs_no_model_load():
    e, lab = _cfgs()  # a hub id that is not downloadable here
    assert len(labeler_fingerprint(e, lab)) == 16
