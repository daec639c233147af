"""The jobs table: what every job records, and what a table of older jobs says it does not know."""

from __future__ import annotations

import json

import pandas as pd
import yaml

from ticketbench import config
from ticketbench.report import tables

from conftest import tiny_run


def write_run(results, cfg: config.RunConfig, summaries: dict[str, dict], drop_reinit_start: bool = False):
    """A run directory as the workflow lays it out, with hand-written job summaries (no training)."""
    run = results / "runs" / cfg.name / f"seed{cfg.seeds.init}"
    stored = yaml.safe_load(config.dump(cfg))
    if drop_reinit_start:  # as written by the code before imp.reinit_start existed
        del stored["imp"]["reinit_start"]
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(stored))
    for job, s in summaries.items():
        (run / job).mkdir(parents=True)
        (run / job / "summary.json").write_text(json.dumps({"config_hash": cfg.hash(), **s}))
    return run


def job(branch: str, level: int, start: int, replicate: int | None = None, **recorded) -> dict:
    return {"branch": branch, "level": level, "replicate": replicate, "start_step": start, "end_step": 40,
            "density": 0.5, "final_test_acc": 0.9, **recorded}


def test_jobs_record_both_densities_and_where_fresh_weights_started(tmp_path):
    """A reinit trained from step 0 leaves rewind_step at k, though its branch sorts first."""
    cfg = config.from_dict(tiny_run(imp={"levels": 1, "rewind": "5it", "reinit_start": "zero"}))
    write_run(tmp_path, cfg, {
        "copy_random_reinit/level_01/rep_0": job("copy_random_reinit", 1, 0, 0, density_total=0.6, reinit_start="zero"),
        "imp/level_00": job("imp", 0, 0, density_total=1.0),
        "imp/level_01": job("imp", 1, 5, density_total=0.6),
        "random_reinit/level_01/rep_0": job("random_reinit", 1, 0, 0, density_total=0.6, reinit_start="zero"),
    })
    df = tables.jobs(tmp_path).set_index("job")
    assert set(df["rewind_step"]) == {5}
    assert df.loc["imp/level_01", "density_total"] == 0.6 and df.loc["imp/level_01", "density"] == 0.5
    assert df.loc["random_reinit/level_01/rep_0", "reinit_start"] == "zero"
    assert pd.isna(df.loc["imp/level_01", "reinit_start"])  # not a reinitialized network: empty
    assert tables.unrecorded(df.reset_index()) == []


def test_jobs_stored_before_the_new_columns_are_reported_as_unknown_not_filled_in(tmp_path):
    cfg = config.from_dict(tiny_run(imp={"levels": 1, "rewind": "5it"}))
    write_run(tmp_path, cfg, {"imp/level_00": job("imp", 0, 0), "imp/level_01": job("imp", 1, 5, density_total=0.6),
                              "random_reinit/level_01/rep_0": job("random_reinit", 1, 5, 0)}, drop_reinit_start=True)
    df = tables.jobs(tmp_path)
    assert df["reinit_start"].isna().all()
    assert tables.unrecorded(df) == [
        "2 of 3 job(s) were stored before density_total was recorded; it is unknown for them",
        "1 of 1 job(s) were stored before reinit_start was recorded; it is unknown for them"]
    old_csv = df.drop(columns=["density_total", "reinit_start"])  # a jobs.csv written before the columns existed
    assert [line.split(" were")[0] for line in tables.unrecorded(old_csv)] == ["3 of 3 job(s)", "1 of 1 job(s)"]


def test_reinit_start_at_its_default_keeps_the_group_of_runs_stored_before_it(tmp_path):
    """Runs that differ only in k share a group; a config.yaml written before reinit_start existed must join
    the group of a new one at the default, and a 'zero' run must not."""
    def group(name: str, rewind: str, drop: bool = False, **imp) -> str:
        cfg = config.from_dict(tiny_run(name=name, imp={"levels": 1, "rewind": rewind, **imp}))
        run = write_run(tmp_path / name, cfg, {"imp/level_00": job("imp", 0, 0)}, drop_reinit_start=drop)
        return tables.run_info(run)["group"]

    old = group("old", "5it", drop=True)
    assert group("new", "5it") == old == group("new_k10", "10it")
    assert group("zero", "5it", reinit_start="zero") != old


def test_a_run_records_its_resolved_schedule_and_the_tables_take_k_from_it(tmp_path):
    """k given in epochs is resolved once, by the run, into iterations in its config.yaml; the jobs table
    reads it there (no guessing from job start steps), and reloading the config ignores the record."""
    from ticketbench import data
    from ticketbench.imp import Run
    from ticketbench.runtime import Runtime

    cfg = config.from_dict(tiny_run(train={"steps": "4ep", "eval_every": "1ep"}, imp={"levels": 0, "rewind": "1ep"}))
    run = Run(cfg, tmp_path / "run", data.load(cfg.data), Runtime(device="cpu", progress=False))
    run.dense()
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    per_epoch = run.schedule.iterations_per_epoch
    assert stored["schedule"]["rewind"] == per_epoch and stored["schedule"]["total"] == 4 * per_epoch
    assert config.load(tmp_path / "run" / "config.yaml").hash() == cfg.hash()
    assert tables.run_info(tmp_path / "run")["rewind_step"] == per_epoch  # level 0 alone starts at 0, not k


def test_accuracy_curves_average_over_seeds_per_level_with_one_column_per_branch():
    jobs = pd.DataFrame([
        {"experiment": "e", "seed": s, "branch": b, "level": lv, "density": d, "density_total": d * 0.99,
         "final_test_acc": acc}
        for s, bump in ((0, 0.0), (1, 0.02))
        for b, lv, d, acc in (("imp", 0, 1.0, 0.90), ("imp", 1, 0.8, 0.92), ("random_reinit", 1, 0.8, 0.85))
        for acc in [acc + bump]])
    curves = tables.accuracy_curves(jobs)["e"]
    assert list(curves.columns) == [tables.CURVE_X, *config.JOB_BRANCHES]
    assert curves[tables.CURVE_X].tolist() == [99.0, 79.2]  # % of all weights (density_total)
    assert curves["imp"].round(6).tolist() == [91.0, 93.0]
    assert pd.isna(curves.loc[0, "random_reinit"]) and round(curves.loc[1, "random_reinit"], 6) == 86.0
    assert curves["oneshot"].isna().all()  # not run: an empty column, not a missing one


def test_dvc_plots_draw_every_branch_column_of_every_configs_curves():
    """dvc.yaml's data-series plots name the curves folder of each config DVC redraws, with the y list of
    config.JOB_BRANCHES: a branch left out there would silently vanish from `dvc plots diff`."""
    from conftest import REPO

    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    configs = dvc["vars"][0]["configs"]
    plots = {path: spec for entry in dvc["plots"] for path, spec in entry.items()}
    assert set(plots) == {f"results/{c}/tables/{tables.CURVES}" for c in configs}
    for spec in plots.values():
        assert spec["x"] == tables.CURVE_X and tuple(spec["y"]) == config.JOB_BRANCHES
