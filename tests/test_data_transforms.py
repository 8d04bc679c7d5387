"""SimMIM masks, fast decoding within tolerance of a plain decode, and the transforms' outputs."""

import io
import math
import random

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from skimage import data as skdata

from train.data import AugConfig, DataConfig, MaskConfig, MaskGenerator, build_loader, build_mixup
from train.data.decode import decode_rgb
from train.data.transforms import (
    CropFlipTransform,
    EvalTransform,
    SupervisedTransform,
    build_transform,
    crop_resize,
    sample_rrc_box,
)

torch.set_num_threads(1)


def jpeg(a: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.mark.parametrize("size", [192, 224, 256, 384])
def test_mask_generator(size):
    gen = MaskGenerator(size, MaskConfig())
    mask = gen(np.random.default_rng(0))
    cells = (size // 32) ** 2
    assert mask.shape == (size // 4, size // 4) and mask.dtype == np.int64
    assert mask.sum() == math.ceil(0.6 * cells) * 64  # each 32 px cell is 8 x 8 model patches
    assert not np.array_equal(mask, gen(np.random.default_rng(1)))
    assert np.array_equal(mask, gen(np.random.default_rng(0)))


def test_mask_generator_rejects_sizes_it_cannot_tile():
    with pytest.raises(ValueError, match="divisible by mask.mask_patch_size"):
        MaskGenerator(200, MaskConfig())


def test_dct_downscaled_decode_stays_within_tolerance():
    """A small crop target of a large JPEG is decoded at 1/2 or 1/4 scale; the result matches a full
    decode + the same crop and resize to within q90 JPEG noise (mean under 2.5 levels, PSNR over 32 dB)."""
    big = np.asarray(Image.fromarray(skdata.astronaut()).resize((1536, 1536), Image.BICUBIC))
    data = jpeg(big)
    assert decode_rgb(data, min_size=(300, 300)).shape[0] in (384, 768)  # DCT scaling did happen
    rng = random.Random(0)
    for _ in range(5):
        box = sample_rrc_box(1536, 1536, (0.67, 1.0), (3 / 4, 4 / 3), rng)
        fast = crop_resize(data, box, (192, 192), "bilinear").float()
        full = decode_rgb(data)
        top, left, h, w = box
        ref = torch.from_numpy(np.ascontiguousarray(full[top : top + h, left : left + w])).permute(2, 0, 1)[None]
        ref = torch.nn.functional.interpolate(ref, size=(192, 192), mode="bilinear", antialias=True)[0].float()
        diff = fast - ref
        psnr = 10 * math.log10(255**2 / float((diff**2).mean()))
        assert diff.abs().mean() < 2.5 and psnr > 32


def test_simmim_transform_matches_torchvision_resized_crop():
    """Same box as torchvision's RandomResizedCrop would draw, resized by torch instead of PIL."""
    a = np.asarray(Image.fromarray(skdata.chelsea()).resize((500, 375)))
    data = jpeg(a)
    tf = build_transform("simmim", 192, AugConfig(), DataConfig(mean=(0.0,) * 3, std=(1.0,) * 3))
    assert isinstance(tf, CropFlipTransform)
    out = tf.collate([tf(data, seed=5)])[0] * 255
    rng = random.Random(5)
    top, left, h, w = sample_rrc_box(375, 500, (0.67, 1.0), (3 / 4, 4 / 3), rng)
    flip = rng.random() < 0.5
    pil = Image.open(io.BytesIO(data))
    ref = TF.resized_crop(pil, top, left, h, w, [192, 192], TF.InterpolationMode.BILINEAR, antialias=True)
    ref = torch.from_numpy(np.asarray(TF.hflip(ref) if flip else ref).copy()).permute(2, 0, 1).float()
    assert out.shape == (3, 192, 192)
    assert (out - ref).abs().mean() < 1.5


def test_eval_transform_matches_timm_resize_and_centre_crop():
    from timm.data import create_transform

    a = np.asarray(Image.fromarray(skdata.coffee()).resize((500, 375)))
    data = jpeg(a)
    aug = AugConfig()
    tf = EvalTransform(224, aug, (0.5,) * 3, (0.5,) * 3)
    ours = tf.collate([tf(data, 0)])[0]
    timm_tf = create_transform(224, is_training=False, crop_pct=0.875, interpolation="bicubic",
                               mean=(0.5,) * 3, std=(0.5,) * 3)  # fmt: skip
    ref = timm_tf(Image.open(io.BytesIO(data)))
    assert ours.shape == ref.shape == (3, 224, 224)
    assert (ours - ref).abs().mean() * 127.5 < 2.0  # in 8-bit levels
    no_crop = EvalTransform(384, AugConfig(eval_no_crop=True), (0.5,) * 3, (0.5,) * 3)(data, 0)
    assert no_crop.shape == (3, 384, 384)


def test_supervised_crop_and_flip_recipes_skip_pil_and_match_timm():
    """Without RandAugment, colour jitter and random erasing, the supervised transform is the tensor
    crop-and-flip path: timm's crop box, flip and normalisation, resized by torch instead of PIL."""
    from timm.data import create_transform

    aug = AugConfig(rand_augment=None, color_jitter=None, reprob=0.0, interpolation="bicubic")
    cfg = DataConfig(mean=(0.5,) * 3, std=(0.25,) * 3)
    buf = io.BytesIO()  # PNG: no reduced JPEG decode (tested above), so only the resize differs
    Image.fromarray(skdata.coffee()).resize((500, 375)).save(buf, "PNG")
    data = buf.getvalue()
    fast = build_transform("supervised", 160, aug, cfg)
    assert isinstance(fast, CropFlipTransform)
    assert isinstance(build_transform("supervised", 160, AugConfig(), cfg), SupervisedTransform)
    # timm's own pipeline without its flip (which draws from torch's generator, ours from the seed)
    timm_tf = create_transform(160, is_training=True, scale=aug.scale, ratio=aug.ratio, hflip=0.0,
                               color_jitter=None, auto_augment=None, interpolation="bicubic",
                               mean=cfg.mean, std=cfg.std, re_prob=0.0)  # fmt: skip
    flipped = set()
    for seed in range(6):
        ours = fast.collate([fast(data, seed)])[0]
        random.seed(seed)  # timm's crop draws from the global `random` in the same order as ours
        ref = timm_tf(Image.open(io.BytesIO(data)).convert("RGB"))
        errs = [float((o - ref).abs().mean()) * 0.25 * 255 for o in (ours, ours.flip(-1))]  # 8-bit levels
        assert ours.shape == ref.shape == (3, 160, 160)
        assert min(errs) < 0.5, errs
        flipped.add(errs[1] < errs[0])
    assert flipped == {True, False}  # half the images are flipped


def test_supervised_transform_is_seeded_and_leaves_no_global_state_behind():
    data = jpeg(np.asarray(Image.fromarray(skdata.rocket()).resize((500, 375))))
    tf = build_transform("supervised", 224, AugConfig(), DataConfig())
    a, b, c = tf(data, 1), tf(data, 1), tf(data, 2)
    assert a.shape == (3, 224, 224) and torch.equal(a, b) and not torch.equal(a, c)

    cfg = DataConfig(source="fashion_mnist", num_classes=10, num_workers=0)
    loader = build_loader(cfg, task="supervised", img_size=32, batch_size=4, rank=0, world_size=1, seed=0)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    next(iter(loader))  # in-process: the trainer's generators must come out untouched
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1]) and torch.equal(torch.get_rng_state(), states[2])


def test_build_mixup():
    mix = build_mixup(AugConfig(), num_classes=10)
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    _, target = mix(x, y)
    assert target.shape == (4, 10) and torch.allclose(target.sum(1), torch.ones(4))
    assert build_mixup(AugConfig(mixup=0.0, cutmix=0.0), 10) is None
