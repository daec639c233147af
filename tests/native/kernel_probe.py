"""Train one network of a shipped config for a few steps in one memory layout: the child process of
tests/test_native_kernels.py, so that a crash in native code (oneDNN, MKL) kills this process, not pytest.

    python tests/native/kernel_probe.py CONFIG EXPERIMENT LAYOUT OUT_DIR   (EXPERIMENT "-": a run config)

The experiment's model (architecture, width, initializer), optimizer, pruning and augmentation are the
config's; only the data (synthetic, same image shape as the config's dataset, 32 images) and the schedule
(4 steps, rewind snapshot at step 1) are shrunk. It runs the real code path, ``Run.dense`` (``train.fit``:
forward, backward, masked optimizer step, evaluation, rewind snapshot, checkpoint), then one
Hessian-vector product of each method on 4 images (the analysis' double derivatives). Exit 0 when everything
ran; 3 with one line on stdout when the layout is refused for this network (``models.LayoutError``).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from ticketbench import config, data, models
from ticketbench.analysis.hessian import MaskedHessian
from ticketbench.imp import Run
from ticketbench.runtime import Runtime


def shrunk(cfg: config.RunConfig) -> config.RunConfig:
    shape = cfg.data.synthetic_shape if cfg.data.name == "synthetic" else data.SHAPES[cfg.data.name]
    d = config.DataConfig(name="synthetic", synthetic_shape=shape, synthetic_train=32, synthetic_test=16,
                          augment=cfg.data.augment)
    t = dataclasses.replace(cfg.train, batch_size=8, steps="4it", eval_every="2it", milestones=(), warmup="0it")
    return dataclasses.replace(cfg, data=d, train=t, imp=config.ImpConfig(levels=0, rewind="1it"))


def main(config_path: str, experiment: str, layout: str, out: str) -> int:
    torch.set_num_threads(1)
    cfg = shrunk(config.load(config_path) if experiment == "-" else config.load_experiment(config_path, experiment, 0))
    runtime = Runtime(device="cpu", progress=False, memory_format=layout, checkpoint_seconds=1e9)
    run = Run(cfg, Path(out), data.load(cfg.data), runtime)
    try:
        summary = run.dense()
    except models.LayoutError as e:  # train.fit refuses the layout before any kernel runs
        print(f"refused: {e}")
        return 3
    net = run.network(run.level_dir(0))
    batch = data.Split(run.data.test.x[:4], run.data.test.y[:4])
    for method in ("forward_over_reverse", "double_backward"):
        op = MaskedHessian(net, run.load_mask(run.level_dir(0)), batch, batch_size=len(batch), method=method,
                           channels_last=summary["memory_format"] == "channels_last")
        v = torch.randn(op.keep.numel(), generator=torch.Generator().manual_seed(0))
        if not torch.isfinite(op(v)).all():
            print("Hessian-vector product is not finite")
            return 1
    print(f"ok: {cfg.model.name} width {cfg.model.width} on {cfg.data.synthetic_shape} in {summary['memory_format']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
