"""`roboclip`: RoboCLIP's reward (Sontakke et al., 2023) with a video-language model, transformers' `XCLIPModel`
(on a GPU: microsoft/xclip-base-patch32; RoboCLIP itself used S3D, which transformers does not ship).

A clip of the episode is scored against the goal text, S = cos(video embedding, goal embedding), or, when
`labeler.demo_in` names a demonstration episode, against that video: S = cos(video(clip), video(demo)), as
RoboCLIP does with one demonstration per task (the demo then stands in for every episode's goal, so use it on
single-task data). X-CLIP's text embedding is conditioned on the video (its prompt generator); the cosine is
`logits_per_video / logit_scale`.

Placement, `labeler.placement`:
- `episode` (RoboCLIP's): the whole episode is one clip; its S is the reward of the last step, every other
  step gets 0. reward_T-1 = reward_scale * S + reward_shift, the others reward_shift.
- `window`: the episode is cut into consecutive, non-overlapping windows of `labeler.window` actions
  (`labeler.overlap` is not used); each window's clip (its actions' T+1 frames) is scored, and its S is the
  reward of the window's last step. A denser signal than the paper's, at one model call per window.
Every step's `score` is the S of the clip it belongs to, and `window` that clip's id.

Frames: a video model takes exactly `num_frames` frames (8 for xclip-base-patch32). A clip of n frames is
sampled at the indices round(linspace(0, n - 1, num_frames)): evenly spaced, the first and the last always in.
A clip shorter than num_frames (down to 2 frames, one action) repeats frames in place by the same rule, so it
is padded in time order and never fails.
A goal longer than the text encoder's positions (77 tokens) is truncated and counted (encoders.py).
"""

from __future__ import annotations

import numpy as np
import torch

from rgvlm_ray.config import EngineConfig, LabelerConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelers.columns import error_columns, label_columns, num_actions, token_free_stats
from rgvlm_ray.labelers.encoders import encode_goal, episode_images, load_encoder, text_limit
from rgvlm_ray.labelers.engines.base import chunks
from rgvlm_ray.labelers.images import decode_frames
from rgvlm_ray.labelers.windows import make_windows

NAME = "roboclip"
PLACEMENTS = ("episode", "window")


def sample_indices(n: int, k: int) -> list[int]:
    """k frame indices out of n (docstring above): evenly spaced, first and last kept, repeats when n < k."""
    if n < 1 or k < 1:
        raise ValueError(f"cannot sample {k} frames out of {n}")
    return [int(i) for i in np.rint(np.linspace(0, n - 1, k))]


def clips(t: int, lcfg: LabelerConfig) -> list[tuple[int, int]]:
    """(first action, last action + 1) of each clip: the whole episode, or non-overlapping windows."""
    if lcfg.placement == "episode":
        return [(0, t)]
    return [(w.start, w.end) for w in make_windows(t, lcfg.window, 0)]


def load_demo(path: str, episode: str, view: str, image_size: int) -> list:
    """The demonstration's frames: episode `episode` (or the first) of the dataset at `path` (a folder, s3://
    prefix or shard; S3 credentials from the environment)."""
    try:
        shards = fmt.list_shards(path)
    except FileNotFoundError as exc:
        raise UsageError(f"labeler.demo_in: {exc}") from None
    for shard in shards:
        ids = fmt.read_shard(shard, columns=["episode_id"]).column("episode_id").to_pylist()
        if ids and (not episode or episode in ids):
            table = fmt.read_shard(shard, columns=["episode_id", view])
            frames = table.column(view)[ids.index(episode) if episode else 0].as_py()
            if not frames:
                raise UsageError(f"labeler.demo_in: episode {episode or ids[0]!r} has no {view!r} frames")
            try:
                return decode_frames(frames, image_size)
            except ValueError as exc:
                raise UsageError(f"labeler.demo_in: {exc}") from None
    raise UsageError(f"labeler.demo_in: no episode {episode!r} in {path}")


class RoboCLIPLabeler:
    name = NAME

    def __init__(self, ecfg: EngineConfig, lcfg: LabelerConfig, fingerprint: str) -> None:
        from transformers import XCLIPModel

        self.ecfg, self.lcfg, self.fingerprint = ecfg, lcfg, fingerprint
        self.device, self.processor, self.model = load_encoder(XCLIPModel, ecfg)
        self.num_frames = self.model.config.vision_config.num_frames
        self.max_text_tokens = text_limit(
            self.processor.tokenizer, self.model.config.text_config.max_position_embeddings
        )
        self.counters = {"clips": 0, "episodes": 0, "errors": 0, "goals_truncated": 0}
        self.demo = None
        if lcfg.demo_in:
            frames = load_demo(lcfg.demo_in, lcfg.demo_episode, lcfg.view, lcfg.image_size)
            self.demo = self._video_features([frames])[0]

    def _pixels(self, videos: list[list]) -> torch.Tensor:
        sampled = [[v[i] for i in sample_indices(len(v), self.num_frames)] for v in videos]
        pixels = self.processor(videos=sampled, return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, self.model.dtype)

    @torch.inference_mode()
    def _video_features(self, videos: list[list]) -> torch.Tensor:
        out = self.model.get_video_features(pixel_values=self._pixels(videos))
        emb = out if isinstance(out, torch.Tensor) else out.pooler_output
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    @torch.inference_mode()
    def similarities(self, goal: str, videos: list[list]) -> list[float]:
        """S of each video (a list of PIL frames) against the demonstration if there is one, else the goal."""
        out: list[float] = []
        text = None
        if self.demo is None:
            enc = encode_goal(self.processor.tokenizer, goal, self.lcfg, self.max_text_tokens, self.counters)
            text = {k: v.to(self.device) for k, v in enc.items()}
        for batch in chunks(videos, max(1, self.ecfg.batch_size)):
            if text is None:
                out.extend((self._video_features(batch) @ self.demo).tolist())
                continue
            res = self.model(pixel_values=self._pixels(batch), **text)
            out.extend((res.logits_per_video[:, 0].float() / self.model.logit_scale.exp().float()).tolist())
        return out

    def label_row(self, row: dict) -> dict:
        t = num_actions(row)
        try:
            images = episode_images(row, self.lcfg)
        except ValueError as exc:
            self.counters["errors"] += 1
            return error_columns(NAME, t, str(exc), self.fingerprint)
        spans = clips(t, self.lcfg)
        s = self.similarities(row.get("goal") or "", [images[a : b + 1] for a, b in spans])
        self.counters["clips"] += len(spans)
        self.counters["episodes"] += 1
        score, reward, window = [0.0] * t, [self.lcfg.reward_shift] * t, [0] * t
        for w, ((a, b), sim) in enumerate(zip(spans, s, strict=True)):
            score[a:b], window[a:b] = [sim] * (b - a), [w] * (b - a)
            reward[b - 1] += self.lcfg.reward_scale * sim
        return label_columns(
            NAME,
            score=score,
            reward=reward,
            window=window,
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
