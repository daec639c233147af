"""The reviewer-facing report: tidy tables, figures, and claims whose verdicts follow the data.

The end-to-end tests read a tiny results tree trained with the CLI (tests/synthetic_results.py); the
claim measures are specified in tests/test_claims.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

import synthetic_results
from ticketbench import cli
from ticketbench.report import claims, document, figures, tables

REPO = Path(__file__).resolve().parents[1]
CLAIMS = REPO / "config" / "claims.yaml"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return synthetic_results.tree(tmp_path_factory)


@pytest.fixture(scope="module")
def reported(tree, tmp_path_factory):
    """The tree's report, built with the CLI into a copy of the results."""
    results, config = tree
    out = tmp_path_factory.mktemp("reported") / "tiny"
    shutil.copytree(results / "runs", out / "runs")
    assert cli.main(["report", str(out), "--config", str(config), "--claims", str(CLAIMS)]) == 0
    return out, config


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


def test_jobs_table_has_one_row_per_finished_job_with_its_run(reported):
    out, _ = reported
    jobs = pd.read_csv(out / "tables" / "jobs.csv")
    assert len(jobs) == len(list((out / "runs").glob("*/seed*/*/level_*/**/summary.json")))
    assert set(jobs["family"]) == {"lth", "stabilized", "saleem"}
    k = jobs.groupby("experiment")["rewind_step"].unique().to_dict()
    assert {e: list(v) for e, v in k.items()} == {"lth_tiny": [0], "stab_tiny_k0": [0], "stab_tiny_k10": [10], "saleem_tiny": [5]}
    # The two rewind points of the k sweep form one group; other experiments differ in more than k.
    groups = jobs.groupby("experiment")["group"].first()
    assert groups["stab_tiny_k0"] == groups["stab_tiny_k10"] != groups["saleem_tiny"]
    assert not any(Path(j).is_absolute() for j in jobs["job"])


def test_analysis_tables_stack_every_run_with_its_run_columns(reported):
    out, _ = reported
    inst = pd.read_csv(out / "tables" / "instability.csv")
    assert set(inst["experiment"]) == {"stab_tiny_k0", "stab_tiny_k10"} and set(inst["level"]) == {0, 2}
    assert set(inst["rewind_step"]) == {0, 10} and (inst.groupby(["experiment", "level", "pair"]).size() == 5).all()
    hessian = pd.read_csv(out / "tables" / "hessian.csv")
    assert set(zip(hessian["branch"], hessian["level"])) == {("imp", 0), ("imp", 1), ("imp", 2), ("oneshot", 1), ("oneshot", 2)}
    successive = pd.read_csv(out / "tables" / "successive.csv")
    assert set(successive["mask"]) == {"common", "none"} and "job_a" not in successive.columns


def test_tables_do_not_depend_on_where_the_results_live(reported, tmp_path):
    out, config = reported
    moved = tmp_path / "elsewhere" / "tiny"
    shutil.copytree(out / "runs", moved / "runs")
    document.write_tables(moved, config)
    for name in ("jobs", "instability", "hessian", "successive"):
        assert (moved / "tables" / f"{name}.csv").read_bytes() == (out / "tables" / f"{name}.csv").read_bytes(), name


def test_missing_analysis_is_reported_and_malformed_one_rejected(reported, tmp_path):
    out, config = reported
    index = pd.read_csv(out / "tables" / "figures.csv").set_index("figure")
    assert sorted(index.index[index["drawn"]]) == sorted(p.name for p in (out / "figures").glob("*.png"))
    data = document.read_tables(out)
    stab = {"jobs": data["jobs"][data["jobs"]["family"] == "stabilized"], "instability": None}
    drawn, skipped = figures.draw_all(stab, "tiny", tmp_path / "figures")
    assert [p.name for p, _ in drawn] == ["stabilized_accuracy_stab_tiny.png"]
    assert skipped == {"stabilized_instability_stab_tiny": "the instability analysis was not run at this scale"}
    trend = next(c for c in claims.load(CLAIMS) if c["id"] == "lmc-onset-resnet20")
    res = claims.evaluate([trend], stab["jobs"], document.run_configs(out), stab)
    assert [(r.verdict, r.detail) for r in res if "direction only" in r.unit] == [
        (claims.NOT_RUN, "instability analysis not run for these runs")]
    broken = tmp_path / "tiny"
    shutil.copytree(out / "runs", broken / "runs")
    bad = broken / "runs" / "stab_tiny_k0" / "seed0" / "analysis" / "instability" / "level_00.csv"
    bad.write_text("alpha,something\n0,1\n")
    with pytest.raises(tables.ResultsError, match="level_00.csv: malformed instability table"):
        document.write_tables(broken, config)


# --------------------------------------------------------------------------------------------------
# Figures and report
# --------------------------------------------------------------------------------------------------


def test_figures_of_every_family_are_drawn_and_byte_identical_on_rerun(reported, tmp_path):
    out, config = reported
    names = {p.name for p in (out / "figures").glob("*.png")}
    assert names == {"lth_accuracy_lth_tiny.png", "lth_early_stop_lth_tiny.png", "stabilized_accuracy_stab_tiny.png",
                     "stabilized_instability_stab_tiny.png", "saleem_methods_saleem_tiny.png", "saleem_levels_saleem_tiny.png",
                     "saleem_hessian_saleem_tiny.png", "saleem_successive_saleem_tiny.png"}
    # Each PNG has its SVG beside it, and the folder holds nothing else.
    assert {p.name for p in (out / "figures").iterdir()} == names | {n.replace(".png", ".svg") for n in names}
    again = tmp_path / "tiny"
    shutil.copytree(out / "runs", again / "runs")
    assert cli.main(["report", str(again), "--config", str(config), "--claims", str(CLAIMS)]) == 0
    for name in sorted(p.name for p in (out / "figures").iterdir()) + ["report.md", "report.html", "metrics.json"]:
        folder = "figures/" if name.endswith((".png", ".svg")) else ""
        assert (again / folder / name).read_bytes() == (out / folder / name).read_bytes(), name


def test_report_gives_every_claim_a_verdict_and_is_viewable_offline(reported):
    out, _ = reported
    md = (out / "report.md").read_text()
    ids = [c["id"] for c in yaml.safe_load(CLAIMS.read_text())["claims"]]
    assert all(f"`{i}`" in md for i in ids)
    assert "not comparable" in md and "(secondary source)" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(list((out / "figures").glob("*.png")))
    assert "src='http" not in html and 'src="http' not in html


def test_metrics_json_has_the_headline_numbers_of_the_tables(reported):
    out, _ = reported
    metrics = json.loads((out / "metrics.json").read_text())
    jobs = pd.read_csv(out / "tables" / "jobs.csv")
    lth = jobs[jobs["experiment"] == "lth_tiny"]
    dense = lth[(lth["branch"] == "imp") & (lth["level"] == 0)]["final_test_acc"].mean()
    assert metrics["lth_tiny"]["dense_test_acc"] == pytest.approx(dense, abs=1e-6)
    assert metrics["lth_tiny"]["seeds"] == 2
    assert set(metrics["saleem_tiny"]["sparsest_test_acc"]) == {"imp", "oneshot", "finetune", "random_reinit", "random_prune"}
    counts = metrics["claims"]
    assert counts["not_checked"] > 0 and counts["not_run_at_this_scale"] > 0
    assert counts["reproduced"] + counts["not_reproduced"] > 0  # the qualitative claims ran on the tiny tree


def test_report_of_a_folder_without_runs_fails_with_a_message(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path), "--claims", str(CLAIMS)]) == 2
    assert "no run directories" in capsys.readouterr().err
