"""Goal-text vocabulary: built from the dataset's goals, saved as JSON beside the model weights."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+|,")


def tokenize(text: str) -> list[str]:
    """Lower-case words, with commas kept: "a, then b" chains sub-tasks, so the comma carries structure."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Vocab:
    tokens: tuple[str, ...]  # index 0 is <pad>, 1 is <unk>
    max_len: int  # longest goal seen in training, in tokens; longer goals at eval time are not cut

    @classmethod
    def build(cls, goals: Iterable[str], max_size: int = 1000) -> Vocab:
        counts: Counter[str] = Counter()
        max_len = 1
        for goal in goals:
            words = tokenize(goal)
            counts.update(words)
            max_len = max(max_len, len(words))
        # Most frequent first, ties alphabetical, so the same goals always give the same ids.
        words = sorted(counts, key=lambda w: (-counts[w], w))[: max(0, max_size - 2)]
        return cls((PAD, UNK, *words), max_len)

    def __len__(self) -> int:
        return len(self.tokens)

    def ids(self, text: str) -> list[int]:
        index = {t: i for i, t in enumerate(self.tokens)}
        return [index.get(w, 1) for w in tokenize(text)] or [1]

    def encode(self, goals: list[str], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids padded to `length` (default: the longest here), lengths) as int64 arrays."""
        index = {t: i for i, t in enumerate(self.tokens)}
        rows = [[index.get(w, 1) for w in tokenize(g)] or [1] for g in goals]
        width = length or max((len(r) for r in rows), default=1)
        out = np.zeros((len(rows), width), dtype=np.int64)
        lengths = np.zeros(len(rows), dtype=np.int64)
        for i, row in enumerate(rows):
            row = row[:width]
            out[i, : len(row)] = row
            lengths[i] = len(row)
        return out, lengths

    def unknown_words(self, text: str) -> list[str]:
        known = set(self.tokens)
        return sorted({w for w in tokenize(text) if w not in known})

    def clause_separator(self) -> int:
        """The id of "," (it separates a chained goal's sub-tasks), or -1 if no goal had one."""
        return self.tokens.index(",") if "," in self.tokens else -1

    def to_json(self) -> str:
        return json.dumps({"tokens": list(self.tokens), "max_len": self.max_len})

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        data = json.loads(text)
        return cls(tuple(data["tokens"]), int(data["max_len"]))
