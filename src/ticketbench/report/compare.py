"""Whether two reproductions of one workflow config agree within noise: ``ticketbench compare A B``.

Why this exists: CPU kernels and the order of float summation differ between machines, and training
amplifies a last-digit difference into a different network, so a rerun of ``results/quick`` elsewhere
gives slightly different accuracies (LeNet level 0 seed 0: 0.857 here, 0.8545 there). ``git diff``
then shows every number changed and says nothing about whether the reproduction *agrees*. This module
answers that question per row (experiment, branch, level and accuracy) and per claim verdict.

The noise rule (docs/results.md explains it to readers; :data:`NOISE_RULE` is the text shown):

- per network, sigma = max(s, sqrt(p (1 - p) / N)): s is the sample standard deviation over the row's
  networks (its seeds, and replicates where a branch trains several) when there are n >= 2, p the
  row's mean test accuracy and N its test-set size. The binomial term is the noise of one network's
  accuracy measured on N examples; it stands in for the run-to-run spread where a row has one seed,
  and keeps two seeds that happen to agree from claiming a precision they do not have;
- the standard error of the difference of the two means is sqrt(sA^2 / nA + sB^2 / nB);
- a row agrees when |mean A - mean B| <= z * that, with z the two-sided normal quantile at
  alpha / m, Bonferroni-corrected over the m rows compared: with ~100 rows an uncorrected 2-sigma rule
  flags ~5 of them by chance, so any disagreement it reports means nothing.

"Agree" (within noise) is a failure to find a difference, not evidence of its absence: with one seed on
2,000 test images the bound z * SE is about 3.8 pp before Bonferroni widens it, so two reproductions a
few points apart still "agree". The output prints each row's bound and the median bound beside that
word. A positive statement takes an equivalence margin M (``--margin``, in percentage points): a row is
*equivalent* when the whole interval difference +- z * SE (the same interval, at the same corrected
alpha) lies within +-M, the two one-sided tests (TOST) at alpha / (2m) each, and *not shown equivalent*
otherwise, however small its difference.

Claims are evaluated on both sides with :mod:`.claims`, exactly as the report does; two verdicts either
agree or differ (a claim whose value sits at its threshold can flip within noise: both values are
shown). Rows or claims present on one side only are listed as missing; they count as disagreements only
with ``strict``, because a partial rerun (fewer levels, one seed) is still worth comparing.

The noise rule is about reproductions in one environment. An experiment run with another config on one side
(``protocol_differences``), or in another float32 precision (``environment_differences``: TF32 on a GPU
against fp32), is pointed out in a note: its rows compare two protocols or two environments.

Pure functions first (the statistics, then the tables); reading the two sides (directories, git) last.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import pandas as pd

from ..environment import DEFAULT_PRECISION
from . import claims as claims_mod
from . import document, tables

METRICS = {"final_test_acc": "final", "early_stop_test_acc": "early stop"}
"""The accuracies compared, as named in tables/jobs.csv, with their display names. The LTH claims use
the early-stop accuracy where there is a validation split (claims' ``metric: auto``), the others the
final one; both are compared wherever a side's tables have them."""
ROW = ["experiment", "branch", "level", "metric"]
WITHIN, BEYOND, MISSING_A, MISSING_B = "within noise", "beyond noise", "missing on A", "missing on B"
AGREE, DIFFER, NOT_EVALUATED_A, NOT_EVALUATED_B = "agree", "differ", "not evaluated on A", "not evaluated on B"
EQUIVALENT, NOT_EQUIVALENT = "equivalent", "not shown equivalent"
COMPATIBLE = "compatible"
"""One side decided a check and the other found its effect within the noise (inconclusive): not a
disagreement, since an inconclusive verdict is consistent with either decision."""
NOISE_RULE = ("per network, sigma = max(sample std over the row's seeds/replicates when n >= 2, sqrt(p(1-p)/N) at "
              "the row's test-set size N); a row agrees when |mean A - mean B| <= z * sqrt(sA^2/nA + sB^2/nB), "
              "z the two-sided normal quantile Bonferroni-corrected over the rows compared")
COLUMNS = ["kind", "experiment", "branch", "level", "metric", "claim", "unit", "density", "n_a", "n_b",
           "test_size_a", "test_size_b", "a", "b", "value_unit", "sigma_a", "sigma_b", "difference", "se", "z",
           "bound", "verdict_a", "verdict_b", "status", "margin", "equivalence"]
"""The tidy CSV of ``compare -o``: one row per compared quantity. ``kind`` is ``accuracy`` (a, b are
mean accuracies as fractions, like jobs.csv) or ``claim`` (a, b are the claim's mean values in
``value_unit``, as the report shows them; ``unit`` names the runs the claim was checked on). ``margin`` and
``equivalence`` are filled with ``--margin`` only."""


class CompareError(ValueError):
    """An input cannot be compared (no such directory or revision, no tables); the message says how to fix it."""


# --------------------------------------------------------------------------------------------------
# The statistics
# --------------------------------------------------------------------------------------------------


def network_sigma(accuracies: Sequence[float], test_size: int) -> float:
    """One network's noise in a row: the larger of the seed spread (sample std, n >= 2) and the
    binomial standard error sqrt(p (1 - p) / N) of the row's mean accuracy p on N test examples."""
    acc = [float(a) for a in accuracies]
    if not acc:
        raise ValueError("network_sigma: no accuracies")
    if test_size < 1:
        raise ValueError(f"network_sigma: test-set size must be positive, got {test_size}")
    p = sum(acc) / len(acc)
    binomial = math.sqrt(max(p * (1 - p), 0.0) / test_size)
    if len(acc) < 2:
        return binomial
    spread = math.sqrt(sum((a - p) ** 2 for a in acc) / (len(acc) - 1))
    return max(spread, binomial)


def difference_se(sigma_a: float, n_a: int, sigma_b: float, n_b: int) -> float:
    """Standard error of mean A - mean B, two independent means of nA and nB networks."""
    return math.sqrt(sigma_a ** 2 / n_a + sigma_b ** 2 / n_b)


def bonferroni_z(alpha: float, rows: int) -> float:
    """The two-sided normal quantile at family-wise level ``alpha`` over ``rows`` tests: a row whose
    difference exceeds z standard errors has probability <= alpha / rows under agreement, so all rows
    together flag one by chance with probability <= alpha."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if rows < 1:
        raise ValueError(f"bonferroni_z: need at least one row, got {rows}")
    return NormalDist().inv_cdf(1 - alpha / (2 * rows))


def within_noise(difference: float, se: float, z: float) -> bool:
    """|difference| <= z * se. The 1e-12 absorbs float rounding, so that identical means agree even
    where the noise is 0 (a single network at accuracy 1)."""
    return abs(difference) <= z * se + 1e-12


def equivalent(difference: float, bound: float, margin: float) -> bool:
    """The whole interval difference +- bound lies within +-margin (all three in one unit): equivalence
    shown, as the two one-sided tests conclude it. The 1e-12 is ``within_noise``'s."""
    return abs(difference) + bound <= margin + 1e-12


# --------------------------------------------------------------------------------------------------
# Rows and claims
# --------------------------------------------------------------------------------------------------


def row_stats(jobs: pd.DataFrame, test_sizes: dict[str, int]) -> pd.DataFrame:
    """Per experiment, branch, level and accuracy (:data:`METRICS`, where present): n networks, mean,
    per-network sigma (:func:`network_sigma`), test-set size and mean density."""
    out = []
    for (exp, branch, level), g in jobs.groupby(["experiment", "branch", "level"], sort=True):
        for metric in METRICS:
            acc = g[metric].dropna().astype(float) if metric in g.columns else pd.Series(dtype=float)
            if acc.empty:
                continue
            n_test = test_sizes[exp]
            out.append({"experiment": exp, "branch": branch, "level": int(level), "metric": metric,
                        "density": float(g["density"].mean()), "n": len(acc), "mean": float(acc.mean()),
                        "sigma": network_sigma(acc.tolist(), n_test), "test_size": n_test})
    return pd.DataFrame(out, columns=[*ROW, "density", "n", "mean", "sigma", "test_size"])


def compare_rows(a: pd.DataFrame, b: pd.DataFrame, alpha: float, margin: float | None = None) -> pd.DataFrame:
    """Both sides' :func:`row_stats` side by side, with the difference, its standard error, the
    Bonferroni z over the rows present on both sides, the bound z * SE and the status; with ``margin``
    (a fraction, like the accuracies) also each row's :func:`equivalent` as ``equivalence``."""
    m = a.merge(b, on=ROW, how="outer", suffixes=("_a", "_b"), indicator=True)
    both = m["_merge"] == "both"
    z = bonferroni_z(alpha, int(both.sum())) if both.any() else math.nan
    out = pd.DataFrame({"kind": "accuracy", **{k: m[k] for k in ROW},
                        "density": m["density_a"].fillna(m["density_b"]),
                        "n_a": m["n_a"], "n_b": m["n_b"], "test_size_a": m["test_size_a"], "test_size_b": m["test_size_b"],
                        "a": m["mean_a"], "b": m["mean_b"], "sigma_a": m["sigma_a"], "sigma_b": m["sigma_b"]})
    out["difference"] = out["a"] - out["b"]
    out["se"] = [difference_se(sa, na, sb, nb) if ok else math.nan
                 for sa, na, sb, nb, ok in zip(out["sigma_a"], out["n_a"], out["sigma_b"], out["n_b"], both)]
    out["z"] = z
    out["bound"] = z * out["se"]
    out["status"] = [(WITHIN if within_noise(d, se, z) else BEYOND) if ok else MISSING_B if side == "left_only" else MISSING_A
                     for d, se, ok, side in zip(out["difference"], out["se"], both, m["_merge"])]
    if margin is not None:
        out["margin"] = margin
        out["equivalence"] = [(EQUIVALENT if equivalent(d, bound, margin) else NOT_EQUIVALENT) if ok else None
                              for d, bound, ok in zip(out["difference"], out["bound"], both)]
    order = {name: i for i, name in enumerate(METRICS)}
    return out.sort_values(["experiment", "branch", "level", "metric"], key=lambda s: s.map(order) if s.name == "metric" else s,
                           ignore_index=True)


def compare_claims(found_a: list[claims_mod.Result] | None, found_b: list[claims_mod.Result] | None) -> pd.DataFrame:
    """Per claim check and unit, both verdicts and mean values, and whether they agree. ``None`` is a
    side whose claims could not be evaluated. Claims the suite does not check at all are left out:
    their verdict does not depend on the data."""
    def keyed(found: list[claims_mod.Result] | None) -> dict[tuple[str, str, int], claims_mod.Result]:
        out: dict[tuple[str, str, int], claims_mod.Result] = {}
        for r in found or []:
            if r.verdict == claims_mod.NOT_CHECKED:
                continue
            k = 0
            while (r.claim["id"], r.unit, k) in out:  # one check can give several results on one unit
                k += 1
            out[(r.claim["id"], r.unit, k)] = r
        return out

    ka, kb = keyed(found_a), keyed(found_b)
    rows = []
    for key in sorted(set(ka) | set(kb)):
        ra, rb = ka.get(key), kb.get(key)
        if found_a is None:
            status = NOT_EVALUATED_A
        elif found_b is None:
            status = NOT_EVALUATED_B
        elif ra is None or rb is None:
            status = MISSING_A if ra is None else MISSING_B
        else:
            status = claim_status(ra.verdict, rb.verdict)
        rows.append({"kind": "claim", "claim": key[0], "unit": key[1],
                     "a": _mean(ra), "b": _mean(rb), "verdict_a": ra.verdict if ra else None,
                     "verdict_b": rb.verdict if rb else None, "value_unit": (ra or rb).unit_label, "status": status})
    return pd.DataFrame(rows, columns=["kind", "claim", "unit", "a", "b", "value_unit", "verdict_a", "verdict_b", "status"])


def claim_status(a: str, b: str) -> str:
    """Two verdicts of one check: equal ones agree; inconclusive beside a decision is compatible; any other
    pair (reproduced vs. not reproduced, run vs. not run) differs."""
    if a == b:
        return AGREE
    return COMPATIBLE if claims_mod.INCONCLUSIVE in (a, b) else DIFFER


def _mean(r: claims_mod.Result | None) -> float:
    return float(sum(r.values) / len(r.values)) if r is not None and r.values else math.nan


def protocol_differences(jobs_a: pd.DataFrame, jobs_b: pd.DataFrame) -> list[str]:
    """Experiments whose run configs differ between the sides (``config_hash``): their rows compare two
    protocols, not two reproductions of one, and whatever the rows say is not about noise."""
    out = []
    for exp in sorted(set(jobs_a["experiment"]) & set(jobs_b["experiment"])):
        ha, hb = ({str(h) for h in j.loc[j["experiment"] == exp, "config_hash"].dropna()} for j in (jobs_a, jobs_b))
        if ha and hb and ha != hb:
            out.append(f"{exp}: the two sides ran different run configs (config hash {', '.join(sorted(ha))} vs. "
                       f"{', '.join(sorted(hb))}), so its rows compare two protocols")
    return out


def environment_differences(jobs_a: pd.DataFrame, jobs_b: pd.DataFrame) -> list[str]:
    """Experiments whose networks ran in another float32 precision on one side (``precision``: fp32 or tf32;
    tables made before it was recorded ran in fp32, ``environment.DEFAULT_PRECISION``). TF32 rounds every
    matmul and convolution to a 10-bit mantissa: such rows compare two environments, and the noise rule, which
    is about seeds and test-set size, does not cover the difference."""
    def precisions(jobs: pd.DataFrame, exp: str) -> set[str]:
        column = jobs["precision"] if "precision" in jobs.columns else pd.Series(DEFAULT_PRECISION, index=jobs.index)
        return {DEFAULT_PRECISION if pd.isna(p) else str(p) for p in column[jobs["experiment"] == exp]}

    out = []
    for exp in sorted(set(jobs_a["experiment"]) & set(jobs_b["experiment"])):
        pa, pb = precisions(jobs_a, exp), precisions(jobs_b, exp)
        if pa != pb:
            out.append(f"{exp}: the two sides ran in different float32 precisions ({', '.join(sorted(pa))} vs. "
                       f"{', '.join(sorted(pb))}), a different environment: its rows compare two environments, not two "
                       f"reproductions within noise")
    return out


def disagreements(rows: pd.DataFrame, claim_rows: pd.DataFrame, strict: bool = False) -> int:
    """Rows beyond the noise (with a margin: rows not shown equivalent, whatever their status) plus claim
    verdicts that differ; with ``strict`` also everything present or evaluated on one side only."""
    bad = {BEYOND, DIFFER} | ({MISSING_A, MISSING_B, NOT_EVALUATED_A, NOT_EVALUATED_B} if strict else set())
    failing = rows["status"].isin(bad)
    if "equivalence" in rows.columns:
        failing = (rows["equivalence"] == NOT_EQUIVALENT) | rows["status"].isin(bad - {BEYOND})
    return int(failing.sum() + claim_rows["status"].isin(bad).sum())


def tidy(rows: pd.DataFrame, claim_rows: pd.DataFrame) -> pd.DataFrame:
    """Rows and claims in one table with :data:`COLUMNS`, for ``compare -o``."""
    parts = [df.reindex(columns=COLUMNS) for df in (rows, claim_rows) if not df.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


# --------------------------------------------------------------------------------------------------
# Text output
# --------------------------------------------------------------------------------------------------


def summary(rows: pd.DataFrame, claim_rows: pd.DataFrame, alpha: float, claims_note: str = "") -> str:
    """The one-line verdict, e.g. ``compare: 90 rows, 90 within noise, 0 beyond (z = 3.45, Bonferroni
    over 90 rows at alpha 0.05; within noise = not shown to differ, median bound 3.81 pp); claims: 85
    agree, 1 compatible, 0 differ``, and with a margin ``; margin 1 pp: 12 equivalent, 78 not shown
    equivalent`` before the claims."""
    n = rows["status"].value_counts()
    both = int(n.get(WITHIN, 0) + n.get(BEYOND, 0))
    text = f"compare: {both} rows, {n.get(WITHIN, 0)} within noise, {n.get(BEYOND, 0)} beyond"
    for missing in (MISSING_A, MISSING_B):
        if n.get(missing, 0):
            text += f", {n[missing]} {missing}"
    z = f"z = {rows['z'].iloc[0]:.2f}, " if both else ""
    bound = rows["bound"].dropna()
    median = f", median bound {100 * bound.median():.2f} pp" if not bound.empty else ""
    text += f" ({z}Bonferroni over {both} rows at alpha {alpha:g}; within noise = not shown to differ{median})"
    if "equivalence" in rows.columns:
        e = rows["equivalence"].value_counts()
        text += (f"; margin {100 * rows['margin'].iloc[0]:g} pp: {e.get(EQUIVALENT, 0)} {EQUIVALENT}, "
                 f"{e.get(NOT_EQUIVALENT, 0)} {NOT_EQUIVALENT}")
    c = claim_rows["status"].value_counts()
    if claims_note:
        text += f"; claims: {claims_note}"
    else:
        text += f"; claims: {c.get(AGREE, 0)} agree, {c.get(COMPATIBLE, 0)} compatible, {c.get(DIFFER, 0)} differ"
        for missing in (MISSING_A, MISSING_B):
            if c.get(missing, 0):
                text += f", {c[missing]} {missing}"
    return text


def render(rows: pd.DataFrame, claim_rows: pd.DataFrame, label_a: str, label_b: str, claims_path: Path,
           notes: Sequence[str] = ()) -> str:
    """The table printed on stdout: rows grouped by experiment (accuracies in %, differences and bounds
    in percentage points), then the claim checks either side reproduced or not, or that differ."""
    import textwrap

    margin = rows["margin"].iloc[0] if "margin" in rows.columns and not rows.empty else None
    equivalence = (f" Equivalent: the whole interval A-B +- bound lies within +-{100 * margin:g} pp (--margin); "
                   f"otherwise {NOT_EQUIVALENT}." if margin is not None else "")
    out = [f"A = {label_a}", f"B = {label_b}",
           *textwrap.wrap(f"noise rule: {NOISE_RULE}. Accuracies in % (mean over n networks); A-B and the bound z*SE "
                          f"in percentage points. Within noise means not shown to differ: a difference smaller than the "
                          f"bound is not evidence of agreement.{equivalence}", 110, subsequent_indent="  "),
           *(line for note in notes for line in textwrap.wrap(f"note: {note}", 110, subsequent_indent="  "))]
    for exp, g in rows.groupby("experiment", sort=True):
        sizes = sorted({int(x) for x in pd.concat([g["test_size_a"], g["test_size_b"]]).dropna()})
        out.append("")
        out.append(f"{exp} (test set: {' vs. '.join(f'{s:,}' for s in sizes)} examples)")
        lines, prev = [], None
        for r in g.itertuples(index=False):
            first = (r.branch, r.level) != prev  # branch, level and density once per level
            lines.append({"branch": r.branch if prev is None or r.branch != prev[0] else "",
                          "level": str(r.level) if first else "",
                          "% remaining": f"{100 * r.density:.3g}" if first and math.isfinite(r.density) else "",
                          "accuracy": METRICS[r.metric], "A (n)": _acc(r.a, r.n_a), "B (n)": _acc(r.b, r.n_b),
                          "A-B": f"{100 * r.difference:+.2f}" if math.isfinite(r.difference) else "",
                          "bound": f"{100 * r.bound:.2f}" if math.isfinite(r.bound) else "", "status": r.status,
                          **({"equivalence": r.equivalence or ""} if margin is not None else {})})
            prev = (r.branch, r.level)
        out.extend(_text_table(lines, right={"level", "% remaining", "A (n)", "B (n)", "A-B", "bound"}))
    out.append("")
    if claim_rows.empty:
        out.append(f"claims ({claims_path}): none to compare")
        return "\n".join(out)
    decided = (claim_rows["verdict_a"].isin(claims_mod.DECIDED) | claim_rows["verdict_b"].isin(claims_mod.DECIDED)
               | (claim_rows["status"] != AGREE))
    out.append(f"claims ({claims_path}): verdicts on A and B of every check either side could decide")
    shown = claim_rows[decided]
    out.extend(_text_table([{"status": r.status, "A": _verdict(r.verdict_a, r.a, r.value_unit),
                             "B": _verdict(r.verdict_b, r.b, r.value_unit),
                             "claim: unit": f"{r.claim}: {r.unit}" if r.unit else r.claim}
                            for r in shown.itertuples(index=False)]))
    rest = claim_rows[~decided]
    if not rest.empty:
        out.append(f"  ({len(rest)} more checks {claims_mod.NOT_RUN} on both sides: agree)")
    return "\n".join(out)


def _text_table(lines: list[dict[str, str]], right: set[str] = frozenset()) -> list[str]:
    """Aligned columns, two spaces apart, indented by two: numbers right-aligned, text left."""
    if not lines:
        return []
    cols = list(lines[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in lines)) for c in cols}

    def line(cells: dict[str, str]) -> str:
        return "  " + "  ".join(str(cells[c]).rjust(width[c]) if c in right else str(cells[c]).ljust(width[c])
                                for c in cols).rstrip()

    return [line({c: c for c in cols}), *map(line, lines)]


def _acc(x: float, n: float) -> str:
    return f"{100 * x:.2f} ({int(n)})" if math.isfinite(x) else "-"


def _verdict(verdict: str | None, value: float, unit: str) -> str:
    if not isinstance(verdict, str):  # missing on this side
        return "-"
    if not math.isfinite(value):
        return verdict
    return f"{verdict} ({value:.3g}{' ' + unit if unit else ''})"


# --------------------------------------------------------------------------------------------------
# The two sides: a results directory, or the committed tables of a git revision
# --------------------------------------------------------------------------------------------------


@dataclass
class Side:
    """What one side provides: its tables (``jobs`` and the analyses), the run config of each
    experiment if known (from its runs, or from the workflow config when it matches the tables'
    config hashes), and, when they are not known, why."""

    label: str
    data: dict[str, pd.DataFrame | None]
    configs: dict[str, dict[str, Any]] | None = None
    why_no_configs: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def jobs(self) -> pd.DataFrame:
        return self.data["jobs"]


def load_side(spec: str, workflow_config: Path | None, cwd: Path | None = None) -> Side:
    """``results/N`` (a results directory) or ``REV:results/N`` (the tables committed in a git
    revision of the repository containing ``cwd``; the path is relative to the repository root, as in
    ``git show``). A path that exists is a directory even if it contains a colon."""
    cwd = Path.cwd() if cwd is None else Path(cwd)
    if (cwd / spec).exists() or ":" not in spec:
        return _directory(cwd / spec, spec, workflow_config, cwd)
    rev, _, path = spec.partition(":")
    return _revision(rev, path.rstrip("/"), spec, workflow_config, cwd)


def default_workflow_config(specs: Sequence[str], cwd: Path | None = None) -> Path | None:
    """``config/N.yaml`` for the first side named ``.../N`` that has one: the layout
    ``results/N`` <- ``config/N.yaml`` of the workflow."""
    cwd = Path.cwd() if cwd is None else Path(cwd)
    for spec in specs:
        name = Path(spec.partition(":")[2] if ":" in spec and not (cwd / spec).exists() else spec).name
        candidate = Path("config") / f"{name}.yaml"
        if (cwd / candidate).is_file():
            return candidate
    return None


def _directory(path: Path, label: str, workflow_config: Path | None, cwd: Path) -> Side:
    wf = cwd / workflow_config if workflow_config is not None and (cwd / workflow_config).is_file() else None

    if not path.is_dir():
        raise CompareError(f"{label}: no such results directory; give results/N (with tables/ or runs/) "
                           f"or a git revision's tables as REV:results/N")
    runs = tables.run_dirs(path)
    if (path / "tables" / "jobs.csv").is_file():
        data = document.read_tables(path)
    elif runs:
        data = document.build_tables(path, wf)
    else:
        raise CompareError(f"{label}: neither tables/jobs.csv nor runs/<experiment>/seed<S>/config.yaml; run the workflow "
                           f"(or `ticketbench report {label}`), or `dvc pull` its results")
    if runs:
        side = Side(label, data, document.run_configs(path))
    else:
        side = Side(label, data, *_configs_from_workflow(wf.read_text() if wf else None, str(workflow_config), data["jobs"]))
    _check_families(side, workflow_config)
    return side


def _revision(rev: str, path: str, label: str, workflow_config: Path | None, cwd: Path) -> Side:
    if not rev:
        raise CompareError(f"{label}: give a git revision before ':' (e.g. HEAD:{path})")
    top = _git(cwd, "rev-parse", "--show-toplevel")
    if top is None:
        raise CompareError(f"{label}: {cwd} is not inside a git repository; run from the repository, or compare directories")
    if _git(cwd, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}") is None:
        raise CompareError(f"{label}: unknown git revision '{rev}' in {top.strip()}; give a commit, branch or tag "
                           f"(see `git log --oneline`)")
    if _git(cwd, "cat-file", "-e", f"{rev}:{path}/tables/jobs.csv") is None:
        raise CompareError(f"{label}: revision {rev} has no {path}/tables/jobs.csv; give the folder that holds tables/, "
                           f"relative to the repository root (see `git ls-tree -r --name-only {rev} results`)")
    data = document.parse_tables(lambda name: _git(cwd, "show", f"{rev}:{path}/tables/{name}.csv"))
    text, where = None, str(workflow_config)
    if workflow_config is not None:
        # The revision's own workflow config describes its tables; the working copy's may have moved on.
        try:
            rel = (cwd / workflow_config).resolve().relative_to(Path(top.strip()).resolve()).as_posix()
            text, where = _git(cwd, "show", f"{rev}:{rel}"), f"{rev}:{rel}"
        except ValueError:
            pass
        if text is None and (cwd / workflow_config).is_file():
            text, where = (cwd / workflow_config).read_text(), str(workflow_config)
    side = Side(label, data, *_configs_from_workflow(text, where, data["jobs"]))
    _check_families(side, workflow_config)
    return side


def _git(cwd: Path, *args: str) -> str | None:
    """stdout of one git command, or None if it fails (unknown revision, missing file, no repository)."""
    try:
        p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise CompareError("git is not installed; compare two results directories instead") from None
    return p.stdout if p.returncode == 0 else None


def _configs_from_workflow(text: str | None, where: str, jobs: pd.DataFrame) -> tuple[dict[str, dict[str, Any]] | None, str]:
    """Each experiment's run config rebuilt from the workflow config (:func:`document.configs_from_workflow`,
    which accepts it only if it reproduces the tables' config hashes), or None and the reason: a side
    without them is still compared row by row, only its claims are not evaluated."""
    if text is None:
        return None, "no runs/ to read run configs from and no workflow config found; pass --config config/N.yaml"
    try:
        return document.configs_from_workflow(text, where, jobs), ""
    except tables.ResultsError as e:
        return None, str(e)


def _check_families(side: Side, workflow_config: Path | None) -> None:
    """Claims select experiments by family, which runs alone do not record."""
    if side.configs is not None and side.jobs["family"].isna().any():
        side.configs, side.why_no_configs = None, (
            "the experiments' families are unknown (runs do not record them); pass --config config/N.yaml"
            if workflow_config is None else f"{workflow_config} gives no family for some experiment")


def n_test_by_experiment(a: Side, b: Side) -> tuple[dict[str, int], dict[str, int]]:
    """Each side's test-set size per experiment, from its own run configs, else from the other side's
    (the same experiment of the same workflow evaluates on the same test set)."""
    own = [{e: tables.test_set_size(c) for e, c in (s.configs or {}).items()} for s in (a, b)]
    out = []
    for i, side in enumerate((a, b)):
        sizes = {}
        for exp in side.jobs["experiment"].unique():
            n = own[i].get(exp, own[1 - i].get(exp))
            if n is None:
                why = side.why_no_configs or f"no run config of {exp}"
                raise CompareError(f"{side.label}: the test-set size of {exp} is unknown ({why})")
            sizes[exp] = n
        out.append(sizes)
    return out[0], out[1]


def evaluate_claims(side: Side, claims_path: Path) -> list[claims_mod.Result] | None:
    """The report's claim verdicts for one side, or None if its run configs are unknown."""
    if side.configs is None:
        return None
    return claims_mod.evaluate(claims_mod.load(claims_path), side.jobs, side.configs, side.data,
                               claims_mod.paper_suite(claims_path))
