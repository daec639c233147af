"""Tidy tables: one row per observation, read from the stored runs only (never from logs).

A workflow config named N keeps its runs at ``results/N/runs/<experiment>/seed<S>/`` (``layout`` names
every folder and file of a run). From there this module builds:

- ``jobs``: one row per trained network (a job's summary.json), with the run's experiment, family,
  network, dataset, seed and rewind step k;
- ``hessian``, ``instability``, ``successive``: the analyses' CSVs (``RUN/analysis/<kind>/*level_LL.csv``)
  stacked, with the same run columns.

``density`` (fraction of prunable weights remaining) is the sparsity vocabulary of tables; figures and
the report convert it to "% remaining" when displaying. ``density_total`` counts all the network's weights,
the unpruned kinds included (the LTH's P_m, see ``masks.density_total``): use it where a paper does.
``reinit_start`` says where a reinitialized job's fresh weights started (``imp.reinit_start``). Jobs made
before these two were recorded leave them empty; :func:`unrecorded` says so rather than guess.
``precision`` is the float32 precision a job ran in (``environment.recorded_precision``: fp32 for jobs
made before it was recorded, all of which ran on the CPU).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .. import layout
from ..analysis.barriers import barrier
from ..config import JOB_BRANCHES
from ..environment import recorded_precision

RUN_COLUMNS = ["experiment", "family", "group", "network", "dataset", "seed", "rewind_step", "run"]
JOB_COLUMNS = ["experiment", "run", "config_hash", "seed", "branch", "level", "replicate", "density", "density_total",
               "final_test_acc", "final_test_loss", "final_train_loss", "final_train_acc",
               "early_stop_step", "early_stop_test_acc", "early_stop_val_loss", "start_step", "end_step", "reinit_start",
               "precision", "job"]
SORT = ["experiment", "seed", "branch", "level", "replicate"]

# The analyses' tables (written by ticketbench.analysis.commands, one CSV per job or per level in
# RUN/analysis/<kind>/<...>level_LL.csv), with the columns the figures and claims read. Errors are
# fractions, losses nats. Anything else in the files is kept as is, except the endpoints' job paths,
# which depend on where the results were when the analysis ran.
ANALYSES: dict[str, list[str]] = {
    "hessian": ["branch", "level", "density", "quantity", "index", "value"],
    "instability": ["level", "pair", "alpha", "test_error", "test_loss"],
    "successive": ["level", "level_b", "mask", "alpha", "train_loss", "test_error"],
}
DROPPED = ("job_a", "job_b")
INSTABILITY_ERROR = "test_error"
SUCCESSIVE_ERROR = "test_error"
SUCCESSIVE_LOSS = "train_loss"


class ResultsError(ValueError):
    """A stored result is malformed (as opposed to missing, which the report tolerates and says so)."""


def run_dirs(results: Path) -> list[Path]:
    """The run directories of one workflow config's results: ``results/runs/<experiment>/seed<S>``."""
    return sorted(p.parent for p in Path(results).glob(layout.RUN_GLOB))


def collect(run_dirs: list[Path]) -> pd.DataFrame:
    """Every finished job under the given run directories (a job is finished once its summary.json
    exists). ``job`` is the job directory relative to its run, so tables do not depend on where the
    results were checked out."""
    rows = []
    for run in map(Path, run_dirs):
        cfg = _run_config(run)
        for path in sorted(run.glob(layout.JOB_GLOB)):
            s = json.loads(path.read_text())
            rows.append({**{k: s.get(k) for k in JOB_COLUMNS}, "experiment": cfg.get("name"), "run": run.name,
                         "seed": (cfg.get("seeds") or {}).get("init", 0), "precision": recorded_precision(s),
                         "job": path.parent.relative_to(run).as_posix()})
    df = pd.DataFrame(rows, columns=JOB_COLUMNS)
    return df.sort_values(SORT, na_position="first", ignore_index=True)


def jobs(results: Path, families: dict[str, str] | None = None) -> pd.DataFrame:
    """The jobs of every run under ``results``, with the run columns (see :func:`run_info`)."""
    runs = run_dirs(results)
    info = pd.DataFrame([run_info(r, families) for r in runs], columns=RUN_COLUMNS)
    df = collect(runs)
    if df.empty:
        return pd.DataFrame(columns=RUN_COLUMNS + [c for c in JOB_COLUMNS if c not in RUN_COLUMNS])
    df["run"] = [f"{e}/seed{s}" for e, s in zip(df["experiment"], df["seed"])]
    df = df.drop(columns=["experiment", "seed"]).merge(info, on="run", how="left")
    return df[RUN_COLUMNS + [c for c in JOB_COLUMNS if c not in RUN_COLUMNS]].sort_values(
        SORT, na_position="first", ignore_index=True)


def unrecorded(jobs: pd.DataFrame) -> list[str]:
    """One sentence per column that jobs stored before it was recorded lack (empty, or absent from an old
    jobs.csv): ``density_total`` on any job, ``reinit_start`` on a reinitialized one. Such jobs are not
    filled in: the code that made them is not known from the table."""
    from ..config import REINITIALIZED

    wanted = {"density_total": jobs.index, "reinit_start": jobs.index[jobs["branch"].isin(REINITIALIZED)]}
    out = []
    for column, rows in wanted.items():
        missing = len(rows) if column not in jobs.columns else int(jobs.loc[rows, column].isna().sum())
        if missing:
            out.append(f"{missing} of {len(rows)} job(s) were stored before {column} was recorded; it is unknown for them")
    return out


def run_info(run: Path, families: dict[str, str] | None = None) -> dict[str, Any]:
    """Run-level columns. ``group`` joins runs whose configs differ only in the rewind point k (the
    Stabilizing/LMC sweeps over k); ``rewind_step`` is k in iterations, read from the jobs that start
    there (a level >= 1 or a copy), else from the config if it is given in iterations."""
    cfg = _run_config(run)
    experiment = cfg.get("name")
    return {"experiment": experiment, "family": (families or {}).get(experiment), "group": _group_of(cfg),
            "network": cfg["model"]["name"], "dataset": cfg["data"]["name"], "seed": cfg["seeds"]["init"],
            "rewind_step": _rewind_step(run, cfg), "run": f"{experiment}/seed{cfg['seeds']['init']}"}


def analysis(results: Path, kind: str, families: dict[str, str] | None = None) -> pd.DataFrame | None:
    """One analysis (hessian, instability, successive) over all runs, or None if no run has it.

    A missing analysis is normal (not run at this scale); a CSV without the required columns is an
    error that names the file."""
    frames = []
    for run in run_dirs(results):
        info = run_info(run, families)
        for path in sorted((run / layout.ANALYSIS / kind).glob(layout.ANALYSIS_GLOB)):
            try:
                df = pd.read_csv(path)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
                raise ResultsError(f"{path}: malformed {kind} table ({e})") from None
            missing = [c for c in ANALYSES[kind] if c not in df.columns]
            if missing:
                raise ResultsError(f"{path}: malformed {kind} table, missing column(s) {', '.join(missing)}")
            df = df.drop(columns=[c for c in (*RUN_COLUMNS, *DROPPED) if c in df.columns])
            for col in reversed(RUN_COLUMNS):
                df.insert(0, col, info[col])
            frames.append(df)
    if not frames:
        return None
    out = pd.concat(frames, ignore_index=True)
    keys = [c for c in ("experiment", "seed", "branch", "level", "replicate", "pair", "mask", "bn", "quantity", "index", "alpha")
            if c in out.columns]
    return out.sort_values(keys, ignore_index=True, kind="stable")


def instability_paths(instability: pd.DataFrame) -> pd.DataFrame:
    """The paths LMC evaluates: the interpolated network as is (``bn == as_is``) where several BN modes
    were run."""
    if "bn" in instability.columns and instability["bn"].nunique() > 1:
        return instability[instability["bn"] == "as_is"]
    return instability


def families_of(workflow_config: Path | None) -> dict[str, str]:
    """experiment id -> family (lth, stabilized, saleem) from a workflow config (``config/N.yaml``)."""
    if workflow_config is None:
        return {}
    raw = yaml.safe_load(Path(workflow_config).read_text()) or {}
    return {eid: spec.get("family") for eid, spec in (raw.get("experiments") or {}).items() if isinstance(spec, dict)}


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Deterministic CSV (fixed float format), written atomically: reruns give identical bytes."""
    from ..checkpoints import atomic_write

    atomic_write(path, df.to_csv(index=False, float_format="%.10g", lineterminator="\n"))


# The data series of `dvc plots diff` (dvc.yaml's top-level `plots`): per experiment, one row per IMP level
# and one column per branch, so that DVC draws one curve per branch and overlays two revisions' curves in
# one chart (it colours by revision and dashes by column; it cannot group the rows of a tidy table).
CURVES = "curves"
CURVE_X = "remaining"
CURVE_METRIC = "final_test_acc"


def remaining_column(jobs: pd.DataFrame) -> str:
    """The density to show as "% remaining": ``density_total`` (all weights, the LTH's P_m) where every job
    records it, else ``density`` (prunable weights; tables of jobs made before density_total was recorded)."""
    return "density_total" if "density_total" in jobs.columns and jobs["density_total"].notna().all() else "density"


def accuracy_curves(jobs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """experiment -> its accuracy-vs-sparsity curves: ``remaining`` (% of all weights, the LTH's P_m; of
    the prunable ones where a table predates density_total) and, per branch, the test accuracy at the end
    of training (%) averaged over seeds and replicates at each level. Every file has a column for every
    branch (``config.JOB_BRANCHES``; empty where not run), so one y list in dvc.yaml fits all."""
    out = {}
    for experiment, df in jobs.groupby("experiment", sort=True):
        col = remaining_column(df)
        levels = df[df["branch"] == "imp"].groupby("level")[col].mean()
        acc = df.groupby(["level", "branch"])[CURVE_METRIC].mean().unstack("branch")
        curves = (100 * acc.reindex(columns=list(JOB_BRANCHES))).reindex(levels.index)
        curves.insert(0, CURVE_X, 100 * levels)
        out[str(experiment)] = curves.reset_index(drop=True)
    return out


def _run_config(run: Path) -> dict[str, Any]:
    path = run / "config.yaml"
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ResultsError(f"{path}: unreadable run config ({e})") from None


def _group_of(cfg: dict[str, Any]) -> str:
    """An id shared by runs that differ only in the rewind point (and name/seed/hash)."""
    import hashlib

    from ..config import RESOLVED_KEYS

    rest = {k: v for k, v in cfg.items() if k not in ("name", "source", "seeds", *RESOLVED_KEYS)}
    rest["imp"] = {k: v for k, v in (rest.get("imp") or {}).items() if k != "rewind"}
    from ..config import ImpConfig

    # reinit_start came later: at its default, the runs stored before it keep their group.
    if rest["imp"].get("reinit_start") == ImpConfig.reinit_start:
        del rest["imp"]["reinit_start"]
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]


def _rewind_step(run: Path, cfg: dict[str, Any]) -> float:
    """k in iterations: as the run recorded it (config.yaml's resolved ``schedule``); runs stored before
    it was recorded: the start step of a job that starts at k (a pruned level or an SGD-noise copy), else
    the config's value if it is given in iterations, else NaN."""
    if isinstance(cfg.get("schedule"), dict) and "rewind" in cfg["schedule"]:
        return float(cfg["schedule"]["rewind"])
    for path in sorted(run.glob(layout.JOB_GLOB)):
        s = json.loads(path.read_text())
        if (s.get("branch") not in (None, "finetune") and (s.get("level") or s.get("branch") == "copy")
                and s.get("reinit_start") != "zero"):  # fresh weights trained from step 0 do not start at k
            return float(s["start_step"])
    from ..config import ConfigError, parse_steps

    try:
        epochs, iterations = parse_steps(cfg["imp"]["rewind"])
    except (ConfigError, KeyError):
        return float("nan")
    return float(iterations) if epochs == 0 else float("nan")


def test_set_size(run_config: dict[str, Any]) -> int:
    """Test examples a run evaluates on: ``data.test_subset`` if set, else the dataset's test split
    (``config.OFFICIAL_SIZES``; ``synthetic_test`` for synthetic data)."""
    d = run_config["data"]
    subset = int(d.get("test_subset") or 0)
    if d["name"] == "synthetic":
        full = int(d["synthetic_test"])
    elif subset:
        return subset  # data.load takes the first test_subset of a permutation: never more than the split
    else:
        from ..config import OFFICIAL_SIZES

        full = OFFICIAL_SIZES[d["name"]][1]
    return min(subset, full) if subset else full


BARRIER_KEYS = ["experiment", "group", "seed", "rewind_step", "level"]


def pair_barriers(instability: pd.DataFrame | None) -> pd.DataFrame:
    """Error barrier per run, copied network (``branch``: ``copy`` = the IMP subnetwork), level and copy
    pair: max over the path of the test error minus the mean of the endpoints' errors (LMC Sec. 2), in
    percentage points, with the mean test error of the three points involved (``error``)."""
    cols = [*BARRIER_KEYS, "branch", "pair", "barrier", "max_error", "error"]
    if instability is None or instability.empty:
        return pd.DataFrame(columns=cols)
    instability = instability_paths(instability)
    if "branch" not in instability.columns:
        instability = instability.assign(branch="copy")
    pair = [c for c in ("pair", "replicate") if c in instability.columns][:1]

    def one(path: pd.DataFrame) -> pd.Series:
        p = path.sort_values("alpha")
        err = 100 * p[INSTABILITY_ERROR].to_numpy(dtype=float)
        return pd.Series({"barrier": barrier(err), "max_error": err.max(),
                          "error": (err.max() + err[0] + err[-1]) / 3})

    out = instability.groupby([*BARRIER_KEYS, "branch", *pair], dropna=False)[["alpha", INSTABILITY_ERROR]].apply(one)
    out = out.reset_index()
    return out.rename(columns={pair[0]: "pair"}) if pair else out.assign(pair=0)


def barriers(instability: pd.DataFrame | None) -> pd.DataFrame:
    """:func:`pair_barriers` averaged over pairs per run, copied network and level."""
    per_pair = pair_barriers(instability)
    return per_pair.groupby([*BARRIER_KEYS, "branch"], dropna=False)[["barrier", "max_error"]].mean().reset_index()
