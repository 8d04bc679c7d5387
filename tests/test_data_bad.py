"""Bad samples never stop a run: every kind is skipped, counted and logged; a ceiling stops it.
Data that cannot be used as configured (missing shards or index, too few samples, more classes than
data.num_classes) is one error naming the setting."""

import io
import logging
import os
import subprocess
import sys
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


# ----------------------------------------------------------------------------------------------
# Data that cannot be used as configured: one error naming the setting, before any batch is read.


def cfg_of(path: str, **kw) -> DataConfig:
    return DataConfig(train_path=path, num_classes=kw.pop("num_classes", 10), num_workers=0, **kw)


def build(cfg: DataConfig, batch: int = 2):
    aug = AugConfig(rand_augment=None, reprob=0.0, color_jitter=None)
    return build_loader(
        cfg, task="supervised", img_size=28, batch_size=batch, rank=0, world_size=1, seed=0, aug=aug
    )


def test_brace_range_past_the_shards_names_the_missing_ones(bad_shards):
    path, _ = bad_shards  # a-{000..002}.tar exist
    wider = path.replace("{000..002}", "{000..006}")
    with pytest.raises(BadDataError) as err:
        build(cfg_of(wider))
    message = str(err.value)
    assert message.startswith("data.train_path: shard list")
    assert "4 of the 7 names it expands to do not exist" in message
    assert "a-003.tar, " in message and "a-005.tar and 1 more" in message and "a-006" not in message


def test_missing_index_and_unindexed_shard(bad_shards, tmp_path):
    path, _ = bad_shards
    shard = os.path.join(os.path.dirname(path), "a-000.tar")
    copy = tmp_path / "x-000.tar"
    copy.write_bytes(open(shard, "rb").read())
    with pytest.raises(BadDataError, match=r"^data.train_path: cannot read shard index .*swinv2-shards"):
        build(cfg_of(str(copy)))
    ShardIndex({"other.tar": 3}, 10, None).write(str(tmp_path / "index.json"))
    with pytest.raises(BadDataError, match=r"^data.train_path: shard .*x-000.tar' is not in the index"):
        build(cfg_of(str(copy)))


def test_more_classes_than_configured_names_the_count(bad_shards):
    path, _ = bad_shards
    with pytest.raises(BadDataError, match=r"10 classes but data.num_classes=5; set data.num_classes=10$"):
        build(cfg_of(path, num_classes=5))


def test_too_few_samples_for_a_batch(bad_shards):
    path, _ = bad_shards
    with pytest.raises(BadDataError, match=r"^data.train_path: .* no full batch of 64 per rank .* batch_size"):
        build(cfg_of(path), batch=64)


def test_missing_shards_through_the_command_line(tmp_path):
    """The report's example, through `python -m train` itself (Hydra's wrapper included)."""
    env = {**os.environ, "IN1K_SHARDS": "/nonexistent", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "train", "data=in1k_wds", "data.num_workers=0", "wandb.enabled=false",
         "model.img_size=32", "model.embed_dim=16", "model.depths=[1,1]", "model.num_heads=[1,2]",
         "model.window_size=4", "batch_size=8", f"run_dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1, r.stderr
    assert lines == [
        "error: data.train_path: shard list '/nonexistent/in1k-train-{000000..001023}.tar' matches no file"
    ]
