"""The reviewer-facing report of one workflow config's results: ``results/N/``.

``ticketbench report results/N --config config/N.yaml`` runs three parts, which DVC runs as stages
(``tables`` in results/dvc.yaml, with the training; ``figures`` and ``document`` in dvc.yaml):

- ``tables``: ``tables/*.csv``, tidy, from the stored runs;
- ``figures``: ``figures/*.png`` (and ``*.svg``), their index ``tables/figures.csv`` and the data series of
  ``dvc plots diff``, ``tables/curves/<experiment>.csv`` (:func:`tables.accuracy_curves`), from the tables;
- ``document``: ``report.md``, ``report.html`` (figures inline, viewable offline) and ``metrics.json``
  (headline numbers per experiment for ``dvc metrics diff``), from the tables, the figures,
  ``config/claims.yaml`` and the workflow config, whose run configs must have the tables' config hashes.

The tables are committed to git, so the last two parts run on a clone without the runs. Everything
written is a pure function of the stored runs, so a rerun gives identical bytes.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .. import plan
from . import claims as claims_mod
from . import deviations, tables

ANALYSES = tuple(tables.ANALYSES)
VERDICT_ORDER = (claims_mod.REPRODUCED, claims_mod.NOT_REPRODUCED, claims_mod.INCONCLUSIVE, claims_mod.NOT_RUN,
                 claims_mod.NO_EXPERIMENT, claims_mod.NOT_CHECKED)


def scale_of(results: Path, workflow_config: Path | None) -> str:
    """The scale label in titles: the workflow config's ``scale`` or ``name`` key, else the folder name."""
    if workflow_config is not None:
        raw = yaml.safe_load(Path(workflow_config).read_text()) or {}
        for key in ("scale", "name"):
            if isinstance(raw.get(key), str):
                return raw[key]
    return Path(results).resolve().name


def build_tables(results: Path, workflow_config: Path | None) -> dict[str, pd.DataFrame | None]:
    """The jobs table and one table per analysis (None: no run has it), from the stored runs."""
    families = tables.families_of(workflow_config)
    data: dict[str, pd.DataFrame | None] = {"jobs": tables.jobs(results, families)}
    for kind in ANALYSES:
        data[kind] = tables.analysis(results, kind, families)
    return data


def write_tables(results: Path, workflow_config: Path | None) -> dict[str, pd.DataFrame | None]:
    """tables/jobs.csv and one CSV per analysis. An analysis that no run has is a table without rows
    (its columns only), so that every table exists and DVC can depend on each (dvc.yaml)."""
    if not tables.run_dirs(results):
        raise tables.ResultsError(f"{results}: no run directories (runs/<experiment>/seed<S>/config.yaml); "
                                  f"run the workflow first, or `dvc pull` its results")
    out = Path(results) / "tables"
    data = build_tables(results, workflow_config)
    for name, df in data.items():
        if df is None:  # an analysis that no run has
            df = pd.DataFrame(columns=tables.RUN_COLUMNS + tables.ANALYSES[name])
        tables.write_csv(df, out / f"{name}.csv")
    return data


def read_tables(results: Path) -> dict[str, pd.DataFrame | None]:
    """The tables of :func:`write_tables`; an analysis is None if it was not run (no rows, or no file)."""
    folder = Path(results) / "tables"
    if not (folder / "jobs.csv").is_file():
        raise tables.ResultsError(f"{folder}/jobs.csv: missing; run 'ticketbench report {results} --part tables' first")
    return parse_tables(lambda name: (folder / f"{name}.csv").read_text() if (folder / f"{name}.csv").is_file() else None)


def parse_tables(read: Callable[[str], str | None]) -> dict[str, pd.DataFrame | None]:
    """The tables from their CSV texts (``read(name)``: the text of tables/<name>.csv, or None if there is
    none), wherever they are kept (a folder, a git revision); an analysis without rows was not run (None)."""
    out: dict[str, pd.DataFrame | None] = {}
    for name in ("jobs", *ANALYSES):
        text = read(name)
        df = pd.read_csv(io.StringIO(text)) if text is not None else None
        out[name] = None if df is None or (name != "jobs" and df.empty) else df
    return out


def write_figures(results: Path, data: dict[str, pd.DataFrame | None], scale: str,
                  reported: pd.DataFrame | None = None) -> list[tuple[Path, str]]:
    """figures/ and its index; ``reported`` are the papers' values drawn beside our curves
    (:func:`claims.reported_points`)."""
    from . import figures

    out = Path(results) / "figures"
    drawn, skipped = figures.draw_all(data, scale, out, reported)
    keep = {q.name for p, _ in drawn for q in (p, figures.vector_of(p))}
    for stale in [*out.glob("*.png"), *out.glob("*.svg")]:
        if stale.name not in keep:
            stale.unlink()
    # The figure index is a tidy table beside the others (the figures folder holds only the figures, each
    # as a PNG, which the report links, and as an SVG, figures.vector_of).
    index = [{"figure": p.name, "drawn": True, "caption": c} for p, c in drawn] + [
        {"figure": f"{name}.png", "drawn": False, "caption": why} for name, why in skipped.items()]
    tables.write_csv(pd.DataFrame(index, columns=["figure", "drawn", "caption"]).sort_values("figure"),
                     Path(results) / "tables" / "figures.csv")
    curves = Path(results) / "tables" / tables.CURVES
    series = tables.accuracy_curves(data["jobs"])
    for stale in curves.glob("*.csv"):
        if stale.stem not in series:
            stale.unlink()
    for experiment, df in series.items():
        tables.write_csv(df, curves / f"{experiment}.csv")
    return drawn


# --------------------------------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------------------------------


def run_configs(results: Path) -> dict[str, dict[str, Any]]:
    """experiment id -> its run config (seed 0's, or the lowest seed's: they differ only in seeds)."""
    out: dict[str, dict[str, Any]] = {}
    for run in tables.run_dirs(results):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        out.setdefault(cfg["name"], cfg)
    return out


def configs_from_workflow(text: str, where: str, jobs: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """What :func:`run_configs` reads from the runs, rebuilt from the workflow config's text as the
    workflow builds it, for every experiment and seed of the jobs table; accepted only if each run
    config's hash is the table's ``config_hash``, otherwise the config has changed since the tables were
    made and would misstate their protocol (:class:`tables.ResultsError`)."""
    from ..config import ConfigError, experiment_run

    experiments = (yaml.safe_load(text) or {}).get("experiments") or {}
    out: dict[str, dict[str, Any]] = {}
    for (exp, seed), g in jobs.groupby(["experiment", "seed"], sort=True):
        if exp not in experiments:
            raise tables.ResultsError(f"{where} has no experiment {exp}; pass the workflow config these results were made with")
        try:
            cfg = experiment_run(experiments[exp], exp, int(seed), where)
        except ConfigError as e:
            raise tables.ResultsError(str(e)) from None
        recorded = set(g["config_hash"].dropna().astype(str))
        if recorded and recorded != {cfg.hash()}:
            raise tables.ResultsError(
                f"{where} no longer describes {exp} seed {seed} (run config hash {cfg.hash()}, the tables' "
                f"{', '.join(sorted(recorded))}); pass the workflow config these results were made with")
        out.setdefault(exp, {**cfg.to_dict(), "hash": cfg.hash()})
    return out


def write_document(results: Path, claims_path: Path, scale: str,
                   workflow_config: Path | None = None) -> list[claims_mod.Result]:
    """The report from the tables; the run configs (the protocol of each experiment) come from the
    workflow config if given, so that the runs are not needed, else from the runs. With the workflow
    config, the report also says what of it the results lack and how each experiment departs from the
    paper experiment it shrinks (:mod:`.deviations`)."""
    from ..checkpoints import atomic_write

    results = Path(results)
    data = read_tables(results)
    jobs = data["jobs"]
    suite_path = Path(claims_path).parent / deviations.PAPER_CONFIG
    paper = _paper_experiments(suite_path)
    suite = claims_mod.suite(paper, str(suite_path)) if paper is not None else None
    gaps: list[str] | None = None
    devs: dict[str, deviations.Shrunk] = {}
    if workflow_config is not None:
        text = Path(workflow_config).read_text()
        configs = configs_from_workflow(text, str(workflow_config), jobs)
        experiments = (yaml.safe_load(text) or {}).get("experiments") or {}
        gaps = missing(plan.resolve_all(plan.load_config(workflow_config), str(workflow_config)), data)
        shrunk = deviations.paper_config(Path(workflow_config))
        if shrunk is not None:
            of = paper if shrunk.resolve() == suite_path.resolve() else _paper_experiments(shrunk)
            devs = deviations.of_workflow(experiments, of) if experiments and of else {}
    else:
        configs = run_configs(results)
    found = claims_mod.evaluate(claims_mod.load(claims_path), jobs, configs, data, suite)
    figs_dir = results / "figures"
    index = pd.read_csv(results / "tables" / "figures.csv") if (results / "tables" / "figures.csv").is_file() else \
        pd.DataFrame(columns=["figure", "drawn", "caption"])
    captions = {r.figure: r.caption for r in index.itertuples() if r.drawn}
    skipped = {r.figure.removesuffix(".png"): r.caption for r in index.itertuples() if not r.drawn}
    blocks = _blocks(jobs, found, captions, skipped, scale, claims_path, gaps, devs)
    atomic_write(results / "report.md", _markdown(blocks))
    atomic_write(results / "report.html", _html(blocks, figs_dir, scale))
    atomic_write(results / "metrics.json", json.dumps(headline(jobs, found, gaps), indent=2, sort_keys=True) + "\n")
    return found


def _paper_experiments(path: Path) -> dict[str, Any] | None:
    """The experiments of the paper-scale workflow config (config/config.yaml) as written, read once for both
    the claims' suite and the deviations; None if there is no such file."""
    return (plan.read_config(path).get("experiments") or {}) if path.is_file() else None


def counts(found: list[claims_mod.Result]) -> dict[str, dict[str, int]]:
    """Verdict counts of the quantitative checks, the direction-only checks and the claims without a
    check (:func:`claims.kind_of`): a reviewer weighs "the paper's 38 % within 10 pp" and "the sign is
    the paper's" differently, so the headline never adds them up."""
    out = {kind: {v: 0 for v in VERDICT_ORDER} for kind in (*claims_mod.KINDS, claims_mod.NOT_CHECKED)}
    for r in found:
        out[claims_mod.kind_of(r.check) if r.check else claims_mod.NOT_CHECKED][r.verdict] += 1
    return out


def missing(experiments: dict[str, plan.Experiment], data: dict[str, pd.DataFrame | None]) -> list[str]:
    """What the workflow config's job plan (``ticketbench.plan``) asks for and the tables do not have, one
    line per experiment and gap: experiments, seeds, IMP levels, branches (baselines, fine-tuning,
    instability copies) and analyses. A report of partial results must say so before a reviewer reads its
    verdicts as the suite's."""
    jobs = data["jobs"]
    out = []
    for eid, exp in sorted(experiments.items()):
        have = jobs[jobs["experiment"] == eid]
        seeds = list(exp.runs)
        if have.empty:
            out.append(f"`{eid}`: no job of it in these results")
            continue
        absent = [s for s in seeds if s not in set(have["seed"].astype(int))]
        if absent:
            out.append(f"`{eid}`: no job of seed {_join(absent)}")
        for seed in (s for s in seeds if s not in absent):
            imp = set(have[(have["seed"] == seed) & (have["branch"] == "imp")]["level"].astype(int))
            lacking = [lv for lv in range(exp.levels + 1) if lv not in imp]
            if lacking:
                out.append(f"`{eid}` seed {seed}: IMP level {_join(lacking)} missing")
        branches = {*exp.baselines, *(["finetune"] if exp.finetune else []), *(b for b, _ in exp.copies)}
        for branch in sorted(branches):
            lacking = [s for s in seeds if s not in absent and have[(have["seed"] == s) & (have["branch"] == branch)].empty]
            if lacking:
                out.append(f"`{eid}`: branch {branch} missing for seed {_join(lacking)}")
        for kind in ANALYSES:
            if not getattr(exp, kind):
                continue
            table = data.get(kind)
            done = set() if table is None else set(table[table["experiment"] == eid]["seed"].astype(int))
            lacking = [s for s in seeds if s not in absent and s not in done]
            if lacking:
                out.append(f"`{eid}`: {kind} analysis missing for seed {_join(lacking)}")
    return out


def _join(xs: list[int]) -> str:
    return ", ".join(map(str, xs))


def headline(jobs: pd.DataFrame, found: list[claims_mod.Result], gaps: list[str] | None = None) -> dict[str, Any]:
    """Per experiment: dense accuracy and, at the sparsest IMP level, every branch's accuracy (mean over
    seeds); the count of claims per verdict (``claims``, all kinds, the key ``dvc metrics diff`` has
    always read), the same per kind of check (``checks``), and the number of gaps of partial results
    (``missing``, if the workflow config was given). Rounded so that ``dvc metrics diff`` is readable."""
    by_kind = counts(found)
    checks: dict[str, Any] = {_key(kind): {_key(v): n for v, n in by_kind[kind].items()} for kind in claims_mod.KINDS}
    checks[_key(claims_mod.NOT_CHECKED)] = by_kind[claims_mod.NOT_CHECKED][claims_mod.NOT_CHECKED]
    out: dict[str, Any] = {"claims": {_key(v): sum(r.verdict == v for r in found) for v in VERDICT_ORDER},
                           "checks": checks}
    if gaps is not None:
        out["missing"] = len(gaps)
    for exp, df in jobs.groupby("experiment", sort=True):
        imp = df[df["branch"] == "imp"]
        entry: dict[str, Any] = {"seeds": int(df["seed"].nunique())}
        dense = imp[imp["level"] == 0]["final_test_acc"]
        if not dense.empty:
            entry["dense_test_acc"] = _r(dense.mean())
        if not imp.empty:
            top = int(imp["level"].max())
            entry["sparsest_level"] = top
            entry["sparsest_density"] = _r(imp[imp["level"] == top]["density"].mean())
            entry["sparsest_test_acc"] = {b: _r(g["final_test_acc"].mean())
                                          for b, g in df[df["level"] == top].groupby("branch", sort=True)}
        out[str(exp)] = entry
    return out


def _key(label: str) -> str:
    return label.replace(" ", "_")


def _r(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


class _Sources:
    """Short keys for the papers, sources and tolerance notes of the claims, so that each long string is
    printed once, in one table, and rows cite it by key (P1, S1, T1)."""

    def __init__(self, found: list[claims_mod.Result]):
        self.papers: dict[str, str] = {}
        self.sources: dict[tuple[str, str, str], str] = {}
        self.tolerances: dict[str, str] = {}
        for r in found:
            self.cite(r.claim)

    def cite(self, c: dict[str, Any]) -> str:
        self.papers.setdefault(c["paper"], f"P{len(self.papers) + 1}")
        src = (c["paper"], c["source_type"], c["source"])
        key = self.sources.setdefault(src, f"S{len(self.sources) + 1}")
        if c.get("tolerance"):
            key += ", " + self.tolerances.setdefault(c["tolerance"], f"T{len(self.tolerances) + 1}")
        return key

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([{"key": k, "paper": self.papers[p], "source": f"{t}{' **(secondary source)**' if _secondary(t) else ''}: {s}"}
                             for (p, t, s), k in self.sources.items()])

    def tolerance_table(self) -> pd.DataFrame:
        return pd.DataFrame([{"key": k, "the paper's error bars / tolerance": t} for t, k in self.tolerances.items()])


def _secondary(source_type: str) -> bool:
    return source_type in ("secondary", "unverified_summary")


def _blocks(jobs: pd.DataFrame, found: list[claims_mod.Result], captions: dict[str, str], skipped: dict[str, str],
            scale: str, claims_path: Path, gaps: list[str] | None = None,
            devs: dict[str, deviations.Shrunk] | None = None) -> list[tuple[str, Any]]:
    """The report as a list of (kind, content) blocks, rendered to Markdown and to HTML: what is missing,
    the verdict counts, the checks with a verdict, the experiments and their deviations, the figures;
    then the checks without a verdict grouped by reason and the sources, each printed once."""
    shown = claims_path.as_posix() if not claims_path.is_absolute() else claims_path.name
    cite = _Sources(found)
    b: list[tuple[str, Any]] = [("h1", f"ticketbench results: {scale} scale")]
    if gaps:
        b.append(("p", f"**Partial results.** The workflow config has {len(gaps)} item(s) these results lack; "
                       "the verdicts below rest on the rest:"))
        b.append(("list", gaps))
    elif gaps is None:
        b.append(("p", "**Completeness not checked**: no workflow config given (`--config`)."))
    unknown = tables.unrecorded(jobs)
    if unknown:
        b.append(("p", "**Older jobs.** " + "; ".join(unknown) + ". Checks that need these columns say so."))
    b.append(("p", _headline_text(found)))
    b.append(("table", _paper_counts(found, cite)))
    b.append(("p", "Every number is computed from the stored runs (`runs/`) by `ticketbench report`; `ticketbench "
                   "audit` re-checks the stored networks (docs/results.md). A check of a paper's number (*quantitative*) "
                   f"runs only on runs with the paper's protocol (the check's `protocol` in `{shown}`); at reduced "
                   "scales the absolute numbers are **not comparable** with the papers' and only the direction of "
                   "an effect is checked (*direction only*). *Ours* is the mean over seeds (min, max over seeds; n)."))
    b.append(("p", f"**Noise floor.** {claims_mod.NOISE_RULE}"))
    b.append(("h2", "Checks with a verdict"))
    checked = [r for r in found if r.verdict in claims_mod.DECIDED]
    if not checked:
        b.append(("p", "None: no run matches a paper's protocol and no family experiment was run."))
    for paper, rows in _by_paper(checked, cite):
        b.append(("h3", f"{cite.papers[paper]}: {paper}"))
        b.append(("table", rows))
    b.append(("h2", "Experiments"))
    b.append(("table", experiments_table(jobs)))
    if devs:
        b.append(("h2", "Deviations from the papers' protocols"))
        b.append(("p", "Computed from the workflow config: each experiment's run config, seeds, baselines and "
                       f"analyses against the experiment of config/{deviations.PAPER_CONFIG} it shrinks "
                       f"(`{deviations.SHRINKS}:`), one row per key in which any of them departs from it (keys as in "
                       "the config files; \"not run\": the section is absent; blank: as the paper)."))
        b += [("p", f"`{exp}`: {d.problem}.") for exp, d in devs.items() if d.problem]
        b.append(("table", deviations_table(devs)))
    b.append(("h2", "Figures"))
    b.append(("p", "Each figure is also in `figures/` as an SVG of the same name, for print and zooming in."))
    for name, caption in sorted(captions.items()):
        b.append(("figure", (name, caption)))
    if skipped:
        b.append(("p", "Not drawn:"))
        b.append(("list", [f"{k}: {v}" for k, v in sorted(skipped.items())]))
    for verdict, title in ((claims_mod.NOT_RUN, "Checks not run at this scale"),
                           (claims_mod.NO_EXPERIMENT, "Claims no experiment of the suite can test"),
                           (claims_mod.NOT_CHECKED, "Claims the suite does not check")):
        rows = [r for r in found if r.verdict == verdict]
        if rows:
            b.append(("h2", f"{title} ({len(rows)})"))
            b.append(("table", _by_reason(rows)))
    b.append(("h2", "Sources"))
    b.append(("table", cite.table()))
    if cite.tolerances:
        b.append(("table", cite.tolerance_table()))
    return b


def deviations_table(devs: dict[str, deviations.Shrunk]) -> pd.DataFrame:
    """One row per deviating key, one column per experiment: "ours (paper: theirs)", blank where the
    experiment keeps the paper's value. Experiments of one family share most deviations, so a table per
    experiment would print each of them several times."""
    shown = {exp: d for exp, d in devs.items() if not d.problem}
    cells = {exp: {x.key: f"{x.ours} (paper: {x.paper})" for x in d.found} for exp, d in shown.items()}
    keys = sorted({k for c in cells.values() for k in c})
    return pd.DataFrame([{"key": k, **{f"{exp} (shrinks {d.paper})": cells[exp].get(k, "") for exp, d in shown.items()}}
                         for k in keys])


def _headline_text(found: list[claims_mod.Result]) -> str:
    c = counts(found)

    def some(kind: str) -> str:
        return ", ".join(f"**{n}** {v}" for v, n in c[kind].items() if n) or "none"

    n_claims = len({r.claim["id"] for r in found})
    n_q, n_d, n_p = (sum(c[k].values()) for k in (claims_mod.QUANTITATIVE, claims_mod.DIRECTION, claims_mod.PROXY))
    return (f"**{n_claims} claims, {n_q + n_d + n_p} checks.** {n_q} quantitative checks (the paper's number): "
            f"{some(claims_mod.QUANTITATIVE)}. {n_d} direction-only checks (the sign of an effect): "
            f"{some(claims_mod.DIRECTION)}. {n_p} proxy checks (a consequence of the claim, not its quantity): "
            f"{some(claims_mod.PROXY)}. {c[claims_mod.NOT_CHECKED][claims_mod.NOT_CHECKED]} claims the suite "
            "does not check.")


def _paper_counts(found: list[claims_mod.Result], cite: _Sources) -> pd.DataFrame:
    """Verdicts per paper; the one place a paper's full name is given beside its key."""
    rows: dict[str, dict[str, Any]] = {}
    for r in found:
        paper = r.claim["paper"]
        row = rows.setdefault(paper, {"key": cite.papers[paper], "paper": paper, **{v: 0 for v in VERDICT_ORDER}})
        row[r.verdict] += 1
    return pd.DataFrame(list(rows.values()), columns=["key", "paper", *VERDICT_ORDER])


def _claim_cell(c: dict[str, Any]) -> str:
    where = f" [{c['figure']}]" if c.get("figure") else ""
    return f"`{c['id']}`{where}: {c['quantity']} ({c['condition']})"


NOT_RECORDED = "not recorded"
"""What the report prints for a column that tables made before it existed lack (``density_total``,
``reinit_start``), rather than guess the value."""


def experiments_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment. The sparsest level is given as the fraction of prunable weights remaining
    (the suite's ``density``) and of all weights (``density_total``, the LTH paper's P_m, which counts the
    unpruned shortcut, output and bias weights too); random reinitialization by where its fresh weights
    start training (``reinit_start``: ``rewind`` = from step k, open_lth's default; ``zero`` = from 0)."""
    rows = []
    for exp, df in jobs.groupby("experiment", sort=True):
        imp = df[df["branch"] == "imp"]
        ks = sorted(df["rewind_step"].dropna().unique())
        reinit = df[df["branch"] == "random_reinit"]
        rows.append({"experiment": exp, "family": df["family"].dropna().iloc[0] if df["family"].notna().any() else "",
                     "network / data": f"{df['network'].iloc[0]} / {df['dataset'].iloc[0]}",
                     "seeds": ", ".join(str(int(s)) for s in sorted(df["seed"].unique())),
                     "IMP levels": f"0-{int(imp['level'].max())}" if not imp.empty else "",
                     "sparsest: % of prunable weights (of all)": _sparsest(imp),
                     "rewind k (iterations)": ", ".join(f"{k:g}" for k in ks),
                     "branches": ", ".join(sorted(df["branch"].unique())),
                     "random reinit trains from": _recorded(reinit, "reinit_start") if not reinit.empty else ""})
    return pd.DataFrame(rows)


def _sparsest(imp: pd.DataFrame) -> str:
    if imp.empty:
        return ""
    top = imp[imp["level"] == imp["level"].max()]
    total = f"{100 * top['density_total'].mean():.3g}" if _has(top, "density_total") else NOT_RECORDED
    return f"{100 * top['density'].mean():.3g} ({total})"


def _recorded(df: pd.DataFrame, column: str) -> str:
    return ", ".join(sorted(map(str, df[column].dropna().unique()))) if _has(df, column) else NOT_RECORDED


def _has(df: pd.DataFrame, column: str) -> bool:
    return column in df.columns and df[column].notna().all()


def _by_paper(found: list[claims_mod.Result], cite: _Sources) -> list[tuple[str, pd.DataFrame]]:
    """One row per check: claim, the paper's value, what was tested on which runs, ours, noise, verdict."""
    groups: dict[str, list[dict[str, str]]] = {}
    for r in found:
        c, chk = r.claim, r.check
        groups.setdefault(c["paper"], []).append({
            "claim": _claim_cell(c),
            "source": cite.cite(c),
            "paper's value": _value_text(c["value"]),
            "test": f"{claims_mod.kind_of(chk)}: {claims_mod.expectation(chk)}; {r.unit}" if chk else r.unit,
            "ours": _ours(r),
            "noise": f"± {r.noise:.2g} {r.unit_label}" if r.noise is not None else "",
            "verdict": _verdict_cell(r),
        })
    return [(p, pd.DataFrame(rows)) for p, rows in groups.items()]


def _verdict_cell(r: claims_mod.Result) -> str:
    """The verdict, and beside it why the check cannot say "reproduced" at the suite's scale where it
    cannot (its ``unreachable`` in config/claims.yaml, pinned by tests/test_reachability.py)."""
    return f"{r.verdict} ({UNREACHABLE}: {r.unreachable})" if r.unreachable else r.verdict


UNREACHABLE = "cannot be reproduced at the suite's scale"


def _ours(r: claims_mod.Result) -> str:
    """mean (min, max; n) and what it was computed at; the noise has a column of its own."""
    return dataclasses.replace(r, noise=None).summary()


def _by_reason(found: list[claims_mod.Result]) -> pd.DataFrame:
    """Checks without a verdict, one row per reason: the same reason ("no run matches protocol
    'lth-lenet'") holds for dozens of checks and is printed once."""
    reasons: dict[str, list[str]] = {}
    for r in found:
        unit = r.unit.removeprefix(PAPER_PROTOCOL).lstrip(", ")  # the reason already says which protocol
        label = f"`{r.claim['id']}`" + (f" ({unit})" if unit else "") + \
            (f" ({UNREACHABLE}: {r.unreachable})" if r.unreachable else "")
        reasons.setdefault(r.detail or "(no reason given)", []).append(label)
    return pd.DataFrame([{"why": why, "n": len(ids), "checks": ", ".join(ids)}
                         for why, ids in sorted(reasons.items(), key=lambda kv: (-len(kv[1]), kv[0]))])


PAPER_PROTOCOL = "paper protocol"
"""The label config/claims.yaml gives a check on the paper's protocol; a row that says which protocol no run
matched need not repeat it."""


def _value_text(v: Any) -> str:
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_value_text(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(map(_value_text, v))
    return str(v)


# ---- rendering ------------------------------------------------------------------------------------


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _markdown(blocks: list[tuple[str, Any]]) -> str:
    out = []
    for kind, c in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + c)
        elif kind == "p":
            out.append(c)
        elif kind == "list":
            out.append("\n".join(f"- {x}" for x in c))
        elif kind == "table":
            if c.empty:
                out.append("(none)")
                continue
            head = "| " + " | ".join(map(_md_cell, c.columns)) + " |"
            rule = "|" + "|".join("---" for _ in c.columns) + "|"
            body = ["| " + " | ".join(_md_cell(x) for x in row) + " |" for row in c.itertuples(index=False)]
            out.append("\n".join([head, rule, *body]))
        elif kind == "figure":
            name, caption = c
            out.append(f"![{caption}](figures/{name})\n\n*{caption}*")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Markdown emphasis and code spans of our own paragraphs, as HTML."""
    import re

    s = html.escape(text)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", s)


def _html(blocks: list[tuple[str, Any]], figs: Path, scale: str) -> str:
    css = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.4}"
           "table{border-collapse:collapse;font-size:0.85em;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 6px;"
           "vertical-align:top}th{background:#f3f3f3}img{max-width:100%}figure{margin:2em 0}"
           ".reproduced{background:#e6f4e6}.not-reproduced{background:#fbe3e3}.not-run-at-this-scale{color:#666}"
           ".inconclusive{background:#fdf6dc}.not-checked,.no-experiment-in-the-suite{color:#999}")
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ticketbench results: {html.escape(scale)}</title>"
           f"<style>{css}</style></head><body>"]
    for kind, c in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{html.escape(c)}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline(c)}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in c) + "</ul>")
        elif kind == "table":
            if c.empty:
                out.append("<p>(none)</p>")
                continue
            rows = ["<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in c.columns) + "</tr>"]
            for row in c.itertuples(index=False):
                cls = next((str(x).replace(" ", "-") for x in row if str(x) in VERDICT_ORDER), "")
                rows.append(f"<tr class='{cls}'>" + "".join(f"<td>{_inline(str(x))}</td>" for x in row) + "</tr>")
            out.append("<table>" + "".join(rows) + "</table>")
        elif kind == "figure":
            name, caption = c
            data = base64.b64encode((figs / name).read_bytes()).decode()
            out.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    out.append("</body></html>\n")
    return "\n".join(out)


def _reported(results: Path, jobs: pd.DataFrame, workflow_config: Path | None, claims_path: Path) -> pd.DataFrame | None:
    """The papers' values the figures place beside our curves, for the experiments whose protocol a
    quantitative check matches; None without a claims file."""
    if not Path(claims_path).is_file():
        return None
    configs = configs_from_workflow(Path(workflow_config).read_text(), str(workflow_config), jobs) \
        if workflow_config is not None else run_configs(results)
    return claims_mod.reported_points(claims_mod.load(claims_path), jobs, configs)


def build(results: Path, workflow_config: Path | None, claims_path: Path, part: str = "all") -> list[claims_mod.Result]:
    scale = scale_of(results, workflow_config)
    if part in ("all", "tables"):
        write_tables(results, workflow_config)
    if part in ("all", "figures"):
        data = read_tables(results)  # from the CSVs, exactly as reviewers see them
        write_figures(results, data, scale, _reported(results, data["jobs"], workflow_config, claims_path))
    if part in ("all", "document"):
        return write_document(results, claims_path, scale, workflow_config)
    return []

