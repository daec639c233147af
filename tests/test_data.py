"""Datasets in their official formats, the papers' splits, and batches addressable by step."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from ticketbench import data
from ticketbench.config import DataConfig
from ticketbench.data import Batches, DatasetError

from conftest import make_cifar, make_mnist


def test_mnist_reader_parses_idx_files_gzipped_or_not(tmp_path):
    make_mnist(tmp_path / "a" / "mnist", gz=True)
    make_mnist(tmp_path / "b" / "mnist", gz=False)
    (xa, ya), (ta, la) = data.read_official("mnist", tmp_path / "a", verify=False)
    (xb, yb), _ = data.read_official("mnist", tmp_path / "b", verify=False)
    assert xa.shape == (200, 1, 28, 28) and xa.dtype == torch.uint8 and ta.shape == (50, 1, 28, 28)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    raw = gzip.decompress((tmp_path / "a/mnist/train-images-idx3-ubyte.gz").read_bytes())
    assert xa[3, 0, 5, 7].item() == raw[16 + 3 * 784 + 5 * 28 + 7]  # row-major pixels after a 16-byte header


def test_cifar_reader_parses_python_batches(tmp_path):
    folder = make_cifar(tmp_path / "cifar10")
    (x, y), (tx, ty) = data.read_official("cifar10", tmp_path, verify=False)
    assert x.shape == (100, 3, 32, 32) and tx.shape == (20, 3, 32, 32)
    import pickle

    first = pickle.loads((folder / "data_batch_1").read_bytes())
    assert torch.equal(x[0].flatten(), torch.from_numpy(first["data"][0]))  # channel-major: R plane, G, B
    assert y[:20].tolist() == first["labels"]


def test_checksum_mismatch_is_reported_with_the_file_and_the_fix(tmp_path):
    make_mnist(tmp_path / "mnist", gz=True)
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.*MD5.*--no-verify"):
        data.read_official("mnist", tmp_path, verify=True)
    make_cifar(tmp_path / "cifar10")
    with pytest.raises(DatasetError, match=r"data_batch_1: MD5 does not match"):
        data.read_official("cifar10", tmp_path, verify=True)


def test_truncated_or_corrupt_files_are_reported(tmp_path):
    folder = make_mnist(tmp_path / "mnist", gz=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="truncated"):
        data.read_official("mnist", tmp_path, verify=False)
    path.write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 10)
    with pytest.raises(DatasetError, match="bad magic"):
        data.read_official("mnist", tmp_path, verify=False)


def test_missing_dataset_says_where_it_looked(tmp_path):
    with pytest.raises(DatasetError, match="not found.*--download"):
        data.read_official("cifar10", tmp_path, verify=False)


@pytest.mark.skipif(not data.DEBIAN_FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian_passes_the_official_checksums(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data here: the default root falls back to Debian's copy
    monkeypatch.delenv("TICKETBENCH_DATA", raising=False)
    (x, y), (tx, ty) = data.read_official("fashion_mnist", None, verify=True)
    assert x.shape == (60000, 1, 28, 28) and tx.shape == (10000, 1, 28, 28)
    assert torch.bincount(y).tolist() == [6000] * 10


@pytest.mark.parametrize("given", ["argument", "environment"])
def test_a_data_root_that_was_given_is_the_only_place_looked_at(tmp_path, monkeypatch, given):
    """A typo in --data-root (or $TICKETBENCH_DATA) must not train on Debian's copy instead."""
    wrong = tmp_path / "nonexistent" / "datasets"
    monkeypatch.delenv("TICKETBENCH_DATA", raising=False)
    if given == "environment":
        monkeypatch.setenv("TICKETBENCH_DATA", str(wrong))
    with pytest.raises(data.DatasetError, match="the data root given") as e:
        data.read_official("fashion_mnist", wrong if given == "argument" else None)
    assert str(wrong / "fashion_mnist") in str(e.value) and str(data.DEBIAN_FASHION_MNIST) not in str(e.value)


def test_validation_split_is_seeded_and_disjoint(tmp_path):
    make_mnist(tmp_path / "mnist", n_train=300)
    cfg = DataConfig("mnist", validation_size=50, split_seed=1)
    a = data.load(cfg, root=tmp_path, verify=False)
    b = data.load(cfg, root=tmp_path, verify=False)
    c = data.load(DataConfig("mnist", validation_size=50, split_seed=2), root=tmp_path, verify=False)
    assert len(a.train) == 250 and len(a.val) == 50 and len(a.test) == 50
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.x, c.val.x)
    rows = {tuple(r.tolist()) for r in a.train.x.flatten(1)}
    assert not any(tuple(r.tolist()) in rows for r in a.val.x.flatten(1))
    assert a.train.x.mean().abs() < 2  # normalized, not raw 0-255


def _reference_augment(img: torch.Tensor, fill: torch.Tensor, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """What torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip do to one image."""
    c, h, w = img.shape
    padded = fill.view(c, 1, 1).expand(c, h + 8, w + 8).clone()
    padded[:, 4:-4, 4:-4] = img
    out = padded[:, dy:dy + h, dx:dx + w]
    return out.flip(-1) if flip else out


def test_batched_augmentation_equals_per_sample_crop_and_flip(tmp_path):
    make_cifar(tmp_path / "cifar10")
    d = data.load(DataConfig("cifar10", augment=True), root=tmp_path, verify=False)
    plain = d.train_unpadded()
    batches = Batches(d, 16, data_order_seed=0, augmentation_seed=3)
    x, y = batches[5]
    idx = batches.permutation(0)[5 * 16:6 * 16]
    mean, std = data.NORMALIZATION["cifar10"]
    fill = torch.tensor([-m / s for m, s in zip(mean, std)])
    matched = 0
    for i in range(16):
        candidates = [_reference_augment(plain.x[idx[i]], fill, dy, dx, f)
                      for dy in range(9) for dx in range(9) for f in (False, True)]
        matched += any(torch.equal(x[i], c) for c in candidates)
    assert matched == 16
    assert torch.equal(y, plain.y[idx])
    flipped_or_shifted = sum(not torch.equal(x[i], plain.x[idx[i]]) for i in range(16))
    assert flipped_or_shifted >= 12  # 1/162 chance per sample of the identity transform


def test_batches_are_addressed_by_step_and_the_seeds_are_independent(tmp_path):
    make_cifar(tmp_path / "cifar10")
    d = data.load(DataConfig("cifar10", augment=True), root=tmp_path, verify=False)
    b = Batches(d, 32, 0, 0)
    first = [b[s][0].clone() for s in range(8)]
    again = Batches(d, 32, 0, 0)
    assert torch.equal(again[6][0], first[6])  # step 6 without visiting 0..5: what a resumed run sees
    assert torch.equal(again[2][0], first[2])
    other_aug = Batches(d, 32, 0, 1)
    assert torch.equal(other_aug[2][1], b[2][1]) and not torch.equal(other_aug[2][0], first[2])
    other_order = Batches(d, 32, 1, 0)
    assert not torch.equal(other_order.permutation(0), b.permutation(0))
    epochs = [b.permutation(e) for e in range(2)]
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled every epoch
    assert sorted(epochs[1].tolist()) == list(range(100))
    assert b.per_epoch == 4 and len(b[3][1]) == 4  # 100 = 3 x 32 + a last batch of 4
