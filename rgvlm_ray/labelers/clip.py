"""`clip`: a VLM-RM-style reference labeler (Rocamonde et al., 2023) with a transformers CLIPModel.

Per frame i: s_i = cos(image_embedding(frame_i), text_embedding(goal)).
Per action t (from frame t to frame t+1):
  score  = s_{t+1}                                  (VLM-RM's reward: how goal-like the reached state looks)
  reward = reward_scale * (s_{t+1} - s_t) + reward_shift
The reward is the similarity *delta* (potential-based shaping with s as the potential) rather than VLM-RM's
raw similarity, so an agent gains nothing by lingering in goal-like states. VLM-RM's baseline-prompt
projection is not used: it needs a second, hand-written prompt per task.
A goal longer than the text encoder's 77 tokens is truncated and counted (encoders.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rgvlm_ray.config import EngineConfig, LabelerConfig
from rgvlm_ray.labelers.columns import error_columns, label_columns, num_actions, token_free_stats
from rgvlm_ray.labelers.encoders import encode_goal, episode_images, load_encoder, text_limit
from rgvlm_ray.labelers.engines.base import chunks

NAME = "clip"


def _features(out) -> torch.Tensor:
    """transformers 5 returns a ModelOutput whose pooler_output is the projected embedding."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipLabeler:
    name = NAME

    def __init__(self, ecfg: EngineConfig, lcfg: LabelerConfig, fingerprint: str) -> None:
        from transformers import CLIPModel

        self.ecfg, self.lcfg, self.fingerprint = ecfg, lcfg, fingerprint
        self.device, self.processor, self.model = load_encoder(CLIPModel, ecfg)
        self.max_text_tokens = text_limit(
            self.processor.tokenizer, self.model.config.text_config.max_position_embeddings
        )
        self.counters = {"frames": 0, "episodes": 0, "errors": 0, "goals_truncated": 0}

    @torch.inference_mode()
    def similarities(self, goal: str, images: list) -> list[float]:
        text = encode_goal(self.processor.tokenizer, goal, self.lcfg, self.max_text_tokens, self.counters)
        goal_emb = torch.nn.functional.normalize(
            _features(self.model.get_text_features(**text.to(self.device))).float(), dim=-1
        )
        sims: list[float] = []
        for batch in chunks(images, max(1, self.ecfg.batch_size) * 8):
            pixels = self.processor.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            emb = _features(
                self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype))
            )
            emb = torch.nn.functional.normalize(emb.float(), dim=-1)
            sims.extend((emb @ goal_emb[0]).tolist())
        return sims

    def label_row(self, row: dict) -> dict:
        return frame_potential_row(NAME, row, self.lcfg, self.fingerprint, self.counters, self.similarities)

    def label_rows(self, rows: list[dict]) -> list[dict]:
        return [self.label_row(r) for r in rows]

    def stats(self) -> dict:
        return token_free_stats(self.counters)

    def close(self) -> None:
        self.model = None


def frame_potential_row(
    name: str,
    row: dict,
    lcfg: LabelerConfig,
    fingerprint: str,
    counters: dict[str, int],
    score: Callable[[str, list], list[float]],
) -> dict:
    """One episode of a per-frame scorer (clip, blip2): score(goal, frames) -> s_0..s_T, as a potential; an
    episode whose frames cannot be read gets error columns, counted, rather than failing its batch."""
    try:
        images = episode_images(row, lcfg)
    except ValueError as exc:
        counters["errors"] += 1
        return error_columns(name, num_actions(row), str(exc), fingerprint)
    s = score(row.get("goal") or "", images)
    counters["frames"] += len(images)
    counters["episodes"] += 1
    return potential_columns(name, s, lcfg, fingerprint)


def potential_columns(name: str, s: list[float], lcfg: LabelerConfig, fingerprint: str) -> dict:
    """Per-frame scores s_0..s_T as a potential: score_t = s_{t+1}, reward_t = scale * (s_{t+1} - s_t) + shift."""
    t = len(s) - 1
    scale, shift = lcfg.reward_scale, lcfg.reward_shift
    return label_columns(
        name,
        score=s[1:],
        reward=[scale * (b - a) + shift for a, b in zip(s, s[1:], strict=False)],
        window=[0] * t,
        status=["ok"] * t,
        message=[""] * t,
        analysis=[],
        fingerprint=fingerprint,
    )
