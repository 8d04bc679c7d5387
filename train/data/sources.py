"""Sample sources behind one interface: webdataset shards, ImageFolder, Fashion-MNIST, synthetic.

A source is a list of units (a shard, or a fixed chunk of files or array rows) with known sizes.
`read(unit, start, stop)` yields exactly `stop - start` items, each a `RawSample` or a `Bad`
record, skipping the first `start` samples without reading their data. The stream (stream.py)
builds splitting, shuffling, exact resume and equal batches on top of that contract alone.
"""

import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext

from train.data import fashion_mnist
from train.data.config import DataConfig
from train.data.index import default_index_path, expand_shards, is_remote, load_index, shard_counts

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
FOLDER_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".JPEG", ".JPG", ".PNG")
CHUNK = 1000  # samples per unit for the non-shard sources


@dataclass
class RawSample:
    """Undecoded sample: the image as encoded bytes or an (H, W[, 3]) uint8 array; label as stored."""

    url: str
    key: str
    image: bytes | np.ndarray | None
    label: bytes | int | None


@dataclass
class Bad:
    """A sample that could not be read, with where it was and why."""

    url: str
    key: str
    kind: str  # unopenable | truncated | missing
    reason: str


class Source:
    """Base: `units` (names), `counts` (samples per unit), class info, and `read`."""

    units: list[str]
    counts: list[int]
    num_classes: int | None = None
    class_names: list[str] | None = None

    def read(self, unit: int, start: int, stop: int) -> Iterator[RawSample | Bad]:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{type(self).__name__}({len(self.units)} units, {sum(self.counts)} samples)"


class WebDatasetSource(Source):
    """Tar shards in the webdataset layout (`KEY.jpg` + `KEY.cls` [+ `KEY.json`]) with an index JSON."""

    def __init__(self, pattern: str, index_path: str = "") -> None:
        self.units = expand_shards(pattern)
        index_path = index_path or default_index_path(self.units)
        index = load_index(index_path)
        self.counts = shard_counts(self.units, index, index_path)
        self.num_classes = index.num_classes
        self.class_names = index.class_names

    def _open(self, url: str) -> tuple[tarfile.TarFile, Any]:
        """The tar, and the stream under it for remote URLs (tarfile never closes a given file object)."""
        if not is_remote(url):
            # Seekable mode: members before `start` are skipped by seeking over their data.
            return tarfile.open(url, mode="r:*"), None
        stream = gopen(url, "rb")
        try:
            return tarfile.open(fileobj=stream, mode="r|*"), stream
        except Exception:
            stream.close()
            raise

    def read(self, unit: int, start: int, stop: int) -> Iterator[RawSample | Bad]:
        url = self.units[unit]
        ordinal = -1  # index of the sample whose members are being read
        key, members = None, {}
        try:
            tar, stream = self._open(url)
        except Exception as exc:
            for i in range(start, stop):
                yield Bad(url, f"#{i}", "unopenable", f"cannot open shard: {exc}")
            return
        try:
            while True:
                try:
                    info = tar.next()
                    tar.members = []  # tarfile keeps every header otherwise
                    if info is None:
                        break
                    if not info.isreg() or os.path.basename(info.name).startswith("__"):
                        continue
                    prefix, ext = base_plus_ext(info.name)
                    if prefix is None:
                        continue
                    if prefix != key:
                        if start <= ordinal < stop:
                            yield RawSample(url, key, *_pick(members))
                        ordinal += 1
                        key, members = prefix, {}
                        if ordinal >= stop:
                            return
                    ext = ext.lower()
                    if ordinal >= start and (ext in IMAGE_EXTS or ext == "cls"):  # others (json) stay unread
                        members[ext] = tar.extractfile(info).read()
                except (tarfile.TarError, OSError, EOFError) as exc:
                    # Truncated or corrupt archive: the sample being read and all after it are lost.
                    lost_from = max(ordinal, start)
                    for i in range(lost_from, stop):
                        where = key if i == ordinal and key else f"#{i}"
                        yield Bad(url, where, "truncated", f"unreadable tar ({exc})")
                    return
            if start <= ordinal < stop:
                yield RawSample(url, key, *_pick(members))
            for i in range(max(ordinal + 1, start), stop):
                yield Bad(url, f"#{i}", "missing", f"shard ended after {ordinal + 1} samples; index says more")
        finally:
            tar.close()
            if stream is not None:
                stream.close()


def _pick(members: dict[str, bytes]) -> tuple[bytes | None, bytes | None]:
    image = next((members[e] for e in IMAGE_EXTS if e in members), None)
    return image, members.get("cls")


class ImageFolderSource(Source):
    """root/CLASS/IMAGE files, classes sorted by name (torchvision's ImageFolder convention)."""

    def __init__(self, root: str) -> None:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"ImageFolder root {root!r} is not a directory")
        self.class_names = sorted(d.name for d in os.scandir(root) if d.is_dir())
        self.num_classes = len(self.class_names)
        self.files: list[tuple[str, int]] = []
        for label, name in enumerate(self.class_names):
            for dirpath, _, names in sorted(os.walk(os.path.join(root, name))):
                self.files += [(os.path.join(dirpath, n), label) for n in sorted(names) if n.endswith(FOLDER_EXTS)]
        if not self.files:
            raise FileNotFoundError(f"ImageFolder root {root!r} holds no images ({', '.join(FOLDER_EXTS)})")
        self.root = root
        self.units, self.counts = _chunks(root, len(self.files))

    def read(self, unit: int, start: int, stop: int) -> Iterator[RawSample | Bad]:
        for i in range(unit * CHUNK + start, unit * CHUNK + stop):
            path, label = self.files[i]
            key = os.path.relpath(path, self.root)
            try:
                with open(path, "rb") as f:
                    yield RawSample(self.root, key, f.read(), label)
            except OSError as exc:
                yield Bad(self.root, key, "unopenable", str(exc))


class ArraySource(Source):
    """In-memory uint8 images (M, H, W[, 3]) and N integer labels: Fashion-MNIST and synthetic data.

    Sample i is image i % M, so a small pool of images can stand for a large synthetic set.
    """

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, num_classes: int,
                 class_names: list[str] | None = None) -> None:  # fmt: skip
        self.name, self.images, self.labels = name, images, labels
        self.num_classes, self.class_names = num_classes, class_names
        self.units, self.counts = _chunks(name, len(labels))

    def read(self, unit: int, start: int, stop: int) -> Iterator[RawSample | Bad]:
        for i in range(unit * CHUNK + start, unit * CHUNK + stop):
            yield RawSample(self.name, str(i), self.images[i % len(self.images)], int(self.labels[i]))


def _chunks(name: str, n: int) -> tuple[list[str], list[int]]:
    counts = [min(CHUNK, n - s) for s in range(0, n, CHUNK)]
    return [f"{name}[{i * CHUNK}:{i * CHUNK + c}]" for i, c in enumerate(counts)], counts


def synthetic_source(num_samples: int, num_classes: int, img_size: int) -> ArraySource:
    """Throughput runs: a pool of 16 blocky random images of the target size (nothing to decode)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(16, 8, 8, 3), dtype=np.uint8)
    pool = small.repeat(img_size // 8 + 1, axis=1).repeat(img_size // 8 + 1, axis=2)[:, :img_size, :img_size]
    return ArraySource("synthetic", np.ascontiguousarray(pool), np.arange(num_samples) % num_classes, num_classes)


def build_source(cfg: DataConfig, split: str, img_size: int) -> Source:
    """The source of `split` ("train" or "val") for `cfg.source`."""
    path = cfg.train_path if split == "train" else cfg.val_path
    if cfg.source == "webdataset":
        return WebDatasetSource(path, cfg.index_path if split == "train" else cfg.val_index_path)
    if cfg.source == "imagefolder":
        return ImageFolderSource(path)
    if cfg.source == "fashion_mnist":
        images, labels = fashion_mnist.load_split(path, "train" if split == "train" else "test")
        names = list(fashion_mnist.CLASS_NAMES)
        return ArraySource(f"fashion_mnist/{split}", images, labels, len(names), names)
    if cfg.source == "synthetic":
        return synthetic_source(cfg.synthetic_samples, cfg.num_classes, img_size)
    raise ValueError(f"data.source must be webdataset, imagefolder, fashion_mnist or synthetic, got {cfg.source!r}")
