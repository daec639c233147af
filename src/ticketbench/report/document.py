"""The reviewer-facing report of one workflow config's results: ``results/N/``.

``ticketbench report results/N --config config/N.yaml`` runs three parts, which DVC runs as stages
(``tables`` in results/dvc.yaml, with the training; ``figures`` and ``document`` in dvc.yaml):

- ``tables``: ``tables/*.csv``, tidy, from the stored runs;
- ``figures``: ``figures/*.png`` and their index ``tables/figures.csv``, from the tables;
- ``document``: ``report.md``, ``report.html`` (figures inline, viewable offline) and ``metrics.json``
  (headline numbers per experiment for ``dvc metrics diff``), from the tables, the figures,
  ``config/claims.yaml`` and the workflow config, whose run configs must have the tables' config hashes.

The tables are committed to git, so the last two parts run on a clone without the runs. Everything
written is a pure function of the stored runs, so a rerun gives identical bytes.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from . import claims as claims_mod
from . import tables

ANALYSES = tuple(tables.ANALYSES)
VERDICT_ORDER = (claims_mod.REPRODUCED, claims_mod.NOT_REPRODUCED, claims_mod.INCONCLUSIVE, claims_mod.NOT_RUN,
                 claims_mod.NOT_CHECKED)


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


def write_figures(results: Path, data: dict[str, pd.DataFrame | None], scale: str) -> list[tuple[Path, str]]:
    from . import figures

    out = Path(results) / "figures"
    drawn, skipped = figures.draw_all(data, scale, out)
    keep = {p.name for p, _ in drawn}
    for stale in out.glob("*.png"):
        if stale.name not in keep:
            stale.unlink()
    # The figure index is a tidy table beside the others (the figures folder holds only PNGs, which is
    # what DVC's image plots expect).
    index = [{"figure": p.name, "drawn": True, "caption": c} for p, c in drawn] + [
        {"figure": f"{name}.png", "drawn": False, "caption": why} for name, why in skipped.items()]
    tables.write_csv(pd.DataFrame(index, columns=["figure", "drawn", "caption"]).sort_values("figure"),
                     Path(results) / "tables" / "figures.csv")
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
    workflow config if given, so that the runs are not needed, else from the runs."""
    from ..checkpoints import atomic_write

    results = Path(results)
    data = read_tables(results)
    jobs = data["jobs"]
    configs = (configs_from_workflow(Path(workflow_config).read_text(), str(workflow_config), jobs)
               if workflow_config is not None else run_configs(results))
    found = claims_mod.evaluate(claims_mod.load(claims_path), jobs, configs, data, claims_mod.paper_suite(claims_path))
    figs_dir = results / "figures"
    index = pd.read_csv(results / "tables" / "figures.csv") if (results / "tables" / "figures.csv").is_file() else \
        pd.DataFrame(columns=["figure", "drawn", "caption"])
    captions = {r.figure: r.caption for r in index.itertuples() if r.drawn}
    skipped = {r.figure.removesuffix(".png"): r.caption for r in index.itertuples() if not r.drawn}
    blocks = _blocks(jobs, found, captions, skipped, scale, claims_path)
    atomic_write(results / "report.md", _markdown(blocks))
    atomic_write(results / "report.html", _html(blocks, figs_dir, scale))
    atomic_write(results / "metrics.json", json.dumps(headline(jobs, found), indent=2, sort_keys=True) + "\n")
    return found


def headline(jobs: pd.DataFrame, found: list[claims_mod.Result]) -> dict[str, Any]:
    """Per experiment: dense accuracy and, at the sparsest IMP level, every branch's accuracy (mean over
    seeds); plus the count of claims per verdict. Rounded so that ``dvc metrics diff`` is readable."""
    out: dict[str, Any] = {"claims": {v.replace(" ", "_"): sum(r.verdict == v for r in found) for v in VERDICT_ORDER}}
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


def _r(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def _blocks(jobs: pd.DataFrame, found: list[claims_mod.Result], captions: dict[str, str], skipped: dict[str, str],
            scale: str, claims_path: Path) -> list[tuple[str, Any]]:
    """The report as a list of (kind, content) blocks, rendered to Markdown and to HTML."""
    counts = {v: sum(r.verdict == v for r in found) for v in VERDICT_ORDER}
    shown = claims_path.as_posix() if not claims_path.is_absolute() else claims_path.name
    b: list[tuple[str, Any]] = [("h1", f"ticketbench results: {scale} scale")]
    b.append(("p", "Every number below is computed from the stored runs (`runs/`) by `ticketbench report`; "
                   "`ticketbench audit` re-evaluates the stored networks and checks the recorded numbers, masks and "
                   "rewind states. docs/results.md explains how to check them."))
    b.append(("p", "**Comparability.** A paper's quantitative claim is checked only on runs whose configuration matches "
                   f"the paper's protocol (the `protocol` of the check in `{shown}`); otherwise it reads *not run at this "
                   "scale*. On reduced scales (fewer iterations, smaller or other datasets, narrower networks) the "
                   "absolute numbers in the tables and figures are **not comparable** with the papers'; there only the "
                   "qualitative claims that transfer (the direction of an effect) are checked."))
    n_claims = len({r.claim["id"] for r in found})
    b.append(("p", f"{len(found)} checks of {n_claims} claims: " + ", ".join(f"**{counts[v]}** {v}" for v in VERDICT_ORDER)
                   + ". A verdict tests the check's expectation on the mean over seeds; the spread shown is min-max over "
                   "seeds (the papers' error bars). Claims from secondary sources are marked."))
    b.append(("p", f"**Noise floor.** {claims_mod.NOISE_RULE}"))
    b.append(("h2", "Experiments"))
    b.append(("table", _experiments(jobs)))
    b.append(("h2", "Claims checked at this scale"))
    checked = [r for r in found if r.verdict in claims_mod.DECIDED]
    if not checked:
        b.append(("p", "None: no run matches a paper's protocol and no family experiment was run."))
    for paper, rows in _by_paper(checked):
        b.append(("h3", paper))
        b.append(("table", rows))
    b.append(("h2", "Figures"))
    for name, caption in sorted(captions.items()):
        b.append(("figure", (name, caption)))
    if skipped:
        b.append(("p", "Not drawn:"))
        b.append(("list", [f"{k}: {v}" for k, v in sorted(skipped.items())]))
    b.append(("h2", "Claims not run at this scale"))
    b.append(("table", pd.DataFrame([{"claim": _claim_cell(r.claim), "paper's value": _paper_cell(r.claim),
                                       "check": r.unit, "why": r.detail} for r in found if r.verdict == claims_mod.NOT_RUN])))
    b.append(("h2", "Claims the suite does not check"))
    b.append(("table", pd.DataFrame([{"claim": _claim_cell(r.claim), "paper's value": _paper_cell(r.claim), "why": r.detail}
                                      for r in found if r.verdict == claims_mod.NOT_CHECKED])))
    return b


def _claim_cell(c: dict[str, Any]) -> str:
    where = f" [{c['figure']}]" if c.get("figure") else ""
    return f"`{c['id']}`{where}: {c['quantity']} ({c['condition']})"


def _paper_cell(c: dict[str, Any]) -> str:
    secondary = " **(secondary source)**" if c["source_type"] in ("secondary", "unverified_summary") else ""
    tol = f"; tolerance: {c['tolerance']}" if c.get("tolerance") else ""
    return f"{_value_text(c['value'])}{tol}; {c['paper']}, {c['source_type']}{secondary}: {c['source']}"


def _experiments(jobs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for exp, df in jobs.groupby("experiment", sort=True):
        imp = df[df["branch"] == "imp"]
        ks = sorted(df["rewind_step"].dropna().unique())
        rows.append({"experiment": exp, "family": df["family"].dropna().iloc[0] if df["family"].notna().any() else "",
                     "network / data": f"{df['network'].iloc[0]} / {df['dataset'].iloc[0]}",
                     "seeds": ", ".join(str(int(s)) for s in sorted(df["seed"].unique())),
                     "IMP levels": f"0-{int(imp['level'].max())}" if not imp.empty else "",
                     "sparsest (% remaining)": f"{100 * imp.groupby('level')['density'].mean().min():.3g}" if not imp.empty else "",
                     "rewind k (iterations)": ", ".join(f"{k:g}" for k in ks),
                     "branches": ", ".join(sorted(df["branch"].unique()))})
    return pd.DataFrame(rows)


def _by_paper(found: list[claims_mod.Result]) -> list[tuple[str, pd.DataFrame]]:
    groups: dict[str, list[dict[str, str]]] = {}
    for r in found:
        c = r.claim
        chk = r.check
        groups.setdefault(c["paper"], []).append({
            "claim": _claim_cell(c),
            "paper's value": _paper_cell(c),
            "our check": claims_mod.expectation(chk) + (f" ({chk['basis']})" if chk.get("basis") else "") if chk else "",
            "runs": r.unit,
            "reproduced: mean (min, max over seeds; n)": r.summary(),
            "verdict": r.verdict,
        })
    return [(p, pd.DataFrame(rows)) for p, rows in groups.items()]


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
           ".not-checked{color:#999}")
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


def build(results: Path, workflow_config: Path | None, claims_path: Path, part: str = "all") -> list[claims_mod.Result]:
    scale = scale_of(results, workflow_config)
    if part in ("all", "tables"):
        write_tables(results, workflow_config)
    if part in ("all", "figures"):
        write_figures(results, read_tables(results), scale)  # from the CSVs, exactly as reviewers see them
    if part in ("all", "document"):
        return write_document(results, claims_path, scale, workflow_config)
    return []

