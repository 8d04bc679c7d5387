"""Plain dataclasses for the `data:` config group (no Hydra imports: the trainer converts once)."""

from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SOURCES = ("webdataset", "imagefolder", "fashion_mnist", "synthetic")


@dataclass
class AugConfig:
    """Supervised augmentation (timm), eval resizing, and the SimMIM crop."""

    rand_augment: str | None = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25
    remode: str = "pixel"
    color_jitter: float | None = 0.4
    interpolation: str = "bicubic"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    label_smoothing: float = 0.1
    # Eval: resize the shorter side to img_size / crop_pct, then centre crop; `eval_no_crop` resizes
    # straight to img_size x img_size (the released 384 configs).
    crop_pct: float = 0.875
    eval_no_crop: bool = False
    # SimMIM light augmentation, as in the released data_simmim.py (torchvision's default bilinear).
    simmim_scale: tuple[float, float] = (0.67, 1.0)
    simmim_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    simmim_interpolation: str = "bilinear"


@dataclass
class MaskConfig:
    """SimMIM mask: a grid of `mask_patch_size` cells, `ceil(ratio * cells)` masked, at model patch size."""

    mask_patch_size: int = 32
    model_patch_size: int = 4
    mask_ratio: float = 0.6


@dataclass
class DataConfig:
    """Where samples come from and how they are streamed.

    `train_path` / `val_path` per source:
      webdataset:    brace pattern (`in22k-{000000..002047}.tar`), a directory of `.tar` files, a glob,
                     `pipe:CMD` or an http(s) URL, several joined with `::`
      imagefolder:   root directory with one sub-directory per class
      fashion_mnist: directory holding the IDX `.gz` files (split picked by train/val)
      synthetic:     ignored
    """

    source: str = "webdataset"  # one of SOURCES
    train_path: str = ""
    val_path: str = ""
    # Shard index JSON written by `swinv2-shards` (samples per shard). Empty: `index.json` beside the shards.
    index_path: str = ""
    val_index_path: str = ""
    num_classes: int = 1000
    num_workers: int = 8
    # Training shuffles the shard order per epoch from (seed, epoch), then samples within blocks of
    # this many (held undecoded by each worker); 0 or 1 keeps the order within shards.
    shuffle_buffer: int = 1000
    # Shards drawn with replacement (infinite stream); an epoch is then `samples_per_epoch` samples
    # (default: the index's total). Without resampling an epoch is always every indexed sample.
    resampled: bool = False
    samples_per_epoch: int | None = None
    # Fraction of bad samples (per rank) above which the run stops; checked once `bad_check_after`
    # samples were read and at the end of every epoch.
    max_bad_fraction: float = 0.01
    bad_check_after: int = 1000
    prefetch_factor: int = 2
    pin_memory: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Synthetic source only: samples in one epoch.
    synthetic_samples: int = 10000
    aug: AugConfig = field(default_factory=AugConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
