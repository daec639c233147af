"""Where everything of a run lives on disk: the one home of the run-directory layout.

A workflow config named N keeps its results under ``results/N/``::

    results/N/runs/<experiment>/seed<S>/          one run (one experiment, one seed): RUN below
    results/N/logs/<experiment>/seed<S>/          the log of each of its jobs
    RUN/config.yaml                               the resolved run config, its hash and schedule
    RUN/rewind.pt                                 the state at the rewind step k (written by level 0)
    RUN/<branch>/level_LL[/rep_R]/                one job: IMP and fine-tuning levels have no replicate,
                                                  baselines and SGD-noise copies do
    RUN/analysis/<kind>/<name>.csv                one analysis table (hessian, instability, successive)
    results/N/runs/<experiment>/packs/<pack>.json a pack's manifest: its jobs, all done (workflow key ``pack``),
                                                  kept with the runs (and versioned with them)
    results/N/logs/<experiment>/packs/<pack>.log  the log of a pack

A run config trained without a workflow config goes to ``results/runs/<name>-<hash>``. The package
(``imp``, ``report``), the CLI and the Snakemake rules all read these names from here, so renaming a
folder is one edit. Torch-free: Snakemake imports it at DAG-build time.
"""

from __future__ import annotations

from pathlib import Path

RESULTS = Path("results")
"""Every result lives under this folder, relative to the working directory (the repository)."""
RUN_CONFIG = "config.yaml"
REWIND = "rewind.pt"
"""The state at the rewind step k, written by level 0 and read by every level and branch of the run."""
SUMMARY = "summary.json"
"""Written last by a training job: it marks the job done."""
FINAL, MASK, METRICS, CHECKPOINT = "final.pt", "mask.pt", "metrics.csv", "checkpoint.pt"
DIVERGED = "diverged.json"
"""Written instead of a summary by a pack member whose training diverged (the step and the reason): the pack
stopped it and finished the others, and does not train it again until the file is deleted."""
JOB_FILES = (SUMMARY, FINAL, MASK, METRICS)
"""What a finished training job holds. ``CHECKPOINT`` is not among them: an interrupted job resumes from it,
and a finished one has deleted it."""
LOCK = ".lock"
"""The lock a training job holds on its directory while it runs (``checkpoints.JobLock``)."""
ANALYSIS = "analysis"
ANALYSES = ("hessian", "instability", "successive")
LEVEL = "level_"


def level_name(level: int) -> str:
    return f"{LEVEL}{int(level):02d}"


def job_path(branch: str, level: int, replicate: int | None = None) -> str:
    """A job's directory relative to its run: ``<branch>/level_LL`` or ``<branch>/level_LL/rep_R``."""
    d = f"{branch}/{level_name(level)}"
    return d if replicate is None else f"{d}/rep_{replicate}"


def job_dir(run: str | Path, branch: str, level: int, replicate: int | None = None) -> Path:
    return Path(run) / job_path(branch, level, replicate)


JOB_GLOB = f"*/{LEVEL}*/**/{SUMMARY}"
"""The summary.json of every finished job of a run, as a glob relative to the run directory."""


def results_dir(config_name: str) -> Path:
    """``results/<name>``: where one workflow config's runs, logs, tables and report go."""
    return RESULTS / config_name


RUNS = "runs"
RUN_PATTERN = f"{RUNS}/{{experiment}}/seed{{seed}}"
"""A run directory relative to its results folder, as a Snakemake/str.format pattern."""
LOG_PATTERN = f"logs/{{experiment}}/seed{{seed}}"
RUN_GLOB = f"{RUNS}/*/seed*/{RUN_CONFIG}"
"""The config.yaml of every run of a results folder, as a glob relative to it."""


def runs_dir(results: str | Path, experiment: str) -> Path:
    """The folder of an experiment's run directories (``seed<S>`` each), which ``ticketbench pack`` reads."""
    return Path(results) / RUNS / experiment


def run_dir(results: str | Path, experiment: str, seed: int) -> Path:
    """The run directory of one experiment and seed of a workflow config's results folder."""
    return Path(results) / RUN_PATTERN.format(experiment=experiment, seed=seed)


def pack_manifest(results: str | Path, experiment: str, pack: str) -> Path:
    return runs_dir(results, experiment) / "packs" / f"{pack}.json"


def pack_log(results: str | Path, experiment: str, pack: str) -> Path:
    return Path(results) / "logs" / experiment / "packs" / f"{pack}.log"


def pack_member(seed: int, branch: str, level: int, replicate: int | None = None) -> str:
    """A job as ``ticketbench pack`` names it: its directory relative to the experiment's folder of runs
    (``seed<S>/<branch>/level_LL[/rep_R]``)."""
    return f"seed{seed}/{job_path(branch, level, replicate)}"


def standalone_run_dir(run_name: str) -> Path:
    """The default run directory of a plain run config (no workflow config): ``results/runs/<name>-<hash>``."""
    return RESULTS / RUNS / run_name


def analysis_name(kind: str, branch: str, level: int) -> str:
    """The file name (without .csv) of one analysis table of a run.

    instability: ``level_LL`` for the IMP subnetwork's copies (named before random baselines were copied),
    ``<copy branch>_level_LL`` for a random baseline's; hessian: ``<branch>_level_LL`` of the analysed
    network; successive: ``level_LL``, the lower level L of the pair (L, L+1).
    """
    name = level_name(level)
    if kind == "successive" or (kind == "instability" and branch == "copy"):
        return name
    return f"{branch}_{name}"


def analysis_csv(run: str | Path, kind: str, name: str) -> Path:
    return Path(run) / ANALYSIS / kind / f"{name}.csv"


ANALYSIS_GLOB = f"*{LEVEL}[0-9][0-9].csv"
"""Every analysis table of a kind's folder (``RUN/analysis/<kind>/``)."""
