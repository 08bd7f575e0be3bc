"""`clip`: a VLM-RM-style reference labeler (Rocamonde et al., 2023) with a transformers CLIPModel.

Per frame i: s_i = cos(image_embedding(frame_i), text_embedding(goal)).
Per action t (from frame t to frame t+1):
  score  = s_{t+1}                                  (VLM-RM's reward: how goal-like the reached state looks)
  reward = reward_scale * (s_{t+1} - s_t) + reward_shift
The reward is the similarity *delta* (potential-based shaping with s as the potential) rather than VLM-RM's
raw similarity, so an agent gains nothing by lingering in goal-like states. VLM-RM's baseline-prompt
projection is not used: it needs a second, hand-written prompt per task.
"""

from __future__ import annotations

import torch

from rgvlm_ray.config import EngineConfig, LabelerConfig
from rgvlm_ray.labelers import prompts
from rgvlm_ray.labelers.columns import error_columns, label_columns, num_actions, token_free_stats
from rgvlm_ray.labelers.engines.base import chunks
from rgvlm_ray.labelers.engines.hf import resolve_device, resolve_dtype
from rgvlm_ray.labelers.images import decode_frames
from rgvlm_ray.labelers.rgvlm import VIEWS

NAME = "clip"


def _features(out) -> torch.Tensor:
    """transformers 5 returns a ModelOutput whose pooler_output is the projected embedding."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipLabeler:
    name = NAME

    def __init__(self, ecfg: EngineConfig, lcfg: LabelerConfig, fingerprint: str) -> None:
        from transformers import AutoProcessor, CLIPModel

        self.ecfg, self.lcfg, self.fingerprint = ecfg, lcfg, fingerprint
        self.device = resolve_device(ecfg.device)
        self.processor = AutoProcessor.from_pretrained(ecfg.model, revision=ecfg.revision)
        self.model = CLIPModel.from_pretrained(
            ecfg.model, revision=ecfg.revision, dtype=resolve_dtype(ecfg.dtype, self.device)
        ).to(self.device)
        self.model.eval()
        self.max_text_tokens = self.model.config.text_config.max_position_embeddings
        self.counters = {"frames": 0, "episodes": 0, "errors": 0}

    def _frames(self, row: dict) -> list:
        t = num_actions(row)
        if self.lcfg.view not in VIEWS:
            raise ValueError(f"labeler.view must be one of {VIEWS}, got {self.lcfg.view!r}")
        frames = row.get(self.lcfg.view)
        if t == 0:
            raise ValueError("episode has no actions")
        if frames is None:
            raise ValueError(f"column {self.lcfg.view!r} is missing")
        if len(frames) != t + 1:
            raise ValueError(
                f"{self.lcfg.view!r} has {len(frames)} frames for {t} actions (expected {t + 1})"
            )
        return decode_frames(frames, self.lcfg.image_size)

    @torch.inference_mode()
    def similarities(self, goal: str, images: list) -> list[float]:
        text = self.processor.tokenizer(
            [prompts.sanitize(goal, self.lcfg.max_goal_chars)],
            padding=True,
            truncation=True,
            max_length=self.max_text_tokens,
            return_tensors="pt",
        ).to(self.device)
        goal_emb = torch.nn.functional.normalize(
            _features(self.model.get_text_features(**text)).float(), dim=-1
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
        t = num_actions(row)
        try:
            images = self._frames(row)
        except ValueError as exc:
            self.counters["errors"] += 1
            return error_columns(NAME, t, str(exc), self.fingerprint)
        s = self.similarities(row.get("goal") or "", images)
        self.counters["frames"] += len(images)
        self.counters["episodes"] += 1
        scale, shift = self.lcfg.reward_scale, self.lcfg.reward_shift
        return label_columns(
            NAME,
            score=s[1:],
            reward=[scale * (b - a) + shift for a, b in zip(s, s[1:], strict=False)],
            window=[0] * t,
            status=["ok"] * t,
            message=[""] * t,
            analysis=[],
            fingerprint=self.fingerprint,
        )

    def label_rows(self, rows: list[dict]) -> list[dict]:
        return [self.label_row(r) for r in rows]

    def stats(self) -> dict:
        return token_free_stats(self.counters)

    def close(self) -> None:
        self.model = None
