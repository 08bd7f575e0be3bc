"""KV caches kept across `generate` calls, so the hf engine's stage 2 continues stage 1 instead of re-encoding.

Stage 2's prompt starts with stage 1's prompt verbatim, images included, and usually with stage 1's answer
token for token. At the end of stage 1's `generate`, the KV of all of that exists. The engine keeps it per
row, without padding (`Prefix`), and a later request whose token ids start with a kept row's ids, over the
same image pixels, is fed only the rest (`plan`, `assemble`).

Why this is exact:
- Keys are cached after the rotary embedding, and every position is a row's own (unpadded) index, so a row's
  KV does not depend on the padding or the batch it was computed in.
- Qwen2-VL's multimodal rotary position (mrope) of a text token after the row's last image is its index plus
  the row's rope delta (`get_rope_index`), which does not change when text is appended. A suffix that holds
  an image would need the vision tower and fresh 3D positions: such a row is fed in full instead.
- The reused part is the longest common token prefix, so a stage-2 prompt that re-tokenizes the stage-1 answer
  differently still gets exactly its own tokens.

Batching (`assemble`): the batch's cache holds P columns (the longest reused part) and generate feeds S more
(the longest suffix). Each row's cached part is right-aligned in the first P columns and its suffix in the last
S, so every row's prompt ends in the last column, as decoder-only generation needs; shorter parts leave padding
before the cache and between cache and suffix, which the attention mask hides.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import torch


def image_digest(image) -> str:
    """The pixels, not the object: two windows with equal token ids but different frames never share a cache."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def image_runs(ids: list[int], image_token_id: int) -> list[int]:
    """Lengths of the runs of image placeholder tokens, one per image (the template wraps each in markers)."""
    runs: list[int] = []
    previous = None
    for tok in ids:
        if tok == image_token_id:
            if previous == image_token_id:
                runs[-1] += 1
            else:
                runs.append(1)
        previous = tok
    return runs


def expand_images(ids: list[int], image_token_id: int, counts: Iterable[int]) -> list[int] | None:
    """Each single image placeholder repeated to its image's token count, as the processor does in the text.

    The placeholder is a special token, so it splits the text: expanding it in the ids or in the text gives the
    same tokens. None when the number of placeholders is not the number of counts.
    """
    counts = list(counts)
    out: list[int] = []
    k = 0
    for tok in ids:
        if tok == image_token_id:
            if k == len(counts):
                return None
            out.extend([tok] * counts[k])
            k += 1
        else:
            out.append(tok)
    return out if k == len(counts) else None


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def after_last(ids: list[int], token_id: int) -> int:
    """The index just after the last `token_id` (0 when there is none)."""
    for i in range(len(ids) - 1, -1, -1):
        if ids[i] == token_id:
            return i + 1
    return 0


@dataclass
class Prefix:
    """One row's KV: prompt plus the answer tokens that were fed, no padding."""

    ids: list[int]
    images: tuple[str, ...]  # digests of the prompt's images, in order
    image_tokens: tuple[int, ...]  # placeholder tokens per image
    layers: list[
        tuple[torch.Tensor, torch.Tensor]
    ]  # per layer: keys, values of shape [kv_heads, len(ids), dim]
    rope_delta: int


@dataclass
class Plan:
    """How one request continues a kept prefix."""

    prefix: Prefix
    ids: list[int]  # the request's full prompt
    reuse: int  # tokens the prefix can serve (common prefix, at most len(ids) - 1: one token is always fed)
    vision_end: int  # index after the last image token: the cached part must cover the images

    @property
    def suffix(self) -> int:
        return len(self.ids) - self.reuse


class PrefixStore:
    """Kept prefixes, oldest dropped first once they hold more than `max_tokens` tokens.

    First in, first out (not least recently used): stage 1 of the next labeler call replaces the stage 1 of
    the last, whose stage 2 is done; a used prefix stays no longer than it would have.
    """

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.tokens = 0
        self._order: deque[Prefix] = deque()
        self._by_images: dict[tuple[str, ...], list[Prefix]] = {}

    def __len__(self) -> int:
        return len(self._order)

    def add(self, prefix: Prefix) -> None:
        if len(prefix.ids) > self.max_tokens:
            return
        self._order.append(prefix)
        self._by_images.setdefault(prefix.images, []).append(prefix)
        self.tokens += len(prefix.ids)
        while self.tokens > self.max_tokens:
            old = self._order.popleft()
            self._by_images[old.images].remove(old)
            if not self._by_images[old.images]:
                del self._by_images[old.images]
            self.tokens -= len(old.ids)

    def candidates(self, images: tuple[str, ...]) -> list[Prefix]:
        return self._by_images.get(images, [])

    def clear(self) -> None:
        self._order.clear()
        self._by_images.clear()
        self.tokens = 0


def plan(store: PrefixStore, raw_ids: list[int], images: tuple[str, ...], image_token_id: int) -> Plan | None:
    """The kept prefix that serves most of a request, given its ids with one placeholder per image.

    None when no prefix has the same images or shares at least every image token with the request (a suffix
    with an image would need the vision tower and fresh 3D positions: such a request is fed in full).
    """
    candidates = store.candidates(images)
    if not candidates:
        return None
    ids = expand_images(raw_ids, image_token_id, candidates[0].image_tokens)
    if ids is None or len(ids) < 2:
        return None
    best = max(candidates, key=lambda p: common_prefix(p.ids, ids))
    reuse = min(common_prefix(best.ids, ids), len(ids) - 1)
    vision_end = after_last(ids, image_token_id)
    if reuse == 0 or reuse < vision_end:
        return None
    return Plan(best, ids, reuse, vision_end)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, P + S]: generate feeds only the last S columns, the first P are cached
    attention_mask: torch.Tensor  # [B, P + S]
    position_ids: torch.Tensor  # [4, B, P + S]: text positions, then mrope (time, height, width) positions
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer keys, values: [B, kv_heads, P, dim]
    columns: list[list[int]]  # per row, the columns that hold its prompt's tokens (the rest is padding)


def assemble(plans: list[Plan], pad_token_id: int, device) -> Batch:
    """One batch: each row's cached part right-aligned in the first P columns, its suffix in the last S.

    The padding between a short suffix and the cache sits in the middle of the row: the attention mask hides
    it, and positions count only a row's own tokens, so each row sees exactly its own prompt.
    """
    width = max(p.reuse for p in plans)  # P
    suffix = max(p.suffix for p in plans)  # S
    total = width + suffix
    n = len(plans)
    input_ids = torch.full((n, total), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, total), dtype=torch.long)
    columns = []
    for b, p in enumerate(plans):
        cols = [*range(width - p.reuse, width), *range(total - p.suffix, total)]
        input_ids[b, cols] = torch.tensor(p.ids, dtype=torch.long)
        attention_mask[b, cols] = 1
        columns.append(cols)
    text = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    deltas = torch.tensor([p.prefix.rope_delta for p in plans], dtype=torch.long).view(n, 1)
    position_ids = torch.cat([text[None], (text + deltas)[None].expand(3, -1, -1)], dim=0)

    layers = []
    for layer in range(len(plans[0].prefix.layers)):
        k0, v0 = plans[0].prefix.layers[layer]
        keys = k0.new_zeros((n, k0.shape[0], width, k0.shape[-1]))
        values = v0.new_zeros((n, v0.shape[0], width, v0.shape[-1]))
        for b, p in enumerate(plans):
            k, v = p.prefix.layers[layer]
            keys[b, :, width - p.reuse :] = k[:, : p.reuse]
            values[b, :, width - p.reuse :] = v[:, : p.reuse]
        layers.append((keys.to(device), values.to(device)))
    return Batch(input_ids.to(device), attention_mask.to(device), position_ids.to(device), layers, columns)


def fed_length(generated: list[int], stop_ids: list[int], cache_width: int, prompt_width: int) -> int:
    """How many generated tokens of a row have KV in the cache: up to its first stop token, at most what was fed.

    The last generated token is never fed, and a finished row keeps being fed padding, which is not kept.
    """
    fed = min(max(0, cache_width - prompt_width), len(generated))
    for i, tok in enumerate(generated[:fed]):
        if tok in stop_ids:
            return i + 1
    return fed


def take(
    layers: list[tuple[torch.Tensor, torch.Tensor]], row: int, columns: list[int]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One row's KV at `columns`, copied out of the batch cache (so the batch tensors can be freed)."""
    index = torch.tensor(columns, dtype=torch.long, device=layers[0][0].device)
    return [(k[row].index_select(1, index), v[row].index_select(1, index)) for k, v in layers]
