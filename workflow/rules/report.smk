"""The report: tidy tables, figures and report.md/html from the stored runs (ticketbench.report)."""


rule report:
    """Tables, figures, metrics.json and report.md/html, checking every claim of config/claims.yaml."""
    input:
        all_targets(),
        claims="config/claims.yaml",
    output:
        md=f"{RESULTS}/report.md",
        html=f"{RESULTS}/report.html",
        metrics=f"{RESULTS}/metrics.json",
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
