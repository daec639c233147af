"""Cost of the Hessian analysis: one HVP against one gradient, and top-10 eigenvalues by Lanczos against
PyHessian-style deflated power iteration.

Issue 4 ("Performance") asks, for ResNet-20 (width 16, BN in eval mode) on CPU:
1. the cost of one Hessian-vector product relative to one gradient on the same batch (aim <= 4);
2. the number of HVPs and the wall time for the top-10 eigenvalues on 10,000 images, beside the
   deflated power iteration most papers used (PyHessian, Yao et al. 2020: maxIter 100, tol 1e-3), with
   accuracy against a best estimate (aim: <= 40 HVPs, never less accurate than the reference).

What runs (all in one process, 1 thread unless ``--threads``):
- **network**: ResNet-20 trained with ticketbench itself (``imp.Run.dense``, cached in ``bench/out/``) on
  *synthetic* CIFAR-shaped data (Gaussian class prototypes plus noise, ``data: synthetic``): no dataset
  can be downloaded here. Kernel costs do not depend on pixel values; the spectrum does, so iteration
  counts are those of this network, not of a CIFAR-10 ResNet-20.
- **cost** (phase ``cost``): gradient of the summed cross-entropy (eval mode, autograd) and HVP by each
  method of ``MaskedHessian``, on the same batch, with the inputs in NCHW and in channels_last layout,
  for batch sizes ``--batches``; everything takes turns repeat by repeat, so a burst of load from other
  processes hits all alike. Median CPU time of ``--repeats`` after a warm-up; an HVP is reported in
  gradients of the same layout and in gradients of the fastest layout. Then one gradient and one HVP
  over all ``--images`` with the analysis' defaults (the operator ``ticketbench hessian`` uses).
- **eigen** (phase ``eigen``): on ``--eigen-images`` images (the operator's cost is linear in the
  number of images and the iteration counts barely depend on it, so the 10,000-image wall time is
  projected as HVP count x the measured 10,000-image HVP time and labelled as such):
  * Lanczos (``hessian.lanczos``) run long (``--best-steps``) from one start vector while recording,
    after every step, the Ritz values, residuals and elapsed time. The state at the first step where
    all top-10 relative residuals are <= tol *is* what ``top_eigenpairs(tol=...)`` returns with the
    same start vector (same operations, same order), so one run yields the default analysis (tol 1e-3),
    looser/tighter tolerances, and the best estimate (the last step, whose residuals are reported).
  * The reference: deflated power iteration written here from PyHessian's published algorithm
    (``hessian.eigenvalues``): for each of the k eigenvalues, a random unit vector is repeatedly
    Gram-Schmidt-orthogonalized against the eigenvectors found so far, multiplied by H, its Rayleigh
    quotient taken and normalized, until the quotient changes by less than tol relative (at most
    maxIter HVPs). Returns the latest quotient (PyHessian returns the one before it; ours is the more
    accurate). Its eigenvalues are compared sorted, as they come out nearly sorted but not exactly.
  * Trace: ``--trace-probes`` Hutchinson probes, plain and deflated by the Lanczos basis at tol 1e-3,
    to show the variance reduction.

Run: ``.venv/bin/python bench/hessian.py [--threads 1] [--phase cost eigen] [--quick]``.
Writes ``bench/out/hessian.json``; prints a summary. Other agents share the cores: the load average is
recorded, and CPU time of the process is recorded beside wall time (at 1 thread it is the work done).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ticketbench import config, data, imp
from ticketbench.analysis.hessian import MaskedHessian, hutchinson_trace, lanczos, training_subset
from ticketbench.data import Split
from ticketbench.runtime import Runtime
from ticketbench.train import evaluate

OUT = Path(__file__).parent / "out"
METHODS = ("forward_over_reverse", "double_backward")


def run_config(images: int, steps: str) -> config.RunConfig:
    """ResNet-20 (open_lth cifar_resnet_20: SGD lr 0.1, momentum 0.9, wd 1e-4, batch 128) on synthetic
    CIFAR-shaped data; ``images`` training examples; trained ``steps``, no augmentation."""
    return config.from_dict({
        "name": "bench_hessian",
        "source": "bench/hessian.py (synthetic data; open_lth cifar_resnet_20 optimizer)",
        "data": {"name": "synthetic", "synthetic_shape": [3, 32, 32], "synthetic_train": images, "synthetic_test": 1000},
        "model": {"name": "resnet20", "width": 16},
        "train": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 128,
                  "steps": steps, "eval_every": steps},
        "prune": {"strategy": "global", "rates": {"conv": 0.2}},
        "imp": {"levels": 0, "rewind": "0it"},
    })


class Clock:
    """Wall and process CPU seconds of a block."""

    def __enter__(self) -> "Clock":
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w0, time.process_time() - self.c0


def gradient(net: torch.nn.Module, split: Split, batch_size: int) -> None:
    """One gradient of the summed loss over ``split`` in chunks (eval mode, as the HVP)."""
    params = [p for p in net.parameters() if p.requires_grad]
    for i in range(0, len(split), batch_size):
        loss = F.cross_entropy(net(split.x[i:i + batch_size]), split.y[i:i + batch_size], reduction="sum")
        torch.autograd.grad(loss, params)


def cost_phase(net: torch.nn.Module, mask: dict, train: Split, args: argparse.Namespace) -> dict:
    """Gradient and HVPs on the same batch, in both input layouts (NCHW, channels_last)."""
    out: dict = {"per_batch": {}, "full": {}}
    g = torch.Generator().manual_seed(0)
    layouts = {"nchw": False, "channels_last": True}
    for b in args.batches:
        batch = Split(train.x[:b], train.y[:b])
        jobs, v = {}, None
        for layout, cl in layouts.items():
            ops = {m: MaskedHessian(net, mask, batch, b, m, channels_last=cl) for m in METHODS}
            v = ops[METHODS[0]].random(g) if v is None else v
            jobs[f"gradient/{layout}"] = lambda split=ops[METHODS[0]].split: gradient(net, split, b)
            jobs.update({f"{m}/{layout}": (lambda op=op: op(v)) for m, op in ops.items()})
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in jobs}
        for rep in range(args.repeats + 1):
            for name, job in jobs.items():
                with Clock() as c:
                    job()
                if rep:  # the first round is a warm-up
                    times[name].append((c.wall, c.cpu))
        med = {k: {"wall": statistics.median(t[0] for t in ts), "cpu": statistics.median(t[1] for t in ts)}
               for k, ts in times.items()}
        fastest = min(med[f"gradient/{lay}"]["cpu"] for lay in layouts)
        for name in jobs:
            med[name]["gradients_same_layout"] = med[name]["cpu"] / med[f"gradient/{name.split('/')[1]}"]["cpu"]
            med[name]["gradients_fastest"] = med[name]["cpu"] / fastest
            med[name]["ms_per_example"] = 1e3 * med[name]["cpu"] / b
        out["per_batch"][b] = {"seconds": med, "raw": times, "load": os.getloadavg()}
        print(f"batch {b} (cpu ms/example; HVP in gradients of the same layout / of the fastest gradient):", flush=True)
        for name, m in med.items():
            print(f"  {name:32s} {m['ms_per_example']:6.2f}  {m['gradients_same_layout']:.2f} / {m['gradients_fastest']:.2f}",
                  flush=True)
    # The operator of the analysis (default layout: channels_last for conv nets): all images, in chunks.
    op = MaskedHessian(net, mask, train, args.chunk, args.method)
    v = op.random(g)
    with Clock() as cg:
        gradient(net, op.split, args.chunk)
    with Clock() as ch:
        op(v)
    out["full"] = {"images": len(train), "chunk": args.chunk, "method": args.method,
                   "channels_last": op.split.x.is_contiguous(memory_format=torch.channels_last),
                   "gradient": {"wall": cg.wall, "cpu": cg.cpu}, "hvp": {"wall": ch.wall, "cpu": ch.cpu},
                   "ratio_cpu": ch.cpu / cg.cpu, "ratio_wall": ch.wall / cg.wall, "load": os.getloadavg()}
    print(f"{len(train)} images: gradient {cg.wall:.1f} s wall ({cg.cpu:.1f} cpu), HVP {ch.wall:.1f} s wall "
          f"({ch.cpu:.1f} cpu) = {ch.cpu / cg.cpu:.2f} gradients", flush=True)
    return out


def power_iteration(matvec, random, k: int, max_iter: int = 100, tol: float = 1e-3) -> dict:
    """PyHessian-style deflated power iteration (see the module docstring); counts HVPs per eigenvalue."""
    values, vectors, iterations = [], [], []
    for _ in range(k):
        v = random()
        v = v / v.norm()
        estimate, used = None, 0
        for _ in range(max_iter):
            for u in vectors:
                v = v - torch.dot(v, u) * u
            v = v / v.norm()
            hv = matvec(v)
            used += 1
            quotient = float(torch.dot(hv.double(), v.double()))
            v = hv / hv.norm()
            converged = estimate is not None and abs(estimate - quotient) / (abs(estimate) + 1e-6) < tol
            estimate = quotient
            if converged:
                break
        values.append(estimate)
        vectors.append(v)
        iterations.append(used)
    return {"values": values, "iterations": iterations, "hvps": sum(iterations)}


def eigen_phase(net: torch.nn.Module, mask: dict, train: Split, args: argparse.Namespace) -> dict:
    op = MaskedHessian(net, mask, train, args.chunk, args.method)
    g = torch.Generator().manual_seed(1)
    history: list[dict] = []
    t0 = time.perf_counter()

    K = args.k

    def record(state) -> bool:
        theta, res, _ = state.ritz()
        k = min(K, state.steps)
        history.append({"step": state.steps, "wall": time.perf_counter() - t0, "values": theta[:k].tolist(),
                        "residuals": res[:k].tolist(), "relative": (res[:k] / theta[:k].abs()).tolist()})
        r = history[-1]
        if state.steps % 5 == 0:
            print(f"  lanczos step {state.steps}: top {r['values'][0]:.5g}, max relative residual "
                  f"{max(r['relative']):.2e} ({r['wall']:.0f} s)", flush=True)
        return state.steps >= K and max(r["relative"]) <= args.best_tol

    state = lanczos(op, op.random(g), args.best_steps, record)
    best = history[-1]
    best_values = torch.tensor(best["values"], dtype=torch.float64)

    def accuracy(values: list[float]) -> dict:
        v = torch.tensor(sorted(values, reverse=True), dtype=torch.float64)
        rel = ((v - best_values).abs() / best_values.abs()).tolist()
        return {"relative_error": rel, "max": max(rel), "median": statistics.median(rel)}

    lanczos_at = {}
    for tol in args.tols:
        hit = next((h for h in history if h["step"] >= K and max(h["relative"]) <= tol), None)
        if hit is None:
            lanczos_at[tol] = None
            continue
        lanczos_at[tol] = {"hvps": hit["step"], "wall": hit["wall"], "values": hit["values"],
                           "max_relative_residual": max(hit["relative"]), "accuracy": accuracy(hit["values"])}
        print(f"Lanczos tol {tol:g}: {hit['step']} HVPs, {hit['wall']:.0f} s, max relative error vs best "
              f"{lanczos_at[tol]['accuracy']['max']:.2e}", flush=True)

    out = {"images": len(train), "dim": op.dim, "best": {"steps": best["step"], "values": best["values"],
           "relative_residuals": best["relative"]}, "lanczos": lanczos_at}

    trace = {}
    if args.trace_probes and lanczos_at.get(1e-3):
        m = lanczos_at[1e-3]["hvps"]
        basis = state.basis[:m]
        gt = torch.Generator().manual_seed(2)
        plain = hutchinson_trace(op, lambda: op.random(gt, "rademacher"), args.trace_probes)
        defl = hutchinson_trace(op, lambda: op.random(gt, "rademacher"), args.trace_probes, basis=basis,
                                basis_trace=sum(state.alpha[:m]))
        trace = {"plain": vars(plain), "deflated": vars(defl)}
        print(f"trace: plain {plain.value:.4g} +- {plain.stderr:.2g}, deflated {defl.value:.4g} +- {defl.stderr:.2g} "
              f"({args.trace_probes} probes each)", flush=True)
    out["trace"] = trace

    gp = torch.Generator().manual_seed(3)
    calls0 = op.calls
    with Clock() as c:
        pi = power_iteration(op, lambda: op.random(gp), K, max_iter=100, tol=1e-3)
    assert op.calls - calls0 == pi["hvps"]
    out["power_iteration"] = {**pi, "wall": c.wall, "cpu": c.cpu, "accuracy": accuracy(pi["values"])}
    print(f"power iteration (maxIter 100, tol 1e-3): {pi['hvps']} HVPs {pi['iterations']}, {c.wall:.0f} s, "
          f"max relative error vs best {out['power_iteration']['accuracy']['max']:.2e}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--k", type=int, default=10, help="top eigenvalues (default 10)")
    p.add_argument("--phase", nargs="+", choices=["cost", "eigen"], default=["cost", "eigen"])
    p.add_argument("--images", type=int, default=10000, help="training images = the Hessian subset (default 10,000)")
    p.add_argument("--eigen-images", type=int, default=1000, help="images for the eigen comparison (default 1,000)")
    p.add_argument("--train-steps", default="2ep", help="training of the benchmarked network (default 2ep)")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 128, 250, 1000], help="batch sizes of the cost phase")
    p.add_argument("--chunk", type=int, default=250, help="HVP chunk size for the full-data operator (default 250)")
    p.add_argument("--method", choices=METHODS, default="forward_over_reverse")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tols", type=float, nargs="+", default=[1e-2, 3e-3, 1e-3, 1e-4])
    p.add_argument("--best-steps", type=int, default=150)
    p.add_argument("--best-tol", type=float, default=1e-5)
    p.add_argument("--trace-probes", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, numbers meaningless")
    args = p.parse_args()
    if args.quick:
        args.images, args.eigen_images, args.train_steps, args.batches = 256, 64, "20it", [32]
        args.repeats, args.best_steps, args.trace_probes, args.k = 1, 30, 2, 2
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"load {os.getloadavg()}", flush=True)

    cfg = run_config(args.images, args.train_steps)
    run_dir = OUT / "hessian_runs" / cfg.run_name()
    ds = data.load(cfg.data, "cpu")
    run = imp.Run(cfg, run_dir, ds, Runtime(threads=args.threads, progress=False))
    run.dense()
    job = run.level_dir(0)
    net, mask = run.network(job), run.load_mask(job)
    train = ds.train_unpadded()
    train_loss, train_acc = evaluate(net, train)
    print(f"network: {job}, train loss {train_loss:.4f}, train acc {train_acc:.4f}", flush=True)
    result = {"torch": torch.__version__, "threads": args.threads, "python": sys.version.split()[0],
              "network": {"job": str(job), "train_loss": train_loss, "train_acc": train_acc,
                          "train_steps": args.train_steps, "params": sum(p.numel() for p in net.parameters())},
              "args": vars(args)}
    if "cost" in args.phase:
        result["cost"] = cost_phase(net, mask, train, args)
    if "eigen" in args.phase:
        sub = training_subset(train, args.eigen_images / len(train), seed=0)
        result["eigen"] = eigen_phase(net, mask, sub, args)
        full = result.get("cost", {}).get("full")
        if full:
            per_hvp = full["hvp"]["wall"]
            e = result["eigen"]
            result["projected_10k"] = {
                "seconds_per_hvp": per_hvp,
                "lanczos_tol_1e-3": (e["lanczos"].get(1e-3) or {}).get("hvps", math.nan) * per_hvp,
                "power_iteration": e["power_iteration"]["hvps"] * per_hvp}
            print(f"projected to {full['images']} images ({per_hvp:.0f} s per HVP): "
                  f"Lanczos {result['projected_10k']['lanczos_tol_1e-3'] / 60:.0f} min, "
                  f"power iteration {result['projected_10k']['power_iteration'] / 60:.0f} min", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / ("hessian_quick.json" if args.quick else "hessian.json")
    # A run of one phase keeps the other phase's results of an earlier run (each phase is self-contained).
    previous = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**previous, **result}, indent=1, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
