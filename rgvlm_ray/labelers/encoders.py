"""What the embedding labelers (clip, blip2, roboclip) share: an episode's frames, checked, and the goal encoded
for a text encoder with a fixed maximum length.

A goal longer than that maximum is cut to its first `max_tokens` tokens (the encoder cannot see more); each
cut goal is counted in `goals_truncated`, which the label job adds up per shard in the manifest and in the run's
summary.json (labeling/job.py). `labeler.max_goal_chars` applies first, as for the LVLM judges.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from rgvlm_ray.config import EngineConfig, LabelerConfig
from rgvlm_ray.labelers import prompts
from rgvlm_ray.labelers.columns import num_actions
from rgvlm_ray.labelers.images import VIEWS, decode_frames


def episode_images(row: dict, lcfg: LabelerConfig) -> list[Image.Image]:
    """The T+1 frames of `labeler.view`, decoded; ValueError (one line) for an episode that cannot be labeled."""
    t = num_actions(row)
    if lcfg.view not in VIEWS:
        raise ValueError(f"labeler.view must be one of {VIEWS}, got {lcfg.view!r}")
    frames = row.get(lcfg.view)
    if t == 0:
        raise ValueError("episode has no actions")
    if frames is None:
        raise ValueError(f"column {lcfg.view!r} is missing")
    if len(frames) != t + 1:
        raise ValueError(f"{lcfg.view!r} has {len(frames)} frames for {t} actions (expected {t + 1})")
    return decode_frames(frames, lcfg.image_size)


def encode_goal(tokenizer, goal: str, lcfg: LabelerConfig, max_tokens: int, counters: dict) -> dict:
    """The goal's input_ids and attention_mask (batch of one, torch), at most `max_tokens` tokens; a longer goal
    is truncated and counted in counters["goals_truncated"]."""
    text = prompts.sanitize(goal or "", lcfg.max_goal_chars)
    if len(tokenizer(text, verbose=False)["input_ids"]) > max_tokens:
        counters["goals_truncated"] = counters.get("goals_truncated", 0) + 1
    return tokenizer([text], truncation=True, max_length=max_tokens, return_tensors="pt")


def text_limit(tokenizer, positions: int) -> int:
    """Tokens a text encoder takes: its position embeddings, or the tokenizer's own limit where smaller."""
    own = getattr(tokenizer, "model_max_length", None)
    return min(positions, own) if isinstance(own, int) and 0 < own < 10**9 else positions


def load_device_dtype(ecfg: EngineConfig):
    """(device, dtype) as the hf engine resolves them (auto: cuda + bfloat16 when present, else cpu + float32)."""
    from rgvlm_ray.labelers.engines.hf import resolve_device, resolve_dtype

    device = resolve_device(ecfg.device)
    return device, resolve_dtype(ecfg.dtype, device)


def load_encoder(model_class: type, ecfg: EngineConfig) -> tuple[Any, Any, Any]:
    """(device, processor, model in eval mode) for `engine.model`, a hub id or a saved folder alike: the one
    loading path of clip, blip2 and roboclip."""
    from transformers import AutoProcessor

    device, dtype = load_device_dtype(ecfg)
    processor = AutoProcessor.from_pretrained(ecfg.model, revision=ecfg.revision)
    model = model_class.from_pretrained(ecfg.model, revision=ecfg.revision, dtype=dtype).to(device)
    model.eval()
    return device, processor, model
