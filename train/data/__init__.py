"""Data pipeline: shards -> per-rank batches, exactly resumable, robust to bad samples.

The trainer's interface::

    from train.data import DataConfig, AugConfig, MaskConfig, build_loader, build_mixup

    loader = build_loader(cfg.data, task="simmim" | "supervised" | "eval", img_size=192,
                          batch_size=per_rank_batch, rank=rank, world_size=world_size, seed=seed,
                          aug=cfg.data.aug, mask=cfg.data.mask)
    len(loader)                  # batches per epoch on this rank (the same on every rank)
    loader.set_epoch(epoch)      # start `epoch` (a no-op if a restored state already stands in it)
    for images, target in loader:
        ...                      # simmim: target = mask (B, H/4, W/4) int64, 1 = masked
                                 # supervised: labels (B,) int64 (apply build_mixup's Mixup here)
                                 # eval: labels (B,) int64, -1 for padding (ignore in metrics)
    state = loader.state_dict()  # per rank (small dict: epoch + per-worker position and counters);
                                 # take it after the step that used the last batch
    loader.load_state_dict(state)  # then iterating continues with exactly the next batch; needs the
                                 # same world size, rank, num_workers, batch size, seed and shards
    loader.stats                 # {"seen", "bad", "bad_fraction", "bad_kinds", "padded", ...} this epoch
    loader.bad_samples           # bad samples seen by this loader object
    loader.mask_generator        # MaskGenerator (simmim) or None
    loader.mean, loader.std      # normalisation, to un-normalise images for visualisation
    mixup = build_mixup(aug, num_classes)  # timm Mixup/CutMix with label smoothing, or None

Iterating a loader runs the rest of its current epoch; after a complete epoch the next iteration
starts the next epoch by itself. Every rank yields `len(loader)` batches: training drops the remainder of
an epoch that does not fill a batch on every rank (a different few samples each epoch, as shard
order and samples are reshuffled from (seed, epoch)); eval yields every sample once and pads to equal batches.

Bad samples are skipped, counted and logged (rate-limited, with shard and key); more than
`data.max_bad_fraction` of them raises `BadDataError`. Shards and their index JSON come from the
`swinv2-shards` CLI (shards_cli.py).

Files: config.py (dataclasses), index.py (shard lists, index JSON), sources.py (webdataset,
ImageFolder, Fashion-MNIST, synthetic), layout.py (who reads what), stream.py (reading, shuffling,
bad samples, batching), loader.py (build_loader, Loader: epochs, resume, the bad-sample ceiling),
decode.py (fast JPEG decode), transforms.py (SimMIM / supervised / eval transforms, Mixup),
masking.py (SimMIM masks), shards.py (shard writer), shards_cli.py, fashion_mnist.py (IDX reader).
"""

from train.data.config import AugConfig, DataConfig, MaskConfig
from train.data.loader import BadDataError, Loader, build_loader
from train.data.masking import MaskGenerator
from train.data.stream import PAD_LABEL
from train.data.transforms import build_mixup

__all__ = [
    "AugConfig",
    "BadDataError",
    "DataConfig",
    "Loader",
    "MaskConfig",
    "MaskGenerator",
    "PAD_LABEL",
    "build_loader",
    "build_mixup",
]
