"""ticketbench: lottery-ticket experiments (IMP with rewinding, baselines, analyses) from run configs.

Every training subcommand takes a run config (YAML, see ``config/runs/``) and a run directory; it is
idempotent (finished jobs are skipped) and resumes interrupted ones from their checkpoint. Errors are
one line on stderr and a non-zero exit: 2 for bad input (config, dataset, checkpoint), 1 for a diverged
run (a pack: once its other jobs are done), 143 after a SIGTERM checkpoint (so SLURM/Snakemake see a terminated
job that may be requeued).

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
    p.add_argument("--run-dir", type=Path, help="run directory (default: the workflow's, results/<config name>/runs/"
                                                "<experiment>/seed<S>, with --experiment; else results/runs/<name>-<hash>)")
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
                        "output of a pack). A job that diverges is stopped and recorded in its diverged.json, the others "
                        "finish, and the exit status is 1 with one line naming it; a rerun does not train it again")
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

    p = sub.add_parser("hash", help="print a run's config hash and the run directory it maps to (the workflow's, "
                                    "with --experiment); the hash is what the workflow records as the job's identity")
    p.add_argument("config", type=Path, help="run config (YAML), or a workflow config with --experiment")
    p.add_argument("--experiment", help="experiment id in a workflow config")
    p.add_argument("--seed", type=int, default=0, help="seed of that experiment (default: 0)")

    from .config import OFFICIAL_SIZES

    p = sub.add_parser("download", help="download a dataset's official files where they are missing (needs a network), "
                                        "verify them and print where they are; run it once before the jobs")
    p.add_argument("dataset", choices=list(OFFICIAL_SIZES), help="the dataset")
    p.add_argument("--data-root", help="where the files are or go (default: $TICKETBENCH_DATA or ./data)")

    p = sub.add_parser("gpu-slot", help="run a command on GPUs of its own on a multi-GPU machine: lock free ones (one "
                                        "lock file per GPU), set CUDA_VISIBLE_DEVICES, exec the command (the workflow's "
                                        "GPU jobs start through it; ticketbench.gpu_slots)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs the command needs (default: 1)")
    p.add_argument("job", nargs=argparse.REMAINDER, metavar="COMMAND", help="the command and its arguments, after --")

    from .plan import SCHEMA

    p = sub.add_parser("plan", help="the jobs a workflow config plans, per experiment and kind (as snakemake -n counts them)")
    p.add_argument("config", type=Path, help="workflow config (config/*.yaml)")
    p.add_argument("--schema", type=Path, default=SCHEMA, help=f"the workflow config's JSON schema (default: {SCHEMA})")
    p.add_argument("--json", action="store_true", help="print the counts as JSON instead of a table")

    p = sub.add_parser("status", help="done / running / checkpointed / diverged / missing for every planned job of a workflow config")
    p.add_argument("target", type=Path, help="a workflow config (config/N.yaml; its results are results/N), or a results "
                                             "folder results/N (its config is config/N.yaml unless --config is given)")
    p.add_argument("--config", type=Path, help="the workflow config of a results folder (default: config/<folder name>.yaml)")
    p.add_argument("--schema", type=Path, default=SCHEMA, help=f"the workflow config's JSON schema (default: {SCHEMA})")
    p.add_argument("--all", action="store_true", help="list every job, not only the summary per experiment and kind")
    p.add_argument("--json", action="store_true", help="print every job's state as JSON lines")

    from .report.commands import register  # report, audit

    COMMANDS.update(register(sub))
    from .analysis.commands import register as register_analyses  # hessian, interpolate, instability

    COMMANDS.update(register_analyses(sub))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.command == "gpu-slot":  # exec()s the job: it must not import torch first, the job does that itself
        return cmd_gpu_slot(args)
    from .checkpoints import CheckpointError, WriteError
    from .config import ConfigError

    bad_input: tuple[type[BaseException], ...] = (ConfigError, CheckpointError, WriteError, runtime.DeviceError)
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
    from .plan import run_dir_of

    run_dir = args.run_dir or (run_dir_of(args.config, args.experiment, args.seed) if args.experiment else None)
    return Run.open(args.config, run_dir, runtime.from_args(args), args.experiment, args.seed)


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
    rt = runtime.from_args(args)
    runs = pack.open_runs(args.config, args.experiment, sorted({n.seed for n in names}),
                          str(args.runs_dir / "seed{seed}"), rt)
    pendings = [n.pending(runs[n.seed]) for n in names]
    mode = rt.pack_mode_on(next(iter(runs.values())).data.test.x.device)
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
    from .environment import recorded_layout
    from .imp import Run, run_root_of
    from .report.audit import evaluate_state

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
    """The config hash (the workflow's ``config_hash`` param, recorded in the run's config.yaml) and the run
    directory the training commands default to for the same arguments."""
    from . import config, layout, plan

    if args.experiment:
        cfg = config.load_experiment(args.config, args.experiment, args.seed)
        run_dir = plan.run_dir_of(args.config, args.experiment, args.seed)
    else:
        cfg = config.load(args.config)
        run_dir = layout.standalone_run_dir(cfg.run_name())
    print(f"{cfg.hash()} {run_dir}")


def cmd_download(args: argparse.Namespace) -> None:
    """Found files are not downloaded again; found or downloaded, they are read and checked in full here (not
    through a prepared dataset, which would vouch for them without opening them)."""
    from . import data

    folder = data.locate(args.dataset, args.data_root, download=True)
    (x, _), (tx, _) = data.read_official(args.dataset, args.data_root, verify=True)
    print(f"{args.dataset}: {len(x):,} train / {len(tx):,} test images, official checksums verified, in {folder}")


def cmd_gpu_slot(args: argparse.Namespace) -> None:
    from . import gpu_slots

    command = args.job[1:] if args.job[:1] == ["--"] else args.job
    gpu_slots.run(command, args.gpus)


def _plan(path: Path, schema: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from . import plan

    cfg = plan.load_config(path, schema)
    return cfg, plan.resolve_all(cfg, str(path))


def cmd_plan(args: argparse.Namespace) -> None:
    from . import plan

    cfg, experiments = _plan(args.config, args.schema)
    results = plan.results_of(cfg)
    counts = plan.counts(experiments, results)
    also = ["report", "all"] if cfg["report"] else ["all"]  # the rules of one job each that snakemake -n adds
    # With pack: P > 1 the workflow runs the training jobs in packs (plan.packs), one workflow job each.
    packs = {eid: len(plan.packs(exp, results, cfg["pack"])) for eid, exp in experiments.items()}
    analyses = sum(n for per in counts.values() for kind, n in per.items() if kind in plan.ANALYSES)
    workflow_jobs = (sum(packs.values()) + analyses if cfg["pack"] > 1
                     else sum(sum(c.values()) for c in counts.values())) + len(also)
    if args.json:
        print(json.dumps({"experiments": counts, "total": sum(sum(c.values()) for c in counts.values()),
                          "snakemake_also_counts": also, "pack": cfg["pack"], "packs": packs,
                          "workflow_jobs": workflow_jobs}, indent=2))
        return
    rows = [[eid, kind, str(n)] for eid, per in counts.items() for kind, n in per.items()]
    rows += [["total", kind, str(sum(per.get(kind, 0) for per in counts.values()))] for kind in plan.KINDS
             if any(kind in per for per in counts.values())]
    rows.append(["total", "all", str(sum(sum(per.values()) for per in counts.values()))])
    print(_table(["experiment", "kind", "jobs"], rows))
    extra = f"rules {' and '.join(also)} (one job each)" if len(also) > 1 else "rule all (one job)"
    if cfg["pack"] > 1:
        print(f"\n{args.config}: results in {results}; pack: {cfg['pack']}, so the training jobs run as "
              f"{sum(packs.values())} packs: snakemake -n counts those, the analyses and its {extra} "
              f"({workflow_jobs} jobs)")
    else:
        print(f"\n{args.config}: results in {results}; snakemake -n counts these jobs and its {extra}")


def cmd_status(args: argparse.Namespace) -> None:
    from . import layout, plan

    given_config = args.target.suffix in (".yaml", ".yml")
    path = args.config or (args.target if given_config else Path("config") / f"{args.target.name}.yaml")
    if not (args.config or given_config or path.is_file()):
        from .config import ConfigError

        raise ConfigError(f"{args.target}: its workflow config {path} does not exist; name it with --config")
    cfg, experiments = _plan(path, args.schema)
    results = plan.results_of(cfg) if given_config else args.target
    found = [(job, plan.status(job)) for exp in experiments.values() for job in plan.jobs(exp, results)]
    if args.json:
        for job, st in found:
            print(json.dumps({"experiment": job.experiment, "seed": job.seed, "kind": job.kind, "level": job.level,
                              "replicate": job.replicate, "output": str(job.output), "state": st.state, "step": st.step}))
        return
    if args.all:
        print(_table(["job", "state", "last evaluated step"],
                     [[str(job.output.parent if job.trains else job.output), st.state,
                       "" if st.step is None else str(st.step)] for job, st in found]))
        print()
    per: dict[tuple[str, str], dict[str, int]] = {}
    for job, st in found:
        per.setdefault((job.experiment, job.kind), {s: 0 for s in plan.STATES})[st.state] += 1
    rows = [[eid, kind, *(str(n[s]) for s in plan.STATES)] for (eid, kind), n in per.items()]
    rows.append(["total", "all", *(str(sum(st.state == s for _, st in found)) for s in plan.STATES)])
    print(_table(["experiment", "kind", *plan.STATES], rows))
    print(f"\n{results} ({path}); running: a job lock held on this machine; checkpointed: interrupted, resumes "
          f"from its checkpoint; diverged: stopped at a non-finite loss, see its {layout.DIVERGED}")


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Plain text columns: text left-aligned, counts right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if c.isdigit() or c == "" else c.ljust(w) for c, w in zip(row, widths)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


COMMANDS = {"dense": cmd_dense, "imp": cmd_imp, "branch": cmd_branch, "finetune": cmd_finetune, "pack": cmd_pack,
            "evaluate": cmd_evaluate, "table": cmd_table, "lth-figure": cmd_lth_figure, "curves": cmd_curves,
            "hash": cmd_hash, "download": cmd_download, "gpu-slot": cmd_gpu_slot, "plan": cmd_plan,
            "status": cmd_status}

if __name__ == "__main__":
    sys.exit(main())
