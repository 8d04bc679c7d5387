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
    state = loader.state_dict()  # save per rank with the checkpoint, after the step that used the batch
    loader.load_state_dict(state)  # continues with exactly the next batch
    loader.stats                 # {"seen", "bad", "bad_fraction", "bad_kinds", "padded", ...} this epoch
    loader.bad_samples           # bad samples seen by this loader object
    loader.mask_generator        # MaskGenerator (simmim) or None
    loader.mean, loader.std      # normalisation, to un-normalise images for visualisation
    mixup = build_mixup(aug, num_classes)  # timm Mixup/CutMix with label smoothing, or None

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
