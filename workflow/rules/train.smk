"""Training jobs: one job per trained network (ticketbench dense | imp | branch | finetune), or, with
the config key pack > 1, one job per pack of them (ticketbench pack; rule pack at the end).

Each job's summary.json is written last by ticketbench and marks it done; rewind.pt (the state at the
rewind step k, shared by every level and branch of a run) is written by level 0. The chains (IMP levels,
fine-tuning levels) are the critical path, so their jobs go first when jobs wait for a core.
"""

# What every training job has in common, written once: its cores, memory, time and GPUs (config
# "threads", "resources: train:", "gpu"), and the parameters of its command line. config_hash is not
# read by the shell commands: as a parameter it reruns a job whose config changed. A job that asks for
# GPUs starts through the GPU-slot wrapper (common.smk, gpu_slot): one GPU of its own per running job.
TRAINING_RESOURCES = {
    "mem_mb": resource("train", "mem_mb"),
    "runtime": resource("train", "runtime"),
    "gpu": config["gpu"],
}
TRAINING_PARAMS = {
    "config_hash": config_hash,
    "configfile": configfile_of,
    "run": run_of,
    "runtime": training_runtime_flags,
    "slot": gpu_slot,
}


wildcard_constraints:
    experiment=r"[A-Za-z0-9_.-]+",
    seed=r"\d+",
    level=r"\d\d+",
    replicate=r"\d+",


rule dense:
    """Level 0: the dense network, trained from initialization; captures the state at the rewind step.

    rewind.pt is deliberately not a declared output: Snakemake deletes the outputs of an interrupted
    job before rerunning it, and a level-0 job resumed from a checkpoint past step k cannot recapture
    the state at k. Every consumer depends on level 0's summary.json, written after rewind.pt.
    """
    output:
        **job_files(f"{RUN}/imp/level_00"),
        config=f"{RUN}/config.yaml",
    log:
        f"{LOGS}/imp_level_00.log",
    priority: 1
    threads: config["threads"]
    resources:
        **TRAINING_RESOURCES,
    params:
        **TRAINING_PARAMS,
    shell:
        "{params.slot}ticketbench dense {params.configfile} --experiment {wildcards.experiment} --seed {wildcards.seed}"
        " --run-dir {params.run} {params.runtime} > {log} 2>&1"


rule imp_level:
    """IMP level L >= 1: prune level L-1 by magnitude, rewind the survivors to step k, train k..T."""
    input:
        previous_level,
    output:
        **job_files(f"{RUN}/imp/level_{{level}}"),
    log:
        f"{LOGS}/imp_level_{{level}}.log",
    wildcard_constraints:
        level=r"0[1-9]|[1-9]\d+",
    priority: 1
    threads: config["threads"]
    resources:
        **TRAINING_RESOURCES,
    params:
        **TRAINING_PARAMS,
    shell:
        "{params.slot}ticketbench imp {params.configfile} --experiment {wildcards.experiment} --seed {wildcards.seed}"
        " --level {wildcards.level} --run-dir {params.run} {params.runtime} > {log} 2>&1"


rule branch:
    """A baseline or SGD-noise copy at IMP level L: random_reinit, random_prune, oneshot, copy (of
    the IMP subnetwork), copy_random_reinit, copy_random_prune (of that baseline's replicate 0).
    """
    input:
        ablated_level,
    output:
        **job_files(f"{RUN}/{{kind}}/level_{{level}}/rep_{{replicate}}"),
    log:
        f"{LOGS}/{{kind}}_level_{{level}}_rep_{{replicate}}.log",
    wildcard_constraints:
        kind="|".join((*BASELINES, "copy", *RANDOM_COPIES)),
    threads: config["threads"]
    resources:
        **TRAINING_RESOURCES,
    params:
        **TRAINING_PARAMS,
    shell:
        "{params.slot}ticketbench branch {params.configfile} --experiment {wildcards.experiment} --seed {wildcards.seed}"
        " --kind {wildcards.kind} --level {wildcards.level} --replicate {wildcards.replicate}"
        " --run-dir {params.run} {params.runtime} > {log} 2>&1"


rule finetune:
    """Fine-tuning level L: prune the previous fine-tuned network, keep training its weights."""
    input:
        previous_finetune,
    output:
        **job_files(f"{RUN}/finetune/level_{{level}}"),
    log:
        f"{LOGS}/finetune_level_{{level}}.log",
    priority: 1
    threads: config["threads"]
    resources:
        **TRAINING_RESOURCES,
    params:
        **TRAINING_PARAMS,
    shell:
        "{params.slot}ticketbench finetune {params.configfile} --experiment {wildcards.experiment} --seed {wildcards.seed}"
        " --level {wildcards.level} --run-dir {params.run} {params.runtime} > {log} 2>&1"


rule pack:
    """Up to `pack` training jobs of one experiment, level and stage in one process (ticketbench.plan.packs):
    the IMP level of every seed, the baselines and copies of a level, ... Its output is a manifest that
    stands for its jobs' summaries in the DAG (common.smk, built). The jobs' files are not declared: a
    rerun keeps the finished jobs of an interrupted pack and resumes the others from their checkpoints.
    """
    input:
        pack_needs,
    output:
        f"{RESULTS}/{layout.RUNS}/{{experiment}}/packs/{{pack}}.json",
    log:
        f"{RESULTS}/logs/{{experiment}}/packs/{{pack}}.log",
    wildcard_constraints:
        pack=r"[a-z_]+_level_\d\d+_\d\d",
    threads: config["threads"]
    resources:
        mem_mb=pack_resource("mem_mb"),
        runtime=pack_resource("runtime"),
        gpu=config["gpu"],
    params:
        config_hash=pack_hashes,
        configfile=configfile_of,
        jobs=pack_members,
        runs=runs_of,
        runtime=pack_runtime_flags,
        slot=gpu_slot,
    shell:
        "{params.slot}ticketbench pack {params.configfile} --experiment {wildcards.experiment} {params.jobs}"
        " --runs-dir {params.runs} --manifest {output} {params.runtime} > {log} 2>&1"
