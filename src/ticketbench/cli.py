"""ticketbench: lottery-ticket experiments (IMP with rewinding, baselines, analyses) from run configs.

Every training subcommand takes a run config (YAML, see ``config/runs/``) and a run directory; it is
idempotent (finished jobs are skipped) and resumes interrupted ones from their checkpoint. Errors are
one line on stderr and a non-zero exit: 2 for bad input (config, dataset, checkpoint), 1 for a diverged
run, 143 after a SIGTERM checkpoint (so SLURM/Snakemake see a terminated job that may be requeued).

torch is imported lazily so that ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from . import runtime

log = logging.getLogger("ticketbench")

EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_PREEMPTED = 2, 1, 143


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="run config (YAML), or a workflow config with --experiment and --seed")
    p.add_argument("--experiment", help="experiment id in a workflow config (config/*.yaml)")
    p.add_argument("--seed", type=int, default=0, help="seed of that experiment (default: 0)")
    p.add_argument("--run-dir", type=Path, help="run directory (default: results/runs/<name>-<config hash>)")
    runtime.add_arguments(p, training=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ticketbench", description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"ticketbench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("dense", help="train the dense network (IMP level 0, the workflow's rule 'dense'), "
                                     "capturing the state at the rewind step")
    _run_args(p)

    p = sub.add_parser("imp", help="run IMP levels (all, or one with --level; level 0 is 'dense')")
    _run_args(p)
    p.add_argument("--level", type=int, help="only this level (its predecessors must be done)")

    from .config import BRANCHES

    p = sub.add_parser("branch", help="a baseline at one IMP level, or an SGD-noise copy: " + ", ".join(BRANCHES))
    _run_args(p)
    p.add_argument("--kind", required=True, choices=BRANCHES,
                   help="random_reinit: IMP's mask, fresh weights; random_prune: a random mask of the level's "
                        "sparsity; oneshot: prune the dense net at once; copy: an SGD-noise copy (trained here; "
                        "'ticketbench instability' interpolates the copies); copy_random_reinit, copy_random_prune: SGD-noise copies of those baselines' replicate 0")
    p.add_argument("--level", type=int, required=True, help="the IMP level it branches off (that level must be done)")
    p.add_argument("--replicate", type=int, default=0, help="replicate number: its own seed stream (default: 0)")

    p = sub.add_parser("finetune", help="a level of the fine-tuning chain (prune, keep weights, train at the final lr)")
    _run_args(p)
    p.add_argument("--level", type=int, required=True, help="fine-tuning level L >= 1 (level L-1 must be done)")

    p = sub.add_parser("pack", help="train several jobs of one experiment in one process (a pack of the workflow)")
    p.add_argument("config", type=Path, help="workflow config (config/*.yaml)")
    p.add_argument("--experiment", required=True, help="experiment id in the workflow config")
    p.add_argument("jobs", nargs="+", help="jobs as seed<S>/<branch>/level_<LL>[/rep_<R>], e.g. seed0/imp/level_03")
    p.add_argument("--runs-dir", required=True, type=Path,
                   help="the experiment's folder of run directories seed<S> (the workflow's results/<config>/runs/<experiment>)")
    p.add_argument("--manifest", type=Path,
                   help="when every job is done, write this JSON naming them and their networks' SHA-256 (the workflow's "
                        "output of a pack)")
    runtime.add_arguments(p, training=True, pack=True)

    p = sub.add_parser("evaluate", help="evaluate stored networks (job directories with final.pt) on the test set")
    p.add_argument("jobs", type=Path, nargs="+", help="job directories, e.g. RUN/imp/level_03")
    runtime.add_arguments(p)

    p = sub.add_parser("table", help="collect job summaries of run directories into one tidy CSV")
    p.add_argument("runs", type=Path, nargs="+", help="run directories")
    p.add_argument("-o", "--output", type=Path, required=True, help="CSV file to write (one row per job)")

    p = sub.add_parser("lth-figure", help="accuracy vs. weights remaining for IMP and its baselines (PNG)")
    p.add_argument("table", type=Path, help="CSV written by 'ticketbench table'")
    p.add_argument("-o", "--output", type=Path, required=True, help="PNG file to write")
    p.add_argument("--title", default="", help="figure title (default: none)")

    p = sub.add_parser("curves", help="loss and accuracy vs. step of running or finished jobs, from their "
                                      "metrics.csv (PNG + SVG)")
    p.add_argument("jobs", type=Path, nargs="+", help="job directories (e.g. RUN/imp/level_03) or run directories "
                                                      "(every job in them that has evaluated); several are overlaid")
    p.add_argument("-o", "--output", type=Path, required=True, help="PNG file to write (its SVG is written beside it)")

    p = sub.add_parser("hash", help="print the run directory name of a config (name-hash)")
    p.add_argument("config", type=Path, help="run config (YAML), or a workflow config with --experiment")
    p.add_argument("--experiment", help="experiment id in a workflow config")
    p.add_argument("--seed", type=int, default=0, help="seed of that experiment (default: 0)")

    from .report.commands import register  # report, audit

    COMMANDS.update(register(sub))
    from .analysis.commands import register as register_analyses  # hessian, interpolate, instability

    COMMANDS.update(register_analyses(sub))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    from .checkpoints import CheckpointError, WriteError
    from .config import ConfigError

    bad_input: tuple[type[BaseException], ...] = (ConfigError, CheckpointError, WriteError)
    try:
        from .data import DatasetError
        from .train import Preempted, TrainingDiverged

        bad_input += (DatasetError,)
        return COMMANDS[args.command](args) or 0
    except bad_input as e:
        print(f"ticketbench: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingDiverged as e:
        print(f"ticketbench: error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except Preempted as e:
        print(f"ticketbench: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("ticketbench: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


def _open(args: argparse.Namespace) -> Any:
    """The run of a training subcommand: its config, run directory and runtime flags."""
    from .imp import Run

    return Run.open(args.config, args.run_dir, runtime.from_args(args), args.experiment, args.seed)


def _report(summary: dict[str, Any], folder: Path) -> None:
    log.info("%s: test acc %.4f, density %.4f -> %s", folder, summary["final_test_acc"], summary["density"], folder)


def cmd_dense(args: argparse.Namespace) -> None:
    run = _open(args)
    _report(run.dense(), run.level_dir(0))


def cmd_imp(args: argparse.Namespace) -> None:
    run = _open(args)
    levels = [args.level] if args.level is not None else range(run.cfg.imp.levels + 1)
    for lv in levels:
        if lv > run.cfg.imp.levels or lv < 0:
            from .config import ConfigError

            raise ConfigError(f"--level {lv}: the config has levels 0..{run.cfg.imp.levels}")
        _report(run.level(lv), run.level_dir(lv))


def cmd_branch(args: argparse.Namespace) -> None:
    run = _open(args)
    _report(run.branch(args.kind, args.level, args.replicate), run.level_dir(args.level, args.kind, args.replicate))


def cmd_finetune(args: argparse.Namespace) -> None:
    run = _open(args)
    _report(run.finetune(args.level), run.level_dir(args.level, "finetune"))


def cmd_pack(args: argparse.Namespace) -> None:
    """Every job of the pack; its dependencies (the previous level, the level a branch ablates) must be done."""
    from . import pack

    names = [pack.JobName.parse(j) for j in args.jobs]
    runs = pack.open_runs(args.config, args.experiment, sorted({n.seed for n in names}),
                          str(args.runs_dir / "seed{seed}"), runtime.from_args(args))
    pendings = [n.pending(runs[n.seed]) for n in names]
    mode = runtime.from_args(args).pack_mode_on(next(iter(runs.values())).data.test.x.device)
    summaries = pack.train(pendings, mode)
    for name, summary in zip(args.jobs, summaries):
        _report(summary, args.runs_dir / name)
    if args.manifest:
        from .checkpoints import atomic_write

        atomic_write(args.manifest, json.dumps({"experiment": args.experiment, "mode": mode, "jobs": {
            name: s["model_sha256"] for name, s in zip(args.jobs, summaries)}}, indent=2) + "\n")
        log.info("pack of %d jobs done -> %s", len(summaries), args.manifest)


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Each job's stored network on the test set, prepared as it was trained (its mask, the memory layout
    its summary records), so the numbers are the ones training recorded; --memory-format overrides it."""
    from .imp import Run, run_root_of
    from .report.audit import evaluate_state, recorded_layout

    rt = runtime.from_args(args)
    for job in args.jobs:
        root = run_root_of(job)
        run = Run.open(root / "config.yaml", root, rt)
        state = run.final_state(job)  # refuses an unfinished job
        layout = rt.memory_format if rt.memory_format != "auto" else recorded_layout(json.loads((job / "summary.json").read_text()))
        loss, acc = evaluate_state(run, state, run.load_mask(job), layout)
        print(json.dumps({"job": str(job), "test_loss": loss, "test_acc": acc, "memory_format": layout}))


def cmd_table(args: argparse.Namespace) -> None:
    from .report import collect
    from .checkpoints import atomic_write

    df = collect(args.runs)
    atomic_write(args.output, df.to_csv(index=False))
    log.info("wrote %d jobs to %s", len(df), args.output)


def cmd_lth_figure(args: argparse.Namespace) -> None:
    import pandas as pd

    from .report import accuracy_vs_density

    accuracy_vs_density(pd.read_csv(args.table), args.output, title=args.title)
    log.info("wrote %s", args.output)


def cmd_curves(args: argparse.Namespace) -> None:
    from .report import figures

    curves = figures.job_curves(args.jobs)
    figures.curves_figure(curves, args.output)
    log.info("wrote the curves of %d job(s) to %s and %s", len(curves), args.output, figures.vector_of(args.output))


def cmd_hash(args: argparse.Namespace) -> None:
    from . import config

    cfg = config.load_experiment(args.config, args.experiment, args.seed) if args.experiment else config.load(args.config)
    print(cfg.run_name())


COMMANDS = {"dense": cmd_dense, "imp": cmd_imp, "branch": cmd_branch, "finetune": cmd_finetune, "pack": cmd_pack,
            "evaluate": cmd_evaluate, "table": cmd_table, "lth-figure": cmd_lth_figure, "curves": cmd_curves,
            "hash": cmd_hash}

if __name__ == "__main__":
    sys.exit(main())
