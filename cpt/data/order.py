"""The order of a stage as a pure function of its seed: document shuffles and source interleaving.

Both are computed, not stored, so memory stays flat in corpus size and resuming is a seek:
- `DocumentOrder` is a keyed bijection on [0, n) (a Feistel network on the next power of four,
  cycle-walked back into range), a fresh key per source and epoch; position `q` of an epoch is
  document `order[q]` without any permutation array.
- `Interleave` spreads the sequences of every source evenly over the stage: source s, with n_s of
  the stage's N sequences, puts its j-th at time (j + 1/2) / n_s, and sequences are taken in time
  order (ties by source index). Every window of w sequences then holds each source's share to
  within about one sequence per source, from the first window to the last.
"""

from __future__ import annotations

import hashlib
import heapq
from fractions import Fraction

import numpy as np

_ROUNDS = 4
_M1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64's multipliers: a cheap, well-mixing round function
_M2 = np.uint64(0x94D049BB133111EB)


class DocumentOrder:
    """A seeded permutation of [0, n), evaluated on arrays of positions."""

    def __init__(self, n: int, key: str):
        self.n = n
        bits = max(2, int(n - 1).bit_length() if n > 1 else 2)
        self.half = (bits + 1) // 2
        self.mask = np.uint64((1 << self.half) - 1)
        digest = hashlib.sha256(key.encode()).digest()
        self.keys = [np.uint64(int.from_bytes(digest[8 * i : 8 * i + 8], "little")) for i in range(_ROUNDS)]

    def _round(self, right: np.ndarray, key: np.uint64) -> np.ndarray:
        z = (right ^ key) * _M1
        z ^= z >> np.uint64(31)
        z *= _M2
        z ^= z >> np.uint64(29)
        return z & self.mask

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        half = np.uint64(self.half)
        left, right = x >> half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ self._round(right, key)
        return (left << half) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """Documents at these positions of the order (positions within [0, n))."""
        with np.errstate(over="ignore"):
            x = self._feistel(np.asarray(positions, dtype=np.uint64))
            out = x >= self.n
            while out.any():  # cycle-walking: at most a few rounds, the domain is < 4n
                x[out] = self._feistel(x[out])
                out = x >= self.n
        return x.astype(np.int64)


def order_key(seed: int, source: str, epoch: int) -> str:
    return f"cpt-order:{seed}:{source}:{epoch}"


class Interleave:
    """Which source each sequence of the stage comes from, resumable from per-source counts."""

    def __init__(self, sequences: list[int], done: list[int] | None = None):
        self.sequences = sequences
        self.done = list(done) if done is not None else [0] * len(sequences)
        self._heap = [
            (Fraction(2 * d + 1, 2 * n), s)
            for s, (n, d) in enumerate(zip(sequences, self.done, strict=True))
            if d < n
        ]
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return sum(self.sequences)

    def position(self) -> int:
        return sum(self.done)

    def next(self) -> int:
        """The source of the next sequence (IndexError once the stage is over)."""
        if not self._heap:
            raise IndexError("the stage is over")
        _, s = heapq.heappop(self._heap)
        self.done[s] += 1
        if self.done[s] < self.sequences[s]:
            heapq.heappush(self._heap, (Fraction(2 * self.done[s] + 1, 2 * self.sequences[s]), s))
        return s
