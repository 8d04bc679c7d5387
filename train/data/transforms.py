"""Per-sample transforms (SimMIM, supervised, eval) and timm's Mixup/CutMix for the batch.

Every transform takes the raw image and an integer seed and returns a (3, H, W) tensor; its
`collate` turns a list of them into the normalised float batch (SimMIM and eval normalise the
stacked uint8 batch in one operation). Seeding per sample (from epoch and stream position) is what
makes a restored stream reproduce the augmentations of an uninterrupted one.

SimMIM, eval and supervised recipes without photometric augmentation avoid PIL: the crop box is
chosen on the stored size, the JPEG is decoded at the smallest DCT scale that still covers the box
at the output resolution, and torch's uint8 antialiased interpolation resizes it (several times
faster than PIL's resize).
"""

import math
import random
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from train.data.config import AugConfig, DataConfig
from train.data.decode import RawImage, decode_once_unless_jpeg, decode_rgb, image_size

if TYPE_CHECKING:
    from timm.data import Mixup  # imported lazily: timm takes seconds to import

Box = tuple[int, int, int, int]  # top, left, height, width in stored-image pixels
TORCH_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")  # what crop_resize does on uint8


def sample_rrc_box(h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float], rng: random.Random) -> Box:
    """torchvision's RandomResizedCrop.get_params, drawn from `rng`."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target_area * aspect)))
        ch = int(round(math.sqrt(target_area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, h - ch), rng.randint(0, w - cw), ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def crop_resize(data: RawImage, box: Box, out: tuple[int, int], mode: str, flip: bool = False) -> torch.Tensor:
    """Decode only as much resolution as `box` needs at size `out`, crop, resize: uint8 (3, *out)."""
    h, w = image_size(data)
    top, left, ch, cw = box
    # The smallest decode whose crop still has >= out pixels on both sides: no detail is lost.
    f = max(out[0] / ch, out[1] / cw)
    img = decode_rgb(data, min_size=(math.ceil(h * f), math.ceil(w * f)) if f < 1 else (0, 0))
    sy, sx = img.shape[0] / h, img.shape[1] / w
    y0, x0 = int(round(top * sy)), int(round(left * sx))
    y1, x1 = max(y0 + 1, int(round((top + ch) * sy))), max(x0 + 1, int(round((left + cw) * sx)))
    region = np.ascontiguousarray(img[y0:y1, x0:x1])
    if not region.flags.writeable:  # PIL and np.frombuffer arrays are read-only; torch wants to own one
        region = region.copy()
    crop = torch.from_numpy(region).permute(2, 0, 1)[None]
    if crop.shape[-2:] != out:
        crop = F.interpolate(crop, size=out, mode=mode, antialias=mode != "nearest", align_corners=None)
    crop = crop[0]
    return crop.flip(-1) if flip else crop


class Normalize:
    """uint8 (..., 3, H, W) -> float, (x / 255 - mean) / std in one fused multiply-add."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(3, 1, 1)
        self.shift = torch.tensor([-m / s for m, s in zip(mean, std)]).view(3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x.float(), self.scale)


class CropFlipTransform:
    """RandomResizedCrop + horizontal flip on uint8 tensors, normalised on the stacked batch.

    SimMIM's augmentation, and the supervised one when a recipe asks for no photometric change
    (no RandAugment, colour jitter or random erasing): the crop boxes of torchvision's and timm's
    RandomResizedCrop without their PIL round trip.
    """

    def __init__(self, img_size: int, *, scale: tuple[float, float], ratio: tuple[float, float],
                 interpolation: str, hflip: float, mean: tuple[float, ...], std: tuple[float, ...]) -> None:  # fmt: skip
        self.size = (img_size, img_size)
        self.scale, self.ratio, self.interpolation, self.hflip = tuple(scale), tuple(ratio), interpolation, hflip
        self.normalize = Normalize(mean, std)

    def __call__(self, data: RawImage, seed: int) -> torch.Tensor:
        rng = random.Random(seed)
        data = decode_once_unless_jpeg(data)
        h, w = image_size(data)
        box = sample_rrc_box(h, w, self.scale, self.ratio, rng)
        flip = rng.random() < self.hflip
        return crop_resize(data, box, self.size, self.interpolation, flip)

    def collate(self, images: list[torch.Tensor]) -> torch.Tensor:
        return self.normalize(torch.stack(images))


class EvalTransform:
    """Resize the shorter side to img_size / crop_pct and centre-crop img_size, or (no-crop) resize the
    whole image to img_size x img_size; the JPEG is decoded at the smallest DCT scale that allows it."""

    def __init__(self, img_size: int, aug: AugConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.size = img_size
        self.aug = aug
        self.normalize = Normalize(mean, std)

    def __call__(self, data: RawImage, seed: int) -> torch.Tensor:
        data = decode_once_unless_jpeg(data)
        h, w = image_size(data)
        if self.aug.eval_no_crop:
            return crop_resize(data, (0, 0, h, w), (self.size, self.size), self.aug.interpolation)
        # torchvision's geometry exactly (Resize(int(size / crop_pct)) then CenterCrop(size)): the
        # resize runs on the whole image so the crop falls on the same pixel grid as timm's.
        short = int(math.floor(self.size / self.aug.crop_pct))
        out = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
        img = crop_resize(data, (0, 0, h, w), out, self.aug.interpolation)
        top, left = int(round((out[0] - self.size) / 2.0)), int(round((out[1] - self.size) / 2.0))
        return img[:, top : top + self.size, left : left + self.size]

    def collate(self, images: list[torch.Tensor]) -> torch.Tensor:
        return self.normalize(torch.stack(images))


class SupervisedTransform:
    """timm's ImageNet training transform (RandAugment, colour jitter, random erasing) on PIL images.

    timm draws from the global `random`, numpy and torch generators, so they are seeded per sample;
    the stream restores the caller's generator states when it runs in the main process.
    """

    def __init__(self, img_size: int, aug: AugConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        from timm.data import create_transform

        self.size = img_size
        self.aug = aug
        self.tf = create_transform(
            input_size=img_size,
            is_training=True,
            scale=tuple(aug.scale),
            ratio=tuple(aug.ratio),
            hflip=aug.hflip,
            color_jitter=aug.color_jitter,
            auto_augment=aug.rand_augment,
            interpolation=aug.interpolation,
            mean=tuple(mean),
            std=tuple(std),
            re_prob=aug.reprob,
            re_mode=aug.remode,
        )
        # Smallest crop RandomResizedCrop can draw, as a fraction of each side.
        self.min_side_frac = math.sqrt(aug.scale[0] * min(aug.ratio) / max(aug.ratio))

    def __call__(self, data: RawImage, seed: int) -> torch.Tensor:
        random.seed(seed)
        np.random.seed(seed)
        # CPU generator only: torch.manual_seed also queues a lazy CUDA/XPU/MTIA seed, recording a
        # stack trace each time, which cost more than decoding these small images.
        torch.default_generator.manual_seed(seed)
        h, w = image_size(data)
        # Downscale in the DCT domain only as far as the smallest possible crop keeps img_size pixels.
        f = self.size / (self.min_side_frac * min(h, w))
        img = decode_rgb(data, min_size=(math.ceil(h * f), math.ceil(w * f)) if f < 1 else (0, 0))
        return self.tf(Image.fromarray(img))

    def collate(self, images: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(images)  # timm's transform has normalised already


Transform = CropFlipTransform | EvalTransform | SupervisedTransform


def build_transform(task: str, img_size: int, aug: AugConfig, cfg: DataConfig) -> Transform:
    """The per-sample transform of a task: "simmim", "supervised" or "eval"."""
    mean, std = tuple(cfg.mean), tuple(cfg.std)
    if task == "simmim":
        return CropFlipTransform(img_size, scale=aug.simmim_scale, ratio=aug.simmim_ratio,
                                 interpolation=aug.simmim_interpolation, hflip=0.5, mean=mean, std=std)  # fmt: skip
    if task == "supervised":
        photometric = aug.rand_augment or aug.color_jitter or aug.reprob > 0
        if photometric or aug.interpolation not in TORCH_INTERPOLATIONS:
            return SupervisedTransform(img_size, aug, mean, std)
        return CropFlipTransform(img_size, scale=aug.scale, ratio=aug.ratio, interpolation=aug.interpolation,
                                 hflip=aug.hflip, mean=mean, std=std)  # fmt: skip
    if task == "eval":
        return EvalTransform(img_size, aug, mean, std)
    raise ValueError(f"task must be one of ['eval', 'simmim', 'supervised'], got {task!r}")


def build_mixup(aug: AugConfig, num_classes: int) -> "Mixup | None":
    """timm's Mixup/CutMix with label smoothing (applied by the trainer on the batch), or None when off.

    It needs an even batch size. With it off, the trainer applies `aug.label_smoothing` in its loss.
    """
    if aug.mixup <= 0 and aug.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=aug.mixup,
        cutmix_alpha=aug.cutmix,
        prob=aug.mixup_prob,
        switch_prob=aug.mixup_switch_prob,
        mode=aug.mixup_mode,
        label_smoothing=aug.label_smoothing,
        num_classes=num_classes,
    )
