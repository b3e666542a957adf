"""Positives-aware batch sampler (the idea of MinkLoc3D's ``BatchSampler``), reproducible and DDP-ready.

Each batch of size B holds B/2 pairs of mutual positives, so every anchor has a positive in its batch and the
batch-hard triplet loss sees hard negatives from other places. Per epoch (seeded by ``(seed, epoch)``):
elements are visited in a random order; an unused element takes a random unused mutual positive as its partner;
an element whose positives are all used is left out for this epoch (upstream re-uses a used positive instead, so
an element can appear twice per epoch there; here no element appears twice). Pairs are then cut into batches;
a last partial batch is kept when it holds at least ``min_pairs`` pairs (unless ``drop_last``).

Batch expansion: :meth:`set_batch_size` / :meth:`expand_batch` change B for the next epoch (the training loop
decides when, e.g. from the loss's non-zero triplet share). With ``num_replicas`` > 1 every rank builds the same
batch list (same seed and epoch) and takes its part of it (``partition``):

- ``"batches"``: the list is trimmed to a multiple of ``num_replicas`` and ``rank`` takes every
  ``num_replicas``-th batch: disjoint, equally many batches per rank, ``batch_size`` per rank;
- ``"shards"`` (the training loops' DDP mode): every global batch is cut into ``num_replicas`` contiguous shards
  (sizes differ by at most one) and ``rank`` takes shard ``rank`` of each: the union of the ranks' batches of one
  step is exactly the single-process batch of ``batch_size`` (the global batch), in the same order. A last batch
  with fewer items than ``num_replicas`` is dropped (every rank needs at least one item).

Call :meth:`set_epoch` before each epoch (as with torch's ``DistributedSampler``), or every epoch repeats the
same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
from torch.utils.data import Sampler

MIN_BATCH_SIZE = 4  # two pairs of positives: the fewest rows in which every anchor has a positive and a negative


class HasPositives(Protocol):
    def __len__(self) -> int: ...

    def positives(self, i: int) -> np.ndarray: ...


class PositivePairBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` dataset indices made of ``batch_size // 2`` pairs of mutual positives.

    Args:
        tuples: the dataset or its ``tuples`` (anything with ``len()`` and ``positives(i)`` → sorted indices).
        batch_size: even, ≥ 2 (per rank).
        seed: base seed; the batches depend on ``(seed, epoch, batch_size)`` only.
        drop_last: drop a last batch smaller than ``batch_size``.
        min_pairs: smallest last batch kept (in pairs) when not ``drop_last``; 2 gives every anchor a negative
            candidate from another pair.
        num_replicas, rank: DDP partition (default: one replica).
        partition: ``"batches"`` (whole batches per rank) or ``"shards"`` (a share of every global batch per
            rank; ``batch_size`` is then the global batch size); see the module doc.
    """

    PARTITIONS = ("batches", "shards")

    def __init__(self, tuples: HasPositives, batch_size: int, seed: int = 0, drop_last: bool = False,
                 min_pairs: int = 2, num_replicas: int | None = None, rank: int | None = None,
                 partition: str = "batches"):
        self.tuples = tuples
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.min_pairs = int(min_pairs)
        self.num_replicas = 1 if num_replicas is None else int(num_replicas)
        self.rank = 0 if rank is None else int(rank)
        if self.num_replicas < 1 or not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}")
        if partition not in self.PARTITIONS:
            raise ValueError(f"partition must be one of {self.PARTITIONS}, got {partition!r}")
        self.partition = partition
        self.epoch = 0
        self.batch_size = 0
        self.set_batch_size(batch_size)
        self._cache: tuple[tuple[int, int], list[list[int]]] | None = None
        self._pairs_cache: tuple[int, list[tuple[int, int]]] | None = None

    # ------------------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_batch_size(self, batch_size: int) -> None:
        """Use ``batch_size`` (even, ≥ 4) from the next iteration on.

        Batches are pairs of mutual positives from different places: two pairs are the fewest that give every
        anchor a positive and a negative (one pair forms no triplet and trains nothing).
        """
        batch_size = int(batch_size)
        if batch_size < MIN_BATCH_SIZE or batch_size % 2:
            raise ValueError(f"batch_size must be even and at least {MIN_BATCH_SIZE} (two pairs of positives, so "
                             f"that every anchor has a positive and a negative), got {batch_size}")
        self.batch_size = batch_size

    def expand_batch(self, rate: float = 1.4, limit: int | None = None) -> int:
        """Grow the batch size by ``rate`` (rounded down to even, at least +2), capped at ``limit``; returns it."""
        new = max(self.batch_size + 2, int(self.batch_size * rate) // 2 * 2)
        if limit is not None:
            new = min(new, int(limit) // 2 * 2)
        self.set_batch_size(max(new, MIN_BATCH_SIZE))
        return self.batch_size

    # ------------------------------------------------------------------------------------------------------
    def pairs(self, epoch: int | None = None) -> list[tuple[int, int]]:
        """This epoch's pairs of mutual positives, in batch order (the same on every rank)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._pairs_cache is not None and self._pairs_cache[0] == epoch:
            return self._pairs_cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.tuples)
        used = np.zeros(n, bool)
        pairs: list[tuple[int, int]] = []
        for a in rng.permutation(n):
            if used[a]:
                continue
            used[a] = True
            cand = np.asarray(self.tuples.positives(int(a)), np.int64)
            cand = cand[(cand != a) & ~used[cand]]
            if cand.size == 0:
                continue
            mutual = np.array([_contains(self.tuples.positives(int(j)), a) for j in cand], bool)
            cand = cand[mutual]
            if cand.size == 0:
                continue
            b = int(cand[rng.integers(cand.size)])
            used[b] = True
            pairs.append((int(a), b))
        self._pairs_cache = (epoch, pairs)
        return pairs

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All ranks' batches of an epoch, before the DDP partition (``"batches"``: trimmed to a multiple of
        ``num_replicas``; ``"shards"``: without a last batch smaller than ``num_replicas``)."""
        epoch = self.epoch if epoch is None else int(epoch)
        pairs = self.pairs(epoch)
        per = self.batch_size // 2
        batches = [[i for p in pairs[s:s + per] for i in p] for s in range(0, len(pairs), per)]
        short = bool(batches) and len(batches[-1]) < self.batch_size
        if short and (self.drop_last or len(batches[-1]) < 2 * self.min_pairs):
            batches.pop()
        if self.partition == "shards":
            if batches and len(batches[-1]) < self.num_replicas:
                batches.pop()
            return batches
        usable = len(batches) // self.num_replicas * self.num_replicas
        return batches[:usable]

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches of an epoch."""
        epoch = self.epoch if epoch is None else int(epoch)
        key = (epoch, self.batch_size)
        if self._cache is None or self._cache[0] != key:
            full = self.global_batches(epoch)
            if self.partition == "shards":
                mine = [b[_shard(len(b), self.rank, self.num_replicas)] for b in full]
            else:
                mine = full[self.rank::self.num_replicas]
            self._cache = (key, mine)
        return self._cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        yield from (list(b) for b in self.batches())

    def __len__(self) -> int:
        return len(self.batches())

    def __repr__(self) -> str:
        return (f"PositivePairBatchSampler(items={len(self.tuples)}, batch_size={self.batch_size}, seed={self.seed}, "
                f"epoch={self.epoch}, rank={self.rank}/{self.num_replicas}, partition={self.partition!r})")


def _shard(n: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous share of ``n`` items (sizes differ by at most one, larger shards first)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def _contains(sorted_values: np.ndarray, x: int) -> bool:
    sorted_values = np.asarray(sorted_values)
    k = int(np.searchsorted(sorted_values, x))
    return k < len(sorted_values) and int(sorted_values[k]) == int(x)
