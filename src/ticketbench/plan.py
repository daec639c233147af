"""The job plan: which training runs and analyses each experiment of a workflow config needs.

Everything that can be wrong in a workflow config is found here, before any job starts: the JSON schema
checks the workflow keys (:func:`validate`, which also fills in the schema's defaults), ``config.
experiment_run`` checks every experiment/seed's run config (unknown key, wrong type, rate outside
(0, 1), ...), its schedule is resolved against the training-set size (rewind step past the end of
training, ...), and every level named by a baseline or analysis must exist. Each message names the
offending key.

The Snakefile resolves its config with this module and its rules only ask it for paths; ``ticketbench
plan`` and ``ticketbench status`` list the same jobs. Torch-free (only ``config`` and ``layout``), so
building the DAG stays fast.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import layout
from .config import BRANCHES, COPIES, OFFICIAL_SIZES, ConfigError, RunConfig, experiment_run

BASELINES = tuple(b for b in BRANCHES if b not in COPIES)
RANDOM_COPIES = {b: copied for b, copied in COPIES.items() if copied != "imp"}
"""The SGD-noise copies of a random baseline (LMC Sec. 4: random pruning and random reinitialization are
neither stable nor matching); they share the baseline's replicate 0 (its fresh init or random mask) and
draw data order and augmentation of their own. ``copy`` is the IMP subnetwork's copies."""
DEFAULT_RESOURCES = {
    "train": {"mem_mb": 8000, "runtime": 240},
    "analysis": {"mem_mb": 8000, "runtime": 120},
}
"""Resources per job when neither the config nor the experiment says otherwise (MB, minutes)."""
SCHEMA = Path("workflow/schemas/config.schema.yaml")
"""The workflow config's JSON schema in the repository (relative to its root, where the workflow runs)."""


class WorkflowConfigError(ConfigError):
    """A workflow config is invalid; raised at parse time, before any job starts."""


# --------------------------------------------------------------------------------------------------
# Reading a workflow config
# --------------------------------------------------------------------------------------------------


def read_config(path: str | Path) -> dict[str, Any]:
    """A workflow config as written (no defaults filled in): what the report compares protocols on."""
    path = Path(path)
    if not path.is_file():
        raise WorkflowConfigError(f"{path}: no such workflow config")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise WorkflowConfigError(f"{path}: is not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise WorkflowConfigError(f"{path}: expected a mapping of workflow keys, got {type(raw).__name__}")
    return raw


def validate(config: dict[str, Any], schema_path: str | Path, where: str) -> dict[str, Any]:
    """Check ``config`` against the schema, naming the first offending key in one line, then fill in the
    schema's defaults in place (as ``snakemake.utils.validate`` does, each default a fresh copy so that two
    experiments never share one). Returns ``config``."""
    import jsonschema
    from jsonschema import validators

    schema_path = Path(schema_path)
    if not schema_path.is_file():
        raise WorkflowConfigError(f"{schema_path}: the workflow config's schema is not there; run from the repository "
                                  f"root (relative paths are read from the working directory) or give its path (--schema)")
    schema = yaml.safe_load(schema_path.read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "config"
        raise WorkflowConfigError(f"{where}: {key}: {error.message}")

    check_properties = jsonschema.Draft202012Validator.VALIDATORS["properties"]

    def fill(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, subschema)

    validators.extend(jsonschema.Draft202012Validator, {"properties": fill})(schema).validate(config)
    return config


def load_config(path: str | Path, schema_path: str | Path = SCHEMA) -> dict[str, Any]:
    """A workflow config file as the Snakefile sees it: validated against the schema, defaults filled in."""
    return validate(read_config(path), schema_path, str(path))


def results_of(config: dict[str, Any]) -> Path:
    """``results/<name>`` of a workflow config."""
    return layout.results_dir(config["name"])


def run_dir_of(path: str | Path, experiment: str, seed: int) -> Path:
    """The run directory the workflow gives one experiment and seed of the workflow config at ``path``."""
    name = read_config(path).get("name")
    if not isinstance(name, str):
        raise WorkflowConfigError(f"{path}: name: required key is missing (results go to results/<name>/)")
    return layout.run_dir(layout.results_dir(name), experiment, seed)


# --------------------------------------------------------------------------------------------------
# Resolving the experiments
# --------------------------------------------------------------------------------------------------


def train_size(cfg: RunConfig) -> int:
    """Number of training examples, computed as ticketbench.data.load splits the data."""
    d = cfg.data
    total = d.synthetic_train if d.name == "synthetic" else OFFICIAL_SIZES[d.name][0]
    n = total - d.validation_size
    if n < 1:
        raise ConfigError(f"data.validation_size: {d.validation_size} leaves no training examples of {total}")
    return min(n, d.train_subset) if d.train_subset else n


@dataclass(frozen=True)
class Experiment:
    """One experiment of the config, resolved: its run config per seed and the levels of every job."""

    id: str
    family: str
    runs: dict  # seed -> RunConfig
    hashes: dict  # seed -> RunConfig.hash(), the run's identity
    levels: int  # IMP levels after the dense network
    baselines: dict  # kind -> (replicates, levels)
    finetune: tuple  # fine-tuning chain levels 1..n
    copies: dict  # (copy branch, level) -> number of SGD-noise copies (2 per instability pair)
    instability: tuple  # (copy branch, level) pairs analysed
    hessian: tuple  # (branch, level) pairs
    successive: tuple  # lower levels L of the pairs (L, L+1)
    options: dict  # analysis options passed to the CLI
    resources: dict  # kind -> {mem_mb, runtime}


def resolve_levels(value, lowest, highest, key, why):
    """``all`` or a list of levels, each within lowest..highest (``why`` says where the bounds come from)."""
    levels = range(lowest, highest + 1) if value == "all" else sorted(value)
    for lv in levels:
        if not lowest <= lv <= highest:
            raise WorkflowConfigError(f"{key}: level {lv} is outside {lowest}..{highest} ({why})")
    return tuple(levels)


def copied_levels(copied, levels, baselines, key):
    """The instability levels at which a random baseline is copied: the pruned ones (level 0, the
    dense network, has no random baseline). The copies share the baseline's replicate 0, so the
    experiment must run that baseline there."""
    pruned = tuple(lv for lv in levels if lv >= 1)
    if not pruned:
        raise WorkflowConfigError(f"{key}: {copied} needs an instability level >= 1 (level 0 is the dense network)")
    have = baselines.get(copied, (0, ()))[1]
    missing = sorted(set(pruned) - set(have))
    if missing:
        raise WorkflowConfigError(f"{key}: {copied} is not run at level {missing[0]} (add it under baselines)")
    return pruned


def resolve_experiment(eid: str, spec: dict[str, Any], where: str, resources: dict[str, Any]) -> Experiment:
    """One experiment of a validated workflow config (defaults filled in); ``resources`` is the config's
    top-level ``resources``, which the experiment's own override key by key."""
    key = f"{where}: experiments.{eid}"
    runs = {}
    for seed in spec["seeds"]:
        cfg = experiment_run(spec, eid, seed, where)
        try:
            cfg.schedule(train_size(cfg))
        except ConfigError as e:
            raise ConfigError(f"{key}.run.{e}") from None
        runs[seed] = cfg
    top = next(iter(runs.values())).imp.levels

    baselines = {}
    for kind, b in spec["baselines"].items():
        levels = resolve_levels(b["levels"], 1, top, f"{key}.baselines.{kind}.levels", f"imp.levels = {top}")
        baselines[kind] = (b["replicates"], levels)

    finetune = tuple(range(1, spec.get("finetune", {}).get("levels", 0) + 1))

    copies = {}
    if "instability" in spec:
        s = spec["instability"]
        levels = resolve_levels(s["levels"], 0, top, f"{key}.instability.levels", f"imp.levels = {top}")
        copies = {("copy", lv): 2 * s["pairs"] for lv in levels}
        for branch, copied in RANDOM_COPIES.items():
            if copied in s["baselines"]:
                for lv in copied_levels(copied, levels, baselines, f"{key}.instability.baselines"):
                    copies[(branch, lv)] = 2 * s["pairs"]
    instability = tuple(copies)

    hessian: tuple = ()
    if "hessian" in spec:
        s = spec["hessian"]
        for branch in s["branches"]:
            hkey = f"{key}.hessian"
            if branch == "imp":
                have = range(0, top + 1)
            elif branch == "finetune":
                have = finetune
            else:
                have = baselines.get(branch, (0, ()))[1]
            if not have:
                raise WorkflowConfigError(
                    f"{hkey}.branches: {branch} is not run by this experiment (add it under "
                    f"{'finetune' if branch == 'finetune' else 'baselines'})"
                )
            if s["levels"] == "all":
                levels = tuple(have)
            else:
                levels = resolve_levels(s["levels"], 0, top, f"{hkey}.levels", f"imp.levels = {top}")
                missing = sorted(set(levels) - set(have))
                if missing:
                    raise WorkflowConfigError(
                        f"{hkey}.levels: {branch} has no level {missing[0]} "
                        f"(it runs at levels {', '.join(map(str, have))})"
                    )
            hessian += tuple((branch, lv) for lv in levels)

    successive: tuple = ()
    if "successive" in spec:
        if top < 1:
            raise WorkflowConfigError(f"{key}.successive: needs at least one IMP level (imp.levels = 0)")
        successive = resolve_levels(
            spec["successive"]["levels"], 0, top - 1, f"{key}.successive.levels", f"pairs L, L+1 of imp.levels = {top}"
        )

    options = {
        name: {k: v for k, v in spec.get(name, {}).items() if k not in ("levels", "branches", "baselines")}
        for name in ("instability", "hessian", "successive")
    }
    resources = {
        kind: {**DEFAULT_RESOURCES[kind], **resources.get(kind, {}), **spec.get("resources", {}).get(kind, {})}
        for kind in DEFAULT_RESOURCES
    }
    return Experiment(
        eid, spec["family"], runs, {seed: cfg.hash() for seed, cfg in runs.items()}, top, baselines, finetune,
        copies, instability, hessian, successive, options, resources,
    )


def resolve_all(config: dict[str, Any], where: str) -> dict[str, Experiment]:
    """Every experiment of a validated workflow config (:func:`validate`), by id."""
    try:
        return {
            eid: resolve_experiment(eid, spec, where, config.get("resources", {}))
            for eid, spec in config["experiments"].items()
        }
    except ConfigError as e:
        raise WorkflowConfigError(str(e)) from None


# --------------------------------------------------------------------------------------------------
# The jobs of an experiment
# --------------------------------------------------------------------------------------------------

ANALYSES = layout.ANALYSES
KINDS = ("imp", *BASELINES, "finetune", *COPIES, *ANALYSES)
"""The kinds of job of the plan, in the order ``ticketbench plan`` lists them: the IMP chain, each baseline,
the fine-tuning chain, each branch of SGD-noise copies, and each analysis."""


@dataclass(frozen=True)
class Job:
    """One job of the plan: a trained network (``output`` is its summary.json) or an analysis table."""

    experiment: str
    seed: int
    kind: str  # a branch of config.BRANCHES, imp, finetune, or an analysis of layout.ANALYSES
    branch: str  # the trained branch; for an analysis, the branch it reads
    level: int
    replicate: int | None
    output: Path

    @property
    def trains(self) -> bool:
        return self.kind not in ANALYSES

    @property
    def folder(self) -> Path:
        """The job directory of a training job (where its checkpoint and metrics are written)."""
        return self.output.parent


def jobs(exp: Experiment, results: str | Path) -> list[Job]:
    """Every job of one experiment, for all its seeds, in the order of the workflow's targets."""
    out = []
    for seed in exp.runs:
        run = layout.run_dir(results, exp.id, seed)

        def train(branch, level, replicate=None):
            folder = layout.job_dir(run, branch, level, replicate)
            return Job(exp.id, seed, branch, branch, level, replicate, folder / layout.SUMMARY)

        def analysis(kind, branch, level):
            path = layout.analysis_csv(run, kind, layout.analysis_name(kind, branch, level))
            return Job(exp.id, seed, kind, branch, level, None, path)

        out += [train("imp", lv) for lv in range(exp.levels + 1)]
        for kind, (replicates, levels) in exp.baselines.items():
            out += [train(kind, lv, r) for lv in levels for r in range(replicates)]
        out += [train("finetune", lv) for lv in exp.finetune]
        out += [train(branch, lv, r) for (branch, lv), n in exp.copies.items() for r in range(n)]
        out += [analysis("instability", branch, lv) for branch, lv in exp.instability]
        out += [analysis("hessian", b, lv) for b, lv in exp.hessian]
        out += [analysis("successive", "imp", lv) for lv in exp.successive]
    return out


def targets(exp: Experiment, results: str | Path) -> list[str]:
    """Every output of one experiment, for all its seeds: training summaries and analysis CSVs."""
    return [str(j.output) for j in jobs(exp, results)]


def counts(experiments: dict[str, Experiment], results: str | Path) -> dict[str, dict[str, int]]:
    """experiment id -> kind -> number of jobs (kinds without a job left out)."""
    out = {}
    for eid, exp in experiments.items():
        per = {kind: 0 for kind in KINDS}
        for j in jobs(exp, results):
            per[j.kind] += 1
        out[eid] = {k: n for k, n in per.items() if n}
    return out


# --------------------------------------------------------------------------------------------------
# The state of a planned job on disk
# --------------------------------------------------------------------------------------------------

STATES = ("done", "running", "checkpointed", "diverged", "missing")
"""done: its output exists (a job's summary.json is written last); running: its job lock is held by a process
on this machine; checkpointed: interrupted, it resumes from its checkpoint; diverged: a pack stopped it at a
non-finite loss and recorded that (layout.DIVERGED; a rerun does not train it again, so it is not missing);
missing: not started (or interrupted before its first checkpoint)."""


@dataclass(frozen=True)
class Status:
    state: str
    step: int | None = None
    """The last evaluated step (the last row of the job's metrics.csv, rewritten at every evaluation)."""


def status(job: Job) -> Status:
    """Where ``job`` stands, read from its files without torch (the checkpoint itself is not opened)."""
    if job.output.is_file():
        return Status("done")
    if not job.trains:
        return Status("missing")
    step = last_step(job.folder / layout.METRICS)
    if is_locked(job.folder / layout.LOCK):
        return Status("running", step)
    if (job.folder / layout.DIVERGED).is_file():
        return Status("diverged", step)
    if (job.folder / layout.CHECKPOINT).is_file():
        return Status("checkpointed", step)
    return Status("missing", step)


def last_step(metrics: Path) -> int | None:
    """The step of the last row of a metrics.csv, or None if there is none (yet)."""
    try:
        lines = metrics.read_text().splitlines()
    except OSError:
        return None
    if len(lines) < 2:
        return None
    header, last = lines[0].split(","), lines[-1].split(",")
    try:
        return int(float(last[header.index("step")]))
    except (ValueError, IndexError):
        return None


def is_locked(path: Path) -> bool:
    """Whether a process of this machine holds the job lock at ``path`` (``checkpoints.JobLock``, an flock the
    kernel drops when its process dies). Read from /proc/locks rather than by trying the lock, which would
    make a job starting at that instant fail; False where /proc/locks cannot be read."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            table = f.read()
    except OSError:
        return False
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return any(f[1] == "FLOCK" and f[5] == inode for f in (line.split() for line in table.splitlines()) if len(f) > 5)


# --------------------------------------------------------------------------------------------------
# Packs: the training jobs that the plan has side by side, trained by one process each
# --------------------------------------------------------------------------------------------------

STAGES = ("imp", "branches", "random_copies", "finetune")
"""The training jobs of one level that can run side by side, each stage needing only earlier ones: the IMP
level of every seed; the baselines and SGD-noise copies of the IMP subnetwork that branch off it; the copies
of a random baseline (they start from that baseline's replicate 0); the fine-tuning level."""


def needs(branch: str, level: int) -> list[tuple[str, int, int | None]]:
    """The jobs of the same run that a training job starts from, as (branch, level, replicate): the previous
    IMP level; the IMP level a branch ablates (every branch reads its mask) and, for a copy of a random
    baseline, that baseline's replicate 0; the previous fine-tuning level (level 1: the dense network)."""
    if branch == "imp":
        return [] if level == 0 else [("imp", level - 1, None)]
    if branch == "finetune":
        return [("imp", 0, None) if level == 1 else ("finetune", level - 1, None)]
    copied = RANDOM_COPIES.get(branch)
    return [("imp", level, None)] + ([(copied, level, 0)] if copied else [])


def stage_of(branch: str) -> str:
    if branch in ("imp", "finetune"):
        return branch
    return "random_copies" if branch in RANDOM_COPIES else "branches"


@dataclass(frozen=True)
class Pack:
    """Up to ``size`` training jobs of one experiment and stage at one level, trained by ``ticketbench pack``
    in one process; ``needs`` are the packs that train what its jobs start from."""

    experiment: str
    name: str
    jobs: tuple[Job, ...]
    needs: tuple[str, ...]

    def members(self) -> list[str]:
        return [layout.pack_member(j.seed, j.branch, j.level, j.replicate) for j in self.jobs]


def packs(exp: Experiment, results: str | Path, size: int) -> list[Pack]:
    """The experiment's training jobs in packs of at most ``size``: per level and stage, jobs of one branch
    and replicate across seeds first (those share a schedule, so a batched pack steps them together).
    Named ``<stage>_level_LL_<i>``."""
    order = {b: i for i, b in enumerate(("imp", "finetune", *BRANCHES))}
    groups: dict[tuple[int, int], list[Job]] = {}
    for j in jobs(exp, results):
        if j.trains:
            groups.setdefault((j.level, STAGES.index(stage_of(j.branch))), []).append(j)
    built: list[tuple[str, tuple[Job, ...]]] = []
    home: dict[tuple, str] = {}
    for (level, stage), members in sorted(groups.items()):
        members.sort(key=lambda j: (order[j.branch], j.replicate or 0, j.seed))
        for i in range(0, len(members), size):
            name = f"{STAGES[stage]}_{layout.level_name(level)}_{i // size:02d}"
            chunk = tuple(members[i:i + size])
            built.append((name, chunk))
            home.update({(j.seed, j.branch, j.level, j.replicate): name for j in chunk})
    out = []
    for name, chunk in built:
        wanted = {home[(j.seed, *need)] for j in chunk for need in needs(j.branch, j.level)}
        out.append(Pack(exp.id, name, chunk, tuple(sorted(wanted))))
    return out
