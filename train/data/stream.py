"""The per-rank stream: reads a worker's plan, shuffles, decodes, skips bad samples, batches.

Positions count samples in the order a worker consumes them (after the within-block shuffle), bad
ones included. A worker's state is (position, batches yielded, counters); restoring it re-reads
the current shuffle block's raw bytes, re-applies the same permutation and drops what was already
consumed, so nothing consumed is decoded again and the next batch is exactly the one that followed.
"""

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from train.data.layout import EpochLayout, Segment, WorkerPlan, plan_epoch, rng_for
from train.data.masking import MaskGenerator
from train.data.sources import Bad, RawSample, Source

log = logging.getLogger(__name__)

LOG_FIRST = 10  # bad samples logged one by one per worker and epoch, then ...
LOG_EVERY_S = 60.0  # ... at most one summary line per this many seconds
PAD_LABEL = -1  # eval samples repeated only to fill the rank's last batch: ignore them in metrics


@dataclass
class WorkerState:
    """Where a worker stands in the current epoch; what checkpoints save per worker."""

    position: int = 0
    batches: int = 0
    seen: int = 0
    bad: int = 0
    padded: int = 0
    bad_kinds: dict[str, int] = field(default_factory=dict)


class Cursor:
    """Raw samples along an infinite iterator of segments, starting `start` samples in.

    Whole segments before `start` are passed over unopened; inside the first one the source skips
    members without reading their data.
    """

    def __init__(self, source: Source, segments: Iterator[Segment], start: int) -> None:
        self.source, self.segments = source, segments
        self.items: Iterator[RawSample | Bad] = iter(())
        self.left = 0  # items left in the open segment
        self.wrap = False
        self.skip = start

    def _open(self) -> None:
        seg = next(self.segments)
        while self.skip >= len(seg):
            self.skip -= len(seg)
            seg = next(self.segments)
        self.items = self.source.read(seg.unit, seg.start + self.skip, seg.stop)
        self.left, self.wrap, self.skip = len(seg) - self.skip, seg.wrap, 0

    def take(self, n: int) -> list[tuple[RawSample | Bad, bool]]:
        out = []
        while len(out) < n:
            if self.left == 0:
                self._open()
            out.append((next(self.items), self.wrap))
            self.left -= 1
        return out


class StreamDataset(IterableDataset):
    """Yields whole batches `(images, target, meta)` for one rank; see loader.Loader for the wrapper.

    target: the mask (B, H/p, W/p) int64 for "simmim", labels (B,) int64 otherwise.
    meta: the yielding worker's logical id and its WorkerState after this batch.
    """

    def __init__(
        self,
        source: Source,
        transform: Any,
        *,
        task: str,
        batch_size: int,
        rank: int,
        world_size: int,
        num_workers: int,
        seed: int,
        shuffle: bool,
        shuffle_buffer: int,
        resampled: bool,
        samples_per_epoch: int | None,
        num_classes: int | None,
        mask_generator: MaskGenerator | None,
    ) -> None:
        super().__init__()
        if sum(source.counts) < world_size:
            raise ValueError(f"{source.describe()} has fewer samples than the {world_size} ranks")
        self.source, self.transform, self.task = source, transform, task
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.num_workers, self.seed = max(1, num_workers), seed
        self.shuffle, self.block = shuffle, max(1, shuffle_buffer) if shuffle else 1
        self.resampled, self.samples_per_epoch = resampled, samples_per_epoch
        self.num_classes, self.mask_generator = num_classes, mask_generator
        self.epoch = 0
        self.states = [WorkerState() for _ in range(self.num_workers)]
        # DataLoader worker d plays logical worker (d + rotation) % num_workers: after a restore at
        # rank batch k, worker 0 must produce batch k, which belongs to logical worker k % num_workers.
        self.rotation = 0

    def plan(self) -> tuple[EpochLayout, list[WorkerPlan]]:
        return plan_epoch(
            self.source.counts,
            epoch=self.epoch,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
            num_workers=self.num_workers,
            batch_size=self.batch_size,
            drop_last=self.task != "eval",
            shuffle=self.shuffle,
            resampled=self.resampled,
            samples_per_epoch=self.samples_per_epoch,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        info = get_worker_info()
        if info is None:
            logical = list(range(self.num_workers))  # in-process: interleave the workers ourselves
        else:
            torch.set_num_threads(1)  # 2 threads per worker oversubscribe the cores (40x slower ops)
            logical = [(info.id + self.rotation) % self.num_workers]
        _, plans = self.plan()
        streams = [self._worker(w, plans[w]) for w in logical]
        if info is not None:
            yield from streams[0]
            return
        # Same order as DataLoader's round robin over workers, starting at the rotation.
        active = [streams[(d + self.rotation) % self.num_workers] for d in range(self.num_workers)]
        while active:
            for s in list(active):
                try:
                    yield next(s)
                except StopIteration:
                    active.remove(s)

    def _worker(self, w: int, plan: WorkerPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        st = WorkerState(**{**asdict(self.states[w]), "bad_kinds": dict(self.states[w].bad_kinds)})
        quota = len(plan.batch_sizes)
        if st.batches >= quota:
            return
        start, size = plan.block(st.position, self.block)
        cursor = Cursor(self.source, plan.segments, start)
        logger = _BadLog(self.rank, w)
        images, targets = [], []
        consecutive_bad = 0
        cycle = sum(self.source.counts) + 1
        while True:
            items = cursor.take(size)
            order = list(range(size))
            if self.shuffle:
                rng_for(self.seed, self.epoch, self.rank, w, start, 2).shuffle(order)
            for j in order[st.position - start :]:
                item, wrap = items[j]
                sample_seed = hash((self.seed, self.epoch, self.rank, w, st.position)) & 0x7FFFFFFF
                st.position += 1
                out = self._sample(item, wrap, sample_seed, st, logger)
                if out is None:
                    consecutive_bad += 1
                    if consecutive_bad >= cycle:
                        raise RuntimeError(f"no readable sample in {self.source.describe()} (rank {self.rank})")
                    continue
                consecutive_bad = 0
                images.append(out[0])
                targets.append(out[1])
                if len(images) == plan.batch_sizes[st.batches]:
                    st.batches += 1
                    meta = {"worker": w, "state": asdict(st)}
                    yield self.transform.collate(images), torch.from_numpy(np.stack(targets)), meta
                    images, targets = [], []
                    if st.batches == quota:
                        logger.summary(st)
                        return
            start, size = plan.block(st.position, self.block)

    def _sample(
        self, item: RawSample | Bad, wrap: bool, seed: int, st: WorkerState, logger: "_BadLog"
    ) -> tuple[torch.Tensor, np.ndarray | np.int64] | None:
        """(image, target), or None for a bad sample, which is counted and logged.

        Wrapped samples were read once already (by this worker or another of the rank), so a bad
        one is not counted again: the bad fraction stays a fraction of distinct samples.
        """
        out = self._decode(item, wrap, seed)
        if isinstance(out, tuple):
            st.seen += 1
            st.padded += wrap
            return out
        if not wrap:
            st.seen += 1
            st.bad += 1
            st.bad_kinds[out.kind] = st.bad_kinds.get(out.kind, 0) + 1
            logger(st, out)
        return None

    def _decode(self, item: RawSample | Bad, wrap: bool, seed: int) -> tuple[torch.Tensor, Any] | Bad:
        if isinstance(item, Bad):
            return item
        label: int | None = None
        if self.task != "simmim":
            label, error = _parse_label(item.label, self.num_classes)
            if error:
                return Bad(item.url, item.key, "label", error)
        if item.image is None:
            return Bad(item.url, item.key, "no_image", "no jpg/jpeg/png/webp member")
        try:
            image = self.transform(item.image, seed)
        except Exception as exc:  # any decoder error: corrupt, truncated, empty, unknown format
            return Bad(item.url, item.key, "decode", f"{type(exc).__name__}: {exc}")
        if self.task == "simmim":
            return image, self.mask_generator(np.random.default_rng(seed))
        return image, np.int64(PAD_LABEL if wrap and self.task == "eval" else label)


def _parse_label(raw: bytes | int | None, num_classes: int | None) -> tuple[int | None, str]:
    if raw is None:
        return None, "missing label (.cls)"
    if isinstance(raw, bytes):
        text = raw.decode("utf-8", "replace").strip()
        try:
            raw = int(text)
        except ValueError:
            return None, f"label {text[:20]!r} is not an integer"
    if raw < 0 or (num_classes is not None and raw >= num_classes):
        return None, f"label {raw} outside [0, {num_classes})"
    return raw, ""


class _BadLog:
    """Rate-limited warnings: the first LOG_FIRST bad samples, then a summary every LOG_EVERY_S."""

    def __init__(self, rank: int, worker: int) -> None:
        self.where = f"rank {rank} worker {worker}"
        self.last = 0.0

    def __call__(self, st: WorkerState, bad: Bad) -> None:
        now = time.monotonic()
        if st.bad <= LOG_FIRST or now - self.last >= LOG_EVERY_S:
            self.last = now
            log.warning("bad sample skipped (%s, %s): %s key %s: %s [%d bad of %d read]",
                        bad.kind, self.where, bad.url, bad.key, bad.reason, st.bad, st.seen)  # fmt: skip

    def summary(self, st: WorkerState) -> None:
        if st.bad > LOG_FIRST:
            log.warning("%s: %d bad samples of %d this epoch %s", self.where, st.bad, st.seen, st.bad_kinds)
