"""Shard writer: ImageFolder trees, the ImageNet-22k release layout and Fashion-MNIST -> webdataset tars.

Each sample is `KEY.<ext>` (the image) + `KEY.cls` (integer label) + `KEY.json` (where it came
from). Every shard is written to `NAME.tar.tmp` and renamed when complete, so after an
interruption a rerun keeps every finished shard, rewrites the unfinished ones, and then writes
`index.json` (samples per shard, classes). The sample-to-shard plan is a pure function of the
input and the settings; a manifest stops a rerun with other settings from mixing two plans.
"""

import io
import json
import logging
import os
import random
import tarfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass

import numpy as np
import webdataset as wds
from PIL import Image
from tqdm import tqdm
from webdataset.tariterators import base_plus_ext

from train.data import fashion_mnist
from train.data.index import INDEX_NAME, ShardIndex
from train.data.sources import FOLDER_EXTS

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Ref:
    """Where one input image lives: a file, a member of a tar (by offset), or a row of an array file."""

    kind: str  # file | tar | idx
    path: str  # the file, the tar, or the IDX directory
    offset: int  # tar: offset of the member's data; idx: row
    size: int
    label: int
    name: str


@dataclass
class WriteOptions:
    samples_per_shard: int = 1000
    resize: int = 0  # shorter side, 0 keeps the size; images are never enlarged
    # Centre smaller images on a black square of this side (0: never). Fashion-MNIST's 28 px
    # garments padded to 32 px keep their pixels exactly, where upscaling to 32 would blur them.
    pad: int = 0
    quality: int = 0  # JPEG re-encode quality, 0 keeps the stored bytes (PNG for array sources)
    processes: int = 1
    shuffle: bool = True  # mix classes across shards (inputs are grouped by class)
    seed: int = 0
    prefix: str = "shard"


def imagefolder_refs(root: str) -> tuple[list[Ref], list[str]]:
    """root/CLASS/.../IMAGE, classes sorted by name."""
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
    refs = []
    for label, cls in enumerate(classes):
        for dirpath, _, names in sorted(os.walk(os.path.join(root, cls))):
            for n in sorted(names):
                if n.endswith(FOLDER_EXTS):
                    path = os.path.join(dirpath, n)
                    refs.append(Ref("file", path, 0, 0, label, os.path.relpath(path, root)))
    return refs, classes


def imagenet22k_refs(root: str, classes: list[str] | None = None) -> tuple[list[Ref], list[str]]:
    """The release layout: one `SYNSET.tar` (or `SYNSET/` folder) of JPEGs per synset.

    Labels are positions in `classes` (e.g. timm's imagenet22k_synsets.txt) or in the sorted synsets.
    """
    entries = sorted(e.name for e in os.scandir(root) if e.name.endswith(".tar") or e.is_dir())
    synsets = [e.removesuffix(".tar") for e in entries]
    classes = classes or sorted(set(synsets))
    label_of = {s: i for i, s in enumerate(classes)}
    refs = []
    for entry, synset in zip(entries, synsets):
        if synset not in label_of:
            raise ValueError(f"{os.path.join(root, entry)}: synset {synset} is not in the class list")
        path = os.path.join(root, entry)
        if os.path.isdir(path):
            for n in sorted(os.listdir(path)):
                if n.endswith(FOLDER_EXTS):
                    refs.append(Ref("file", os.path.join(path, n), 0, 0, label_of[synset], f"{synset}/{n}"))
            continue
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if info.isreg() and info.name.endswith(FOLDER_EXTS):
                    refs.append(Ref("tar", path, info.offset_data, info.size, label_of[synset], info.name))
    return refs, classes


def fashion_mnist_refs(root: str, split: str) -> tuple[list[Ref], list[str]]:
    """Rows of the IDX files; the images file is loaded once per writer process."""
    _, labels = fashion_mnist.load_split(root, split)
    root = root or fashion_mnist.DEFAULT_DIR
    refs = [Ref("idx", root, i, 0, int(y), f"{split}/{i}") for i, y in enumerate(labels)]
    return refs, list(fashion_mnist.CLASS_NAMES)


_arrays: dict[tuple[str, str], np.ndarray] = {}  # IDX images by (root, split), once per process


def _load(ref: Ref) -> tuple[bytes | np.ndarray, str]:
    """The stored image: (bytes, extension) for files and tar members, (array, "png") for IDX rows."""
    if ref.kind == "idx":
        split = ref.name.split("/", 1)[0]
        if (ref.path, split) not in _arrays:
            _arrays[ref.path, split] = fashion_mnist.load_split(ref.path, split)[0]
        return _arrays[ref.path, split][ref.offset], "png"
    with open(ref.path, "rb") as f:
        if ref.kind == "tar":
            f.seek(ref.offset)
            data = f.read(ref.size)
        else:
            data = f.read()
    ext = os.path.splitext(ref.name)[1].lower().lstrip(".")
    return data, "jpg" if ext in ("jpeg", "jpg") else ext


def _encode(data: bytes | np.ndarray, ext: str, opts: WriteOptions) -> tuple[bytes, str]:
    """Re-encode only what is resized, padded or given a JPEG quality (and raw arrays, losslessly as PNG)."""
    img = original = Image.fromarray(data) if isinstance(data, np.ndarray) else Image.open(io.BytesIO(data))
    if opts.resize and min(img.size) > opts.resize:
        w, h = img.size
        s = opts.resize / min(w, h)
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
    if opts.pad and (img.width < opts.pad or img.height < opts.pad):
        w, h = max(img.width, opts.pad), max(img.height, opts.pad)
        canvas = Image.new(img.mode, (w, h))  # zeros: black
        canvas.paste(img, ((w - img.width) // 2, (h - img.height) // 2))
        img = canvas
    if isinstance(data, bytes) and img is original and not opts.quality:
        return data, ext  # neither resized nor padded: keep the stored bytes
    out = io.BytesIO()
    if opts.quality:
        img.convert("RGB").save(out, "JPEG", quality=opts.quality)
        return out.getvalue(), "jpg"
    img.save(out, "PNG")
    return out.getvalue(), "png"


def _write_shard(path: str, first: int, refs: list[Ref], opts: WriteOptions) -> int:
    """Writes `path` via a temp file; returns the samples written (unreadable inputs are left out)."""
    tmp = path + ".tmp"
    written = 0
    # An integer mtime: with webdataset's default (a float: time.time()) every member gets an extra
    # PAX header, which costs 1 KiB and a second header parse per member when reading.
    with open(tmp, "wb") as f, wds.TarWriter(f, mtime=0) as sink:
        for i, ref in enumerate(refs):
            try:
                image, ext = _encode(*_load(ref), opts)
                Image.open(io.BytesIO(image)).verify()  # never store what the loader cannot decode
            except Exception as exc:
                log.warning("skipping unreadable input %s (%s): %s", ref.name, ref.path, exc)
                continue
            meta = json.dumps({"source": ref.name}).encode()
            sink.write({"__key__": f"{first + i:09d}", ext: image, "cls": str(ref.label).encode(), "json": meta})
            written += 1
    os.replace(tmp, path)
    return written


def count_samples(path: str) -> int:
    """Samples in a shard, grouped by key as the reader groups them, from the tar headers alone."""
    n, last = 0, None
    with tarfile.open(path, "r:*") as tar:
        for info in tar:
            if info.isreg() and not os.path.basename(info.name).startswith("__"):
                key = base_plus_ext(info.name)[0]
                if key is not None and key != last:
                    n, last = n + 1, key
    return n


def _chunks(refs: list[Ref], n: int) -> Iterator[tuple[int, list[Ref]]]:
    for s in range(0, len(refs), n):
        yield s, refs[s : s + n]


def write_shards(
    refs: list[Ref], class_names: list[str], out_dir: str, opts: WriteOptions, progress: bool = True
) -> ShardIndex:
    """Writes the shards of `refs` into `out_dir`, skipping those already complete, then the index."""
    if not refs:
        raise ValueError("no input images found")
    os.makedirs(out_dir, exist_ok=True)
    refs = list(refs)
    if opts.shuffle:
        random.Random(opts.seed).shuffle(refs)
    manifest = {"options": asdict(opts), "samples": len(refs), "classes": len(class_names)}
    manifest_path = os.path.join(out_dir, MANIFEST_NAME)
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            old = json.load(f)
        if {**old["options"], "processes": 0} != {**manifest["options"], "processes": 0} or old["samples"] != len(refs):
            raise ValueError(
                f"{out_dir} holds shards written with other settings or inputs ({old}); "
                "write into an empty directory"
            )
    else:
        with open(manifest_path, "w") as f:
            json.dump(manifest, f, indent=1)
    for name in os.listdir(out_dir):
        if name.endswith(".tar.tmp"):  # left by an interrupted run: rewritten below
            os.remove(os.path.join(out_dir, name))

    digits = max(6, len(str(len(refs) // opts.samples_per_shard)))
    jobs = []
    counts: dict[str, int] = {}
    for k, (first, chunk) in enumerate(_chunks(refs, opts.samples_per_shard)):
        name = f"{opts.prefix}-{k:0{digits}d}.tar"
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            counts[name] = count_samples(path)
        else:
            jobs.append((name, path, first, chunk))
    if len(counts):
        log.info("%s: %d shards already complete, writing %d", out_dir, len(counts), len(jobs))
    bar = tqdm(total=len(jobs), unit="shard", disable=not progress, desc=f"writing {out_dir}")
    if opts.processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(opts.processes) as pool:
            futures = {pool.submit(_write_shard, path, first, chunk, opts): name for name, path, first, chunk in jobs}
            for fut in as_completed(futures):
                counts[futures[fut]] = fut.result()
                bar.update()
    else:
        for name, path, first, chunk in jobs:
            counts[name] = _write_shard(path, first, chunk, opts)
            bar.update()
    bar.close()
    index = ShardIndex(counts, len(class_names), class_names)
    index.write(os.path.join(out_dir, INDEX_NAME))
    return index


def index_shards(urls: list[str], out_path: str, num_classes: int | None = None) -> ShardIndex:
    """Index shards written by another tool (local files): samples per shard by scanning headers."""
    counts = {os.path.basename(u): count_samples(u) for u in tqdm(urls, unit="shard", desc="indexing")}
    index = ShardIndex(counts, num_classes, None)
    index.write(out_path)
    return index
