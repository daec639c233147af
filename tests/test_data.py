"""Datasets in their official formats, the papers' splits, and batches addressable by step."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

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


# --------------------------------------------------------------------------------------------------
# Prepared datasets
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "prepared"
    monkeypatch.setenv("TICKETBENCH_CACHE", str(folder))
    return folder


def _no_decoding(monkeypatch):
    """Make any decoding of the source files fail, so a load that succeeds read the prepared file."""
    def fail(*args, **kwargs):
        raise AssertionError("the source files were decoded again")
    monkeypatch.setattr(data, "_read_bytes", fail)
    monkeypatch.setattr(data, "_read_cifar", fail)


def _same_data(a: data.Data, b: data.Data) -> bool:
    pairs = [(a.train.x, b.train.x), (a.train.y, b.train.y), (a.test.x, b.test.x), (a.test.y, b.test.y)]
    pairs += [(a.val.x, b.val.x), (a.val.y, b.val.y)] if a.val is not None else []
    return all(torch.equal(p, q) and p.dtype == q.dtype for p, q in pairs)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_a_dataset_is_prepared_once_and_later_loads_do_not_decode_the_sources(tmp_path, cache_dir, monkeypatch, name):
    (make_mnist if name == "mnist" else make_cifar)(tmp_path / name)
    cfg = DataConfig(name, validation_size=20, augment=name == "cifar10")
    first = data.load(cfg, root=tmp_path, verify=False)
    assert len(list(cache_dir.glob(f"{name}-prepared-*.pt"))) == 1
    _no_decoding(monkeypatch)
    assert _same_data(data.load(cfg, root=tmp_path, verify=False), first)


def test_a_prepared_dataset_trains_on_the_same_bits_as_the_source_files(tmp_path, cache_dir, monkeypatch):
    """Normalized in place after the split, from the cache or not: the papers' formula, bit for bit."""
    make_mnist(tmp_path / "mnist", n_train=300)
    cfg = DataConfig("mnist", validation_size=50, split_seed=3, train_subset=200)
    built, cached = data.load(cfg, root=tmp_path, verify=False), data.load(cfg, root=tmp_path, verify=False)
    monkeypatch.setattr(data, "prepared", data.read_official)  # no cache at all
    uncached = data.load(cfg, root=tmp_path, verify=False)
    assert _same_data(built, cached) and _same_data(cached, uncached)
    (x, _), _ = data.read_official("mnist", tmp_path, verify=False)
    mean, std = data.NORMALIZATION["mnist"]
    formula = (x.float() / 255.0 - mean[0]) / std[0]  # the whole set, then split, as the loader once did
    rows = [r.tobytes() for r in formula.flatten(1).numpy()]
    assert all(r.tobytes() in rows for r in cached.train.x.flatten(1).numpy())


def test_a_verified_dataset_is_found_by_its_official_checksums_without_opening_the_sources(tmp_path, cache_dir,
                                                                                           monkeypatch):
    import hashlib

    folder = make_mnist(tmp_path / "mnist", gz=False)
    official = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    monkeypatch.setitem(data.IDX_MD5, "mnist", official)  # these tiny files play the official ones
    monkeypatch.setitem(data.OFFICIAL_SIZES, "mnist", (200, 50))
    cfg = DataConfig("mnist", validation_size=20)
    first = data.load(cfg, root=tmp_path, verify=True)
    _no_decoding(monkeypatch)
    monkeypatch.setattr(data.Path, "read_bytes", lambda self: pytest.fail(f"{self} was opened"))
    assert _same_data(data.load(cfg, root=tmp_path, verify=True), first)


def test_an_edited_unverified_copy_gets_a_new_prepared_file(tmp_path, cache_dir):
    make_mnist(tmp_path / "mnist", gz=False, seed=0)
    before = data.load(DataConfig("mnist", validation_size=0), root=tmp_path, verify=False)
    make_mnist(tmp_path / "mnist", gz=False, seed=1)  # same names, sizes and shapes; other pixels
    after = data.load(DataConfig("mnist", validation_size=0), root=tmp_path, verify=False)
    assert not torch.equal(before.train.x, after.train.x)
    assert len(list(cache_dir.glob("mnist-prepared-*.pt"))) == 2


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_a_corrupt_prepared_file_is_reported_deleted_and_rebuilt(tmp_path, cache_dir, caplog, monkeypatch, damage):
    make_mnist(tmp_path / "mnist")
    cfg = DataConfig("mnist", validation_size=20)
    good = data.load(cfg, root=tmp_path, verify=False)
    (path,) = cache_dir.glob("mnist-prepared-*.pt")
    raw = bytearray(path.read_bytes())
    if damage == "flip a byte":
        raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw) if damage == "flip a byte" else bytes(raw[: len(raw) // 2]))
    with caplog.at_level("INFO", logger="ticketbench"):
        rebuilt = data.load(cfg, root=tmp_path, verify=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(path) in warnings[0] and "fails its integrity check" in warnings[0]
    assert "reading" in caplog.text and "written to" in caplog.text  # rebuilt from the sources
    assert _same_data(rebuilt, good)
    _no_decoding(monkeypatch)
    assert _same_data(data.load(cfg, root=tmp_path, verify=False), good)  # and the new file is sound


def test_jobs_preparing_the_same_dataset_at_once_leave_one_sound_file(tmp_path, cache_dir, monkeypatch):
    """Job A has written its whole temporary file when job B prepares the dataset from start to end;
    then A renames over B's file. Neither ever exposes half a file, and the last writer wins."""
    make_mnist(tmp_path / "mnist")
    real_replace, pid, renamed = os.replace, [1111], []

    def replace(src, dst):
        renamed.append(Path(src).name)
        if pid[0] == 1111:
            assert not Path(dst).exists()  # A's bytes are only in its temporary file
            pid[0] = 2222
            data.prepared("mnist", tmp_path, verify=False)  # job B
            assert Path(dst).is_file()
        real_replace(src, dst)

    monkeypatch.setattr(os, "getpid", lambda: pid[0])
    monkeypatch.setattr(os, "replace", replace)
    data.prepared("mnist", tmp_path, verify=False)  # job A
    monkeypatch.setattr(os, "replace", real_replace)
    (target,) = cache_dir.iterdir()  # no temporary file left behind
    assert renamed == [f".{target.name}.tmp-1111", f".{target.name}.tmp-2222"]
    _no_decoding(monkeypatch)
    (x, y), (tx, ty) = data.prepared("mnist", tmp_path, verify=False)
    monkeypatch.undo()
    (sx, sy), (stx, sty) = data.read_official("mnist", tmp_path, verify=False)
    assert torch.equal(x, sx) and torch.equal(y, sy) and torch.equal(tx, stx) and torch.equal(ty, sty)


def test_prepared_files_live_beside_writable_sources_else_in_the_home_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("TICKETBENCH_CACHE", raising=False)
    monkeypatch.setattr(data.Path, "home", lambda: tmp_path / "home")
    home_cache = tmp_path / "home" / ".cache" / "ticketbench"
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    assert data.prepared_dir(root / "mnist", root) == root / "mnist"
    assert data.prepared_dir(tmp_path / "debian", root) == home_cache  # the fallback is outside the root
    monkeypatch.setattr(data.os, "access", lambda path, mode: False)  # a read-only data root
    assert data.prepared_dir(root / "mnist", root) == home_cache
    monkeypatch.setenv("TICKETBENCH_CACHE", str(tmp_path / "scratch"))
    assert data.prepared_dir(root / "mnist", root) == tmp_path / "scratch"
