"""ticketbench: the lottery-ticket experiments of three papers as one Snakemake workflow.

    snakemake --cores 2 --configfile config/quick.yaml      # a laptop: ~30 minutes on 2 CPU cores
    snakemake --workflow-profile profiles/slurm --sdm apptainer --apptainer-args="--nv"  # papers' scale

The default config (config/config.yaml) is the papers' protocols in full; config/quick.yaml and
config/smoke.yaml shrink them. Outputs go to results/<config name>/. See docs/workflow.md.
"""

from snakemake.utils import min_version

min_version("9.0")


# Only when no --configfile is given: Snakemake would otherwise merge the paper-scale experiments
# into the chosen config's.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


CONFIGFILE = configfile_path()
check_experiments_match_file(CONFIGFILE, config.get("experiments"))
plan.validate(config, f"{workflow.basedir}/{plan.SCHEMA}", CONFIGFILE)

RESULTS = str(plan.results_of(config))
RUN = f"{RESULTS}/{layout.RUN_PATTERN}"
LOGS = f"{RESULTS}/{layout.LOG_PATTERN}"
EXPERIMENTS = plan.resolve_all(config, CONFIGFILE)
PACKS, BUILT_BY = resolve_packs(config["pack"])
check_data_root(config["data_root"], CONFIGFILE)


container: container_image(config["container"])


include: "workflow/rules/train.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/report.smk"


# Every job's output is asked for directly, not only through the report: Snakemake does not rerun a job
# whose output exists when its inputs are missing, so with only report.md as the target, a checkout that
# holds the committed report but no runs (a fresh clone) would run nothing.
rule all:
    default_target: True
    input:
        all_targets(),
        [f"{RESULTS}/report.md"] if config["report"] else [],
