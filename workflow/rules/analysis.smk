"""Loss-landscape analyses of trained networks (ticketbench.analysis), tidy CSVs.

RUN/analysis/<kind>/ holds one table per job that the report reads (one row per eigenvalue or per
point of a path). The report computes barriers from these paths itself (ticketbench.analysis.barriers),
so the per-path barrier tables of the CLI (--barriers) are not written here.

The rules are named after the analyses and write RUN/analysis/<rule>/ (config keys of the same names);
``successive`` runs ``ticketbench interpolate``, the general two-network path, between IMP levels L
and L+1. The SGD-noise copies that ``instability`` interpolates are trained by train.smk's ``branch``.
"""

# What every analysis job has in common, written once (config "threads", "resources: analysis:",
# "gpu"); config_hash is no flag of the commands: as a parameter it reruns a job whose run changed. A job
# that asks for GPUs starts through the GPU-slot wrapper (common.smk, gpu_slot).
ANALYSIS_RESOURCES = {
    "mem_mb": resource("analysis", "mem_mb"),
    "runtime": resource("analysis", "runtime"),
    "gpu": config["gpu"],
}
ANALYSIS_PARAMS = {
    "config_hash": config_hash,
    "runtime": runtime_flags,
    "slot": gpu_slot,
}


rule hessian:
    """Top Hessian eigenvalues of one trained network's training loss (Saleem et al. 2024)."""
    input:
        analysed_summary,
    output:
        f"{RUN}/analysis/hessian/{{branch}}_level_{{level}}.csv",
    log:
        f"{LOGS}/hessian_{{branch}}_level_{{level}}.log",
    wildcard_constraints:
        branch="imp|random_reinit|random_prune|oneshot|finetune",
    threads: config["threads"]
    resources:
        **ANALYSIS_RESOURCES,
    params:
        **ANALYSIS_PARAMS,
        options=cli_options("hessian"),
        job=analysed_job,
    shell:
        "{params.slot}ticketbench hessian {params.job} {params.options} -o {output} {params.runtime} > {log} 2>&1"


rule instability:
    """Error and loss along the line between SGD-noise copies of level L (Frankle et al. 2020)."""
    input:
        copy_pairs("copy"),
    output:
        paths=f"{RUN}/analysis/instability/level_{{level}}.csv",
    log:
        f"{LOGS}/instability_level_{{level}}.log",
    threads: config["threads"]
    resources:
        **ANALYSIS_RESOURCES,
    params:
        **ANALYSIS_PARAMS,
        options=cli_options("instability"),
        run=run_of,
        branch="copy",
    shell:
        "{params.slot}ticketbench instability {params.run} --level {wildcards.level} --branch {params.branch} {params.options}"
        " -o {output.paths} {params.runtime} > {log} 2>&1"


use rule instability as baseline_instability with:
    input:
        copy_pairs(None),
    output:
        paths=f"{RUN}/analysis/instability/{{branch}}_level_{{level}}.csv",
    log:
        f"{LOGS}/instability_{{branch}}_level_{{level}}.log",
    wildcard_constraints:
        branch="|".join(RANDOM_COPIES),
    params:
        branch="{branch}",


rule successive:
    """Interpolation between the IMP solutions of levels L and L+1 (Saleem et al. 2024; Paul et al. 2023)."""
    input:
        successive_pair,
    output:
        paths=f"{RUN}/analysis/successive/level_{{level}}.csv",
    log:
        f"{LOGS}/successive_level_{{level}}.log",
    threads: config["threads"]
    resources:
        **ANALYSIS_RESOURCES,
    params:
        **ANALYSIS_PARAMS,
        options=cli_options("successive"),
        jobs=lambda wildcards: " ".join(successive_jobs(wildcards)),
    shell:
        "{params.slot}ticketbench interpolate {params.jobs} {params.options}"
        " -o {output.paths} {params.runtime} > {log} 2>&1"
