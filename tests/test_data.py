"""Datasets in their official formats, the papers' splits, and batches addressable by step."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ticketbench import data
from ticketbench.config import DataConfig
from ticketbench.data import Batches, DatasetError

from conftest import REAL_DATA, TICKETBENCH, make_cifar, make_mnist


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


def test_missing_dataset_says_where_it_looked_and_what_to_run(tmp_path):
    with pytest.raises(DatasetError, match=r"not found.*ticketbench download cifar10.*--data-root.*TICKETBENCH_DATA") as e:
        data.read_official("cifar10", tmp_path, verify=False)
    assert str(tmp_path / "cifar-10-batches-bin") in str(e.value) and "\n" not in str(e.value)


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


def test_a_verified_dataset_is_found_by_its_official_checksums_without_decoding_the_sources(tmp_path, cache_dir,
                                                                                            monkeypatch):
    folder = make_mnist(tmp_path / "mnist", gz=False)
    official = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    monkeypatch.setitem(data.IDX_MD5, "mnist", official)  # these tiny files play the official ones
    monkeypatch.setitem(data.OFFICIAL_SIZES, "mnist", (200, 50))
    cfg = DataConfig("mnist", validation_size=20)
    first = data.load(cfg, root=tmp_path, verify=True)
    _no_decoding(monkeypatch)
    assert _same_data(data.load(cfg, root=tmp_path, verify=True), first)


@pytest.mark.parametrize("file", ["mnist/train-images-idx3-ubyte", "mnist.gz/t10k-labels-idx1-ubyte.gz",
                                  "cifar10/data_batch_3.bin"])
def test_a_byte_flipped_after_the_dataset_was_prepared_is_still_refused_in_one_line_naming_the_file(
        official_copies, cache_dir, file):
    """The prepared file holds the verified tensors, but the copy a user keeps must stay the official one
    (DVC versions it; other tools read it): a hit that did not look would train on, silently, beside a
    damaged file."""
    copy, name = file.split("/")
    dataset, root = copy.split(".")[0], official_copies[copy]
    data.prepared(dataset, root, verify=True)
    assert len(list(cache_dir.glob(f"{dataset}-prepared-*.pt"))) == 1
    path = next(root.rglob(name))
    raw = bytearray(path.read_bytes())
    raw[len(raw) * 2 // 3] ^= 0x01
    path.write_bytes(raw)
    with pytest.raises(DatasetError) as e:
        data.prepared(dataset, root, verify=True)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_another_official_copy_shares_the_prepared_file_after_its_own_check(official_copies, cache_dir, monkeypatch):
    """The idx files and their .gz hold the same official content: one prepared file serves both, and the
    copy it was not made from is checked (decoded) before its tensors are used, not trusted by name."""
    (x, y), (tx, ty) = data.prepared("mnist", official_copies["mnist"], verify=True)
    decoded = []
    real = data._decode
    monkeypatch.setattr(data, "_decode", lambda *a: decoded.append(a[1]) or real(*a))
    (gx, gy), (gtx, gty) = data.prepared("mnist", official_copies["mnist.gz"], verify=True)
    assert decoded == [official_copies["mnist.gz"] / "mnist"]
    assert len(list(cache_dir.glob("mnist-prepared-*.pt"))) == 1
    assert all(torch.equal(a, b) for a, b in ((x, gx), (y, gy), (tx, gtx), (ty, gty)))
    data.prepared("mnist", official_copies["mnist"], verify=True)  # the copy it was made from: no decoding
    assert len(decoded) == 1


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
    (root / "mnist").chmod(0o555)  # a mirror made read-only: not written to, even by root (who may)
    try:
        assert data.prepared_dir(root / "mnist", root) == home_cache
    finally:
        (root / "mnist").chmod(0o755)
    monkeypatch.setattr(data.os, "access", lambda path, mode: False)  # a data root this user may not write to
    assert data.prepared_dir(root / "mnist", root) == home_cache
    monkeypatch.setenv("TICKETBENCH_CACHE", str(tmp_path / "scratch"))
    assert data.prepared_dir(root / "mnist", root) == tmp_path / "scratch"


# --------------------------------------------------------------------------------------------------
# The official files: CIFAR-10's two versions, checksums, pickles, downloading
# --------------------------------------------------------------------------------------------------

CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
REAL = REAL_DATA  # $TICKETBENCH_DATA as CI sets it (conftest)


def make_cifar_binary(folder: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """CIFAR-10's binary version of the batches ``make_cifar`` pickles (the same images and labels): per
    image one label byte, then its 3,072 pixels, the R, G and B planes."""
    make_cifar(folder, per_batch, seed)
    for name in CIFAR_BATCHES:
        d = pickle.loads((folder / name).read_bytes())  # our own test file: plain pickle is fine here
        records = np.column_stack([np.asarray(d["labels"], dtype=np.uint8), d["data"]])
        (folder / f"{name}.bin").write_bytes(records.tobytes())
        (folder / name).unlink()
    return folder


@pytest.fixture
def official_copies(tmp_path, monkeypatch):
    """Tiny MNIST (idx and .gz) and CIFAR-10 (binary) copies that play the official files: their checksums
    are patched in as the official ones, so only a change to their bytes can fail verification."""
    idx = make_mnist(tmp_path / "idx" / "mnist", gz=False)
    gz = make_mnist(tmp_path / "gz" / "mnist", gz=True)
    cifar = make_cifar_binary(tmp_path / "bin" / "cifar-10-batches-bin")
    monkeypatch.setitem(data.IDX_MD5, "mnist", {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in idx.iterdir()})
    monkeypatch.setattr(data, "CIFAR10_BINARY_MD5", {p.name: hashlib.md5(p.read_bytes()).hexdigest()
                                                     for p in sorted(cifar.iterdir())})
    monkeypatch.setitem(data.OFFICIAL_SIZES, "mnist", (200, 50))
    monkeypatch.setitem(data.OFFICIAL_SIZES, "cifar10", (100, 20))
    return {"mnist": idx.parent, "mnist.gz": gz.parent, "cifar10": cifar.parent}


def test_cifar_binary_reader_gives_the_tensors_the_python_version_gives(tmp_path):
    make_cifar(tmp_path / "py" / "cifar10")
    folder = make_cifar_binary(tmp_path / "bin" / "cifar-10-batches-bin")
    (x, y), (tx, ty) = data.read_official("cifar10", tmp_path / "bin", verify=False)
    (px, py), (ptx, pty) = data.read_official("cifar10", tmp_path / "py", verify=False)
    for ours, theirs in ((x, px), (y, py), (tx, ptx), (ty, pty)):
        assert torch.equal(ours, theirs) and ours.dtype == theirs.dtype
    assert x.dtype == torch.uint8 and x.shape == (100, 3, 32, 32) and y.dtype == torch.int64 and tx.shape == (20, 3, 32, 32)
    raw = (folder / "data_batch_2.bin").read_bytes()
    record = 3 * 3073  # the 4th image of batch 2, the 24th training image
    assert y[23].item() == raw[record] and x[23, 2, 5, 7].item() == raw[record + 1 + 2 * 1024 + 5 * 32 + 7]


@pytest.mark.parametrize("layout", ["cifar-10-batches-bin", "cifar10/cifar-10-batches-bin", "cifar10", "."])
def test_cifar_binary_version_is_found_where_the_archive_puts_it_and_preferred_over_the_python_version(tmp_path, layout):
    make_cifar(tmp_path / "cifar-10-batches-py", seed=1)  # torchvision's folder, found first if it were looked for first
    make_cifar_binary(tmp_path / layout)
    assert data.locate("cifar10", tmp_path) == tmp_path / layout
    (x, _), _ = data.read_official("cifar10", tmp_path, verify=False)
    (bx, _), _ = data.read_official("cifar10", tmp_path / layout, verify=False)
    assert torch.equal(x, bx)


@pytest.mark.parametrize("layout", ["cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10", "."])
def test_cifar_python_version_is_still_found_where_no_binary_version_is(tmp_path, layout):
    make_cifar(tmp_path / layout)
    assert data.locate("cifar10", tmp_path) == tmp_path / layout


def test_the_official_copies_pass_verification(official_copies):
    for name, root in official_copies.items():
        data.read_official(name.split(".")[0], root, verify=True)


@pytest.mark.parametrize("file", [f"mnist/{f}" for pair in data.IDX_FILES.values() for f in pair]
                         + [f"mnist.gz/{f}.gz" for pair in data.IDX_FILES.values() for f in pair]
                         + [f"cifar10/{f}.bin" for f in CIFAR_BATCHES])
def test_one_flipped_byte_in_any_dataset_file_is_refused_in_one_line_naming_the_file(official_copies, file):
    copy, name = file.split("/")
    path = next(official_copies[copy].rglob(name))
    raw = bytearray(path.read_bytes())
    raw[len(raw) * 2 // 3] ^= 0x01
    path.write_bytes(raw)
    with pytest.raises(DatasetError) as e:
        data.read_official(copy.split(".")[0], official_copies[copy], verify=True)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value) and "re-download" in str(e.value)


def test_a_gz_is_checked_by_its_content_so_only_its_header_timestamp_and_os_bytes_may_differ(official_copies):
    """The official checksums are of the decompressed bytes (distributors recompress): a .gz is refused on
    any changed byte except MTIME, XFL and OS (header bytes 4-9), which do not touch the content."""
    root = official_copies["mnist.gz"]
    path = root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    good = path.read_bytes()
    refused = []
    for i in range(len(good)):
        flipped = bytearray(good)
        flipped[i] ^= 0xFF
        path.write_bytes(flipped)
        try:
            data.read_official("mnist", root, verify=True)
        except DatasetError as e:
            assert str(e).startswith(str(path)) and "\n" not in str(e)
            refused.append(i)
    assert refused == [i for i in range(len(good)) if i not in range(4, 10)]


def test_a_recompressed_copy_of_the_official_idx_files_is_accepted(official_copies):
    root = official_copies["mnist"]
    expected = data.read_official("mnist", root, verify=True)
    for path in (root / "mnist").iterdir():
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes(), compresslevel=1, mtime=12345))
        path.unlink()
    (x, y), (tx, ty) = data.read_official("mnist", root, verify=True)
    assert all(torch.equal(a, b) for a, b in zip((x, y, tx, ty), (*expected[0], *expected[1])))


def test_cifar_binary_sizes_and_labels_are_checked_without_verification(tmp_path):
    folder = make_cifar_binary(tmp_path / "cifar-10-batches-bin")
    path = folder / "data_batch_4.bin"
    raw = path.read_bytes()
    path.write_bytes(raw[:-1])
    with pytest.raises(DatasetError, match=r"data_batch_4.bin: 61459 bytes is not a whole number of 3,073-byte"):
        data.read_official("cifar10", tmp_path, verify=False)
    path.write_bytes(bytes([10]) + raw[1:])
    with pytest.raises(DatasetError, match=r"data_batch_4.bin: label 10 is out of range 0-9"):
        data.read_official("cifar10", tmp_path, verify=False)


def test_cifar_versions_get_prepared_files_and_official_checksums_of_their_own(tmp_path, cache_dir, official_copies):
    make_cifar(tmp_path / "py" / "cifar10")
    binary = official_copies["cifar10"] / "cifar-10-batches-bin"
    assert data._official_checksums("cifar10", binary) == data.CIFAR10_BINARY_MD5
    assert set(data._official_checksums("cifar10", tmp_path / "py" / "cifar10")) == set(CIFAR_BATCHES)
    cfg = DataConfig("cifar10", validation_size=20)
    from_binary = data.load(cfg, root=official_copies["cifar10"], verify=True)
    assert _same_data(data.load(cfg, root=tmp_path / "py", verify=False), from_binary)
    assert len(list(cache_dir.glob("cifar10-prepared-*.pt"))) == 2


def test_the_cifar_binary_md5s_are_the_official_ones_of_the_six_files():
    assert list(data.CIFAR10_BINARY_MD5) == [f"{f}.bin" for f in CIFAR_BATCHES]
    assert data.CIFAR10_BINARY_MD5["data_batch_1.bin"] == "5dd7e06a14cb22eb9f671a540d1b7c25"
    assert data.CIFAR10_BINARY_MD5["test_batch.bin"] == "803d5f7f4d78ea53de84dbe85f74fb6d"


# The python version: pickles, read by an unpickler that builds arrays and nothing else


class _Call:
    """An object whose unpickling calls ``fn(arg)``: what a malicious pickle does."""

    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize("attack", ["os.system", "builtins.eval"])
def test_a_malicious_cifar_pickle_is_refused_in_one_line_and_runs_nothing(tmp_path, monkeypatch, attack, verify):
    import builtins

    folder = make_cifar(tmp_path / "cifar10")
    marker = tmp_path / "pwned"
    call = _Call(os.system, f"touch {marker}") if attack == "os.system" else _Call(builtins.eval, f"open({str(marker)!r}, 'w')")
    path = folder / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": call, "labels": [0] * 20}, protocol=2))
    if verify:  # an MD5 on the official list vouches for the bytes, not for unpickling them
        import torchvision.datasets as tvd

        monkeypatch.setattr(tvd.CIFAR10, "train_list", [[f, hashlib.md5((folder / f).read_bytes()).hexdigest()]
                                                        for f in CIFAR_BATCHES[:5]])
    with pytest.raises(DatasetError, match=r"refused to unpickle") as e:
        data.read_official("cifar10", tmp_path, verify=verify)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    assert ("system" if attack == "os.system" else "eval") in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5, "numpy 1 names"])
def test_cifar_python_batches_pickled_by_any_protocol_or_numpy_version_are_read(tmp_path, protocol):
    """numpy 1 (which wrote the official pickles) names numpy.core.multiarray, numpy 2 numpy._core; pickle
    protocol 5 rebuilds arrays with _frombuffer, protocol 2 from Python 3 writes bytes via _codecs.encode."""
    folder = make_cifar(tmp_path / "cifar10")
    expected = data.read_official("cifar10", tmp_path, verify=False)
    for name in CIFAR_BATCHES:
        d = pickle.loads((folder / name).read_bytes())
        raw = pickle.dumps(d, protocol=2 if protocol == "numpy 1 names" else protocol)
        if protocol == "numpy 1 names":
            assert b"numpy._core.multiarray\n" in raw
            raw = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        (folder / name).write_bytes(raw)
    (x, y), (tx, ty) = data.read_official("cifar10", tmp_path, verify=False)
    assert all(torch.equal(a, b) for a, b in zip((x, y, tx, ty), (*expected[0], *expected[1])))


# Downloading (where a network exists) and the download subcommand


def test_downloading_cifar10_fetches_the_official_binary_archive_and_checks_its_published_md5(tmp_path, monkeypatch):
    from torchvision.datasets import utils as tvu

    calls = []

    def fetch(url, download_root, md5=None, **kwargs):
        calls.append((url, download_root, md5))
        make_cifar_binary(Path(download_root) / "cifar-10-batches-bin")  # what extracting the archive leaves

    monkeypatch.setattr(tvu, "download_and_extract_archive", fetch)
    root = tmp_path / "data"
    assert data.locate("cifar10", root, download=True) == root / "cifar-10-batches-bin"
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", str(root),
                      "c32a1d4ab5d03f1284b67883e8d87530")]
    data.locate("cifar10", root, download=True)
    assert len(calls) == 1  # found: nothing downloaded again


def test_a_failed_download_is_one_line(tmp_path, monkeypatch):
    from torchvision.datasets import utils as tvu

    def fail(*args, **kwargs):
        raise RuntimeError("File not found or corrupted.\nsecond line")

    monkeypatch.setattr(tvu, "download_and_extract_archive", fail)
    with pytest.raises(DatasetError, match=r"cifar10: download into .* failed \(File not found or corrupted. second line\)") as e:
        data.locate("cifar10", tmp_path, download=True)
    assert "\n" not in str(e.value)


def test_the_download_subcommand_verifies_files_that_are_there_and_downloads_nothing(official_copies, monkeypatch,
                                                                                       capsys):
    from ticketbench import cli

    monkeypatch.setattr(data, "_download", lambda *a: pytest.fail("downloaded although the files are there"))
    assert cli.main(["download", "cifar10", "--data-root", str(official_copies["cifar10"])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"cifar10: 100 train / 20 test images, official checksums verified, in "
                   f"{official_copies['cifar10'] / 'cifar-10-batches-bin'}"]


def test_the_download_subcommand_reports_a_failure_in_one_line_with_exit_status_2(official_copies, monkeypatch,
                                                                                  capsys):
    from ticketbench import cli

    path = official_copies["mnist"] / "mnist" / "t10k-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # the last label, now another class
    path.write_bytes(raw)
    assert cli.main(["download", "mnist", "--data-root", str(official_copies["mnist"])]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"ticketbench: error: {path}: MD5 ")


# The real files (the offline mirror of the official files that $TICKETBENCH_DATA points at in CI)

needs_real = pytest.mark.skipif(not REAL, reason="TICKETBENCH_DATA is not set: no copy of the official files here")


@needs_real
def test_the_real_mnist_recompressed_passes_the_official_checksums_of_its_content():
    import torchvision.datasets as tvd

    folder = data.locate("mnist", REAL)
    archives = dict(tvd.MNIST.resources)  # the 1998 .gz files' MD5s
    recompressed = [p for p in folder.glob("*.gz") if p.name in archives
                    and hashlib.md5(p.read_bytes()).hexdigest() != archives[p.name]]
    if not recompressed:
        pytest.skip(f"{folder} holds no recompressed .gz file (the 1998 archives or the decompressed files)")
    (x, y), (tx, ty) = data.read_official("mnist", REAL, verify=True)
    assert x.shape == (60000, 1, 28, 28) and tx.shape == (10000, 1, 28, 28)
    assert torch.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@needs_real
def test_the_real_cifar10_binary_version_passes_its_official_checksums():
    assert data.locate("cifar10", REAL).name == "cifar-10-batches-bin"
    (x, y), (tx, ty) = data.read_official("cifar10", REAL, verify=True)
    assert x.shape == (50000, 3, 32, 32) and tx.shape == (10000, 3, 32, 32)
    assert torch.bincount(y).tolist() == [5000] * 10 and torch.bincount(ty).tolist() == [1000] * 10
    means = x.double().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor([0.4914, 0.4822, 0.4465], dtype=torch.float64), atol=5e-5)


@needs_real
@pytest.mark.parametrize("dataset, model", [("mnist", "lenet_300_100"), ("cifar10", "conv2")])
def test_the_cli_trains_on_the_real_official_files_with_their_checksums_checked(tmp_path, dataset, model):
    """What a user with the official files does: no --no-verify, the data root from $TICKETBENCH_DATA."""
    import json
    import subprocess

    import yaml

    cfg = {"name": "real", "data": {"name": dataset, "validation_size": 500, "train_subset": 600, "test_subset": 500},
           "model": {"name": model, "init": "glorot_normal"},
           "train": {"optimizer": "adam", "lr": 0.0012, "batch_size": 60, "steps": "20it", "eval_every": "10it"},
           "prune": {"strategy": "layerwise", "rates": {"fc": 0.2, "output": 0.1}}, "imp": {"levels": 1, "rewind": "0it"}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "TICKETBENCH_DATA": REAL, "TICKETBENCH_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([*TICKETBENCH, "dense", str(path), "--run-dir", str(tmp_path / "run"), "--threads", "1",
                        "--no-progress"], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"{dataset}: reading" in p.stderr and "MD5 check skipped" not in p.stderr
    summary = json.loads((tmp_path / "run" / "imp" / "level_00" / "summary.json").read_text())
    assert summary["final_test_acc"] > 0.1  # learned something in 20 steps: the labels match the images
