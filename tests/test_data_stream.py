"""Streaming: every sample once per epoch on 2 ranks x 2 workers, equal batches, exact resume."""

import functools
import http.server
import io
import os
import threading

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from train.data import PAD_LABEL, AugConfig, DataConfig, MaskConfig, build_loader
from train.data.fashion_mnist import load_split
from train.data.index import ShardIndex
from train.data.shards import WriteOptions, fashion_mnist_refs, write_shards

torch.set_num_threads(1)

SIZES = [7, 30, 13, 1, 0, 29]  # uneven, one single-sample and one empty shard: 80 samples
FAST_AUG = AugConfig(rand_augment=None, reprob=0.0, color_jitter=None)


def write_id_shards(root: str, sizes: list[int]) -> int:
    """Real Fashion-MNIST images; the label of each sample is its id, so batches show which sample came."""
    images, _ = load_split("", "test")
    index, n = ShardIndex({}, None, None), 0
    for s, k in enumerate(sizes):
        name = f"ids-{s:03d}.tar"
        with wds.TarWriter(os.path.join(root, name)) as sink:
            for _ in range(k):
                buf = io.BytesIO()
                Image.fromarray(images[n]).save(buf, "PNG")
                sink.write({"__key__": f"{n:06d}", "png": buf.getvalue(), "cls": str(n).encode()})
                n += 1
        index.shards[name] = k
    index.num_classes = n
    index.write(os.path.join(root, "index.json"))
    return n


@pytest.fixture(scope="module")
def id_shards(tmp_path_factory) -> tuple[str, int]:
    root = str(tmp_path_factory.mktemp("ids"))
    return root, write_id_shards(root, SIZES)


def cfg_for(path: str, n: int, workers: int, **kw) -> DataConfig:
    return DataConfig(train_path=path, val_path=path, num_classes=n, num_workers=workers, shuffle_buffer=8, **kw)


def run_epoch(cfg: DataConfig, task: str, rank: int, world: int, batch: int, epoch: int = 0) -> list[list[int]]:
    loader = build_loader(cfg, task=task, img_size=28, batch_size=batch, rank=rank, world_size=world, seed=3,
                          aug=FAST_AUG)  # fmt: skip
    loader.set_epoch(epoch)
    batches = [y.tolist() for _, y in loader]
    assert len(batches) == len(loader)
    return batches


def test_every_sample_once_two_ranks_two_workers(id_shards):
    path, n = id_shards
    cfg = cfg_for(path + "/ids-{000..005}.tar", n, workers=2)
    per_rank = [run_epoch(cfg, "supervised", r, 2, batch=4) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == n // 8
    seen = [i for batches in per_rank for b in batches for i in b]
    assert sorted(seen) == list(range(n))  # all 80, none twice


def test_epochs_reshuffle_and_stay_exact(id_shards):
    path, n = id_shards
    cfg = cfg_for(path, n, workers=2)
    orders = []
    for epoch in (0, 1):
        seen = [i for r in range(2) for b in run_epoch(cfg, "supervised", r, 2, 4, epoch) for i in b]
        assert sorted(seen) == list(range(n))
        orders.append(seen)
    assert orders[0] != orders[1]


def test_drop_last_gives_equal_full_batches(id_shards):
    path, n = id_shards  # 80 samples, 2 ranks x 6: 6 full batches each, 8 samples left out
    cfg = cfg_for(path, n, workers=2)
    per_rank = [run_epoch(cfg, "supervised", r, 2, batch=6) for r in range(2)]
    assert [len(b) for b in per_rank] == [6, 6]
    seen = [i for batches in per_rank for b in batches for i in b]
    assert all(len(b) == 6 for batches in per_rank for b in batches)
    assert len(set(seen)) == len(seen) == 72


def test_eval_sees_every_sample_once_with_padding(tmp_path):
    n = write_id_shards(str(tmp_path), [20, 1, 18])  # 39 samples: rank 1 gets one padding sample
    cfg = cfg_for(str(tmp_path), n, workers=2)
    per_rank = [run_epoch(cfg, "eval", r, 2, batch=6) for r in range(2)]
    assert [len(b) for b in per_rank] == [4, 4]  # ceil(20 / 6) on both
    assert [len(b) for b in per_rank[0]] == [len(b) for b in per_rank[1]]
    seen = [i for batches in per_rank for b in batches for i in b]
    assert seen.count(PAD_LABEL) == 1
    assert sorted(i for i in seen if i != PAD_LABEL) == list(range(n))


@pytest.fixture(scope="module")
def fmnist_shards(tmp_path_factory) -> str:
    """Shards written by the real writer from 300 Fashion-MNIST images (70 per shard: uneven)."""
    root = str(tmp_path_factory.mktemp("fm"))
    refs, classes = fashion_mnist_refs("", "train")
    write_shards(refs[:300], classes, root, WriteOptions(samples_per_shard=70), progress=False)
    return root


def simmim_loader(path: str, workers: int, rank: int = 1):
    cfg = DataConfig(train_path=path, num_classes=10, num_workers=workers, shuffle_buffer=16)
    return build_loader(cfg, task="simmim", img_size=32, batch_size=4, rank=rank, world_size=2, seed=7,
                        aug=AugConfig(), mask=MaskConfig(mask_patch_size=8, model_patch_size=4))  # fmt: skip


@pytest.mark.parametrize("workers,stop_at", [(2, 3), (0, 5), (2, 17)])
def test_resume_continues_with_exactly_the_next_batch(fmnist_shards, workers, stop_at):
    """Interrupted after batch `stop_at` (mid shuffle block, odd worker turn, or the epoch's last batch)
    and restored into a new loader: the same batches as an uninterrupted run, across the epoch end."""
    ref = simmim_loader(fmnist_shards, workers)
    per_epoch = len(ref)
    assert per_epoch == 300 // 8 and stop_at <= per_epoch
    expected = [b for _ in range(2) for b in ref]  # two whole epochs
    assert ref.epoch == 1

    first = simmim_loader(fmnist_shards, workers)
    got = []
    for images, mask in first:
        got.append((images, mask))
        if len(got) == stop_at:
            break
    state = first.state_dict()
    del first

    second = simmim_loader(fmnist_shards, workers)
    second.load_state_dict(state)
    second.set_epoch(0)  # what a trainer does on resume: a no-op inside the restored epoch
    got += list(second)
    got += list(second)[: 2 * per_epoch - len(got)]
    assert len(got) == len(expected)
    for (gi, gm), (ei, em) in zip(got, expected):
        assert torch.equal(gi, ei) and torch.equal(gm, em)
    assert got[0][1].shape == (4, 8, 8) and got[0][1].float().mean() == pytest.approx(10 / 16)  # ceil(0.6 * 16) cells


def test_resume_refuses_another_layout(fmnist_shards):
    state = simmim_loader(fmnist_shards, 2, rank=1).state_dict()
    with pytest.raises(ValueError, match="cannot resume"):
        simmim_loader(fmnist_shards, 2, rank=0).load_state_dict(state)


def test_resampled_stream_has_a_fixed_length(id_shards):
    path, n = id_shards
    cfg = cfg_for(path, n, workers=0, resampled=True, samples_per_epoch=48)
    batches = run_epoch(cfg, "supervised", 0, 2, batch=4)
    assert len(batches) == 6
    assert all(0 <= i < n for b in batches for i in b)


def test_pattern_that_matches_nothing_names_it(tmp_path):
    pattern = str(tmp_path / "missing-{000..009}.tar")
    with pytest.raises(FileNotFoundError, match="missing-"):
        build_loader(cfg_for(pattern, 10, 0), task="simmim", img_size=32, batch_size=2, rank=0, world_size=1,
                     seed=0, aug=AugConfig(), mask=MaskConfig())  # fmt: skip


@pytest.mark.parametrize("source", ["fashion_mnist", "synthetic"])
def test_array_sources_share_the_interface(source):
    cfg = DataConfig(source=source, num_classes=10, num_workers=0, synthetic_samples=64)
    loader = build_loader(cfg, task="eval", img_size=32, batch_size=8, rank=0, world_size=2, seed=0, aug=AugConfig())
    images, labels = next(iter(loader))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and bool(((labels >= 0) & (labels < 10)).all())
    mean = torch.tensor(loader.mean).view(3, 1, 1)
    std = torch.tensor(loader.std).view(3, 1, 1)
    pixels = images[0] * std + mean  # un-normalised for visualisation
    assert float(pixels.min()) >= -1e-4 and float(pixels.max()) <= 1 + 1e-4


def test_imagefolder_source(tmp_path):
    images, labels = load_split("", "test")
    for i in range(12):
        d = tmp_path / f"class{labels[i]}"
        d.mkdir(exist_ok=True)
        Image.fromarray(images[i]).save(d / f"{i}.png")
    cfg = DataConfig(source="imagefolder", train_path=str(tmp_path), num_classes=10, num_workers=0)
    loader = build_loader(cfg, task="supervised", img_size=32, batch_size=4, rank=0, world_size=1, seed=0, aug=FAST_AUG)
    assert len(loader) == 3
    assert sum(len(y) for _, y in loader) == 12
    assert np.isclose(loader.stats["bad_fraction"], 0.0)


def test_pipe_urls_stream_without_seeking(id_shards):
    path, n = id_shards
    cfg = cfg_for("pipe:cat " + path + "/ids-{000..005}.tar", n, workers=0, index_path=path + "/index.json")
    seen = [i for r in range(2) for b in run_epoch(cfg, "supervised", r, 2, batch=4) for i in b]
    assert sorted(seen) == list(range(n))


def test_a_loop_left_early_continues_where_it_stopped(fmnist_shards):
    expected = list(simmim_loader(fmnist_shards, 2))
    loader = simmim_loader(fmnist_shards, 2)
    got = []
    for batch in loader:
        got.append(batch)
        if len(got) == 5:
            break
    got += list(loader)
    assert len(got) == len(expected)
    assert all(torch.equal(g[0], e[0]) and torch.equal(g[1], e[1]) for g, e in zip(got, expected))


def test_http_urls_and_index_beside_them(id_shards):
    path, n = id_shards
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/ids-{{000..005}}.tar"
        cfg = cfg_for(url, n, workers=0)  # index.json is fetched from beside the shards
        seen = [i for r in range(2) for b in run_epoch(cfg, "supervised", r, 2, batch=4) for i in b]
        assert sorted(seen) == list(range(n))
    finally:
        server.shutdown()
        server.server_close()
