"""The ``report``, ``audit`` and ``compare`` subcommands (wired into ``ticketbench`` by ``cli.build_parser``).

Heavy imports (pandas, matplotlib, torch) happen inside the handlers so that ``ticketbench --help``
stays instant."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("ticketbench")


def register(subparsers: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int | None]]:
    from .. import runtime

    p = subparsers.add_parser("report", help="tables, figures, report.md/html and metrics.json of a results directory",
                              description="Write results/N/{tables,figures}/, report.md, report.html and metrics.json "
                                          "from the stored runs of results/N, checking every claim of config/claims.yaml.")
    p.add_argument("results", type=Path, help="results directory of one workflow config, e.g. results/quick")
    p.add_argument("--config", type=Path, help="the workflow config (config/N.yaml): experiment families and scale name")
    p.add_argument("--claims", type=Path, default=Path("config/claims.yaml"), help="claims file (default: config/claims.yaml)")
    p.add_argument("--part", choices=["all", "tables", "figures", "document"], default="all",
                   help="tables: tables/ from the runs; figures: figures/ from the tables; document: report.md/html "
                        "and metrics.json from the tables, the figures and --config (no runs needed)")

    p = subparsers.add_parser("audit", help="re-evaluate every stored network and check recorded numbers, masks, rewinds",
                              description="Exit status 1 if any check fails. Accuracy and loss must match exactly on "
                                          "the CPU (--atol 0); runs trained on a GPU need a small --atol.")
    p.add_argument("results", type=Path, help="results directory (results/N) or one run directory")
    p.add_argument("--atol", type=float, default=0.0, help="absolute tolerance on test accuracy (fraction) and loss (default: 0)")
    p.add_argument("-o", "--output", type=Path, help="also write every finding as a tidy CSV")
    runtime.add_arguments(p)

    p = subparsers.add_parser("compare", help="whether two reproductions (directories or git revisions) agree within noise",
                              description="Compare the mean test accuracy of every experiment, branch and level, and "
                                          "every claim verdict, of two results of one workflow config. Noise rule: "
                                          "per network, sigma = max(sample std over the row's seeds/replicates when "
                                          "n >= 2, binomial error sqrt(p(1-p)/N) at the row's test-set size N); a row "
                                          "agrees when |mean A - mean B| <= z * sqrt(sA^2/nA + sB^2/nB), z the two-sided "
                                          "normal quantile at alpha / (number of rows compared) (Bonferroni). Within the "
                                          "noise means not shown to differ (each row's bound is printed); --margin PP "
                                          "asks for equivalence: the whole interval A-B +- bound within +-PP. Rows or "
                                          "claims on one side only are listed and fail only with --strict. Exit status: "
                                          "0 all agree (with --margin: every row equivalent), 1 a row beyond the noise "
                                          "(with --margin: not shown equivalent) or a claim verdict differs, 2 bad input.")
    for side in ("a", "b"):
        p.add_argument(side, metavar=side.upper(), help="results directory (results/N, with tables/ or runs/), or the "
                                                        "tables of a git revision: REV:results/N (path from the repository root)")
    p.add_argument("--config", type=Path, help="the workflow config (default: config/N.yaml for results/N, "
                                               "as of the revision for REV:results/N)")
    p.add_argument("--claims", type=Path, default=Path("config/claims.yaml"), help="claims file (default: config/claims.yaml)")
    p.add_argument("--alpha", type=_probability, default=0.05,
                   help="family-wise false-alarm rate over all rows, Bonferroni-corrected (default: 0.05)")
    p.add_argument("--margin", type=_percentage_points, metavar="PP",
                   help="equivalence margin in percentage points: a row is equivalent when the whole interval A-B +- "
                        "its bound lies within +-PP (two one-sided tests at the same corrected alpha), else not shown "
                        "equivalent; the exit status is 0 only if every row is equivalent (default: no margin, "
                        "only differences are tested)")
    p.add_argument("--strict", action="store_true", help="rows or claims present or evaluable on one side only also disagree")
    p.add_argument("-o", "--output", type=Path, help="also write every compared quantity as a tidy CSV")
    return {"report": cmd_report, "audit": cmd_audit, "compare": cmd_compare}


def _probability(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not 0 < x < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number between 0 and 1 (exclusive)")
    return x


def _percentage_points(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not (x > 0 and math.isfinite(x)):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number of percentage points, e.g. 1 for +-1 pp")
    return x


def cmd_report(args: argparse.Namespace) -> int:
    from . import claims, document, tables

    if args.part in ("all", "document") and not args.claims.is_file():
        print(f"ticketbench: error: {args.claims}: no such claims file; pass --claims", file=sys.stderr)
        return 2
    try:
        found = document.build(args.results, args.config, args.claims, args.part)
    except (tables.ResultsError, claims.ClaimsError) as e:
        print(f"ticketbench: error: {e}", file=sys.stderr)
        return 2
    if found:
        counts = {v: sum(r.verdict == v for r in found) for v in document.VERDICT_ORDER}
        log.info("%s: %s", args.results / "report.md", ", ".join(f"{n} {v}" for v, n in counts.items()))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from .. import runtime
    from . import audit

    findings = audit.audit(args.results, runtime.from_args(args), atol=args.atol)
    wide = audit.table(findings)
    print(wide.to_string(index=False))
    bad = audit.failures(findings)
    for f in bad:
        print(f"FAIL {f.run} {f.job} [{f.check}]: {f.detail}")
    if args.output:
        import pandas as pd

        from ..checkpoints import atomic_write

        atomic_write(args.output, pd.DataFrame([f.__dict__ for f in findings]).to_csv(index=False))
    checked = sum(f.status != audit.SKIP for f in findings)
    print(f"audit: {checked} checks, {len(bad)} failed (tolerance on accuracy and loss: {args.atol:g})")
    return 1 if bad else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from . import claims, compare, tables

    if not args.claims.is_file():
        print(f"ticketbench: error: {args.claims}: no such claims file; pass --claims", file=sys.stderr)
        return 2
    config = args.config or compare.default_workflow_config([args.a, args.b])
    if config is not None and not config.is_file():
        print(f"ticketbench: error: {config}: no such workflow config; pass --config config/N.yaml", file=sys.stderr)
        return 2
    try:
        a, b = (compare.load_side(s, config) for s in (args.a, args.b))
        sizes_a, sizes_b = compare.n_test_by_experiment(a, b)
        rows = compare.compare_rows(compare.row_stats(a.jobs, sizes_a), compare.row_stats(b.jobs, sizes_b), args.alpha,
                                    None if args.margin is None else args.margin / 100)
        found = [compare.evaluate_claims(s, args.claims) for s in (a, b)]
    except (compare.CompareError, tables.ResultsError, claims.ClaimsError) as e:
        print(f"ticketbench: error: {e}", file=sys.stderr)
        return 2
    claim_rows = compare.compare_claims(*found)
    notes = compare.protocol_differences(a.jobs, b.jobs) + compare.environment_differences(a.jobs, b.jobs)
    notes += [f"claims not evaluated on {name}: {s.why_no_configs}" for name, s in (("A", a), ("B", b)) if s.configs is None]
    print(compare.render(rows, claim_rows, args.a, args.b, args.claims, notes))
    unevaluated = " and ".join(name for name, s in (("A", a), ("B", b)) if s.configs is None)
    print(compare.summary(rows, claim_rows, args.alpha, f"not evaluated on {unevaluated}" if unevaluated else ""))
    if args.output:
        tables.write_csv(compare.tidy(rows, claim_rows), args.output)
    return 1 if compare.disagreements(rows, claim_rows, args.strict) else 0
