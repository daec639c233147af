"""Projected device-hours of a workflow config's training jobs, lone and packed, from measured throughput.

The device check (bench/device_check.sh) measures on the lent device how fast a lone job and a pack of P
train LeNet-300-100 and ResNet-20 (bench/throughput.py --packs) and what one job costs besides training
(a tiny dense job end to end: process start, imports, device initialisation, data load, saving). This
script turns those figures into hours for every training job of the plan (``ticketbench.plan``):

    lone   = sum over jobs  (steps x batch / lone images/s + start-up)
    packed = sum over packs (steps x batch x members / packed images/s + start-up)

with the packs the workflow forms at ``--pack`` (``plan.packs``). Networks that were not measured
(Conv-2/4/6, VGG) get the measured network of their kind (fully connected: LeNet; convolutional:
ResNet-20) scaled by multiply-accumulates per image, counted on the network itself: an estimate, marked
as such in the output. Analyses (Hessian, interpolation) are not projected: they are not trained, and
the issue asks for training's hours. Evaluations are part of neither measurement; they add a few percent.

    .venv/bin/python bench/projection.py --packing bench/out/packing.json --overhead-seconds 6 \\
        --workflow-config config/config.yaml --pack 8
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from ticketbench import models, plan
from ticketbench.config import RunConfig

FULLY_CONNECTED = ("lenet_300_100",)
"""Networks projected from LeNet-300-100's measured rate; every other one from ResNet-20's."""


def macs_per_image(cfg: RunConfig, shape: tuple[int, int, int], classes: int) -> int:
    """Multiply-accumulates of one forward pass (convolutions and linear layers), counted with hooks."""
    net = models.build(cfg.model, shape, classes, 0).eval()
    total = 0

    def count(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output[0].numel() * k
        elif isinstance(module, torch.nn.Linear):
            total += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        net(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return total


SHAPES = {"mnist": ((1, 28, 28), 10), "fashion_mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10)}


def rates(packing: dict, pack: int) -> dict[str, dict[str, float]]:
    """model -> {"lone": images/s of train.fit, "packed": aggregate images/s of the largest measured pack
    <= ``pack``, "pack": that size}, at fp32 (the default precision of a run)."""
    out: dict[str, dict[str, float]] = {}
    for r in packing["results"]:
        if r["precision"] != "fp32":
            continue
        m = out.setdefault(r["model"], {"lone": 0.0, "packed": 0.0, "pack": 1})
        if r["pack"] is None:
            m["lone"] = r["images_per_second"]
        elif r["pack"] <= pack and r["pack"] >= m["pack"]:
            m["packed"], m["pack"] = r["images_per_second"], r["pack"]
    return out


def project(config_path: Path, packing: dict, overhead: float, pack: int) -> dict:
    config = plan.load_config(config_path)
    experiments = plan.resolve_all(config, str(config_path))
    results = plan.results_of(config)
    measured = rates(packing, pack)
    reference: dict[str, int] = {}
    out = {"config": str(config_path), "pack": pack, "overhead_seconds_per_job": overhead, "rates": measured,
           "experiments": {}, "estimated_networks": {}}
    totals = defaultdict(float)
    for eid, exp in experiments.items():
        cfg0 = next(iter(exp.runs.values()))
        shape, classes = SHAPES.get(cfg0.data.name) or (tuple(cfg0.data.synthetic_shape), 10)
        name = cfg0.model.name
        base = "lenet_300_100" if name in FULLY_CONNECTED else "resnet20"
        if base not in measured:
            out["experiments"][eid] = {"skipped": f"no throughput measured for {base}"}
            continue
        scale = 1.0
        if name != base:
            if base not in reference:
                ref_cfg = _reference_config(base, experiments)
                reference[base] = macs_per_image(ref_cfg, *SHAPES[ref_cfg.data.name])
            scale = macs_per_image(cfg0, shape, classes) / reference[base]
            out["estimated_networks"][name] = f"{base}'s rate / {scale:.2f} (multiply-accumulates per image)"
        lone_rate, packed_rate = measured[base]["lone"] / scale, measured[base]["packed"] / scale
        training = [j for j in plan.jobs(exp, results) if j.trains]
        images = 0
        for j in training:
            cfg = exp.runs[j.seed]
            start, end = cfg.schedule(plan.train_size(cfg)).steps_of(j.branch, j.level)
            images += (end - start) * cfg.train.batch_size
        packs = len(plan.packs(exp, results, pack))
        lone_h = (images / lone_rate + len(training) * overhead) / 3600
        packed_h = (images / packed_rate + packs * overhead) / 3600 if packed_rate else float("nan")
        out["experiments"][eid] = {"network": name, "training_jobs": len(training), "packs": packs,
                                   "images": images, "hours_lone": lone_h, "hours_packed": packed_h}
        totals["training_jobs"] += len(training)
        totals["packs"] += packs
        totals["hours_lone"] += lone_h
        totals["hours_packed"] += packed_h
    out["total"] = dict(totals)
    return out


def _reference_config(base: str, experiments: dict) -> RunConfig:
    for exp in experiments.values():
        cfg = next(iter(exp.runs.values()))
        if cfg.model.name == base:
            return cfg
    raise SystemExit(f"projection: no experiment of the config trains {base}, the measured reference network")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--packing", type=Path, required=True, help="JSON of bench/throughput.py --packs")
    p.add_argument("--workflow-config", type=Path, default=Path("config/config.yaml"))
    p.add_argument("--overhead-seconds", type=float, required=True,
                   help="wall time of one job besides its training loop (the device check measures it)")
    p.add_argument("--pack", type=int, default=8, help="pack size of the packed projection (default 8)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "projection.json")
    args = p.parse_args()
    result = project(args.workflow_config, json.loads(args.packing.read_text()), args.overhead_seconds, args.pack)
    t = result["total"]
    print(f"projection of {args.workflow_config}: {t['training_jobs']:.0f} training jobs, {t['hours_lone']:.1f} "
          f"device-hours lone; {t['packs']:.0f} packs of up to {args.pack}, {t['hours_packed']:.1f} device-hours packed")
    for name, how in result["estimated_networks"].items():
        print(f"  estimated: {name} = {how}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
