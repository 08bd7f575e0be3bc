"""`noisy_oracle`: the oracle's labels with their timing partly destroyed, a labeler of known quality.

`rgvlm label --engine noisy_oracle labeler.oracle_noise=P` starts from the oracle's labels for the episode (the
same as `oracle.oracle_label`) and, with probability p = P independently per step, selects the step for
replacement. The labels (score and reward together) of the selected steps are then shuffled among themselves
by a uniformly random permutation, so each selected step gets the label of a step drawn uniformly from the
selected ones (possibly its own); the other steps keep theirs.

Why a permutation over the selected steps rather than independent draws with replacement from the whole
episode: the episode's multiset of rewards is kept exactly, so the reward's marginal distribution and the
per-episode total (the number of completed sub-tasks) are unchanged at every p, and only the timing is
destroyed. p = 0 is the oracle; p = 1 is a full shuffle within the episode, the null baseline `rgvlm
label-report` computes ("shuffled baseline"). Independent draws would change the total and, at p = 1, would not
be a shuffle.

Each replaced step's `message` says whose label it got ("label of step J", 1-based); other steps have "".
Labels are deterministic: the RNG is seeded from (episode_id, p, `labeler.oracle_noise_seed`) through
SHA-256, not Python's salted hash(), so reruns, other workers and other machines agree.

The labeler's name and column prefix is `noisyNN`, NN = round(100 p) as two digits (noisy10, noisy30,
noisy100), so several levels sit side by side on one dataset next to `oracle`. Names have 1% resolution:
p = 0.3 and 0.304 both write `noisy30` (with different fingerprints, so one relabels over the other).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from rgvlm_ray.data import format as fmt
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelers import oracle

KIND = "noisy_oracle"
VERSION = "noisy-oracle-v1"


def check_noise(p: float) -> float:
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise UsageError(f"labeler.oracle_noise must be a number in [0, 1], got {p!r}") from None
    if not 0.0 <= p <= 1.0:  # also rejects nan
        raise UsageError(
            f"labeler.oracle_noise must be in [0, 1] (the probability that a step's label is replaced), got {p}"
        )
    return p


def noisy_name(p: float) -> str:
    """The labeler name (column prefix) for noise level p: noisy_name(0.3) == "noisy30"."""
    return f"{fmt.NOISY_PREFIX}{round(100 * check_noise(p)):02d}"


def noise_of(name: str) -> float | None:
    """The noise level a labeler name stands for (noise_of("noisy30") == 0.3), or None for other names."""
    percent = fmt.noisy_percent(name)
    return None if percent is None else percent / 100


def spec(p: float, seed: int) -> dict:
    """Everything that can change the labels (fingerprint input)."""
    return {
        "labeler": noisy_name(p),
        "version": VERSION,
        "oracle": oracle.VERSION,
        "noise": float(p),
        "seed": int(seed),
    }


def fingerprint(p: float, seed: int) -> str:
    blob = json.dumps(spec(p, seed), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def episode_rng(episode_id: str, p: float, seed: int) -> np.random.Generator:
    key = f"{VERSION}\0{episode_id}\0{float(p)!r}\0{int(seed)}".encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:16], "little"))


def donors(t: int, p: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(donor, selected): step i gets the label of step donor[i]; the selected steps (each with probability p)
    are permuted among themselves, the others are their own donors."""
    selected = rng.random(t) < p
    donor = np.arange(t)
    donor[selected] = rng.permutation(donor[selected])
    return donor, selected


def noisy_label(row: dict, p: float, seed: int) -> dict:
    """Label columns (format.LABEL_FIELDS under the `noisyNN` prefix) for one episode row."""
    p = check_noise(p)
    clean = oracle.oracle_label(row)
    get = lambda suffix: clean[fmt.label_column(oracle.NAME, suffix)]  # noqa: E731
    score, reward = get("score"), get("reward")
    donor, selected = donors(len(reward), p, episode_rng(str(row.get("episode_id")), p, seed))
    name = noisy_name(p)
    col = lambda suffix: fmt.label_column(name, suffix)  # noqa: E731
    out = {col(suffix): get(suffix) for suffix in fmt.LABEL_FIELDS}
    out[col("score")] = [score[j] for j in donor]
    out[col("reward")] = [reward[j] for j in donor]
    out[col("message")] = [
        f"label of step {j + 1}" if s else "" for j, s in zip(donor, selected, strict=True)
    ]
    out[col("fingerprint")] = fingerprint(p, seed)
    return out
