"""SimMIM 192 px input pipeline (decode + augment + mask): our webdataset stream vs torchvision ImageFolder.

Both sides read the same ImageNet-sized JPEGs (about 500x375, quality 90, cut from the photographs
bundled with scikit-image), apply the same transform (RandomResizedCrop scale 0.67-1, ratio 3/4-4/3,
bilinear as in the released SimMIM; flip; normalise) and draw the same SimMIM mask. One thread,
in-process (`--workers 0`), so images/s is per core. Sides alternate; medians over rounds.

    .venv/bin/python bench/bench_data.py [--images 512] [--rounds 7] [--batch 64]
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from skimage import data as skdata
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder

from train.data import DataConfig, MaskConfig, MaskGenerator, build_loader
from train.data.config import IMAGENET_MEAN, IMAGENET_STD, AugConfig
from train.data.shards import WriteOptions, imagefolder_refs, write_shards

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "cat",
          "camera", "coins")  # fmt: skip


def make_jpegs(root: str, n: int, seed: int = 0) -> None:
    """n JPEGs of 500x375 (or 375x500), q90: random crops, flips and rescales of real photographs."""
    rng = np.random.default_rng(seed)
    photos = []
    for name in PHOTOS:
        a = getattr(skdata, name)()
        photos.append(np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a[:, :, :3])
    for i in range(n):
        a = photos[i % len(photos)]
        h, w = a.shape[:2]
        s = rng.uniform(0.6, 1.0)
        ch, cw = int(h * s), int(w * s)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = a[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        size = (500, 375) if rng.random() < 0.75 else (375, 500)
        img = Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.BICUBIC)
        cls = os.path.join(root, f"class{i % 8}")
        os.makedirs(cls, exist_ok=True)
        img.save(os.path.join(cls, f"{i:05d}.jpg"), quality=90)


class TorchvisionSimMIM(Dataset):
    """The released SimMIM data pipeline: ImageFolder + torchvision transforms + mask generator."""

    def __init__(self, root: str, img_size: int) -> None:
        self.folder = ImageFolder(root, transform=T.Compose([
            T.RandomResizedCrop(img_size, scale=(0.67, 1.0), ratio=(3 / 4, 4 / 3)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]))  # fmt: skip
        self.mask = MaskGenerator(img_size, MaskConfig())

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.folder[i][0], torch.from_numpy(self.mask())


def images_per_s(loader, expected: int) -> float:
    start, n = time.perf_counter(), 0
    for images, mask in loader:
        assert images.shape[1:] == (3, 192, 192) and mask.shape[1:] == (48, 48)
        n += images.shape[0]
    assert n == expected, (n, expected)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers on both sides (0: in-process)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder, shards = os.path.join(tmp, "folder"), os.path.join(tmp, "shards")
        make_jpegs(folder, args.images)
        refs, classes = imagefolder_refs(folder)
        write_shards(refs, classes, shards, WriteOptions(samples_per_shard=128), progress=False)
        n = args.images // args.batch * args.batch
        cfg = DataConfig(train_path=shards, num_classes=8, num_workers=args.workers, shuffle_buffer=256,
                         pin_memory=False)  # fmt: skip
        ours = build_loader(cfg, task="simmim", img_size=192, batch_size=args.batch, rank=0, world_size=1, seed=0,
                            aug=AugConfig(), mask=MaskConfig())  # fmt: skip
        theirs = DataLoader(TorchvisionSimMIM(folder, 192), batch_size=args.batch, shuffle=True, drop_last=True,
                            num_workers=args.workers)  # fmt: skip
        images_per_s(ours, n), images_per_s(theirs, n)  # warm-up: page cache, imports, allocator
        results: dict[str, list[float]] = {"webdataset (ours)": [], "torchvision ImageFolder": []}
        for r in range(args.rounds):
            sides = [("webdataset (ours)", ours), ("torchvision ImageFolder", theirs)]
            for name, loader in sides if r % 2 == 0 else sides[::-1]:
                results[name].append(images_per_s(loader, n))
    per = max(1, args.workers)
    print(f"SimMIM 192 px pipeline, {args.images} JPEGs ~500x375 q90, batch {args.batch}, "
          f"{args.rounds} alternating rounds, {'in-process' if not args.workers else f'{args.workers} workers'}, "
          "1 torch thread")  # fmt: skip
    medians = {}
    for name, values in results.items():
        medians[name] = statistics.median(values) / per
        spread = f"{min(values) / per:.0f}-{max(values) / per:.0f}"
        print(f"  {name:26s} median {medians[name]:7.1f} images/s per core  (range {spread})")
    ratio = medians["webdataset (ours)"] / medians["torchvision ImageFolder"]
    # Each round's two runs are back to back, so their ratio is robust to load from other processes.
    paired = statistics.median(a / b for a, b in zip(*results.values()))
    print(f"  speed-up: {ratio:.2f}x of medians, {paired:.2f}x median of per-round ratios (target >= 1.5x)")


if __name__ == "__main__":
    main()
