"""The report: tidy tables, figures and report.md/html from the stored runs (ticketbench.report).

Its outputs are flagged with report() (captions in workflow/report/), so that `snakemake --report
report.html` shows them beside the workflow statistics: the figures per family (the file names start with
the family: lth_, stabilized_, saleem_), the tables, and the reviewer's report itself.
"""

import csv
from pathlib import Path


report: "../report/workflow.rst"


# As in dvc.yaml: jobs.csv, one table per analysis of ticketbench.report.tables.ANALYSES (every one
# exists; an analysis that no run has is a table without rows), and the figure index.
TABLES = ["jobs", "hessian", "instability", "successive", "figures"]


rule report:
    """Tables, figures, metrics.json and report.md/html, checking every claim of config/claims.yaml."""
    input:
        all_targets(),
        claims="config/claims.yaml",
    output:
        md=report(
            f"{RESULTS}/report.md",
            caption="../report/document.rst",
            category="report",
            labels={"file": "report.md"},
        ),
        html=report(
            f"{RESULTS}/report.html",
            caption="../report/document.rst",
            category="report",
            labels={"file": "report.html"},
        ),
        metrics=report(
            f"{RESULTS}/metrics.json",
            caption="../report/document.rst",
            category="report",
            labels={"file": "metrics.json"},
        ),
        # The set of figures depends on the data (a figure whose analysis was not run is skipped and
        # listed in tables/figures.csv), hence a folder; the report links the PNGs, each has its SVG.
        figures=report(
            directory(f"{RESULTS}/figures"),
            patterns=["{family,[a-z]+}_{figure}.png"],
            caption="../report/figure.rst",
            category="{family}",
            subcategory="figures",
            # Each figure's own caption, as report.md prints it: from the index this job writes.
            labels=lambda w: {
                "figure": f"{w.family}_{w.figure}",
                "caption": {
                    r["figure"]: r["caption"]
                    for r in csv.DictReader(
                        Path(f"{RESULTS}/tables/figures.csv").read_text().splitlines()
                    )
                }.get(f"{w.family}_{w.figure}.png", ""),
            },
        ),
        tables=report(
            multiext(f"{RESULTS}/tables/", *[f"{t}.csv" for t in TABLES]),
            caption="../report/tables.rst",
            category="tables",
        ),
    log:
        f"{RESULTS}/logs/report.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        results=lambda wildcards, output: os.path.dirname(output.md),
        configfile=configfile_of,
    shell:
        "ticketbench report {params.results} --config {params.configfile} --claims {input.claims}"
        " > {log} 2>&1"
