"""What the rules need from the package's job plan (ticketbench.plan), and the Snakemake-specific rest.

Everything that can be wrong in a config is found at parse time, before any job starts: the Snakefile
validates the config with ``ticketbench.plan.validate`` (the JSON schema, its defaults filled in) and
resolves every experiment with ``ticketbench.plan.resolve_all`` (run configs, schedules, levels; each
message names the offending key). Paths come from ``ticketbench.layout``. What stays here reads
Snakemake's globals (``config``, ``workflow``, ``RUN``, ``EXPERIMENTS``): the DAG's input functions, the
per-job values and the container image.

Only torch-free modules are imported, so building the DAG stays fast.
"""

import os

import yaml

from ticketbench import layout, plan
from ticketbench.plan import BASELINES, RANDOM_COPIES, WorkflowConfigError

# Every rule's command is one ticketbench command, and bash exec()s it (Snakemake's default prefix plus
# `exec`; `snakemake -p` prints the command without the prefix). A SIGTERM from SLURM (the profile's
# signal before the time limit, the time limit, pre-emption) reaches every process of the job step. A bash
# left between Snakemake and ticketbench would die of it at once: Snakemake would fail the job, delete its
# outputs and exit while ticketbench is still writing its checkpoint, and a cluster that tracks a step's
# processes by cgroup kills what is left of the step then. With exec, Snakemake waits for ticketbench to
# exit (143; tests/test_slurm.py). Keep rules to one command: a second one after an exec would never run.
shell.prefix("set -euo pipefail; exec ")


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


def check_data_root(data_root, where):
    """A data root that was given must exist (the jobs then look only there); checked here so that a
    typo stops the workflow before any job starts, not in every job."""
    if data_root is not None and not os.path.isdir(data_root):
        raise WorkflowConfigError(
            f"{where}: data_root: {data_root} is not a directory; point it at the folder holding the "
            f"datasets, or remove the key to use $TICKETBENCH_DATA / ./data"
        )


# --------------------------------------------------------------------------------------------------
# Paths of one run's jobs (ticketbench.layout)
# --------------------------------------------------------------------------------------------------


def run_dir(experiment, seed):
    return str(layout.run_dir(RESULTS, experiment, seed))


def job_dir(experiment, seed, branch, level, replicate=None):
    return str(layout.job_dir(run_dir(experiment, seed), branch, int(level), replicate))


def summary(experiment, seed, branch, level, replicate=None):
    """summary.json is written last by ticketbench: it marks a training job done."""
    return os.path.join(
        job_dir(experiment, seed, branch, level, replicate), layout.SUMMARY
    )


def job_files(folder):
    """Every file a training job writes, declared so that Snakemake deletes them all before the job
    reruns (ticketbench would otherwise resume from a stale mask.pt). The checkpoint is left out on
    purpose (layout.JOB_FILES): a job interrupted by SLURM or Ctrl-C resumes from it."""
    return {name.split(".")[0]: os.path.join(folder, name) for name in layout.JOB_FILES}


def all_targets():
    return built(t for exp in EXPERIMENTS.values() for t in plan.targets(exp, RESULTS))


# --------------------------------------------------------------------------------------------------
# Packs (config key pack > 1): several training jobs per workflow job (ticketbench.plan.packs)
# --------------------------------------------------------------------------------------------------


def resolve_packs(size):
    """experiment -> pack name -> plan.Pack, and each packed job's summary -> its pack's manifest."""
    if size == 1:
        return {}, {}
    packs = {
        eid: {p.name: p for p in plan.packs(exp, RESULTS, size)}
        for eid, exp in EXPERIMENTS.items()
    }
    built_by = {
        str(j.output): str(layout.pack_manifest(RESULTS, eid, p.name))
        for eid, by_name in packs.items()
        for p in by_name.values()
        for j in p.jobs
    }
    return packs, built_by


def built(paths):
    """What stands for the given outputs in the DAG. Lone, a training job's summary.json is its rule's
    output; packed, the summaries are not declared (their number per pack varies), and the pack's
    manifest, written when all its jobs are done, stands for each of them. Other paths are themselves.
    """
    return list(dict.fromkeys(BUILT_BY.get(str(p), str(p)) for p in paths))


def pack_of(wildcards):
    by_name = PACKS.get(wildcards.experiment, {})
    if wildcards.pack not in by_name:
        raise WorkflowConfigError(
            f"{CONFIGFILE} plans no pack {wildcards.pack!r} of experiment {wildcards.experiment!r} "
            f"at pack: {config['pack']}"
        )
    return by_name[wildcards.pack]


def pack_needs(wildcards):
    p = pack_of(wildcards)
    return [str(layout.pack_manifest(RESULTS, p.experiment, n)) for n in p.needs]


def pack_members(wildcards):
    return " ".join(pack_of(wildcards).members())


def pack_hashes(wildcards):
    """The runs' identities of a pack's jobs: it reruns when (and only when) one of them changes."""
    p = pack_of(wildcards)  # one line naming an unknown pack or experiment
    exp = EXPERIMENTS[p.experiment]
    return sorted({exp.hashes[j.seed] for j in p.jobs})


def pack_resource(name):
    """A pack asks for its jobs' training resources times its size (an upper bound: sequential packs
    take the sum of their jobs' times, batched packs hold every member's activations at once).
    """

    def value(wildcards):
        p = pack_of(wildcards)  # one line naming an unknown pack or experiment
        exp = EXPERIMENTS[p.experiment]
        return exp.resources["train"][name] * len(p.jobs)

    return value


def runs_of(wildcards, output):
    """The experiment's folder of run directories (computed from the output: not a rerun trigger)."""
    return str(layout.runs_dir(RESULTS, wildcards.experiment))


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
    return built([os.path.join(analysed_job(wildcards), layout.SUMMARY)])


def copy_pairs(branch):
    """All SGD-noise copies of a level in ``branch`` (or the ``branch`` wildcard if None): copies 2r
    and 2r+1 are instability pair r."""

    def pairs(wildcards):
        copies = branch or wildcards.branch
        n = experiment_of(wildcards).copies[(copies, int(wildcards.level))]
        return built(
            summary(wildcards.experiment, wildcards.seed, copies, wildcards.level, r)
            for r in range(n)
        )

    return pairs


def successive_jobs(wildcards):
    lower = int(wildcards.level)
    return [
        job_dir(wildcards.experiment, wildcards.seed, "imp", lv)
        for lv in (lower, lower + 1)
    ]


def successive_pair(wildcards):
    return built(os.path.join(d, layout.SUMMARY) for d in successive_jobs(wildcards))


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


def pack_runtime_flags(wildcards, threads):
    """A pack's runtime flags: a training job's, and how the pack trains (config pack_mode)."""
    return f"{training_runtime_flags(wildcards, threads)} --pack-mode {config['pack_mode']}"


def training_runtime_flags(wildcards, threads):
    """A training job's runtime flags: every job's, and when it evaluates the test set (config test_eval)."""
    return f"{runtime_flags(wildcards, threads)} --test-eval {config['test_eval']}"


def runtime_flags(wildcards, threads):
    """Flags that change how a job runs, never what it computes (the CLI's runtime options, from the
    config's keys of the same names). Snakemake does not record params computed from ``threads`` (it
    calls them derived), so changing them reruns nothing. A job of a config that asks for GPUs (gpu > 0)
    runs with --device cuda where the device is auto: without a usable GPU it stops with an error naming
    the cause, rather than training on the CPU for days.
    """
    device = config["device"]
    if device == "auto" and config["gpu"] > 0:
        device = "cuda"
    flags = [
        f"--threads {threads}",
        "--no-progress",
        f"--device {device}",
        f"--precision {config['precision']}",
        f"--memory-format {config['memory_format']}",
    ]
    if config["data_root"]:
        flags.append(f"--data-root {config['data_root']}")
    if not config["verify_data"]:
        flags.append("--no-verify")
    if config["deterministic"]:
        flags.append("--deterministic")
    return " ".join(flags)


def gpu_slot(wildcards, resources):
    """What a job's command starts with: ``ticketbench gpu-slot --gpus N --`` where the job asks for GPUs (its
    ``gpu`` resource), nothing otherwise. Snakemake's ``--resources gpu=G`` limits how many GPU jobs run at once
    on one machine, not which GPU each one uses; the wrapper gives each running job GPUs of its own (one
    lock file per GPU, CUDA_VISIBLE_DEVICES; ticketbench.gpu_slots) and leaves a job alone where a scheduler
    already chose them (SLURM). Computed from resources, so Snakemake does not record it: it reruns nothing.
    """
    gpus = getattr(resources, "gpu", 0)
    return f"ticketbench gpu-slot --gpus {gpus} -- " if gpus else ""


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
