"""No network the project ships reaches a crash in native code, on this CPU or with oneDNN held to AVX2.

oneDNN v3.12.0 (torch 2.14.1) corrupts the heap in the backward pass of channels_last 1x1 stride-2
convolutions with 2-7 input channels on AVX2 CPUs (the shortcuts of a ResNet-20 at width 4): the newcomer's
`make quick` died there. ``models.memory_format`` keeps such networks in NCHW. These tests train every
distinct network of every shipped config (model, width, image shape) in every layout, each in its own
process, so that a native crash fails the test with the signal's name instead of killing pytest; once as
the machine is and once with ``ONEDNN_MAX_CPU_ISA=AVX2`` (the kernels of most laptops and many cluster
nodes, reachable from an AVX-512 machine). A heap corruption may also go on silently, which for a
reproducibility suite is worse than a crash: these tests are part of every default run, never skipped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from ticketbench import config

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO / "tests" / "native" / "kernel_probe.py"
LAYOUTS = [f for f in config.MEMORY_FORMATS if f != "auto"]


def shipped_networks() -> dict[tuple, tuple[str, str]]:
    """One (config file, experiment) per distinct network of the shipped configs, keyed by what selects
    native kernels: architecture, width, input shape, augmentation (padded inputs)."""
    found: dict[tuple, tuple[str, str]] = {}

    def add(cfg: config.RunConfig, path: Path, experiment: str) -> None:
        d = cfg.data
        shape = tuple(d.synthetic_shape) if d.name == "synthetic" else d.name
        key = (cfg.model.name, cfg.model.width, shape, d.augment)
        found.setdefault(key, (str(path.relative_to(REPO)), experiment))

    for path in sorted((REPO / "config").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        for eid in (raw.get("experiments") or {}):
            add(config.load_experiment(path, eid, 0), path, eid)
    for path in sorted((REPO / "config" / "runs").glob("*.yaml")):
        add(config.load(path), path, "-")
    return found


def probe(cfg_path: str, experiment: str, layout: str, out: Path, isa: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    return subprocess.run([sys.executable, "-W", "ignore", str(PROBE), cfg_path, experiment, layout, str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def outcome(p: subprocess.CompletedProcess) -> str:
    if p.returncode < 0:
        return f"killed by {signal.Signals(-p.returncode).name}"
    return f"exit {p.returncode}: {(p.stdout + p.stderr).strip().splitlines()[-1:] or ''}"


def test_the_shipped_configs_hold_the_networks_that_crashed():
    """The guard is tested where it matters: the quick ResNet-20 at width 4 is among the probed networks."""
    keys = shipped_networks()
    assert ("resnet20", 4, "fashion_mnist", True) in keys
    assert ("resnet20", 16, "cifar10", True) in keys
    assert {k[0] for k in keys} >= {"lenet_300_100", "conv2", "conv4", "conv6", "resnet20", "vgg16", "vgg19"}


@pytest.mark.parametrize("isa", [None, "AVX2"], ids=["isa-of-this-machine", "onednn-max-isa-avx2"])
def test_every_shipped_network_trains_in_every_layout_without_a_native_crash(isa, tmp_path):
    jobs = [(key, src, layout) for key, src in shipped_networks().items() for layout in LAYOUTS]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda j: probe(*j[1], j[2], tmp_path / f"{j[1][1]}-{j[2]}-{abs(hash(j[0]))}", isa),
                                jobs))
    failures, refused = [], []
    for (key, src, layout), p in zip(jobs, results):
        label = f"{src[0]}:{src[1]} {key} in {layout}"
        if p.returncode == 3 and layout == "channels_last" and p.stdout.startswith("refused:"):
            refused.append(key)  # the guard: refused before any kernel ran
        elif p.returncode != 0:
            failures.append(f"{label}: {outcome(p)}")
    assert not failures, "\n".join(failures)
    # Only the narrow ResNets are kept out of channels_last; every other conv net runs in it.
    assert all(k[0] == "resnet20" and k[1] < 8 for k in refused), refused
