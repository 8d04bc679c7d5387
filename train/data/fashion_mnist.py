"""Fashion-MNIST IDX files (Debian's `dataset-fashion-mnist` installs them in DEFAULT_DIR)."""

import gzip
import os
import struct

import numpy as np

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# Pixel statistics of the training split (grey, repeated over RGB): set data.mean / data.std to these.
MEAN = (0.2860, 0.2860, 0.2860)
STD = (0.3530, 0.3530, 0.3530)
SPLIT_PREFIX = {"train": "train", "test": "t10k", "val": "t10k"}


def read_idx(path: str) -> np.ndarray:
    """An IDX file (optionally gzipped) as a uint8 array of the shape its header declares."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype != 0x08:
            raise ValueError(f"{path}: not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {data.size} bytes of data, header says {shape}")
    return data.reshape(shape)


def load_split(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) int64) of "train" or "test" ("val" = "test")."""
    if split not in SPLIT_PREFIX:
        raise ValueError(f"Fashion-MNIST split must be one of {sorted(SPLIT_PREFIX)}, got {split!r}")
    root = root or DEFAULT_DIR
    prefix = SPLIT_PREFIX[split]
    paths = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = [os.path.join(root, f"{prefix}-{kind}{ext}") for ext in (".gz", "")]
        found = [p for p in candidates if os.path.exists(p)]
        if not found:
            raise FileNotFoundError(
                f"Fashion-MNIST file {candidates[0]} not found; install it with "
                "`apt-get install dataset-fashion-mnist` or point the path at the IDX files"
            )
        paths.append(found[0])
    images, labels = read_idx(paths[0]), read_idx(paths[1]).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels")
    return images, labels
