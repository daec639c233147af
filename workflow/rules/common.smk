"""The job plan: which training runs and analyses each experiment needs, checked at parse time.

Everything that can be wrong in a config is found here, before any job starts: the JSON schema checks
the workflow keys (the Snakefile calls it), ``ticketbench.config.experiment_run`` checks every
experiment/seed's run config (unknown key, wrong type, rate outside (0, 1), ...), its schedule is
resolved against the training-set size (rewind step past the end of training, ...), and every level
named by a baseline or analysis must exist. Each message names the offending key.

Only ``ticketbench.config`` is imported (it does not import torch), so building the DAG stays fast.
"""

import os
from dataclasses import dataclass

import yaml

from ticketbench.config import (
    BRANCHES,
    COPIES,
    OFFICIAL_SIZES,
    ConfigError,
    RunConfig,
    experiment_run,
)

# The branch names are ticketbench.config's: the baselines, and the SGD-noise copies of a random
# baseline (LMC Sec. 4: random pruning and random reinitialization are neither stable nor matching),
# which share the baseline's replicate 0 (its fresh init or random mask) and draw data order and
# augmentation of their own. "copy" is the IMP subnetwork's copies.
BASELINES = tuple(b for b in BRANCHES if b not in COPIES)
RANDOM_COPIES = {b: copied for b, copied in COPIES.items() if copied != "imp"}
# Resources per job when neither the config nor the experiment says otherwise (MB, minutes).
DEFAULT_RESOURCES = {
    "train": {"mem_mb": 8000, "runtime": 240},
    "analysis": {"mem_mb": 8000, "runtime": 120},
}


class WorkflowConfigError(ValueError):
    """A workflow config is invalid; raised at parse time, before any job starts."""


def short_path(path):
    """Relative to the working directory if inside it (what the jobs see on every node), else absolute."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def configfile_path():
    """The one config file the CLI jobs read (``--experiment`` selects the experiment in it).

    The jobs read the file, not Snakemake's in-memory config, so experiments changed with ``--config``
    would silently differ from what trains: refuse that, and refuse several config files.
    """
    files = [short_path(f) for f in workflow.overwrite_configfiles]
    files = files or ["config/config.yaml"]
    if len(files) > 1:
        raise WorkflowConfigError(
            f"--configfile: give exactly one workflow config, got {', '.join(files)}"
        )
    return files[0]


def check_experiments_match_file(path, experiments):
    with open(path) as f:
        in_file = (yaml.safe_load(f) or {}).get("experiments")
    if in_file != experiments:
        raise WorkflowConfigError(
            f"experiments: differ from {path} (changed with --config?); the jobs read {path}, "
            f"so edit the experiments there"
        )


def check_schema(config, schema_path, where):
    """One line naming the first offending key; snakemake.utils.validate (called next, to fill in the
    schema's defaults) would print the whole config instead."""
    import jsonschema

    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(config)
    )
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "config"
        raise WorkflowConfigError(f"{where}: {key}: {error.message}")


def train_size(cfg: RunConfig) -> int:
    """Number of training examples, computed as ticketbench.data.load splits the data."""
    d = cfg.data
    total = d.synthetic_train if d.name == "synthetic" else OFFICIAL_SIZES[d.name][0]
    n = total - d.validation_size
    if n < 1:
        raise ConfigError(
            f"data.validation_size: {d.validation_size} leaves no training examples of {total}"
        )
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
            raise WorkflowConfigError(
                f"{key}: level {lv} is outside {lowest}..{highest} ({why})"
            )
    return tuple(levels)


def copied_levels(copied, levels, baselines, key):
    """The instability levels at which a random baseline is copied: the pruned ones (level 0, the
    dense network, has no random baseline). The copies share the baseline's replicate 0, so the
    experiment must run that baseline there."""
    pruned = tuple(lv for lv in levels if lv >= 1)
    if not pruned:
        raise WorkflowConfigError(
            f"{key}: {copied} needs an instability level >= 1 (level 0 is the dense network)"
        )
    have = baselines.get(copied, (0, ()))[1]
    missing = sorted(set(pruned) - set(have))
    if missing:
        raise WorkflowConfigError(
            f"{key}: {copied} is not run at level {missing[0]} (add it under baselines)"
        )
    return pruned


def resolve_experiment(eid, spec, where):
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
        levels = resolve_levels(
            b["levels"], 1, top, f"{key}.baselines.{kind}.levels", f"imp.levels = {top}"
        )
        baselines[kind] = (b["replicates"], levels)

    finetune = tuple(range(1, spec.get("finetune", {}).get("levels", 0) + 1))

    copies = {}
    if "instability" in spec:
        s = spec["instability"]
        levels = resolve_levels(
            s["levels"], 0, top, f"{key}.instability.levels", f"imp.levels = {top}"
        )
        copies = {("copy", lv): 2 * s["pairs"] for lv in levels}
        for branch, copied in RANDOM_COPIES.items():
            if copied in s["baselines"]:
                for lv in copied_levels(
                    copied, levels, baselines, f"{key}.instability.baselines"
                ):
                    copies[(branch, lv)] = 2 * s["pairs"]
    instability = tuple(copies)

    hessian = ()
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
                levels = resolve_levels(
                    s["levels"], 0, top, f"{hkey}.levels", f"imp.levels = {top}"
                )
                missing = sorted(set(levels) - set(have))
                if missing:
                    raise WorkflowConfigError(
                        f"{hkey}.levels: {branch} has no level {missing[0]} "
                        f"(it runs at levels {', '.join(map(str, have))})"
                    )
            hessian += tuple((branch, lv) for lv in levels)

    successive = ()
    if "successive" in spec:
        if top < 1:
            raise WorkflowConfigError(
                f"{key}.successive: needs at least one IMP level (imp.levels = 0)"
            )
        successive = resolve_levels(
            spec["successive"]["levels"],
            0,
            top - 1,
            f"{key}.successive.levels",
            f"pairs L, L+1 of imp.levels = {top}",
        )

    options = {
        name: {
            k: v
            for k, v in spec.get(name, {}).items()
            if k not in ("levels", "branches", "baselines")
        }
        for name in ("instability", "hessian", "successive")
    }
    resources = {
        kind: {
            **DEFAULT_RESOURCES[kind],
            **config["resources"].get(kind, {}),
            **spec.get("resources", {}).get(kind, {}),
        }
        for kind in DEFAULT_RESOURCES
    }
    return Experiment(
        eid,
        spec["family"],
        runs,
        {seed: cfg.hash() for seed, cfg in runs.items()},
        top,
        baselines,
        finetune,
        copies,
        instability,
        hessian,
        successive,
        options,
        resources,
    )


def check_data_root(data_root, where):
    """A data root that was given must exist (the jobs then look only there); checked here so that a
    typo stops the workflow before any job starts, not in every job."""
    if data_root is not None and not os.path.isdir(data_root):
        raise WorkflowConfigError(
            f"{where}: data_root: {data_root} is not a directory; point it at the folder holding the "
            f"datasets, or remove the key to use $TICKETBENCH_DATA / ./data"
        )


def resolve_all(experiments, where):
    try:
        return {
            eid: resolve_experiment(eid, spec, where)
            for eid, spec in experiments.items()
        }
    except ConfigError as e:
        raise WorkflowConfigError(str(e)) from None


# --------------------------------------------------------------------------------------------------
# Paths of one run's jobs (the layout of ticketbench.imp)
# --------------------------------------------------------------------------------------------------


def run_dir(experiment, seed):
    return RUN.format(experiment=experiment, seed=seed)


def job_dir(experiment, seed, branch, level, replicate=None):
    d = f"{run_dir(experiment, seed)}/{branch}/level_{int(level):02d}"
    return d if replicate is None else f"{d}/rep_{replicate}"


def summary(experiment, seed, branch, level, replicate=None):
    """summary.json is written last by ticketbench: it marks a training job done."""
    return os.path.join(
        job_dir(experiment, seed, branch, level, replicate), "summary.json"
    )


def job_files(folder):
    """Every file a training job writes, declared so that Snakemake deletes them all before the job
    reruns (ticketbench would otherwise resume from a stale mask.pt). checkpoint.pt is left out on
    purpose: a job interrupted by SLURM or Ctrl-C resumes from it."""
    names = ("summary.json", "final.pt", "mask.pt", "metrics.csv")
    return {name.split(".")[0]: os.path.join(folder, name) for name in names}


def analysis_csv(experiment, seed, kind, name):
    return f"{run_dir(experiment, seed)}/analysis/{kind}/{name}.csv"


def instability_name(branch, level):
    """The instability table of a level's copies: level_LL for the IMP subnetwork's (named before
    random baselines were copied), <copy branch>_level_LL for a random baseline's."""
    name = f"level_{level:02d}"
    return name if branch == "copy" else f"{branch}_{name}"


def targets(exp):
    """Every output of one experiment, for all its seeds: training summaries and analysis CSVs."""
    out = []
    for seed in exp.runs:
        out += [summary(exp.id, seed, "imp", lv) for lv in range(exp.levels + 1)]
        for kind, (replicates, levels) in exp.baselines.items():
            out += [
                summary(exp.id, seed, kind, lv, r)
                for lv in levels
                for r in range(replicates)
            ]
        out += [summary(exp.id, seed, "finetune", lv) for lv in exp.finetune]
        out += [
            summary(exp.id, seed, branch, lv, r)
            for (branch, lv), n in exp.copies.items()
            for r in range(n)
        ]
        out += [
            analysis_csv(exp.id, seed, "instability", instability_name(branch, lv))
            for branch, lv in exp.instability
        ]
        out += [
            analysis_csv(exp.id, seed, "hessian", f"{b}_level_{lv:02d}")
            for b, lv in exp.hessian
        ]
        out += [
            analysis_csv(exp.id, seed, "successive", f"level_{lv:02d}")
            for lv in exp.successive
        ]
    return out


def all_targets():
    return [t for exp in EXPERIMENTS.values() for t in targets(exp)]


# --------------------------------------------------------------------------------------------------
# Input functions: the DAG. IMP levels form a chain; everything else branches off a level.
# --------------------------------------------------------------------------------------------------


def previous_level(wildcards):
    return summary(
        wildcards.experiment, wildcards.seed, "imp", int(wildcards.level) - 1
    )


def ablated_level(wildcards):
    """A branch needs its IMP level's mask (oneshot and copy included: ticketbench reads it); a copy
    of a random baseline also needs that baseline's replicate 0, whose init or mask it shares.
    """
    level = summary(wildcards.experiment, wildcards.seed, "imp", wildcards.level)
    copied = RANDOM_COPIES.get(wildcards.kind)
    if copied is None:
        return [level]
    return [
        level,
        summary(wildcards.experiment, wildcards.seed, copied, wildcards.level, 0),
    ]


def previous_finetune(wildcards):
    """Fine-tuning level 1 starts from the dense network, level L from fine-tuning level L-1."""
    level = int(wildcards.level)
    branch = "imp" if level == 1 else "finetune"
    return summary(wildcards.experiment, wildcards.seed, branch, level - 1)


def analysed_job(wildcards):
    """The job a Hessian is computed for (replicate 0 of a replicated baseline)."""
    replicate = 0 if wildcards.branch in BASELINES else None
    return job_dir(
        wildcards.experiment,
        wildcards.seed,
        wildcards.branch,
        wildcards.level,
        replicate,
    )


def analysed_summary(wildcards):
    return os.path.join(analysed_job(wildcards), "summary.json")


def copy_pairs(branch):
    """All SGD-noise copies of a level in ``branch`` (or the ``branch`` wildcard if None): copies 2r
    and 2r+1 are instability pair r."""

    def pairs(wildcards):
        copies = branch or wildcards.branch
        n = experiment_of(wildcards).copies[(copies, int(wildcards.level))]
        return [
            summary(wildcards.experiment, wildcards.seed, copies, wildcards.level, r)
            for r in range(n)
        ]

    return pairs


def successive_pair(wildcards):
    lower = int(wildcards.level)
    return [
        summary(wildcards.experiment, wildcards.seed, "imp", lv)
        for lv in (lower, lower + 1)
    ]


def job_dirs_of(wildcards, input):
    return " ".join(os.path.dirname(f) for f in input)


# --------------------------------------------------------------------------------------------------
# Per-job values
# --------------------------------------------------------------------------------------------------


def experiment_of(wildcards):
    """The experiment a job's wildcards name. A target of an experiment or seed the config does not
    have (a typo on the command line) is one message naming the known ones, not a KeyError.
    """
    eid, seed = wildcards.experiment, int(wildcards.seed)
    if eid not in EXPERIMENTS:
        raise WorkflowConfigError(
            f"{CONFIGFILE} has no experiment {eid!r} (known: {', '.join(sorted(EXPERIMENTS))})"
        )
    exp = EXPERIMENTS[eid]
    if seed not in exp.runs:
        raise WorkflowConfigError(
            f"experiment {eid} of {CONFIGFILE} has no seed {seed} (seeds: {', '.join(map(str, exp.runs))})"
        )
    return exp


def config_hash(wildcards):
    """The run's identity: a job reruns when (and only when) its experiment's computation changes."""
    return experiment_of(wildcards).hashes[int(wildcards.seed)]


def resource(kind, name):
    return lambda wildcards: experiment_of(wildcards).resources[kind][name]


def cli_options(analysis):
    """An analysis's options from the config as CLI flags (top_k: 10 -> --top-k 10)."""

    def flag(key, value):
        values = value if isinstance(value, list) else [value]
        return f"--{key.replace('_', '-')} " + " ".join(str(v) for v in values)

    def flags(wildcards):
        opts = experiment_of(wildcards).options[analysis]
        return " ".join(flag(k, v) for k, v in sorted(opts.items()))

    return flags


def runtime_flags(wildcards, threads):
    """Flags that change how a job runs, never what it computes (the CLI's runtime options, from the
    config's keys of the same names). Snakemake does not record params computed from ``threads`` (it
    calls them derived), so changing them reruns nothing.
    """
    flags = [
        f"--threads {threads}",
        "--no-progress",
        f"--device {config['device']}",
        f"--memory-format {config['memory_format']}",
    ]
    if config["data_root"]:
        flags.append(f"--data-root {config['data_root']}")
    if not config["verify_data"]:
        flags.append("--no-verify")
    if config["deterministic"]:
        flags.append("--deterministic")
    return " ".join(flags)


def configfile_of(wildcards, output):
    """The config file the CLI reads. Computed from the output, so Snakemake treats it as derived and
    does not record it: the run's identity is config_hash, and a renamed or copied config file reruns
    nothing by itself."""
    return CONFIGFILE


def run_of(wildcards, output):
    """The run directory of a job (computed from its output, so not a rerun trigger of its own)."""
    return run_dir(wildcards.experiment, wildcards.seed)


# --------------------------------------------------------------------------------------------------
# The container image of the jobs (--sdm apptainer, alias --use-singularity): containers/README.md
# --------------------------------------------------------------------------------------------------

# What .github/workflows/image.yml publishes for the tag v0.1.0; it exists only once that tag was pushed.
PUBLISHED_IMAGE = "docker://ghcr.io/ticketbench/ticketbench:0.1.0"


def container_image(image):
    """The image every job runs in: the config's ``container``, by default containers/ticketbench.sif
    (what ``make image`` builds). Checked only when jobs run in containers: there a missing image
    file would fail every job one by one; a run without --sdm never reads it."""
    from snakemake.logging import logger
    from snakemake_interface_executor_plugins.settings import DeploymentMethod

    methods = getattr(workflow.deployment_settings, "deployment_method", ())
    if DeploymentMethod.APPTAINER not in methods:
        return image
    path = image.removeprefix("file://")
    if "://" not in path and not os.path.exists(path):
        raise WorkflowConfigError(
            f"container: {image} does not exist; build it with `make image` (containers/README.md) "
            f"or set container: to a published image ({PUBLISHED_IMAGE})"
        )
    logger.info(f"Jobs run in the container {image}")
    return image
