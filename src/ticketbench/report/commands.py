"""The ``report`` and ``audit`` subcommands (wired into ``ticketbench`` by ``cli.build_parser``).

Heavy imports (pandas, matplotlib, torch) happen inside the handlers so that ``ticketbench --help``
stays instant."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("ticketbench")


def register(subparsers: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int | None]]:
    from ..cli import _runtime_args

    p = subparsers.add_parser("report", help="tables, figures, report.md/html and metrics.json of a results directory",
                              description="Write results/N/{tables,figures}/, report.md, report.html and metrics.json "
                                          "from the stored runs of results/N, checking every claim of config/claims.yaml.")
    p.add_argument("results", type=Path, help="results directory of one workflow config, e.g. results/quick")
    p.add_argument("--config", type=Path, help="the workflow config (config/N.yaml): experiment families and scale name")
    p.add_argument("--claims", type=Path, default=Path("config/claims.yaml"), help="claims file (default: config/claims.yaml)")
    p.add_argument("--part", choices=["all", "figures", "document"], default="all",
                   help="figures: tables/ and figures/ only; document: report.md/html and metrics.json from them")

    p = subparsers.add_parser("audit", help="re-evaluate every stored network and check recorded numbers, masks, rewinds",
                              description="Exit status 1 if any check fails. Accuracy and loss must match exactly on "
                                          "the CPU (--atol 0); runs trained on a GPU need a small --atol.")
    p.add_argument("results", type=Path, help="results directory (results/N) or one run directory")
    p.add_argument("--atol", type=float, default=0.0, help="absolute tolerance on test accuracy (fraction) and loss (default: 0)")
    p.add_argument("-o", "--output", type=Path, help="also write every finding as a tidy CSV")
    _runtime_args(p)
    return {"report": cmd_report, "audit": cmd_audit}


def cmd_report(args: argparse.Namespace) -> int:
    from . import claims, document, tables

    if args.part != "figures" and not args.claims.is_file():
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
    from ..cli import _runtime
    from . import audit

    findings = audit.audit(args.results, _runtime(args), atol=args.atol)
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
