"""Datasets, resident as tensors on the training device, with batched on-device augmentation.

Why not a DataLoader: per-sample PIL transforms starve small models (open_lth's LeNet is bound by its
data pipeline; see bench/). Here the whole split is one tensor on the device; a batch is one gather,
and the CIFAR augmentation (random crop with 4-pixel zero padding + horizontal flip, per sample) is a
single advanced-indexing op on a pre-padded copy.

Randomness is counter-based: the order of epoch ``e`` is a permutation drawn from ``(seed, e)`` and the
augmentation of step ``s`` from ``(seed, s)``. A run resumed at any step therefore sees exactly the
batches an uninterrupted run sees, without storing RNG state, and the data-order and augmentation
streams are independent of each other and of initialization. Random numbers are drawn on the CPU, so a
GPU run sees the same batches as a CPU run; they reach the GPU in non-blocking copies from pinned memory
(``to_device``), so no training step waits for the host.

Files are read in their official formats (MNIST/Fashion-MNIST idx, optionally gzipped; CIFAR-10's binary
version, else its python version through an unpickler that builds nothing but arrays) and checked against
official MD5s; see ``_verify`` and ``_read_cifar``. Decompressing and checking them costs
every job about half a second, so the decoded uint8 tensors are kept as a *prepared dataset* (see
``prepared``): one verified file per dataset that later jobs read instead of decoding the sources.
"""

from __future__ import annotations

import gzip
import hashlib
import codecs
import io
import logging
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoints
from .config import OFFICIAL_SIZES, DataConfig

log = logging.getLogger("ticketbench")


class DatasetError(RuntimeError):
    """A dataset is missing, malformed or fails its checksum. The message says how to fix it."""


# Per-channel mean/std used to normalize inputs.
NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),  # open_lth datasets/mnist.py (the usual MNIST statistics)
    "fashion_mnist": ((0.2860,), (0.3530,)),  # Fashion-MNIST training-set statistics
    "cifar10": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # open_lth datasets/cifar10.py
    "synthetic": ((0.0,), (1.0,)),
}

IDX_FILES = {  # split -> (images, labels)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# MD5 of the *decompressed* idx files. Checked on the decompressed bytes because distributors
# recompress (Debian's dataset-fashion-mnist .gz files differ from the official ones byte-wise).
# Fashion-MNIST: computed from the official files as shipped by Debian's dataset-fashion-mnist.
IDX_MD5 = {
    "fashion_mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    # MNIST: the official files (LeCun, Cortes, Burges), checked against the copy torchvision's MNIST/raw
    # folder holds uncompressed; the official .gz archives' MD5s (torchvision's list) are accepted too.
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
}
# CIFAR-10, binary version (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html): the six files of
# folder cifar-10-batches-bin/ in the official archive cifar-10-binary.tar.gz, whose MD5 that page publishes.
# Per-file MD5s: as the README of the offline mirror of the official files lists them (with their SHA-256;
# the mirror CI reads through $TICKETBENCH_DATA), computed over bytes identical to the official archive's.
# Preferred over the python version: it needs no pickle.
CIFAR10_BINARY_FOLDER = "cifar-10-batches-bin"
CIFAR10_BINARY_MD5 = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}
CIFAR10_BINARY_ARCHIVE = ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530")
SHAPES = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}  # (channels, height, width)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
TORCHVISION_FOLDERS = {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py"}
# Part of every prepared dataset's key: bump it when the readers' output for the same files changes, so
# that caches made by the old readers are no longer found.
DECODER_VERSION = 1
PREPARED_FORMAT = "ticketbench-prepared-dataset-v2"  # v2: records the SHA-256 of the source files it was made from


@dataclass
class Split:
    x: torch.Tensor  # float32, normalized, (N, C, H, W); padded by 4 pixels if augmentation is on
    y: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Data:
    """Train / validation / test splits on one device."""

    train: Split
    val: Split | None
    test: Split
    shape: tuple[int, int, int]
    classes: int
    augment: bool

    def train_unpadded(self) -> Split:
        """The training images without augmentation padding (for evaluating training loss)."""
        if not self.augment:
            return self.train
        c, h, w = self.shape
        return Split(self.train.x[:, :, 4:4 + h, 4:4 + w], self.train.y)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load(cfg: DataConfig, device: torch.device | str = "cpu", root: str | Path | None = None,
         verify: bool = True, download: bool = False) -> Data:
    """Read a dataset, split it as the papers do, normalize, and place it on ``device``.

    ``root`` is where the files are (default: $TICKETBENCH_DATA, else ./data). ``verify=False`` skips the
    MD5 check for user-supplied copies; the shapes and labels are checked regardless.
    """
    if cfg.name == "synthetic":
        (xtr, ytr), (xte, yte) = _synthetic(cfg)
    else:
        (xtr, ytr), (xte, yte) = prepared(cfg.name, root, verify=verify, download=download)
    mean, std = NORMALIZATION[cfg.name]
    classes = int(max(ytr.max(), yte.max())) + 1

    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([cfg.split_seed, 0x5EED])))
    order = rng.permutation(len(ytr))
    val_idx, train_idx = order[: cfg.validation_size], order[cfg.validation_size:]
    if cfg.train_subset:
        train_idx = train_idx[: cfg.train_subset]
    test_idx = rng.permutation(len(yte))[: cfg.test_subset] if cfg.test_subset else np.arange(len(yte))
    shape = tuple(xtr.shape[1:])

    def split(x: torch.Tensor, y: torch.Tensor, idx: np.ndarray) -> Split:
        # Gathered before normalizing: a quarter of the bytes to move, and only the examples used are
        # normalized. Normalization is elementwise, so the values are the same bits either way.
        ix = torch.from_numpy(np.sort(idx))
        return Split(_normalize(x[ix], mean, std).to(device), y[ix].to(device))

    train = split(xtr, ytr, train_idx)
    log.debug("%s: %d train / %d validation / %d test examples of shape %s, %d classes, on %s (split seed %d)", cfg.name,
              len(train_idx), len(val_idx), len(test_idx), shape, classes, device, cfg.split_seed)
    if cfg.augment:
        # Pad with the normalized value of a black pixel: torchvision pads the raw image with zeros.
        fill = torch.tensor([-m / s for m, s in zip(mean, std)], device=device).view(1, -1, 1, 1)
        padded = fill.expand(len(train), shape[0], shape[1] + 8, shape[2] + 8).clone()  # synthetic: one fill for all channels
        padded[:, :, 4:-4, 4:-4] = train.x
        train = Split(padded, train.y)
    val = split(xtr, ytr, val_idx) if len(val_idx) else None
    return Data(train, val, split(xte, yte, test_idx), shape, classes, cfg.augment)


def _normalize(x: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel (uint8 input; float input is not rescaled), in float32.

    Computed in place on one fresh copy: the same operations in the same order as out-of-place
    arithmetic, hence the same bits, at a third of the time (no temporaries to allocate and fault in).
    """
    out = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    if x.dtype == torch.uint8:
        out.div_(255.0)
    return out.sub_(torch.tensor(mean).view(1, -1, 1, 1)).div_(torch.tensor(std).view(1, -1, 1, 1))


def _synthetic(cfg: DataConfig) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Learnable Gaussian class prototypes plus noise, for tests and smoke runs."""
    g = torch.Generator().manual_seed(cfg.split_seed + 12345)
    classes = 10
    protos = torch.randn(classes, *cfg.synthetic_shape, generator=g)
    out = []
    for n in (cfg.synthetic_train, cfg.synthetic_test):
        y = torch.randint(classes, (n,), generator=g)
        x = protos[y] + 1.5 * torch.randn(n, *cfg.synthetic_shape, generator=g)
        out.append((x, y))
    return out[0], out[1]


def default_root(root: str | Path | None = None) -> Path:
    return Path(root or os.environ.get("TICKETBENCH_DATA") or "data")


def read_official(name: str, root: str | Path | None, verify: bool = True,
                  download: bool = False) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Return ((train_x, train_y), (test_x, test_y)) as uint8 NCHW images and int64 labels.

    A root that was given (``root`` or $TICKETBENCH_DATA) is the only place looked at: a typo must not
    silently train on another copy. Only the default ./data falls back to Debian's Fashion-MNIST."""
    return _decode(name, locate(name, root, download), verify)


def locate(name: str, root: str | Path | None, download: bool = False) -> Path:
    """The folder holding the official files of ``name`` (downloading them there if asked)."""
    explicit = bool(root or os.environ.get("TICKETBENCH_DATA"))
    root = default_root(root)
    candidates = _candidates(name, root, fallback=not explicit)
    folder = find_folder(name, candidates)
    if folder is None and download:
        _download(name, root)
        folder = find_folder(name, candidates)
    if folder is None:
        given = " (the data root given; nothing else is looked at)" if explicit else ""
        raise DatasetError(
            f"{name}: files not found under {root}{given} (looked in {', '.join(str(c) for c in candidates)}); "
            f"run 'ticketbench download {name}' where there is a network, or pass --data-root DIR (or set "
            f"$TICKETBENCH_DATA) to a folder holding the official files"
        )
    return folder


def _decode(name: str, folder: Path, verify: bool) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    log.info("%s: reading %s%s", name, folder, "" if verify else " (MD5 check skipped: --no-verify)")
    if name == "cifar10":
        return _read_cifar(folder, verify)
    train = _read_idx_pair(name, folder, "train", verify)
    test = _read_idx_pair(name, folder, "test", verify)
    _check_sizes(name, folder, len(train[1]), len(test[1]), verify)
    return train, test


# --------------------------------------------------------------------------------------------------
# Prepared datasets
# --------------------------------------------------------------------------------------------------


def prepared(name: str, root: str | Path | None, verify: bool = True,
             download: bool = False) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """What :func:`read_official` returns, read from the dataset's prepared file when there is one.

    The first job to read a dataset decodes and checks the source files as ``read_official`` does and
    stores the uint8 tensors in one file with their SHA-256, the key below and the SHA-256 of each source
    file as stored (:func:`_stored_sha256`); later jobs read that file instead of decoding the sources.
    uint8 rather than normalized floats: four times smaller, and normalizing on load is the same
    computation as without the cache, so training sees the same bits. The file is named and checked by a
    key that identifies the content:

    - verified (the default): the official checksums the sources were checked against plus
      ``DECODER_VERSION``. Every verified copy of a dataset is the same data, so copies share the file.
      A hit still hashes the sources as stored (36 ms for MNIST, about 0.5 s for CIFAR-10, against a
      decode and MD5 check of about twice that): where they are not the bytes the file was made from, a
      damaged file or another copy (re-compressed, or sharing $TICKETBENCH_CACHE), they are checked as
      on a first read, so a byte flipped after the first job is still the one-line error naming the file
      rather than passing unseen;
    - ``verify=False``: the SHA-256 of each source file as stored, so an edited copy gets a new prepared
      file. Its shapes and labels were checked when it was built.

    A prepared file that fails its check is reported in one line, deleted and rebuilt from the sources.
    Writes are atomic (``checkpoints.atomic_write``: temporary file + rename), so jobs preparing the same
    dataset at once are safe: the last rename wins and every writer writes the same tensors. See
    :func:`prepared_dir` for where the files live.
    """
    folder = locate(name, root, download)
    stored = _stored_sha256(name, folder)
    key = _prepared_key(name, verify, _official_checksums(name, folder) if verify else stored)
    path = prepared_dir(folder, default_root(root)) / f"{name}-prepared-{key[:16]}.pt"
    if path.is_file():
        f = _read_prepared(path, key)
        if f is not None and f["sources"] == stored:
            log.info("%s: prepared tensors read from %s", name, path)
            t = f["tensors"]
            return (t["train_x"], t["train_y"]), (t["test_x"], t["test_y"])
        if f is not None:  # verified only: unverified sources are part of the key
            log.info("%s: the files in %s are not the bytes %s was prepared from; checking them", name, folder, path)
            return _decode(name, folder, verify)
        log.warning("%s: prepared file %s fails its integrity check; deleted, rebuilding it from %s", name, path, folder)
        path.unlink(missing_ok=True)
    (xtr, ytr), (xte, yte) = _decode(name, folder, verify)
    tensors = {"train_x": xtr, "train_y": ytr, "test_x": xte, "test_y": yte}
    buf = io.BytesIO()
    torch.save({"format": PREPARED_FORMAT, "key": key, "sha256": _tensors_sha256(tensors), "sources": stored,
                "tensors": tensors}, buf)
    try:
        checkpoints.atomic_write(path, buf.getvalue())
        log.info("%s: prepared tensors written to %s", name, path)
    except checkpoints.WriteError as e:  # a cache that cannot be written only costs time
        log.warning("%s: %s; continuing without a prepared file", name, e)
    return (xtr, ytr), (xte, yte)


def _read_prepared(path: Path, key: str) -> dict[str, Any] | None:
    """A prepared file (its ``tensors`` and the ``sources`` it was made from), or None if it is damaged or
    not the file of ``key``.

    Not the checkpoint envelope: that pickles its body as a bytes object, which for a dataset-sized body
    costs more to unpickle than decoding the sources. Here the tensors are stored as tensors and their
    bytes hashed in place."""
    try:
        f = torch.load(path, map_location="cpu", weights_only=True)
        ok = (isinstance(f, dict) and f.get("format") == PREPARED_FORMAT and f.get("key") == key
              and isinstance(f.get("sources"), dict) and _tensors_sha256(f["tensors"]) == f["sha256"])
    except Exception:  # torch.load raises many types on a damaged file
        ok = False
    return f if ok else None


def _tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.numpy())
    return h.hexdigest()


def prepared_dir(folder: Path, root: Path) -> Path:
    """Where prepared datasets live: $TICKETBENCH_CACHE if set (e.g. node-local scratch on a cluster),
    else beside the source files if they are under the data root and their folder is writable (one copy
    for every job reading that folder), else ~/.cache/ticketbench. The fallback to Debian's
    /usr/share/datasets is not under the root, so a system package's folder is never written to, not
    even by root. Writable means by its mode bits too: root may write anywhere, but a mirror whose
    folders were made read-only (``chmod a-w``) is not to be written to by anyone. Keys identify the
    content, so any of these may be shared by jobs, users and clones."""
    if os.environ.get("TICKETBENCH_CACHE"):
        return Path(os.environ["TICKETBENCH_CACHE"])
    if folder.is_relative_to(root) and os.access(folder, os.W_OK) and folder.stat().st_mode & 0o222:
        return folder
    return Path.home() / ".cache" / "ticketbench"


def _prepared_key(name: str, verify: bool, sources: dict[str, str]) -> str:
    """The key of a prepared file: ``sources`` are the official checksums a verified copy matched, or the
    stored SHA-256s of an unverified one. They name the files, so CIFAR-10's binary and python versions
    get keys of their own."""
    ident = {"dataset": name, "decoder": DECODER_VERSION, "format": PREPARED_FORMAT, "verified": verify,
             "sources": sources}
    return hashlib.sha256(repr(sorted(ident.items())).encode()).hexdigest()


def _stored_sha256(name: str, folder: Path) -> dict[str, str]:
    """The SHA-256 of each source file as stored (read, not decompressed)."""
    out = {}
    for p in _source_files(name, folder):
        try:
            with p.open("rb") as fh:
                out[p.name] = hashlib.file_digest(fh, "sha256").hexdigest()
        except FileNotFoundError:
            out[p.name] = "missing"
    return out


def _official_checksums(name: str, folder: Path) -> dict[str, str]:
    """The checksums a verified copy of ``name`` in ``folder`` matched: the decompressed idx MD5s when all
    are known (no torchvision import), else torchvision's archive MD5s that ``_verify`` accepts; for
    CIFAR-10, the MD5 of each batch of the version the folder holds (``_cifar_batches``)."""
    if name == "cifar10":
        return _cifar_batches(folder)
    sums = dict(IDX_MD5.get(name, {}))
    if all(f in sums for pair in IDX_FILES.values() for f in pair):
        return sums
    import torchvision.datasets as tvd

    return {**sums, **dict({"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST}[name].resources)}


def _source_files(name: str, folder: Path) -> list[Path]:
    """The files the readers open: CIFAR-10's batches, or each idx file (its .gz if not decompressed)."""
    if name == "cifar10":
        return [folder / f for f in _cifar_batches(folder)]
    paths = [folder / f for pair in IDX_FILES.values() for f in pair]
    return [p if p.is_file() else p.with_name(p.name + ".gz") for p in paths]


def _check_sizes(name: str, folder: Path, n_train: int, n_test: int, verify: bool) -> None:
    if verify and (n_train, n_test) != OFFICIAL_SIZES[name]:
        raise DatasetError(f"{folder}: {name} has {n_train}/{n_test} train/test examples, expected "
                           f"{OFFICIAL_SIZES[name][0]}/{OFFICIAL_SIZES[name][1]}; the copy is incomplete (re-download it)")


def _candidates(name: str, root: Path, fallback: bool) -> list[Path]:
    if name == "cifar10":  # the official archives' folders, inside root/cifar10 or not
        return [root / CIFAR10_BINARY_FOLDER, root / name / CIFAR10_BINARY_FOLDER, root / name,
                root / TORCHVISION_FOLDERS[name], root / name / TORCHVISION_FOLDERS[name], root]
    c = [root / name, root / TORCHVISION_FOLDERS[name], root]
    if name == "fashion_mnist" and fallback:
        c.append(DEBIAN_FASHION_MNIST)
    return c


def find_folder(name: str, candidates: list[Path]) -> Path | None:
    """The first candidate holding the dataset's first training file. CIFAR-10's binary version is looked
    for in every candidate before the python version in any: where both are, the one without pickles wins."""
    if name == "cifar10":
        passes = [("data_batch_1.bin",), ("data_batch_1",)]
    else:
        passes = [(IDX_FILES["train"][0], f"{IDX_FILES['train'][0]}.gz")]
    for markers in passes:
        for folder in candidates:
            if any((folder / m).is_file() for m in markers):
                return folder
    return None


def _download(name: str, root: Path) -> None:
    """Download the official archives into ``root`` with torchvision, checking their published MD5s: CIFAR-10's
    binary version, or MNIST's / Fashion-MNIST's four .gz files (torchvision's own list and folder)."""
    import torchvision.datasets as tvd
    from torchvision.datasets import utils as tvu

    log.info("%s: downloading into %s", name, root)
    try:
        if name == "cifar10":
            url, md5 = CIFAR10_BINARY_ARCHIVE
            tvu.download_and_extract_archive(url, str(root), md5=md5)  # extracts root/cifar-10-batches-bin
        else:
            for train in (True, False):
                {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST}[name](str(root), train=train, download=True)
    except Exception as e:  # network, disk and checksum errors come in many types
        why = " ".join(str(e).split()) or type(e).__name__
        raise DatasetError(f"{name}: download into {root} failed ({why}); where there is no network, copy the official "
                           f"files there (or pass --data-root DIR holding them)") from None


def _read_bytes(path: Path) -> bytes:
    """The decompressed bytes of ``path`` or ``path.gz``."""
    gz = path.with_name(path.name + ".gz")
    try:
        if path.is_file():
            return path.read_bytes()
        with gzip.open(gz, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:  # a damaged deflate stream raises zlib.error, not OSError
        raise DatasetError(f"{gz}: cannot be decompressed ({e}); the file is truncated or corrupt, re-download it") from None


def _verify(name: str, path: Path, data: bytes) -> None:
    """Accept a file whose decompressed MD5 is the official one, or a .gz whose MD5 is torchvision's."""
    want = IDX_MD5.get(name, {}).get(path.name)
    got = hashlib.md5(data).hexdigest()
    if want == got:
        return
    gz = path.with_name(path.name + ".gz")
    if not path.is_file() and gz.is_file():
        import torchvision.datasets as tvd

        official = dict({"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST}[name].resources)
        if official.get(gz.name) == hashlib.md5(gz.read_bytes()).hexdigest():
            return
    if want is None and path.is_file():
        raise DatasetError(f"{path}: no official checksum is known for the uncompressed file; keep the official "
                           f".gz beside it, or pass --no-verify to accept a copy you trust")
    read = path if path.is_file() else f"{gz} (decompressed)"
    raise DatasetError(f"{read}: MD5 {got} does not match the official {name} file; re-download it, or pass "
                       f"--no-verify if it is a copy you made on purpose")


def _read_idx_pair(name: str, folder: Path, split: str, verify: bool) -> tuple[torch.Tensor, torch.Tensor]:
    img_name, lbl_name = IDX_FILES[split]
    images = _parse_idx(folder / img_name, name, verify, expected_dims=3)
    labels = _parse_idx(folder / lbl_name, name, verify, expected_dims=1)
    if len(images) != len(labels):
        raise DatasetError(f"{folder}: {split} has {len(images)} images but {len(labels)} labels; the copy is corrupt")
    if labels.max() > 9:
        raise DatasetError(f"{folder / lbl_name}: label {int(labels.max())} is out of range 0-9")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _parse_idx(path: Path, name: str, verify: bool, expected_dims: int) -> np.ndarray:
    """Parse an idx file (big-endian header: 0, 0, dtype=0x08 (uint8), ndim; then ndim uint32 sizes)."""
    data = _read_bytes(path)
    if verify:
        _verify(name, path, data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] != expected_dims:
        raise DatasetError(f"{path}: not an idx file of uint8 with {expected_dims} dimensions (bad magic number)")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(expected_dims)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * expected_dims)
    if body.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: header says {dims} but the file holds {body.size} values; it is truncated")
    return body.reshape(dims)


def _cifar_batches(folder: Path) -> dict[str, str]:
    """The batches of the CIFAR-10 version in ``folder`` with their official MD5s, training batches first: the
    binary version where its first file is there (``find_folder`` prefers it too), else the python one."""
    if (folder / "data_batch_1.bin").is_file():
        return dict(CIFAR10_BINARY_MD5)
    import torchvision.datasets as tvd

    return dict(tvd.CIFAR10.train_list + tvd.CIFAR10.test_list)


def _read_cifar(folder: Path, verify: bool) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Both versions hold each image as 3,072 bytes, the R, G and B planes of 32 x 32 row-major pixels, so
    either gives the same uint8 NCHW tensors."""
    batches = _cifar_batches(folder)
    parse = _parse_cifar_binary if "data_batch_1.bin" in batches else _parse_cifar_python
    read: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for file, md5 in batches.items():
        path = folder / file
        if not path.is_file():
            raise DatasetError(f"{path}: missing CIFAR-10 batch; re-download the dataset")
        raw = path.read_bytes()
        if verify and hashlib.md5(raw).hexdigest() != md5:
            raise DatasetError(f"{path}: MD5 does not match the official CIFAR-10 file; re-download it, or pass "
                               f"--no-verify if it is a copy you made on purpose")
        x, y = parse(path, raw)
        if len(x) != len(y):
            raise DatasetError(f"{path}: {len(x)} images but {len(y)} labels; the file is corrupt")
        bad = y[(y < 0) | (y > 9)]
        if bad.size:
            raise DatasetError(f"{path}: label {int(bad[0])} is out of range 0-9; the file is corrupt, re-download it")
        read[file] = x, y

    def join(test: bool) -> tuple[np.ndarray, np.ndarray]:
        # A copy, also of one batch: the binary version's images are strided views of the read-only file bytes.
        part = [b for f, b in read.items() if f.startswith("test_batch") == test]
        return np.concatenate([x for x, _ in part]), np.concatenate([y for _, y in part])

    (xtr, ytr), (xte, yte) = join(test=False), join(test=True)
    _check_sizes("cifar10", folder, len(ytr), len(yte), verify)
    return (torch.from_numpy(xtr), torch.from_numpy(ytr)), (torch.from_numpy(xte), torch.from_numpy(yte))


def _parse_cifar_binary(path: Path, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Records of 1 label byte and 3,072 pixel bytes, nothing else in the file."""
    if not raw or len(raw) % 3073:
        raise DatasetError(f"{path}: {len(raw)} bytes is not a whole number of 3,073-byte CIFAR-10 records (a label "
                           f"byte and 3,072 pixels); the file is truncated or corrupt, re-download it")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3073)
    return records[:, 1:].reshape(-1, *SHAPES["cifar10"]), records[:, 0].astype(np.int64)


def _parse_cifar_python(path: Path, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A pickled dict with 'data' (N x 3072 uint8) and 'labels', read by ``_BatchUnpickler`` verified or not:
    an MD5 says the file is the official one, not that unpickling it is safe."""
    try:
        d = _BatchUnpickler(io.BytesIO(raw), encoding="latin1").load()
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, *SHAPES["cifar10"])
        y = np.asarray(d["labels"], dtype=np.int64)
    except _Refused as e:
        raise DatasetError(f"{path}: refused to unpickle it: it asks to call {e}, which no CIFAR-10 batch holds "
                           f"(nothing was run); use the official files, or their binary version, which needs no "
                           f"pickle") from None
    except Exception as e:  # a corrupt pickle raises many different types
        raise DatasetError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}); re-download it") from None
    return x, y


class _Refused(pickle.UnpicklingError):
    """A pickle named a global that ``_BatchUnpickler`` does not build."""


class _BatchUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and numpy arrays, and nothing else: a pickle can call any
    importable callable (os.system, eval), so every global it names must be one of these."""

    ALLOWED = {
        # what numpy itself pickles an array with (numpy 1 and 2 name their modules differently)
        **{(m, "_reconstruct"): np.zeros(1).__reduce__()[0] for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
        **{(m, "_frombuffer"): np.zeros(1).__reduce_ex__(5)[0] for m in ("numpy.core.numeric", "numpy._core.numeric")},
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes at pickle protocol 2
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise _Refused(f"{module}.{name}")
        return self.ALLOWED[module, name]


# --------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------


def stream_seed(*keys: int) -> int:
    """A 63-bit seed for one (stream, seed, counter) tuple; SeedSequence mixes the keys thoroughly."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


class Batches:
    """The training batches of a run, addressable by step: ``batches[step] -> (x, y)``."""

    DATA_ORDER, AUGMENTATION = 1, 2

    def __init__(self, data: Data, batch_size: int, data_order_seed: int, augmentation_seed: int,
                 channels_last: bool = False):
        self.data, self.batch_size = data, batch_size
        self.n = len(data.train)
        self.per_epoch = -(-self.n // batch_size)
        self.order_seed, self.aug_seed = data_order_seed, augmentation_seed
        self.channels_last = channels_last
        self._epoch, self._perm = -1, None
        c, h, w = data.shape
        dev = data.train.x.device
        self._c = torch.arange(c, device=dev).view(1, c, 1, 1)
        self._ar_h = torch.arange(h, device=dev)
        self._ar_w = torch.arange(w, device=dev)

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(stream_seed(self.DATA_ORDER, self.order_seed, epoch))
            self._perm, self._epoch = to_device(torch.randperm(self.n, generator=g), self.data.train.x.device), epoch
        return self._perm

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, pos = divmod(step, self.per_epoch)
        idx = self.permutation(epoch)[pos * self.batch_size:(pos + 1) * self.batch_size]
        # index_select is the same gather as x[idx], about twice as fast on CPU.
        x = self._augment(idx, step) if self.data.augment else self.data.train.x.index_select(0, idx)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.data.train.y.index_select(0, idx)

    def _augment(self, idx: torch.Tensor, step: int) -> torch.Tensor:
        """Random 4-pixel-padded crop and horizontal flip per sample, in one gather."""
        b = len(idx)
        g = torch.Generator().manual_seed(stream_seed(self.AUGMENTATION, self.aug_seed, step))
        shifts = torch.randint(0, 9, (b, 2), generator=g)
        flips = torch.rand(b, generator=g) < 0.5
        # The step's draws go to the device as one tensor in one non-blocking copy: no step waits for the host.
        draws = to_device(torch.cat([shifts, flips.long()[:, None]], 1), idx.device)  # (b, 3): dy, dx, flip
        rows = draws[:, :1] + self._ar_h  # (b, h)
        cols_fwd = self._ar_w.expand(b, -1)
        cols = torch.where(draws[:, 2:].bool(), cols_fwd.flip(1), cols_fwd) + draws[:, 1:2]  # (b, w)
        return self.data.train.x[idx.view(b, 1, 1, 1), self._c, rows.view(b, 1, -1, 1), cols.view(b, 1, 1, -1)]


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device`` without making the device wait: to CUDA through pinned memory with a
    non-blocking copy (the copy is queued on the stream, before the kernels that read it; the pinned buffer
    is not reused until it is done), and on the CPU the tensor itself."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
