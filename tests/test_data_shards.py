"""Shard writer and `swinv2-shards`: round trip of labels and pixels, resume after an interruption."""

import io
import json
import os
import tarfile

import numpy as np
from PIL import Image
from skimage import data as skdata

from train.data.fashion_mnist import load_split
from train.data.index import ShardIndex
from train.data.shards import WriteOptions, _encode, fashion_mnist_refs, write_shards
from train.data.shards_cli import main


def read_shard(path: str) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def read_all(root: str) -> dict[str, dict[str, bytes]]:
    out = {}
    for name in sorted(os.listdir(root)):
        if name.endswith(".tar"):
            out.update(read_shard(os.path.join(root, name)))
    return out


def test_fashion_mnist_round_trip_and_resume(tmp_path):
    out = tmp_path / "fm"
    assert main(["fashion-mnist", str(out), "--split", "test", "--limit", "250", "--samples-per-shard", "100",
                 "--processes", "2", "--no-progress"]) == 0  # fmt: skip
    index = ShardIndex.from_json(json.loads((out / "index.json").read_text()))
    assert index.shards == {"shard-000000.tar": 100, "shard-000001.tar": 100, "shard-000002.tar": 50}
    assert index.num_classes == 10 and index.class_names[9] == "Ankle boot"

    images, labels = load_split("", "test")
    first = read_all(str(out))
    assert len(first) == 250
    for sample in first.values():
        i = int(json.loads(sample["json"])["source"].split("/")[1])
        assert int(sample["cls"]) == labels[i]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(sample["png"]))), images[i])  # lossless
    seen = sorted(int(json.loads(s["json"])["source"].split("/")[1]) for s in first.values())
    assert seen == list(range(250))

    # Interrupted run: shard 1 never renamed (a partial .tmp left), shard 2 never started.
    done = (out / "shard-000000.tar").stat().st_mtime_ns
    lost = {n: (out / n).read_bytes() for n in ("shard-000001.tar", "shard-000002.tar")}
    (out / "shard-000001.tar").rename(out / "shard-000001.tar.tmp")
    (out / "shard-000001.tar.tmp").write_bytes((out / "shard-000001.tar.tmp").read_bytes()[:3000])
    (out / "shard-000002.tar").unlink()
    (out / "index.json").unlink()
    assert main(["fashion-mnist", str(out), "--split", "test", "--limit", "250", "--samples-per-shard", "100",
                 "--no-progress"]) == 0  # fmt: skip
    assert (out / "shard-000000.tar").stat().st_mtime_ns == done  # complete shards are kept
    assert not list(out.glob("*.tmp"))
    assert all((out / n).read_bytes() == b for n, b in lost.items())  # rewritten byte for byte
    again = read_all(str(out))
    assert again.keys() == first.keys()
    assert all(again[k]["png"] == first[k]["png"] and again[k]["cls"] == first[k]["cls"] for k in first)
    assert json.loads((out / "index.json").read_text())["num_samples"] == 250


def test_fashion_mnist_padded_to_32_keeps_every_pixel(tmp_path):
    out = tmp_path / "fm32"
    assert main(["fashion-mnist", str(out), "--split", "test", "--limit", "20", "--pad", "32", "--no-progress"]) == 0
    images, _ = load_split("", "test")
    for sample in read_all(str(out)).values():
        i = int(json.loads(sample["json"])["source"].split("/")[1])
        padded = np.asarray(Image.open(io.BytesIO(sample["png"])))
        assert padded.shape == (32, 32)
        assert np.array_equal(padded[2:30, 2:30], images[i])  # centred, unchanged
        border = padded.copy()
        border[2:30, 2:30] = 0
        assert not border.any()  # black border


def test_images_that_need_no_resize_or_pad_keep_their_bytes():
    buf = io.BytesIO()
    Image.fromarray(skdata.astronaut()).save(buf, "JPEG", quality=90)
    data = buf.getvalue()  # 512 x 512
    assert _encode(data, "jpg", WriteOptions(pad=32)) == (data, "jpg")
    assert _encode(data, "jpg", WriteOptions(resize=1024)) == (data, "jpg")
    padded, ext = _encode(data, "jpg", WriteOptions(pad=600))
    assert ext == "png" and Image.open(io.BytesIO(padded)).size == (600, 600)


def test_rerun_with_other_settings_is_refused(tmp_path):
    refs, classes = fashion_mnist_refs("", "test")
    write_shards(refs[:20], classes, str(tmp_path), WriteOptions(samples_per_shard=10), progress=False)
    try:
        write_shards(refs[:20], classes, str(tmp_path), WriteOptions(samples_per_shard=5), progress=False)
    except ValueError as exc:
        assert "other settings" in str(exc)
    else:
        raise AssertionError("a rerun with another shard size must not mix two plans")


def photos() -> list[np.ndarray]:
    return [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]


def test_imagefolder_and_imagenet22k_layouts_with_resize(tmp_path):
    folder = tmp_path / "folder"
    synsets = tmp_path / "in22k"
    synsets.mkdir()
    for c, name in enumerate(["n01440764", "n01443537"]):
        (folder / name).mkdir(parents=True)
        (synsets / name).mkdir()
        for j, photo in enumerate(photos()[2 * c : 2 * c + 2]):
            Image.fromarray(photo).save(folder / name / f"{name}_{j}.JPEG", quality=95)
    # One synset as a release tar, the other as a folder.
    with tarfile.open(synsets / "n01440764.tar", "w") as tar:
        for f in sorted((folder / "n01440764").iterdir()):
            tar.add(f, arcname=f.name)
    os.rmdir(synsets / "n01440764")
    for f in (folder / "n01443537").iterdir():
        (synsets / "n01443537" / f.name).write_bytes(f.read_bytes())

    for kind, src in (("imagefolder", folder), ("imagenet22k", synsets)):
        out = tmp_path / f"out-{kind}"
        assert main([kind, str(src), str(out), "--resize", "128", "--quality", "90", "--samples-per-shard", "3",
                     "--processes", "1", "--no-progress"]) == 0  # fmt: skip
        samples = read_all(str(out))
        assert len(samples) == 4
        labels = sorted(int(s["cls"]) for s in samples.values())
        assert labels == [0, 0, 1, 1]
        for s in samples.values():
            assert min(Image.open(io.BytesIO(s["jpg"])).size) == 128
        index = json.loads((out / "index.json").read_text())
        assert index["class_names"] == ["n01440764", "n01443537"]


def test_index_command_for_foreign_shards(tmp_path):
    refs, classes = fashion_mnist_refs("", "test")
    write_shards(refs[:30], classes, str(tmp_path), WriteOptions(samples_per_shard=12), progress=False)
    (tmp_path / "index.json").unlink()
    assert main(["index", str(tmp_path / "shard-{000000..000002}.tar"), "--num-classes", "10"]) == 0
    index = ShardIndex.from_json(json.loads((tmp_path / "index.json").read_text()))
    assert list(index.shards.values()) == [12, 12, 6]
    assert main(["index", str(tmp_path / "nothing-*.tar")]) == 2  # names the pattern, exit code 2
