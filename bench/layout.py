"""Memory layout of conv nets: where channels_last crashes oneDNN, and what each layout costs.

The measurement behind ``models.memory_format`` (issue "First contact": `make quick` died in native code
on an AVX2 machine). Two parts, both on the CPU with 1 thread:

- ``crashes``: one convolution (``--cin`` input channels, 2x as many outputs, kernel 1 or 3, stride 1 or 2,
  batch 128 of 16x16 images) runs forward+backward 10 times in its own process, in NCHW and in
  channels_last, as the machine is and with ``ONEDNN_MAX_CPU_ISA=AVX2``. A process killed by a signal
  (or aborted by glibc's heap checks) is a crash; the signal is printed.
- ``speed``: ms per SGD step of ResNet-20 (batch 128, Fashion-MNIST-shaped input) at the widths the shipped
  configs use, in each layout ``memory_format`` allows; the layouts of one width run in the same process,
  alternating, median of the timed steps.

Run: ``.venv/bin/python bench/layout.py [--cin 1 2 4 8] [--steps 15]``. Writes ``bench/out/layout.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"

CONV = """
import sys, torch, torch.nn as nn
cin, k, s, cl = map(int, sys.argv[1:5])
torch.set_num_threads(1)
m = nn.Conv2d(cin, 2 * cin, k, stride=s, padding=k // 2, bias=False)
x = torch.randn(128, cin, 16, 16)
if cl:
    m, x = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
x.requires_grad_()
for _ in range(10):
    m(x).sum().backward()
"""


def crashes(cins: list[int]) -> list[dict]:
    rows = []
    for isa in (None, "AVX2"):
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
        if isa:
            env["ONEDNN_MAX_CPU_ISA"] = isa
        for cin in cins:
            for k in (1, 3):
                for s in (1, 2):
                    for cl in (0, 1):
                        p = subprocess.run([sys.executable, "-c", CONV, str(cin), str(k), str(s), str(cl)], env=env,
                                           capture_output=True, text=True)
                        rc = p.returncode
                        outcome = "ok" if rc == 0 else (signal.Signals(-rc).name if rc < 0 else f"exit {rc}")
                        rows.append({"isa_cap": isa or "none", "in_channels": cin, "kernel": k, "stride": s,
                                     "layout": "channels_last" if cl else "contiguous", "outcome": outcome})
    return rows


def speed(widths: list[int], steps: int) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from ticketbench.config import ModelConfig
    from ticketbench.models import build, layout_name, memory_format

    torch.set_num_threads(1)
    rows = []
    for width in widths:
        nets = {}
        for requested in ("contiguous", "channels_last"):
            net = build(ModelConfig("resnet20", width=width), (1, 28, 28), 10, 0)
            try:
                fmt = memory_format(net, requested)
            except ValueError as e:
                rows.append({"width": width, "layout": requested, "ms_per_step": None, "note": str(e)})
                continue
            x = torch.randn(128, 1, 28, 28).contiguous(memory_format=fmt)
            nets[layout_name(fmt)] = (net.to(memory_format=fmt), x, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9))
        y = torch.randint(0, 10, (128,), generator=torch.Generator().manual_seed(0))
        times: dict[str, list[float]] = {name: [] for name in nets}
        for i in range(steps + 3):
            for name, (net, x, opt) in nets.items():
                t = time.perf_counter()
                opt.zero_grad()
                F.cross_entropy(net(x), y).backward()
                opt.step()
                if i >= 3:  # warm-up steps are not timed
                    times[name].append(time.perf_counter() - t)
        rows += [{"width": width, "layout": name, "ms_per_step": 1000 * statistics.median(ts), "note": ""}
                 for name, ts in times.items()]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cin", type=int, nargs="+", default=[1, 2, 3, 4, 6, 7, 8, 12, 16])
    ap.add_argument("--widths", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--steps", type=int, default=15)
    args = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread, "
          f"load {os.getloadavg()[0]:.2f}")
    crash_rows = crashes(args.cin)
    bad = [r for r in crash_rows if r["outcome"] != "ok"]
    print(f"crashes: {len(bad)} of {len(crash_rows)} single-convolution processes")
    for r in bad:
        print(f"  isa cap {r['isa_cap']:4}  {r['in_channels']:2} in  {r['kernel']}x{r['kernel']} stride {r['stride']}  "
              f"{r['layout']:13} {r['outcome']}")
    speed_rows = speed(args.widths, args.steps)
    print("ResNet-20, batch 128, 1x28x28, SGD step (median ms):")
    for r in speed_rows:
        print(f"  width {r['width']:2}  {r['layout']:13} " + (f"{r['ms_per_step']:.1f}" if r["ms_per_step"] else r["note"]))
    OUT.mkdir(exist_ok=True)
    (OUT / "layout.json").write_text(json.dumps({"torch": torch.__version__, "threads": 1, "crashes": crash_rows,
                                                  "speed": speed_rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
