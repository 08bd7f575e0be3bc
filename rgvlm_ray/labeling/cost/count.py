"""Counting a run's prompt tokens exactly, without loading weights (see the package docstring)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from rgvlm_ray.config import Config
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.actions import action_space
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelers import prompts
from rgvlm_ray.labelers.action_text import with_space
from rgvlm_ray.labelers.engines.base import Conversation, images_of
from rgvlm_ray.labelers.labeler import labeler_fingerprint
from rgvlm_ray.labelers.rgvlm import EpisodeLabel, prepare_episode, scores_budget
from rgvlm_ray.labeling.plan import input_shards, inventory, record_current
from rgvlm_ray.labelstore import layout

log = logging.getLogger(__name__)


class TokenCounter:
    """Prompt tokens of conversations exactly as the hf engine's processor counts them, without the model.

    The processor's image step is most of its cost, and an image's token count depends only on its size, so a
    prompt is counted as its tokenized text plus, per image, the tokens the processor adds for that size
    (measured once per size). The first conversations are also counted the slow way, by the processor itself;
    if the two ever differ, every count is made the slow way.
    """

    def __init__(self, processor, checks: int = 3) -> None:
        self.processor, self.tokenizer = processor, processor.tokenizer
        self.checks = checks
        self.fast = True
        self._per_image: dict[tuple[int, int, str], int] = {}

    def _text(self, conv: Conversation) -> str:
        from rgvlm_ray.labelers.engines.hf import to_hf_messages

        return self.processor.apply_chat_template(
            to_hf_messages(conv), tokenize=False, add_generation_prompt=True
        )

    def _slow(self, text: str, images: list) -> int:
        return len(self.processor(text=[text], images=images or None)["input_ids"][0])

    def _image_tokens(self, image) -> int:
        key = (image.width, image.height, image.mode)
        if key not in self._per_image:
            one = self._text([{"role": "user", "content": [{"type": "image", "image": image}]}])
            self._per_image[key] = self._slow(one, [image]) - len(self.tokenizer(one)["input_ids"])
        return self._per_image[key]

    def count(self, convs: list[Conversation]) -> list[int]:
        texts = [self._text(c) for c in convs]
        images = [list(images_of(c)) for c in convs]
        if not self.fast:
            return [self._slow(t, ims) for t, ims in zip(texts, images, strict=True)]
        lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]] if texts else []
        out = [n + sum(self._image_tokens(im) for im in ims) for n, ims in zip(lengths, images, strict=True)]
        for i in range(min(self.checks, len(convs))):
            self.checks -= 1
            slow = self._slow(texts[i], images[i])
            if slow != out[i]:
                log.info(
                    "fast token count %d != processor's %d: counting every prompt with the processor",
                    out[i],
                    slow,
                )
                self.fast = False
                return [self._slow(t, ims) for t, ims in zip(texts, images, strict=True)]
        return out


def load_counting_processor(model: str, revision: str | None):
    """The model's processor from a local folder, or from a hub id's files already in the local cache: the
    plan never downloads (and loads no weights)."""
    from rgvlm_ray.labelers.engines.hf import load_processor

    path = Path(model).expanduser()
    if path.is_dir():
        return load_processor(str(path), None)
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(model, revision=revision, local_files_only=True)
    except Exception as exc:  # not cached, or not a hub id at all
        raise UsageError(
            f"--plan counts tokens with {model}'s processor, and no local copy of it is here ({type(exc).__name__}): "
            f"fetch its processor files only (no weights): `hf download {model} --exclude '*.safetensors' '*.bin'`, "
            "or pass plan.processor=DIR with a folder holding them"
        ) from None
    return load_processor(local, None)


@dataclass
class EpisodeCount:
    """One episode's share of the bill: stage 2 is counted per sample and without its analysis."""

    windows: int = 0
    images: int = 0  # per stage: stage 2 shows the same images again
    stage1_prompt: int = 0
    stage2_base: int = 0  # stage-2 prompt tokens of one sample, analysis empty
    stage2_budget: int = 0  # scoring tokens allowed, one sample


@dataclass
class Counts:
    shards: int = 0
    shards_to_label: int = 0
    shards_labeled: list[str] = field(default_factory=list)  # already current in --out: not counted
    episodes: int = 0
    actions: int = 0
    bad_input: dict[str, str] = field(default_factory=dict)  # episode id -> why it cannot be labeled
    # Per shard to label, its episodes in input order (the job's batches never mix shards' orders).
    by_shard: dict[str, list[EpisodeCount]] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)  # of the shards to label

    def total(self) -> EpisodeCount:
        out = EpisodeCount()
        for eps in self.by_shard.values():
            for e in eps:
                for k, v in vars(e).items():
                    setattr(out, k, getattr(out, k) + v)
        return out


def count_episode(ep: EpisodeLabel, cfg: Config, counter: TokenCounter) -> EpisodeCount:
    lcfg, ecfg = cfg.labeler, cfg.engine
    stage1 = [w.stage1 for w in ep.windows]
    stage2 = [
        prompts.stage2_messages(lcfg.prompt_version, w.stage1, "", w.window.size, w.window.start + 1)
        for w in ep.windows
    ]
    n1, n2 = counter.count(stage1), counter.count(stage2)
    return EpisodeCount(
        windows=len(ep.windows),
        images=sum(w.window.size + 1 for w in ep.windows),
        stage1_prompt=sum(n1),
        stage2_base=sum(n2),
        stage2_budget=sum(scores_budget(ecfg, w.window.size) for w in ep.windows),
    )


JUDGE_COLUMNS = ("episode_id", "goal", "actions", "action_texts")


def shard_rows(path: str, cfg: Config) -> list[dict]:
    """The shard's episodes with only the columns the judge sees, each with its action space."""
    schema = fmt.read_schema(path, cfg.storage)
    columns = [c for c in (*JUDGE_COLUMNS, cfg.labeler.view) if c in schema.names]
    table = fmt.read_shard(path, cfg.storage, columns=columns)
    return with_space(table.to_pylist(), action_space(schema))


def shards_to_plan(cfg: Config, counts: Counts) -> list[tuple[str, str]]:
    """(name, path) of the shards a `rgvlm label` with these settings would label: with --out, those its
    manifest records as current for this labeler are left out, as the job leaves them."""
    lc, sc = cfg.label, cfg.storage
    if not lc.out_path:
        paths = input_shards(lc.in_path, sc)
        counts.shards = len(paths)
        return [(layout.relative_name(lc.in_path, p), p) for p in paths]
    shards, records = inventory(lc.in_path, lc.out_path, sc)
    counts.shards = len(shards)
    fingerprint = labeler_fingerprint(cfg.engine, cfg.labeler)
    todo = []
    for name, path, identity in shards:
        if record_current(records.get(name), identity, fingerprint, lc):
            counts.shards_labeled.append(name)
        else:
            todo.append((name, path))
    return todo


def count(cfg: Config, counter: TokenCounter) -> Counts:
    counts = Counts()
    for name, path in shards_to_plan(cfg, counts):
        counts.shards_to_label += 1
        counts.paths.append(path)
        eps = []
        for row in shard_rows(path, cfg):
            ep = prepare_episode(row, cfg.labeler)
            counts.episodes += 1
            counts.actions += ep.num_actions
            if ep.error is not None:
                counts.bad_input[ep.episode_id] = ep.error
            eps.append(count_episode(ep, cfg, counter))
        counts.by_shard[name] = eps
    return counts
