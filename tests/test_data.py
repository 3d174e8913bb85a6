"""wm.data: verified Fashion-MNIST, torchvision formats, photos, patches, folders."""

import gzip
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from wm import data


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    data.fashion_mnist.cache_clear()
    yield
    data.fashion_mnist.cache_clear()


def test_fashion_mnist_shapes_and_labels():
    x, y = data.fashion_mnist(train=True)
    xt, yt = data.fashion_mnist(train=False)
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8
    assert xt.shape == (10000, 1, 28, 28) and yt.shape == (10000,)
    assert y.dtype == torch.int64 and set(y.unique().tolist()) == set(range(10))
    assert torch.bincount(y).tolist() == [6000] * 10  # Fashion-MNIST is balanced


def _stage(tmp_path, corrupt=None):
    """Copy the verified files under tmp/fashion-mnist, optionally damaging one."""
    src = data.ensure_fashion_mnist()
    dst = tmp_path / "fashion-mnist"
    dst.mkdir()
    for name in data.FASHION_FILES:
        shutil.copy(src / name, dst / name)
    if corrupt is not None:
        corrupt(dst)
    return dst


def test_wm_data_is_searched_first(tmp_path, monkeypatch):
    dst = _stage(tmp_path)
    monkeypatch.setenv("WM_DATA", str(tmp_path))
    assert data.find_fashion_mnist() == dst


def test_a_partial_wm_data_folder_is_named(tmp_path, monkeypatch):
    dst = _stage(tmp_path, lambda d: (d / "t10k-labels-idx1-ubyte.gz").unlink())
    monkeypatch.setenv("WM_DATA", str(tmp_path))
    with pytest.raises(data.DataError, match=f"{dst} .from WM_DATA. lacks t10k-labels-idx1-ubyte.gz"):
        data.find_fashion_mnist()
    monkeypatch.setenv("WM_DATA", str(tmp_path / "nosuch"))
    with pytest.raises(data.DataError, match="is not a folder"):
        data.find_fashion_mnist()


def test_truncated_file_is_refused_with_its_name(tmp_path, monkeypatch):
    def truncate(d):
        p = d / "t10k-images-idx3-ubyte.gz"
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    _stage(tmp_path, truncate)
    monkeypatch.setenv("WM_DATA", str(tmp_path))
    with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte.gz.*truncated"):
        data.fashion_mnist(train=False)


def test_altered_file_fails_its_checksum(tmp_path, monkeypatch):
    def alter(d):
        p = d / "train-labels-idx1-ubyte.gz"
        raw = bytearray(gzip.decompress(p.read_bytes()))
        raw[100] = (raw[100] + 1) % 10  # one label changed: a valid gzip, a wrong file
        p.write_bytes(gzip.compress(bytes(raw)))
    _stage(tmp_path, alter)
    monkeypatch.setenv("WM_DATA", str(tmp_path))
    with pytest.raises(data.DataError, match="train-labels-idx1-ubyte.gz fails its checksum"):
        data.fashion_mnist(train=True)


def test_load_classification_subset_normalised():
    ds = data.load_classification("fashion_mnist", n_train=500, n_test=100, seed=3)
    assert ds.x_train.shape == (500, 1, 28, 28) and ds.x_train.dtype == torch.float32
    # normalised with the data set's own statistics: roughly zero mean, unit spread
    assert abs(ds.x_train.mean().item()) < 0.2 and 0.8 < ds.x_train.std().item() < 1.2
    again = data.load_classification("fashion_mnist", n_train=500, n_test=100, seed=3)
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_test, again.y_test)
    with pytest.raises(ValueError, match="n_train"):
        data.load_classification("fashion_mnist", n_train=10**6)
    with pytest.raises(ValueError, match="unknown data set"):
        data.load_classification("imagenet")


def _write_idx(path, arr):
    magic = 2051 if arr.ndim == 3 else 2049
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def test_mnist_in_torchvision_format(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 10, 12)
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", imgs)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    x, y = data.mnist(train=True, root=tmp_path)
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.uint8
    assert np.array_equal(x[:, 0].numpy(), imgs) and y.tolist() == labels.tolist()


def test_cifar10_in_torchvision_format(tmp_path, monkeypatch):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        arr = rng.integers(0, 256, (4, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, 4).tolist()
        batches[name] = (arr, labels)
        with open(base / name, "wb") as fh:
            pickle.dump({"data": arr, "labels": labels}, fh)
    with open(base / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": list(data.DATASETS["cifar10"][1])}, fh)
    # The real archive's MD5s cannot match a synthetic file set: torchvision's integrity check is
    # reduced to "the file exists"; reading and decoding are torchvision's own code.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    x, y = data.cifar10(train=False, root=tmp_path)
    arr, labels = batches["test_batch"]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8
    assert np.array_equal(x.numpy().reshape(4, -1), arr) and y.tolist() == labels
    xtr, _ = data.cifar10(train=True, root=tmp_path)
    assert len(xtr) == 20


def test_missing_torchvision_dataset_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("WM_DATA", str(tmp_path))
    monkeypatch.setattr(data, "ROOT", tmp_path)
    with pytest.raises(data.DataError, match="MNIST/ not found"):
        data.mnist()


def test_photo_split_is_by_image_and_disjoint():
    assert not set(data.PHOTOS_TRAIN) & set(data.PHOTOS_TEST)
    train, test = data.photos("train"), data.photos("test")
    assert len(train) == len(data.PHOTOS_TRAIN) and len(test) == len(data.PHOTOS_TEST)
    for img in train + test:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    # no test photo is pixel-identical to a training photo (the `cat` alias of `chelsea` is excluded)
    train_keys = {img.tobytes()[:4096] for img in train}
    assert not any(img.tobytes()[:4096] in train_keys for img in test)


def test_sample_patches_deterministic_and_from_the_images():
    imgs = [np.arange(64 * 80 * 3, dtype=np.uint32).reshape(64, 80, 3).astype(np.uint8)]
    a = data.sample_patches(imgs, 16, 32, seed=5, flip=False)
    b = data.sample_patches(imgs, 16, 32, seed=5, flip=False)
    c = data.sample_patches(imgs, 16, 32, seed=6, flip=False)
    assert a.shape == (16, 3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    img = torch.from_numpy(imgs[0]).permute(2, 0, 1)
    for patch in a:  # every patch is a real crop of the image
        found = any(torch.equal(patch, img[:, t:t + 32, l:l + 32]) for t in range(33) for l in range(49))
        assert found
    with pytest.raises(ValueError, match="at least 100"):
        data.sample_patches(imgs, 1, 100)


def test_image_folder_split(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(30):
        sub = tmp_path / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(sub / f"img{i}.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "tiny.png")  # below min_size
    (tmp_path / "notes.txt").write_text("not an image")
    every = data.load_image_folder(tmp_path)
    train = data.load_image_folder(tmp_path, split="train", test_fraction=0.3)
    test = data.load_image_folder(tmp_path, split="test", test_fraction=0.3)
    assert len(every) == 30 and len(train) + len(test) == 30 and len(test) > 0
    keys = lambda imgs: {im.tobytes() for im in imgs}
    assert not keys(train) & keys(test)
    assert keys(test) == keys(data.load_image_folder(tmp_path, split="test", test_fraction=0.3))
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_image_folder(tmp_path / "nope")


def test_wm_photos_overrides_bundled(tmp_path, monkeypatch):
    for i in range(10):
        Image.fromarray(np.full((80, 80, 3), i * 20, np.uint8)).save(tmp_path / f"p{i}.jpg")
    monkeypatch.setenv("WM_PHOTOS", str(tmp_path))
    assert len(data.photos("train")) + len(data.photos("test")) == 10
