"""Which samples each rank and worker reads in an epoch, and how many batches each yields.

Splitting is by sample, not by shard: the epoch's sample sequence (units in an order shuffled from
(seed, epoch)) is cut into one contiguous range per rank, and each rank's range into one per
DataLoader worker. Every rank gets the same number of batches, every sample belongs to exactly one
range, and the split is correct however few shards there are (workers then share a shard, each
skipping to its own range).

Batch i of a rank comes from worker i % num_workers: the order in which DataLoader collects batches
from its workers, so the rank's batch sequence is fixed and a restored stream continues it exactly.
After its own range a worker continues over its rank's range again ("wrap"): that only happens when
bad samples left it short, and keeps its batch count. Eval marks wrapped samples so they can be
ignored; training uses them as ordinary samples.
"""

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    """Samples [start, stop) of unit `unit`; `wrap` marks samples beyond the worker's own range."""

    unit: int
    start: int
    stop: int
    wrap: bool = False

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass
class WorkerPlan:
    """What one worker of one rank reads in one epoch."""

    batch_sizes: list[int]
    segments: Iterator[Segment]  # infinite
    own: int | None  # samples in the worker's own range (None: resampled, no wrap)

    def block(self, position: int, size: int) -> tuple[int, int]:
        """(start, length) of the shuffle block holding `position`. Blocks restart at the end of the
        own range, so wrapped samples are never shuffled in among the worker's own."""
        if self.own is None or position < self.own:
            start = position // size * size
            return start, size if self.own is None else min(size, self.own - start)
        return self.own + (position - self.own) // size * size, size


@dataclass
class EpochLayout:
    batches_per_rank: int
    samples_per_rank: int  # samples the rank yields (train: batches * batch_size)


def rng_for(*keys: int) -> random.Random:
    """A generator keyed by integers (Python's int-tuple hash is not randomised between processes)."""
    return random.Random(hash(tuple(keys)))


def _segments(order: list[int], counts: list[int], lo: int, hi: int, wrap: bool) -> list[Segment]:
    """Positions [lo, hi) of the concatenation of `order`'s units, as segments."""
    out, offset = [], 0
    for u in order:
        a, b = max(lo, offset), min(hi, offset + counts[u])
        if a < b:
            out.append(Segment(u, a - offset, b - offset, wrap))
        offset += counts[u]
        if offset >= hi:
            break
    return out


def _cycle(segments: list[Segment]) -> Iterator[Segment]:
    while True:
        yield from segments


def _batch_sizes(n_batches: int, batch_size: int, last: int, workers: int) -> list[list[int]]:
    sizes = [batch_size] * n_batches
    if n_batches:
        sizes[-1] = last
    return [sizes[w::workers] for w in range(workers)]


def plan_epoch(
    counts: list[int],
    *,
    epoch: int,
    seed: int,
    rank: int,
    world_size: int,
    num_workers: int,
    batch_size: int,
    drop_last: bool,
    shuffle: bool,
    resampled: bool,
    samples_per_epoch: int | None,
) -> tuple[EpochLayout, list[WorkerPlan]]:
    """Layout of one epoch and the plans of this rank's workers (logical ids 0..num_workers-1)."""
    total = sum(counts)
    workers = max(1, num_workers)
    order = list(range(len(counts)))
    if resampled:
        n = samples_per_epoch or total
        batches = n // (world_size * batch_size)
        sizes = _batch_sizes(batches, batch_size, batch_size, workers)
        nonempty = [u for u in order if counts[u] > 0]
        plans = []
        for w in range(workers):
            rng = rng_for(seed, epoch, rank, w, 1)
            draws = (Segment(u, 0, counts[u]) for u in iter(lambda r=rng: r.choice(nonempty), None))
            plans.append(WorkerPlan(sizes[w], draws, None))
        return EpochLayout(batches, batches * batch_size), plans

    if shuffle:
        rng_for(seed, epoch, 0).shuffle(order)
    lo, hi = rank * total // world_size, (rank + 1) * total // world_size
    if drop_last:
        batches = (total // world_size) // batch_size
        per_rank = batches * batch_size
        last = batch_size
    else:
        per_rank = math.ceil(total / world_size)
        batches = math.ceil(per_rank / batch_size)
        last = per_rank - (batches - 1) * batch_size
    sizes = _batch_sizes(batches, batch_size, last, workers)
    rank_segments = _segments(order, counts, lo, hi, wrap=True)
    plans, start = [], lo
    for w in range(workers):
        need = sum(sizes[w])
        # The last worker also takes the rank's leftover samples (dropped in training unless bad
        # samples leave it short), so no sample is read by two workers.
        start_w, stop = start, hi if w == workers - 1 else min(hi, start + need)
        own = _segments(order, counts, start, stop, wrap=False)
        start = stop
        plans.append(WorkerPlan(sizes[w], _chain(own, rank_segments), stop - start_w))
    return EpochLayout(batches, per_rank), plans


def _chain(own: list[Segment], rank_segments: list[Segment]) -> Iterator[Segment]:
    yield from own
    if rank_segments:
        yield from _cycle(rank_segments)
