"""Bad input never stops a run: every kind is skipped, counted and logged; a ceiling stops it."""

import io
import logging
import os
import tarfile

import pytest
import torch
import webdataset as wds
from PIL import Image

from train.data import AugConfig, BadDataError, DataConfig, build_loader, stream
from train.data.fashion_mnist import load_split
from train.data.index import ShardIndex

torch.set_num_threads(1)


def jpeg(a) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory) -> tuple[str, dict]:
    """Three shards: one mixing good and bad samples, one truncated mid-member, one that is not a tar."""
    root = tmp_path_factory.mktemp("bad")
    images, labels = load_split("", "test")
    good = [jpeg(images[i]) for i in range(30)]
    index = ShardIndex({}, 10, None)

    mixed = [(f"g{i:03d}", {"jpg": good[i], "cls": str(labels[i]).encode()}) for i in range(20)]
    mixed[2] = ("corrupt", {"jpg": b"\xff\xd8\xff\xe0" + os.urandom(400), "cls": b"1"})
    mixed[5] = ("truncjpg", {"jpg": good[5][: len(good[5]) // 2], "cls": b"1"})
    mixed[8] = ("zerobyte", {"jpg": b"", "cls": b"1"})
    mixed[11] = ("nolabel", {"jpg": good[11]})
    mixed[14] = ("badlabel", {"jpg": good[14], "cls": b"seven"})
    with wds.TarWriter(str(root / "a-000.tar")) as sink:
        for key, sample in mixed:
            sink.write({"__key__": key, **sample})
    index.shards["a-000.tar"] = 20

    full = root / "full.tar"
    with wds.TarWriter(str(full)) as sink:
        for i in range(10):
            sink.write({"__key__": f"t{i:03d}", "jpg": good[20 + i], "cls": str(labels[20 + i]).encode()})
    with tarfile.open(full) as tar:
        cut = next(m for m in tar.getmembers() if m.name == "t006.jpg")
    data = full.read_bytes()[: cut.offset_data + cut.size // 2]  # ends inside sample 6's image
    (root / "a-001.tar").write_bytes(data)
    full.unlink()
    index.shards["a-001.tar"] = 10

    (root / "a-002.tar").write_bytes(b"this is not a tar file" * 10)
    index.shards["a-002.tar"] = 5
    index.write(str(root / "index.json"))
    expected = {"decode": 3, "label": 2, "truncated": 4, "unopenable": 5}
    return str(root / "a-{000..002}.tar"), expected


def loader_for(path: str, ceiling: float, workers: int = 0, batch: int = 2):
    cfg = DataConfig(train_path=path, num_classes=10, num_workers=workers, shuffle_buffer=4,
                     max_bad_fraction=ceiling, bad_check_after=1000)  # fmt: skip
    aug = AugConfig(rand_augment=None, reprob=0.0, color_jitter=None)
    return build_loader(cfg, task="supervised", img_size=28, batch_size=batch, rank=0, world_size=1, seed=0, aug=aug)


def test_every_bad_kind_is_skipped_and_counted(bad_shards, caplog, monkeypatch):
    path, expected = bad_shards
    monkeypatch.setattr(stream, "LOG_FIRST", 100)  # log every one here; runs log the first 10
    loader = loader_for(path, ceiling=0.5)
    with caplog.at_level(logging.WARNING, logger="train.data.stream"):
        batches = list(loader)
    assert len(batches) == len(loader) == 35 // 2
    stats = loader.stats
    assert stats["bad_kinds"] == expected
    assert stats["bad"] == loader.bad_samples == sum(expected.values())
    assert stats["padded"] == 2 * len(loader) - 21  # 21 good samples in 35; the rest wrapped in
    assert stats["seen"] == 35 + stats["padded"]
    messages = caplog.text
    assert "a-000.tar key corrupt" in messages and "a-001.tar key t006" in messages  # shard and key
    assert "a-002.tar" in messages and "cannot open shard" in messages


def test_bad_samples_in_worker_processes(bad_shards):
    path, expected = bad_shards
    loader = loader_for(path, ceiling=0.5, workers=2)
    assert sum(len(y) for _, y in loader) == 2 * len(loader)
    assert loader.stats["bad_kinds"] == expected


def test_ceiling_stops_the_run_with_a_clear_message(bad_shards):
    path, _ = bad_shards
    with pytest.raises(BadDataError, match=r"max_bad_fraction=5\.00%"):
        list(loader_for(path, ceiling=0.05))


def test_ceiling_is_checked_early_once_enough_samples_were_read(bad_shards):
    path, _ = bad_shards
    loader = loader_for(path, ceiling=0.05)
    loader.cfg.bad_check_after = 10
    it = iter(loader)
    with pytest.raises(BadDataError):
        for _ in range(len(loader) - 1):
            next(it)
