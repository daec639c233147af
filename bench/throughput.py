"""Training throughput: ticketbench's loop against the DataLoader + PIL loop most LTH code uses.

Issue 2 ("Performance") asks for images/s of LeNet-300-100 (batch 60) and ResNet-20 (batch 128) on this
machine, beside a reference loop measured in the same run with identical math, and sets the targets
LeNet >= 5x and ResNet-20 >= 1.2x the reference. Every loop below trains the same network (same
initialization) under the same masked update (a pruned mask with zeros; gradients masked after
``backward``, weights after ``step``; ``masks.MaskedParameters``) with the same optimizer:

- ``ticketbench``: the real ``train.fit`` on a ``Job`` of N steps, data resident via ``data.load`` and
  batched by ``data.Batches``. Evaluation is replaced by a no-op for the measurement (it is not training
  throughput), and the figure is fit's own ``images_per_second`` (its loop only: no setup, no saving).
- ``reference``: a torch ``DataLoader`` over uint8 images with per-sample PIL transforms (ToTensor,
  Normalize; for CIFAR RandomCrop(32, padding=4) + RandomHorizontalFlip), shuffled, in PyTorch's default
  NCHW layout -- the way open_lth (datasets/base.py, datasets/cifar10.py) trains. Measured with
  num_workers=0 and with small worker counts (persistent workers: generous to the reference).
- ``open_lth-style`` (Adam models only): the reference loop at num_workers=0 with the optimizer as open_lth
  builds it (``torch.optim.Adam(params, lr, weight_decay)``, PyTorch's default implementation). The math
  is the same Adam; ticketbench uses the fused implementation, which on CPU is ~2x faster on masked nets
  (README). Reported beside the target, never used to judge it: the target compares equal optimizers.
- ``bare step``: one fixed batch, no data pipeline at all: the upper bound for any loader. For the
  convolutional net it is measured in both layouts, to separate the channels_last gain from the data
  pipeline gain.

Each figure is the median over ``--repeats`` timed runs after a warm-up run. Data: the real Fashion-MNIST
(Debian's dataset-fashion-mnist, MD5-verified) for LeNet; for ResNet-20, synthetic uint8 CIFAR-shaped
images written in the official CIFAR-10 python pickle format into a temporary directory and read with
``data.load(..., verify=False)`` (the network has no internet here; pixel values do not change the cost
of dense kernels).

Run: ``.venv/bin/python bench/throughput.py [--threads 1 2] [--repeats R] [--quick]``. Writes
``bench/out/throughput.json``. Other agents share the cores: the load average is recorded per model.

Packed training (issue "Fewer, fuller jobs"): ``--packs 1 8 32`` measures instead, per model, the lone
``train.fit`` beside ``train.fit_packed`` with P members (each its own data order; evaluation stubbed in
both), as aggregate images/s of the pack and its ratio to the lone job, taking turns run by run like the
loops above. ``--device cuda`` and ``--precision fp32 tf32`` are for the device check
(bench/device_check.sh); TF32 only exists on CUDA, so on the CPU it is reported as not applicable. Writes
``bench/out/packing.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from ticketbench import config, data, masks, models, train
from ticketbench.runtime import Runtime, set_float32_precision

OUT = Path(__file__).parent / "out" / "throughput.json"
PACKING_OUT = Path(__file__).parent / "out" / "packing.json"

# Protocols. LeNet: Frankle & Carbin 2019, Fig. 2 (Adam, lr 1.2e-3, batch 60; layer-wise pruning fc 20 %,
# output 10 %). ResNet-20: Frankle et al. 2020 / open_lth cifar_resnet_20 (SGD lr 0.1, momentum 0.9,
# weight decay 1e-4, batch 128, crop + flip augmentation; global pruning of conv weights at 20 %).
# Only the per-step work matters here; steps/eval_every are placeholders (each Job sets its own length).
LENET = {
    "name": "bench_lenet",
    "data": {"name": "fashion_mnist", "validation_size": 5000},
    "model": {"name": "lenet_300_100", "init": "glorot_normal"},
    "train": {"optimizer": "adam", "lr": 0.0012, "batch_size": 60, "steps": "1ep"},
    "prune": {"strategy": "layerwise", "rates": {"fc": 0.2, "output": 0.1}},
}
RESNET = {
    "name": "bench_resnet20",
    "data": {"name": "cifar10", "validation_size": 5000, "augment": True},
    "model": {"name": "resnet20", "init": "kaiming_normal"},
    "train": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0001, "batch_size": 128,
              "steps": "1ep"},
    "prune": {"strategy": "global", "rates": {"conv": 0.2}},
}
PRUNE_LEVELS = 3  # the mask of IMP level 3 (about half the weights zero); sparsity does not speed dense kernels
TARGETS = {"lenet_300_100": 5.0, "resnet20": 1.2}  # issue 2: ratio of ticketbench to the reference loop


@dataclass
class Plan:
    """How long to measure one model: steps per timed run, warm-up steps, timed runs."""

    steps: int
    warmup: int
    repeats: int


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def write_synthetic_cifar(folder: Path, n_train: int = 50000, n_test: int = 10000, seed: int = 0) -> None:
    """Random uint8 images in the official CIFAR-10 python format: five training pickles and one test
    pickle, each a dict with 'batch_label', 'labels', 'data' (N x 3072, channel-major rows), 'filenames'."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = [(f"data_batch_{i + 1}", n_train // 5) for i in range(5)] + [("test_batch", n_test)]
    for name, n in files:
        batch = {"batch_label": f"synthetic {name}", "labels": rng.integers(0, 10, n).tolist(),
                 "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "filenames": [f"synthetic_{i:05d}.png" for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


class PilImages(Dataset):
    """uint8 images handed out one at a time as PIL images through a transform, as torchvision's
    MNIST/CIFAR10 datasets and open_lth's ImageDataset do."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable):
        x = images.numpy()
        self.images = x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1)  # PIL wants HW or HWC
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def reference_transform(cfg: config.DataConfig) -> T.Compose:
    mean, std = data.NORMALIZATION[cfg.name]
    augment = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if cfg.augment else []
    return T.Compose([*augment, T.ToTensor(), T.Normalize(mean, std)])


# --------------------------------------------------------------------------------------------------
# The loops
# --------------------------------------------------------------------------------------------------


class Setup:
    """One model's config, data, initial state and mask, shared by all of its loops."""

    def __init__(self, raw: dict, root: Path | None, verify: bool, device: str = "cpu"):
        self.cfg = config.from_dict(raw)
        self.batch = self.cfg.train.batch_size
        self.device = torch.device(device)
        self.data = data.load(self.cfg.data, self.device, root=root, verify=verify)
        (self.images, self.labels), _ = data.read_official(self.cfg.data.name, root, verify=verify)
        model = self.model()
        kinds = models.layer_kinds(model)
        dense = masks.dense_mask(model, kinds, self.cfg.prune)
        self.state = {k: v.clone() for k, v in model.state_dict().items()}
        self.mask = masks.magnitude_prune(dict(model.named_parameters()), dense, kinds, self.cfg.prune, PRUNE_LEVELS)
        self.density = masks.density(self.mask)

    def model(self) -> torch.nn.Module:
        return models.build(self.cfg.model, self.data.shape, self.data.classes, self.cfg.seeds.init)

    def trainer(self, channels_last: bool, default_adam: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        model = self.model()
        masked, _ = train.prepare(model, self.state, self.mask, "cpu", "channels_last" if channels_last else "contiguous")
        model.train()
        tc = self.cfg.train
        opt = (torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay) if default_adam
               else train.make_optimizer(tc, model.parameters()))
        return lambda x, y: train.masked_step(model, opt, masked, x, y, tc.lr)


def _no_evaluation(*args: object, **kwargs: object) -> tuple[float, float]:
    return 0.0, 0.0


Seconds = tuple[float, float]
"""(wall clock, CPU time of this process). Wall clock is throughput; CPU time is robust to other
processes competing for the cores, but excludes DataLoader worker processes and, with several torch
threads, adds up their (spinning) time, so it is only comparable at 1 thread and 0 workers."""


def _fit(s: Setup, steps: int) -> tuple[dict, Seconds]:
    runtime = Runtime(device=str(s.device), progress=False, checkpoint_seconds=math.inf)
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(train, "evaluate", _no_evaluation):
        job = train.Job(out=Path(tmp), state=s.state, mask=s.mask, start=0, end=steps, lr=lambda step: s.cfg.train.lr,
                        data_order_seed=0, augmentation_seed=0, label="bench")
        t0, c0 = time.perf_counter(), time.process_time()
        summary = train.fit(s.model(), s.data, s.cfg, job, runtime, eval_every=max(steps, 1))
        return summary, (time.perf_counter() - t0, time.process_time() - c0)


def fit_timer(s: Setup) -> Callable[[int], Seconds]:
    """Time ``train.fit`` on a Job of n steps, evaluation stubbed. Wall clock: fit's own
    ``images_per_second`` (its training loop only). CPU time: the whole call minus that of a 0-step
    Job (model build, state load, saving final.pt), measured once."""
    overhead = statistics.median(_fit(s, 0)[1][1] for _ in range(3))

    def run(n: int) -> Seconds:
        summary, (_, cpu) = _fit(s, n)
        return n * s.batch / summary["images_per_second"], max(cpu - overhead, 1e-9)
    return run


def loop_seconds(step: Callable, batches: Iterator, n: int) -> Seconds:
    loss_sum = torch.zeros((), dtype=torch.float64)  # accumulated as fit does: no sync per step
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        x, y = next(batches)
        loss_sum += step(x, y).double()
    return time.perf_counter() - t0, time.process_time() - c0


def reference_batches(s: Setup, workers: int) -> Iterator:
    dataset = PilImages(s.images, s.labels, reference_transform(s.cfg.data))
    loader = DataLoader(dataset, batch_size=s.batch, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    while True:  # epochs
        yield from loader


def measure(loops: dict[str, Callable[[int], Seconds]], plan: Plan, batch: int) -> dict[str, dict]:
    """Median images/s of each loop over ``plan.repeats`` timed runs of ``plan.steps`` steps, after a
    warm-up run. The loops take turns run by run, so a burst of load from other processes on a shared
    machine hits all of them alike instead of biasing one ratio."""
    for run in loops.values():
        run(plan.warmup)
    times: dict[str, list[Seconds]] = {name: [] for name in loops}
    for _ in range(plan.repeats):
        for name, run in loops.items():
            times[name].append(run(plan.steps))
    out = {}
    for name, t in times.items():
        wall = [plan.steps * batch / w for w, _ in t]
        cpu = [plan.steps * batch / c for _, c in t]
        out[name] = {"images_per_second": statistics.median(wall), "runs": wall,
                     "images_per_cpu_second": statistics.median(cpu), "cpu_runs": cpu}
    return out


def bench_model(s: Setup, plan: Plan, workers: list[int], conv: bool) -> list[dict]:
    loops: dict[str, Callable[[int], Seconds]] = {"ticketbench (train.fit)": fit_timer(s)}
    for w in workers:
        loops[f"reference DataLoader+PIL, workers={w}"] = _timed(s.trainer(channels_last=False), reference_batches(s, w))
    if s.cfg.train.optimizer == "adam":
        loops[OPEN_LTH_STYLE] = _timed(s.trainer(channels_last=False, default_adam=True), reference_batches(s, 0))
    x, y = train.Batches(s.data, s.batch, 0, 0, channels_last=conv)[0]
    for cl in ([True, False] if conv else [False]):
        xl = x.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        name = "bare step" + ((" (channels_last)" if cl else " (NCHW)") if conv else "")
        loops[name] = _timed(s.trainer(channels_last=cl), iter(lambda xl=xl: (xl, y), None))
    results = measure(loops, plan, s.batch)
    rows = []
    for name, r in results.items():
        print(f"    {name:<38} {r['images_per_second']:8.0f} images/s (runs {', '.join(f'{v:.0f}' for v in r['runs'])}); "
              f"{r['images_per_cpu_second']:.0f} per CPU second", flush=True)
        rows.append({"loop": name, **({"workers": int(name.rsplit("=", 1)[1])} if "workers=" in name else {}), **r})
    return rows


OPEN_LTH_STYLE = "open_lth-style: default Adam, 0 workers"


def _timed(step: Callable, batches: Iterator) -> Callable[[int], Seconds]:
    return lambda n: loop_seconds(step, batches, n)


# --------------------------------------------------------------------------------------------------
# Packed training: P jobs in one batched computation against the lone job
# --------------------------------------------------------------------------------------------------


def pack_timer(s: Setup, size: int) -> Callable[[int], Seconds]:
    """Time ``train.fit_packed`` on P members of n steps (members differ in data order and augmentation
    seeds, as the seeds or replicates of a level do), evaluation stubbed. Wall clock: from the images/s
    fit_packed records per member (its loop only), the seconds of the pack's P x n batches."""
    runtime = Runtime(device=str(s.device), progress=False, checkpoint_seconds=math.inf)

    def run(n: int) -> Seconds:
        with tempfile.TemporaryDirectory() as tmp, mock.patch.object(train, "evaluate", _no_evaluation):
            members = [train.Member(build=s.model, data=s.data, cfg=s.cfg, job=train.Job(
                out=Path(tmp) / str(i), state=s.state, mask=s.mask, start=0, end=n, lr=lambda step: s.cfg.train.lr,
                data_order_seed=i, augmentation_seed=i, label=f"bench {i}")) for i in range(size)]
            for m in members:
                m.job.out.mkdir()
            c0 = time.process_time()
            summary = train.fit_packed(members, runtime, eval_every=max(n, 1))[0]
            return n * s.batch / summary["images_per_second"], time.process_time() - c0
    return run


def bench_packs(s: Setup, plan: Plan, sizes: list[int]) -> list[dict]:
    """Lone ``train.fit`` and packs of each size, taking turns; images/s aggregated over a pack's members."""
    loops: dict[str, Callable[[int], Seconds]] = {"lone (train.fit)": fit_timer(s)}
    for p in sizes:
        loops[f"pack of {p} (train.fit_packed)"] = pack_timer(s, p)
    for run in loops.values():
        run(plan.warmup)
    rows = []
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(plan.repeats):
        for name, run in loops.items():
            times[name].append(run(plan.steps)[0])
    lone = statistics.median(plan.steps * s.batch / t for t in times["lone (train.fit)"])
    for name, t in times.items():
        size = int(name.split()[2]) if name.startswith("pack") else 1
        rate = [plan.steps * s.batch * size / w for w in t]
        med = statistics.median(rate)
        print(f"    {name:<36} {med:10.0f} images/s aggregate ({med / lone:.2f}x lone; runs "
              f"{', '.join(f'{v:.0f}' for v in rate)})", flush=True)
        rows.append({"loop": name, "pack": size if name.startswith("pack") else None, "images_per_second": med,
                     "runs": rate, "ratio_vs_lone": med / lone})
    return rows


def set_precision(precision: str, device: torch.device) -> str:
    """fp32, or TF32 matmuls and convolutions (CUDA Ampere and later; changes rounding). Returns what
    was applied: on the CPU, TF32 does not exist."""
    tf32 = precision == "tf32"
    set_float32_precision(torch.backends, precision)  # as Runtime.apply sets it
    return precision if device.type == "cuda" or not tf32 else "tf32 not applicable on cpu (ran fp32)"


def packing_main(args: argparse.Namespace, plans: dict[str, Plan], meta: dict, root: Path) -> None:
    sizes = {"lenet": [p for p in args.packs if p != 0], "resnet20": [p for p in args.resnet_packs or args.packs if p != 0]}
    results = []
    for key in args.models:
        if key == "resnet20":
            write_synthetic_cifar(root / "cifar10")
        s = (Setup(LENET, args.data_root, verify=True, device=args.device) if key == "lenet"
             else Setup(RESNET, root, verify=False, device=args.device))
        for threads in args.threads:
            torch.set_num_threads(threads)
            for precision in args.precision:
                applied = set_precision(precision, s.device)
                load = os.getloadavg()[0]
                print(f"\n{s.cfg.model.name}, batch {s.batch}, {s.cfg.train.optimizer}, device {s.device}, {applied}, "
                      f"torch threads {torch.get_num_threads()}, load average {load:.2f}", flush=True)
                for r in bench_packs(s, plans[key], sizes[key]):
                    results.append({"model": s.cfg.model.name, "threads": threads, "device": str(s.device),
                                    "precision": applied, "batch_size": s.batch, "steps_per_run": plans[key].steps,
                                    "load_average_before": load, **r})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def summarize(model: str, threads: int, rows: list[dict]) -> dict:
    refs = [r for r in rows if r["loop"].startswith("reference")]
    ref0 = next(r for r in refs if r["workers"] == 0)
    best = max(refs, key=lambda r: r["images_per_second"])
    ours = next(r for r in rows if r["loop"].startswith("ticketbench"))
    bare = next(r for r in rows if r["loop"].startswith("bare step"))["images_per_second"]
    rate = ours["images_per_second"]
    return {"model": model, "threads": threads, "ticketbench": rate, "reference_workers0": ref0["images_per_second"],
            "reference_best": best["images_per_second"], "reference_best_workers": best["workers"],
            "bare_step": bare, "ratio_vs_workers0": rate / ref0["images_per_second"],
            "ratio_vs_best_reference": rate / best["images_per_second"],
            "cpu_time_ratio_vs_workers0": ours["images_per_cpu_second"] / ref0["images_per_cpu_second"],
            "target": TARGETS[model], "meets_target": rate / best["images_per_second"] >= TARGETS[model],
            "fraction_of_bare_step": rate / bare,
            **{"ratio_vs_open_lth_style": rate / r["images_per_second"] for r in rows if r["loop"] == OPEN_LTH_STYLE}}


def print_table(summaries: list[dict]) -> None:
    print("\nimages/s, wall clock, median of runs; ratio = ticketbench / reference. The target (issue 2) is judged "
          "against\nthe faster reference; 'cpu' is the same ratio in CPU time (1 thread only: robust to load from others)")
    head = f"{'model':<14}{'thr':>4}{'ticketbench':>12}{'ref w=0':>9}{'ref best':>14}{'bare step':>10}" \
           f"{'vs w=0':>8}{'vs best':>9}{'cpu':>7}{'target':>8}  met"
    print(head + "\n" + "-" * len(head))
    for m in summaries:
        cpu = f"{m['cpu_time_ratio_vs_workers0']:>6.2f}x" if m["threads"] == 1 else f"{'-':>7}"
        print(f"{m['model']:<14}{m['threads']:>4}{m['ticketbench']:>12.0f}{m['reference_workers0']:>9.0f}"
              f"{m['reference_best']:>9.0f} (w={m['reference_best_workers']}){m['bare_step']:>10.0f}"
              f"{m['ratio_vs_workers0']:>7.2f}x{m['ratio_vs_best_reference']:>8.2f}x{cpu}{m['target']:>7.1f}x  "
              f"{'yes' if m['meets_target'] else 'NO'}")
    for m in summaries:
        if "ratio_vs_open_lth_style" in m:
            print(f"{m['model']} ({m['threads']} thr): {m['ratio_vs_open_lth_style']:.2f}x the open_lth-style loop "
                  "(same Adam math, PyTorch's default implementation; not the target's comparison)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="torch thread counts to measure (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per loop (default 5 LeNet, 3 ResNet-20)")
    p.add_argument("--quick", action="store_true", help="short runs for a smoke test (~1 min); noisy")
    p.add_argument("--models", nargs="+", default=["lenet", "resnet20"], choices=["lenet", "resnet20"])
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder with Fashion-MNIST if not installed by Debian's dataset-fashion-mnist")
    p.add_argument("--out", type=Path, default=None, help=f"JSON to write (default {OUT}, or {PACKING_OUT} with --packs)")
    p.add_argument("--packs", type=int, nargs="+", default=None,
                   help="measure lone train.fit against packs of these sizes instead of the reference loops")
    p.add_argument("--resnet-packs", type=int, nargs="+", default=None, help="pack sizes for ResNet-20 (default: --packs)")
    p.add_argument("--device", default="cpu", help="device of the packing measurement (cpu, cuda)")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "tf32"],
                   help="matmul/conv precision of the packing measurement (TF32: CUDA only)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed run (overrides the plan; a dry run uses 2)")
    args = p.parse_args()
    args.out = args.out or (PACKING_OUT if args.packs else OUT)

    plans = {"lenet": Plan(steps=200, warmup=50, repeats=5), "resnet20": Plan(steps=8, warmup=2, repeats=3)}
    workers = [0, 1, 2]
    if args.quick:
        plans = {"lenet": Plan(steps=60, warmup=20, repeats=3), "resnet20": Plan(steps=2, warmup=1, repeats=2)}
        workers = [0, 1]
    if args.repeats:
        plans = {k: Plan(v.steps, v.warmup, args.repeats) for k, v in plans.items()}
    if args.steps:
        plans = {k: Plan(args.steps, min(v.warmup, args.steps), v.repeats) for k, v in plans.items()}

    meta = {"torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
            "device": args.device, "cpu": _cpu_name(), "cores": os.cpu_count(), "mkldnn": torch.backends.mkldnn.is_available(),
            "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "data": {"lenet": "Fashion-MNIST (Debian dataset-fashion-mnist, MD5-verified)",
                     "resnet20": "synthetic uint8 CIFAR-10-shaped images (50,000/10,000) in the official python "
                                 "pickle format, read with data.load(verify=False)"},
            "plans": {k: vars(v) for k, v in plans.items()}, "prune_levels": PRUNE_LEVELS,
            "dataloader_worker_threads": 1}
    print(f"torch {meta['torch']}, torchvision {meta['torchvision']}, device {args.device} ({meta['cpu']}, {meta['cores']} cores)")
    if args.packs:
        with tempfile.TemporaryDirectory(prefix="ticketbench-bench-") as tmp:
            packing_main(args, plans, meta, Path(tmp))
        return

    results, summaries = [], []
    with tempfile.TemporaryDirectory(prefix="ticketbench-bench-") as tmp:
        root = Path(tmp)
        setups = {}
        if "lenet" in args.models:
            # No root given: ticketbench's default places (./data, $TICKETBENCH_DATA, Debian's package).
            setups["lenet"] = Setup(LENET, args.data_root, verify=True)
        if "resnet20" in args.models:
            print(f"ResNet-20 data: {meta['data']['resnet20']}")
            write_synthetic_cifar(root / "cifar10")
            setups["resnet20"] = Setup(RESNET, root, verify=False)
        for threads in args.threads:
            torch.set_num_threads(threads)
            for key, s in setups.items():
                load_before = os.getloadavg()
                print(f"\n{s.cfg.model.name}, batch {s.batch}, {s.cfg.train.optimizer}, mask density {s.density:.3f}, "
                      f"torch threads {torch.get_num_threads()}, load average {load_before[0]:.2f}", flush=True)
                rows = bench_model(s, plans[key], workers, conv=models.memory_format(s.model()) == torch.channels_last)
                load_after = os.getloadavg()
                for r in rows:
                    results.append({"model": s.cfg.model.name, "threads": threads, "batch_size": s.batch,
                                    "steps_per_run": plans[key].steps, "load_average_before": load_before[0],
                                    "load_average_after": load_after[0], "mask_density": s.density, **r})
                summaries.append(summarize(s.cfg.model.name, threads, rows))
    print_table(summaries)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "summary": summaries, "results": results}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
