"""The hf engine's kept stage-1 caches (prefix_cache.py) without a model: matching, eviction, batch layout."""

from __future__ import annotations

import torch
from PIL import Image

from rgvlm_ray.labelers.engines import prefix_cache as pc

IMG = 9  # the image placeholder token id in these tests


def prefix(ids: list[int], images=("a",), image_tokens=(3,), delta: int = 5, heads: int = 2) -> pc.Prefix:
    n = len(ids)
    # Key j of the prefix holds the value j, so the tests can see which cached token lands where.
    k = torch.arange(n, dtype=torch.float32).view(1, n, 1).expand(heads, n, 4).clone()
    return pc.Prefix(ids, tuple(images), tuple(image_tokens), [(k, -k)], delta)


def test_image_digest_is_the_pixels():
    a, b = Image.new("RGB", (8, 8), (1, 2, 3)), Image.new("RGB", (8, 8), (1, 2, 3))
    assert pc.image_digest(a) == pc.image_digest(b)
    assert pc.image_digest(a) != pc.image_digest(Image.new("RGB", (8, 8), (1, 2, 4)))
    assert pc.image_digest(a) != pc.image_digest(Image.new("RGB", (4, 16), (1, 2, 3)))


def test_image_placeholders_expand_to_their_runs():
    ids = [1, IMG, IMG, IMG, 2, IMG, IMG, 3]
    assert pc.image_runs(ids, IMG) == [3, 2]
    assert pc.expand_images([1, IMG, 2, IMG, 3], IMG, [3, 2]) == ids
    assert pc.expand_images([1, IMG, 2], IMG, [3, 2]) is None  # fewer placeholders than images
    assert pc.expand_images([1, IMG, 2, IMG], IMG, [3]) is None


def test_plan_takes_the_longest_common_prefix_over_the_same_images():
    store = pc.PrefixStore(1000)
    short = prefix([1, IMG, IMG, IMG, 2, 3])
    longer = prefix([1, IMG, IMG, IMG, 2, 3, 4, 5, 6])  # e.g. stage 1's prompt and its answer
    other = prefix([1, IMG, IMG, IMG, 2, 3, 4, 5, 6], images=("b",))
    for p in (short, longer, other):
        store.add(p)
    plan = pc.plan(store, [1, IMG, 2, 3, 4, 5, 7, 8], ("a",), IMG)
    assert plan.prefix is longer and plan.ids == [1, IMG, IMG, IMG, 2, 3, 4, 5, 7, 8]
    assert plan.reuse == 8 and plan.suffix == 2 and plan.vision_end == 4
    # Same tokens, other pixels: nothing to reuse.
    assert pc.plan(store, [1, IMG, 2, 3], ("c",), IMG) is None
    # At least one token is always fed, even when the whole prompt is cached.
    assert pc.plan(store, [1, IMG, 2, 3, 4], ("a",), IMG).reuse == 6
    # A request whose prompt leaves the cache before its image ends is fed in full (pixels and all).
    store.add(prefix([1, 8, IMG, IMG, IMG, 2], images=("d",)))
    assert pc.plan(store, [1, 7, IMG, 2, 5], ("d",), IMG) is None


def test_store_drops_the_oldest_beyond_its_token_budget():
    store = pc.PrefixStore(10)
    a, b, c = prefix([1] * 4, images=("a",)), prefix([2] * 4, images=("b",)), prefix([3] * 4, images=("c",))
    store.add(a)
    store.add(b)
    assert len(store) == 2 and store.tokens == 8
    store.add(c)
    assert store.candidates(("a",)) == [] and store.candidates(("c",)) == [c] and store.tokens == 8
    store.add(prefix([4] * 11))  # larger than the whole budget: not kept, nothing dropped
    assert len(store) == 2


def test_assemble_right_aligns_cache_and_suffix_with_own_positions():
    p1 = pc.Plan(prefix([1, IMG, IMG, IMG, 2, 3, 4], delta=-10), [1, IMG, IMG, IMG, 2, 3, 4, 5, 6], 7, 4)
    p2 = pc.Plan(prefix([1, IMG, IMG, IMG, 2], delta=3), [1, IMG, IMG, IMG, 2, 7, 8, 9, 10], 5, 4)
    b = pc.assemble([p1, p2], pad_token_id=0, device="cpu")
    # P = 7 cached columns, S = 4 fed columns; each row ends in the last column.
    assert b.input_ids.tolist() == [
        [1, IMG, IMG, IMG, 2, 3, 4, 0, 0, 5, 6],
        [0, 0, 1, IMG, IMG, IMG, 2, 7, 8, 9, 10],
    ]
    assert b.attention_mask.tolist() == [[1] * 7 + [0, 0, 1, 1], [0, 0] + [1] * 9]
    assert b.columns == [[0, 1, 2, 3, 4, 5, 6, 9, 10], list(range(2, 11))]
    text = b.position_ids[0]
    assert text[0, [9, 10]].tolist() == [7, 8] and text[1, 7:].tolist() == [5, 6, 7, 8]  # padding not counted
    assert (b.position_ids[1:, 0] == text[0] - 10).all() and (b.position_ids[1:, 1] == text[1] + 3).all()
    keys, values = b.layers[0]
    assert keys.shape == (2, 2, 7, 4)
    assert keys[0, 0, :, 0].tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert keys[1, 1, :, 0].tolist() == [0, 0, 0, 1, 2, 3, 4] and (values == -keys).all()


def test_fed_length_stops_at_the_first_stop_token_and_what_was_fed():
    # prompt width 5, cache holds 9 columns: 4 generated tokens were fed.
    assert pc.fed_length([7, 8, 2, 0, 0], stop_ids=[2], cache_width=9, prompt_width=5) == 3
    assert pc.fed_length([7, 8, 6, 5, 4], stop_ids=[2], cache_width=9, prompt_width=5) == 4
    layers = [(torch.arange(12.0).view(1, 1, 12, 1), torch.zeros(1, 1, 12, 1))]
    kept = pc.take(layers, 0, [2, 3, 7])
    assert kept[0][0].view(-1).tolist() == [2.0, 3.0, 7.0]
