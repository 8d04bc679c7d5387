"""`build_loader`: the one entry point the trainer calls, and the `Loader` it returns."""

import logging
import random
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from train.data.config import AugConfig, DataConfig, MaskConfig
from train.data.index import ShardListError
from train.data.masking import MaskGenerator
from train.data.sources import build_source
from train.data.stream import StreamDataset, WorkerState
from train.data.transforms import build_transform

log = logging.getLogger(__name__)

Task = Literal["simmim", "supervised", "eval"]


class BadDataError(RuntimeError):
    """Data a run cannot use as configured: more bad samples than `data.max_bad_fraction` allows,
    missing shards or index, or too few samples; the message names the setting to fix."""


class MissingDataError(BadDataError, FileNotFoundError):
    """Shards, their index or a dataset directory that is not there (or not readable)."""


class StreamLayoutError(ValueError):
    """A saved data position taken with another stream layout (`saved` / `current`: the layout keys)."""

    def __init__(self, message: str, saved: dict[str, Any], current: dict[str, Any]) -> None:
        super().__init__(message)
        self.saved, self.current = saved, current


class Loader:
    """Per-rank batches of one epoch; `len()` batches, the same on every rank.

    Yields `(images (B, 3, H, W) float, mask (B, H/4, W/4) int64)` for "simmim" and
    `(images, labels (B,) int64)` otherwise; in "eval", labels of samples repeated to fill the
    rank's last batch are -1 (PAD_LABEL) and must be ignored by metrics.

    Iterating runs one epoch from the current position; when it completes, the loader moves on to
    the next epoch by itself (`set_epoch` sets one explicitly). `state_dict()` taken after the
    trainer has used batch k lets `load_state_dict` continue at batch k + 1.
    """

    def __init__(
        self, dataset: StreamDataset, cfg: DataConfig, *, num_workers: int, setting: str = "data"
    ) -> None:
        self.dataset, self.cfg, self.num_workers = dataset, cfg, num_workers
        self.mask_generator = dataset.mask_generator
        self.mean, self.std = tuple(cfg.mean), tuple(cfg.std)
        self.num_classes = dataset.num_classes
        self.class_names = dataset.source.class_names
        self.bad_samples = 0  # over the loader's lifetime, for logging
        layout, _ = dataset.plan()
        self._len = layout.batches_per_rank
        self.samples_per_rank = layout.samples_per_rank
        if self._len == 0:
            raise BadDataError(
                f"{setting}: {dataset.source.describe()} gives no full batch of {dataset.batch_size} per rank on "
                f"{dataset.world_size} rank(s): lower batch_size (the per-rank batch is batch_size / (world size "
                "x optim.accum_steps)) or add data"
            )
        n_units = len(dataset.source.units)
        if n_units < dataset.world_size * dataset.num_workers and not dataset.resampled:
            log.info(
                "%d shards/units for %d ranks x %d workers: workers share units, each reading its own "
                "sample range (the split is by sample, so every sample is still read exactly once)",
                n_units, dataset.world_size, dataset.num_workers,
            )  # fmt: skip

    def __len__(self) -> int:
        return self._len

    @property
    def epoch(self) -> int:
        return self.dataset.epoch

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning, unless the loader already stands in it (after a restore)."""
        if epoch != self.dataset.epoch:
            self.dataset.epoch = epoch
            self._reset()

    def _reset(self) -> None:
        self.dataset.states = [WorkerState() for _ in range(self.dataset.num_workers)]

    @property
    def batches_done(self) -> int:
        return sum(s.batches for s in self.dataset.states)

    @property
    def stats(self) -> dict[str, Any]:
        """This epoch's counters on this rank (seen includes bad samples), for the trainer's log."""
        states = self.dataset.states
        kinds: dict[str, int] = {}
        for s in states:
            for k, v in s.bad_kinds.items():
                kinds[k] = kinds.get(k, 0) + v
        seen, bad = sum(s.seen for s in states), sum(s.bad for s in states)
        return {
            "epoch": self.epoch,
            "batches": self.batches_done,
            "seen": seen,
            "bad": bad,
            "bad_fraction": bad / seen if seen else 0.0,
            "bad_kinds": kinds,
            "padded": sum(s.padded for s in states),
            "bad_total": self.bad_samples,
        }

    def state_dict(self) -> dict[str, Any]:
        ds = self.dataset
        return {
            "epoch": ds.epoch,
            "workers": [asdict(s) for s in ds.states],
            "layout": self._layout_key(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved, current = state["layout"], self._layout_key()
        if saved != current:
            diff = ", ".join(f"{k} {saved.get(k)} (now {v})" for k, v in current.items() if saved.get(k) != v)
            raise StreamLayoutError(
                f"cannot resume the data stream exactly: it was saved with {diff}; a restored position needs "
                "the same rank, world size, data.num_workers, per-rank batch size, seed and shard set",
                saved,
                current,
            )
        self.dataset.epoch = int(state["epoch"])
        self.dataset.states = [WorkerState(**s) for s in state["workers"]]

    def _layout_key(self) -> dict[str, Any]:
        ds = self.dataset
        return {
            "rank": ds.rank,
            "world_size": ds.world_size,
            "num_workers": ds.num_workers,
            "batch_size": ds.batch_size,
            "seed": ds.seed,
            "samples": sum(ds.source.counts),
            "units": len(ds.source.units),
        }

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.batches_done >= self._len:  # the stored epoch is complete: go on to the next
            self.dataset.epoch += 1
            self._reset()
        # Continuing a part-read epoch (restored, or a loop left early): the next batch belongs to
        # logical worker batches_done % num_workers, so DataLoader's worker 0 must play that one.
        self.dataset.rotation = self.batches_done % self.dataset.num_workers
        before = self.bad_samples - sum(s.bad for s in self.dataset.states)
        for images, target, meta in self._batches():
            self.dataset.states[meta["worker"]] = WorkerState(**meta["state"])
            self.bad_samples = before + sum(s.bad for s in self.dataset.states)
            self._check_bad(final=False)
            yield images, target
        self._check_bad(final=True)

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        if self.num_workers == 0:
            yield from _preserving_rng(iter(self.dataset))
            return
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.num_workers,
            prefetch_factor=self.cfg.prefetch_factor,
            pin_memory=self.cfg.pin_memory and torch.cuda.is_available(),
            persistent_workers=False,  # workers must see the epoch and restored state of each __iter__
            # Its own generator: DataLoader otherwise draws worker seeds from the global torch RNG at
            # every iter(), and a resumed run (which calls iter() mid-epoch) would train on other
            # drop-path masks than an uninterrupted one.
            generator=torch.Generator().manual_seed(hash((self.dataset.seed, self.dataset.epoch))),
        )
        yield from loader

    def _check_bad(self, *, final: bool) -> None:
        s = self.stats
        if s["bad"] == 0 or (s["seen"] < self.cfg.bad_check_after and not final):
            return
        if s["bad_fraction"] > self.cfg.max_bad_fraction:
            raise BadDataError(
                f"{s['bad']} of {s['seen']} samples read on rank {self.dataset.rank} in epoch {self.epoch} "
                f"were bad ({s['bad_fraction']:.2%} > data.max_bad_fraction={self.cfg.max_bad_fraction:.2%}; "
                f"kinds {s['bad_kinds']}) in {self.dataset.source.describe()}. The warnings above name "
                "shards and keys; fix or re-write those shards, or raise data.max_bad_fraction"
            )


def _preserving_rng(it: Iterator) -> Iterator:
    """In the main process the per-sample seeding of timm transforms would overwrite the trainer's
    global `random`, numpy and torch generators: restore them around every batch."""
    while True:
        py, pt, npy = random.getstate(), torch.get_rng_state(), np.random.get_state()
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            random.setstate(py)
            torch.set_rng_state(pt)
            np.random.set_state(npy)
        yield item


def build_loader(
    cfg: DataConfig,
    *,
    task: Task,
    img_size: int,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    aug: AugConfig | None = None,
    mask: MaskConfig | None = None,
    split: Literal["train", "val"] | None = None,
) -> Loader:
    """Per-rank loader of `task` ("simmim", "supervised", "eval"); `batch_size` is per rank.

    `split` defaults to "val" for eval and "train" otherwise. `aug` / `mask` default to cfg.aug / cfg.mask.
    """
    aug = aug if aug is not None else cfg.aug
    mask = mask if mask is not None else cfg.mask
    split = split or ("val" if task == "eval" else "train")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    if cfg.resampled and task == "eval":
        raise ValueError("data.resampled draws shards with replacement; evaluation needs every sample once")
    setting = "data.train_path" if split == "train" else "data.val_path"
    try:
        source = build_source(cfg, split, img_size)
    except FileNotFoundError as err:  # shards, their index, an ImageFolder root, Fashion-MNIST files
        raise MissingDataError(f"{setting}: {err}") from None
    except ShardListError as err:
        raise BadDataError(f"{setting}: {err}") from None
    num_classes = cfg.num_classes
    if source.num_classes and task != "simmim" and source.num_classes > num_classes:
        raise BadDataError(
            f"{setting}: {source.describe()} has {source.num_classes} classes but data.num_classes={num_classes}; "
            f"set data.num_classes={source.num_classes}"
        )
    generator = MaskGenerator(img_size, mask) if task == "simmim" else None
    dataset = StreamDataset(
        source,
        build_transform(task, img_size, aug, cfg),
        task=task,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        num_workers=cfg.num_workers,
        seed=seed,
        shuffle=task != "eval",
        shuffle_buffer=cfg.shuffle_buffer,
        resampled=cfg.resampled,
        samples_per_epoch=cfg.samples_per_epoch,
        num_classes=num_classes,
        mask_generator=generator,
    )
    return Loader(dataset, cfg, num_workers=cfg.num_workers, setting=setting)
