"""CLI subcommands of the loss-landscape analyses: ``hessian``, ``interpolate``, ``instability``.

``register(subparsers)`` adds them to the ``ticketbench`` parser and returns their handlers. Each reads
finished jobs of a run directory (the run is found from the job path), computes, and writes tidy CSVs
atomically; the workflow's paths are::

    ticketbench hessian RUN/imp/level_03 -o RUN/analysis/hessian/imp_level_03.csv
    ticketbench instability RUN --level 3 --pairs 3 -o RUN/analysis/instability/level_03.csv
    ticketbench interpolate RUN/imp/level_03 RUN/imp/level_04 --mask common none \\
        -o RUN/analysis/successive/level_03.csv

Every row carries experiment, run, seed, branch, level (and replicate or pair), so figures read the
files directly. torch is imported inside the handlers, so ``ticketbench --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import HessianConfig

log = logging.getLogger("ticketbench")

Handler = Callable[[argparse.Namespace], Any]


HESSIAN_FLAG_NAMES = {"seed": "hessian-seed"}
"""Options whose flag is not the field name with dashes: the training commands' --seed is the run's seed."""


def hessian_flags(g: argparse._ArgumentGroup) -> None:
    """One option per ``HessianConfig`` field: its flag, type or choices, default and help come from the
    field, so the dataclass is the only list of the analysis's options (the workflow's ``hessian:`` keys
    become these flags by name, tests/test_hessian.py holds the schema to them)."""
    hints = typing.get_type_hints(HessianConfig)
    for f in dataclasses.fields(HessianConfig):
        kind = hints[f.name]
        choices = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else None
        g.add_argument(f"--{HESSIAN_FLAG_NAMES.get(f.name, f.name.replace('_', '-'))}", dest=f.name, default=f.default,
                       type=None if choices else kind, choices=choices, help=f"{f.metadata['flag']} (default: {f.default})")


def register(subparsers: argparse._SubParsersAction) -> dict[str, Handler]:
    from .. import runtime
    from ..config import COPIES
    p = subparsers.add_parser("hessian", help="top-k Hessian eigenvalues, trace and basin volume of a trained network")
    p.add_argument("job", type=Path, help="job directory with final.pt and mask.pt, e.g. RUN/imp/level_03")
    p.add_argument("-o", "--output", type=Path, required=True, help="CSV, one row per quantity (eigenvalue i, trace, log-volumes)")
    p.add_argument("--density-output", type=Path, help="CSV of the SLQ density nodes/weights (default: <output>_density.csv)")
    hessian_flags(p.add_argument_group("analysis (see ticketbench.analysis.HessianConfig for sources)"))
    g = p.add_argument_group("speed")
    g.add_argument("--hvp", choices=["forward_over_reverse", "double_backward"], default="forward_over_reverse",
                   help="how HVPs are computed; same result, different speed (default: forward_over_reverse)")
    runtime.add_arguments(p)

    p = subparsers.add_parser("interpolate", help="loss and error along the line between two trained networks of one run "
                                                       "(the workflow's 'successive' analysis: IMP levels L and L+1)")
    p.add_argument("job_a", type=Path, help="endpoint at alpha = 0, e.g. RUN/imp/level_03")
    p.add_argument("job_b", type=Path, help="endpoint at alpha = 1, e.g. RUN/imp/level_04")
    _path_args(p)
    p.add_argument("--mask", nargs="+", choices=["none", "common"], default=["none"],
                   help="none: weights as stored; common: both endpoints restricted to the masks' intersection (for "
                        "successive IMP levels: the sparser mask). Several = one path each (default: none)")
    runtime.add_arguments(p)

    p = subparsers.add_parser("instability", help="LMC instability: interpolate pairs of SGD-noise copies "
                                                       "(trained by 'ticketbench branch --kind copy', config.COPIES)")
    p.add_argument("run_dir", type=Path, help="run directory")
    p.add_argument("--level", type=int, required=True, help="IMP level (0 = the dense network)")
    p.add_argument("--pairs", type=int, required=True, help="pairs r = 0..P-1, made of copies 2r and 2r+1")
    p.add_argument("--branch", default="copy", choices=list(COPIES),
                   help="branch holding the copies: copy (of the IMP subnetwork) or a random baseline's "
                        "(written to the table's branch column; default: copy)")
    _path_args(p)
    runtime.add_arguments(p)
    return {"hessian": cmd_hessian, "interpolate": cmd_interpolate, "instability": cmd_instability}


def _path_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", type=Path, required=True, help="CSV, one row per point of each path")
    p.add_argument("--barriers", type=Path, help="also write this CSV, one row per path with the barrier of each "
                                                 "metric (default: none; the barriers are logged)")
    g = p.add_argument_group("path (see ticketbench.analysis.interpolation)")
    g.add_argument("--points", type=int, default=30, help="evenly spaced alphas, endpoints included (default: 30, as LMC)")
    g.add_argument("--bn", choices=["as_is", "recompute"], default="as_is",
                   help="as_is: evaluate the interpolated network as is (LMC); recompute: re-estimate BN statistics "
                        "at each point on the training images (default: as_is)")
    g.add_argument("--train-examples", type=int, default=0,
                   help="evaluate train loss/error (and recompute BN) on this many seeded training examples; "
                        "0 = the whole training split (default). A named deviation for CPU-sized runs")
    g.add_argument("--eval-batch-size", type=int, default=1000, help="speed only (default: 1000)")


def _sibling(output: Path, suffix: str) -> Path:
    return output.with_name(f"{output.stem}_{suffix}.csv")


# --------------------------------------------------------------------------------------------------
# Opening jobs
# --------------------------------------------------------------------------------------------------


def _open(job: Path, args: argparse.Namespace) -> Any:
    from .. import runtime
    from ..imp import Run, run_root_of

    root = run_root_of(job)
    return Run.open(root / "config.yaml", root, runtime.from_args(args))


def _meta(run: Any, job: Path) -> dict[str, Any]:
    """Identity of a finished job, from its summary.json (as report.tables reads it)."""
    from ..checkpoints import CheckpointError

    path = job / "summary.json"
    if not path.is_file():
        raise CheckpointError(f"{job}: no summary.json; the job has not finished (run it first)")
    s = json.loads(path.read_text())
    return {"experiment": run.cfg.name, "run": run.root.name, "seed": run.cfg.seeds.init, "branch": s.get("branch"),
            "level": s.get("level"), "replicate": s.get("replicate"), "density": s.get("density")}


def _layout(job: Path, args: argparse.Namespace) -> str:
    """The memory layout a job's network is analysed in: the one it was trained in (its summary records
    it), unless --memory-format names another, as ``ticketbench evaluate`` does. Layout changes no
    math, but another layout rounds differently, so the analysed network is the trained one."""
    from ..environment import recorded_layout

    if args.memory_format != "auto":
        return args.memory_format
    return recorded_layout(json.loads((job / "summary.json").read_text()))


def _write(df: Any, path: Path, what: str) -> None:
    from ..checkpoints import atomic_write

    atomic_write(path, df.to_csv(index=False))
    log.info("wrote %s (%d rows) to %s", what, len(df), path)


# --------------------------------------------------------------------------------------------------
# hessian
# --------------------------------------------------------------------------------------------------


def cmd_hessian(args: argparse.Namespace) -> None:
    import pandas as pd

    from ..config import ConfigError
    from .hessian import analyse

    try:
        cfg = HessianConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(HessianConfig)}).validate()
    except ValueError as e:
        raise ConfigError(f"hessian: {e}") from None
    run = _open(args.job, args)
    meta = _meta(run, args.job)
    net, mask = run.network(args.job), run.load_mask(args.job)
    _check_hessian_layout(net, _layout(args.job, args))
    train = run.data.train_unpadded()
    result = analyse(net, mask, train, cfg, n_examples=len(train), method=args.hvp)

    e = result.eigen
    common = {**meta, "dim": result.dim, "subset_size": result.subset_size, "top_k": cfg.top_k, "tol": cfg.tol,
              "hessian_seed": cfg.seed, "lanczos_steps": e.hvps, "converged": e.converged, "hvps": result.hvps}
    rows = [{**common, "quantity": "eigenvalue", "index": i, "value": float(v), "residual": float(r),
             "relative_residual": float(rr)}
            for i, (v, r, rr) in enumerate(zip(e.values, e.residuals, e.relative_residuals))]
    if result.trace is not None:
        rows.append({**common, "quantity": "trace", "value": result.trace.value, "stderr": result.trace.stderr})
    rows.append({**common, "quantity": "log_volume", "value": result.log_volumes[cfg.volume], "method": cfg.volume})
    rows += [{**common, "quantity": f"log_volume_{name}", "value": v, "method": name} for name, v in result.log_volumes.items()]
    columns = [*common, "quantity", "index", "value", "residual", "relative_residual", "stderr", "method"]
    _write(pd.DataFrame(rows, columns=columns), args.output, "Hessian analysis")
    log.info("%s: top eigenvalue %.4g (max relative residual %.2g, %d Lanczos steps, converged=%s), %d HVPs in total",
             args.job, float(e.values[0]), float(e.relative_residuals.max()), e.hvps, e.converged, result.hvps)
    if result.density:
        dens = [{**meta, "probe": p, "node": float(x), "weight": float(w), "steps": len(nodes)}
                for p, (nodes, weights) in enumerate(result.density) for x, w in zip(nodes, weights)]
        _write(pd.DataFrame(dens), args.density_output or _sibling(args.output, "density"), "SLQ density")


# --------------------------------------------------------------------------------------------------
# interpolate / instability
# --------------------------------------------------------------------------------------------------


def _check_hessian_layout(net: Any, layout: str) -> None:
    """The Hessian analysis runs in the layout ``models.memory_format`` picks for the network (see
    hessian.MaskedHessian); a job trained, or asked for, in another layout is refused, not silently
    analysed in a layout it did not run in."""
    from ..config import ConfigError
    from ..models import layout_name, memory_format

    wanted, used = memory_format(net, layout), memory_format(net)
    if wanted != used:
        raise ConfigError(f"hessian: the network is to be analysed in {layout_name(wanted)} (trained so, or "
                          f"--memory-format), but the Hessian analysis runs it in {layout_name(used)}")


def _splits(run: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    from .interpolation import seeded_subset

    return seeded_subset(run.data.train_unpadded(), args.train_examples, run.cfg.seeds.init), run.data.test


def _one_path(run: Any, job_a: Path, job_b: Path, mask_mode: str, args: argparse.Namespace, train: Any, test: Any) -> Any:
    """The path between two finished jobs, its network in the memory layout both were trained in."""
    from ..config import ConfigError
    from ..models import memory_format
    from .interpolation import endpoints, path

    la, lb = _layout(job_a, args), _layout(job_b, args)
    if la != lb:
        raise ConfigError(f"{job_a} ran in memory format {la}, {job_b} in {lb}: pick one with --memory-format")
    a, b = endpoints(run.final_state(job_a), run.final_state(job_b), run.load_mask(job_a), run.load_mask(job_b), mask_mode)
    model = run.model()
    model.to(test.x.device, memory_format=memory_format(model, la))
    df = path(model, a, b, train, test, points=args.points, bn=args.bn, bn_data=train, batch_size=args.eval_batch_size)
    df.insert(0, "mask", mask_mode)
    df.insert(1, "bn", args.bn)
    return df


def _check_points(args: argparse.Namespace) -> None:
    from ..config import ConfigError

    if args.points < 2:
        raise ConfigError("--points: the path needs at least its two endpoints (2)")


def cmd_interpolate(args: argparse.Namespace) -> None:
    import pandas as pd

    from ..config import ConfigError
    from ..imp import run_root_of
    from .barriers import barriers

    _check_points(args)
    if run_root_of(args.job_a).resolve() != run_root_of(args.job_b).resolve():
        raise ConfigError("interpolate: both jobs must be in one run directory (same network, same data)")
    run = _open(args.job_a, args)
    ma, mb = _meta(run, args.job_a), _meta(run, args.job_b)
    ident = {k: ma[k] for k in ("experiment", "run", "seed", "branch", "level", "replicate", "density")}
    ident.update({"branch_b": mb["branch"], "level_b": mb["level"], "replicate_b": mb["replicate"], "density_b": mb["density"],
                  "job_a": str(args.job_a), "job_b": str(args.job_b)})
    train, test = _splits(run, args)
    frames = []
    for mode in dict.fromkeys(args.mask):
        df = _one_path(run, args.job_a, args.job_b, mode, args, train, test)
        for i, (k, v) in enumerate(ident.items()):
            df.insert(i, k, v)
        frames.append(df)
    paths = pd.concat(frames, ignore_index=True)
    _write(paths, args.output, "interpolation path")
    per_path = barriers(paths, [*ident, "mask", "bn"])
    if args.barriers:
        _write(per_path, args.barriers, "barriers")
    for _, r in per_path.iterrows():
        log.info("mask=%s bn=%s: test error barrier %.4f, train error barrier %.4f, test loss barrier %.4f",
                 r["mask"], r["bn"], r["test_error_barrier"], r["train_error_barrier"], r["test_loss_barrier"])


def cmd_instability(args: argparse.Namespace) -> None:
    import pandas as pd

    from ..config import ConfigError
    from .barriers import barriers, spread

    _check_points(args)
    if args.pairs < 1:
        raise ConfigError("--pairs: at least one pair of copies is needed")
    run = _open(args.run_dir, args)
    train, test = _splits(run, args)
    frames = []
    for r in range(args.pairs):
        job_a, job_b = run.level_dir(args.level, args.branch, 2 * r), run.level_dir(args.level, args.branch, 2 * r + 1)
        meta = _meta(run, job_a)
        _meta(run, job_b)  # both copies must have finished
        df = _one_path(run, job_a, job_b, "none", args, train, test)
        ident = {"experiment": meta["experiment"], "run": meta["run"], "seed": meta["seed"], "branch": args.branch,
                 "level": args.level, "density": meta["density"], "pair": r, "replicate_a": 2 * r, "replicate_b": 2 * r + 1}
        for i, (k, v) in enumerate(ident.items()):
            df.insert(i, k, v)
        frames.append(df)
    paths = pd.concat(frames, ignore_index=True)
    _write(paths, args.output, "instability paths")
    keys = ["experiment", "run", "seed", "branch", "level", "density", "pair", "replicate_a", "replicate_b", "mask", "bn"]
    per_pair = barriers(paths, keys)
    if args.barriers:
        _write(per_pair, args.barriers, "barriers per pair")
    s = spread(per_pair, ["level"]).iloc[0]
    std = s["test_error_barrier_std"]
    log.info("level %d, %d pair(s): test error barrier %.4f +- %s (train %.4f)", args.level, args.pairs,
             s["test_error_barrier_mean"], "n/a" if math.isnan(std) else f"{std:.4f}", s["train_error_barrier_mean"])

