"""Shared fixtures: tiny datasets in the official file formats, and tiny run configs.

Tests pin torch to one thread: results must not depend on it, and 2-thread runs on a shared 2-core
machine collapse under contention."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
# The official MNIST / CIFAR-10 files, where CI has a copy ($TICKETBENCH_DATA, .ci/run). Only the tests of
# the real files read them, through REAL_DATA: every other test sees the default data root (./data and
# Debian's Fashion-MNIST), as a user's machine without the variable does.
REAL_DATA = os.environ.pop("TICKETBENCH_DATA", None)
TICKETBENCH = [sys.executable, "-m", "ticketbench.cli"]


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    """An idx file as LeCun's MNIST format defines it: 0, 0, 0x08 (uint8), ndim, big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


def make_mnist(folder: Path, n_train: int = 200, n_test: int = 50, gz: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (n,)), gz)
    return folder


def make_cifar(folder: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """CIFAR-10 python batches: pickled dicts with 'data' (N x 3072 uint8, channel-major) and 'labels'."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {"data": rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8),
             "labels": rng.integers(0, 10, per_batch).tolist(), "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(d))
    return folder


def tiny_run(**overrides: dict) -> dict:
    """A LeNet on synthetic 8x8 images: a few hundred steps in seconds, yet a real learning problem."""
    cfg = {
        "name": "tiny",
        "data": {"name": "synthetic", "validation_size": 64, "synthetic_train": 384, "synthetic_test": 128,
                 "synthetic_shape": [1, 8, 8]},
        "model": {"name": "lenet_300_100", "init": "glorot_normal"},
        "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 32,
                  "steps": "40it", "eval_every": "10it", "milestones": ["30it"]},
        "prune": {"strategy": "layerwise", "rates": {"fc": 0.2, "output": 0.1}},
        "imp": {"levels": 2, "rewind": "5it"},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(cfg.get(section), dict):
            cfg[section] = {**cfg[section], **values}
        else:
            cfg[section] = values
    return cfg


@pytest.fixture
def write_config(tmp_path: Path):
    def write(cfg: dict, name: str = "run.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg))
        return path

    return write
