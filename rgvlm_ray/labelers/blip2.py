"""`blip2`: BLIP-2's image-text matching score (Li et al., 2023) as a reference labeler, with transformers'
`Blip2ForImageTextRetrieval` (on a GPU: Salesforce/blip2-itm-vit-g).

Per frame i: m_i = P(match | frame_i, goal), the softmax of the ITM head's two logits (the Q-Former reads the
frame's query tokens and the goal's text jointly). Per action t (from frame t to frame t+1), as `clip` does:
  score  = m_{t+1}                                  (how well the reached state matches the goal, 0..1)
  reward = reward_scale * (m_{t+1} - m_t) + reward_shift
The delta (potential-based shaping with m as the potential) rather than m itself, for clip's reason: an agent
gains nothing by lingering in goal-like states. The ITM head is used rather than BLIP-2's contrastive (ITC)
similarity because it is the model's own matching judgement; it costs one Q-Former pass per frame with the text.
A goal longer than the Q-Former's text positions is truncated and counted (encoders.py).
"""

from __future__ import annotations

import torch

from rgvlm_ray.config import EngineConfig, LabelerConfig
from rgvlm_ray.labelers.clip import frame_potential_row
from rgvlm_ray.labelers.columns import token_free_stats
from rgvlm_ray.labelers.encoders import encode_goal, load_encoder, text_limit
from rgvlm_ray.labelers.engines.base import chunks

NAME = "blip2"


class Blip2Labeler:
    name = NAME

    def __init__(self, ecfg: EngineConfig, lcfg: LabelerConfig, fingerprint: str) -> None:
        from transformers import Blip2ForImageTextRetrieval

        self.ecfg, self.lcfg, self.fingerprint = ecfg, lcfg, fingerprint
        self.device, self.processor, self.model = load_encoder(Blip2ForImageTextRetrieval, ecfg)
        config = self.model.config
        self.max_text_tokens = text_limit(
            self.processor.tokenizer, config.qformer_config.max_position_embeddings
        )
        self.counters = {"frames": 0, "episodes": 0, "errors": 0, "goals_truncated": 0}

    def _text(self, goal: str) -> dict:
        """The goal's ids as Blip2Processor builds them: with `image_token_index` set, num_query_tokens image
        tokens come first (the model strips them again), so the text keeps every position embedding."""
        enc = encode_goal(self.processor.tokenizer, goal, self.lcfg, self.max_text_tokens, self.counters)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        config = self.model.config
        if config.image_token_index is not None:
            n = config.num_query_tokens
            ids = torch.cat([torch.full((1, n), config.image_token_index, dtype=ids.dtype), ids], dim=1)
            mask = torch.cat([torch.ones((1, n), dtype=mask.dtype), mask], dim=1)
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    @torch.inference_mode()
    def matches(self, goal: str, images: list) -> list[float]:
        """P(match) of each image with the goal."""
        text = self._text(goal)
        out: list[float] = []
        for batch in chunks(images, max(1, self.ecfg.batch_size) * 8):
            pixels = self.processor.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            n = len(batch)
            logits = self.model(
                pixel_values=pixels.to(self.device, self.model.dtype),
                input_ids=text["input_ids"].expand(n, -1),
                attention_mask=text["attention_mask"].expand(n, -1),
                use_image_text_matching_head=True,
            ).logits_per_image
            out.extend(logits.float().softmax(dim=-1)[:, 1].tolist())
        return out

    def label_row(self, row: dict) -> dict:
        return frame_potential_row(NAME, row, self.lcfg, self.fingerprint, self.counters, self.matches)

    def label_rows(self, rows: list[dict]) -> list[dict]:
        return [self.label_row(r) for r in rows]

    def stats(self) -> dict:
        return token_free_stats(self.counters)

    def close(self) -> None:
        self.model = None
