"""The job plan (ticketbench.plan) and the run layout (ticketbench.layout): what a workflow config asks
for, where each job's files go, and the `plan` and `status` commands that show both."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from synthetic_results import LEVELS, workflow_config
from test_workflow import SMOKE_JOBS
from ticketbench import cli, layout, plan
from ticketbench.checkpoints import JobLock

SCHEMA = REPO / plan.SCHEMA


def tiny(tmp_path: Path, edit=None) -> Path:
    """The synthetic workflow config with baselines, copies and analyses, written to tmp_path/tiny.yaml."""
    cfg = workflow_config()
    exps = cfg["experiments"]
    exps["lth_tiny"]["baselines"] = {"random_reinit": {"replicates": 2}, "random_prune": {"levels": [2]}}
    exps["stab_tiny_k10"]["baselines"] = {"random_reinit": {}}
    exps["stab_tiny_k10"]["instability"] = {"pairs": 2, "levels": [0, 2], "baselines": ["random_reinit"]}
    exps["saleem_tiny"]["finetune"] = {"levels": LEVELS}
    exps["saleem_tiny"]["hessian"] = {"branches": ["imp", "finetune"], "levels": [1, 2]}
    exps["saleem_tiny"]["successive"] = {}
    if edit:
        edit(cfg)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def resolved(path: Path) -> dict[str, plan.Experiment]:
    return plan.resolve_all(plan.load_config(path, SCHEMA), str(path))


# --------------------------------------------------------------------------------------------------
# The layout
# --------------------------------------------------------------------------------------------------


def test_a_job_directory_is_branch_level_and_replicate():
    assert layout.job_dir("RUN", "imp", 3) == Path("RUN/imp/level_03")
    assert layout.job_dir("RUN", "copy_random_prune", 12, 1) == Path("RUN/copy_random_prune/level_12/rep_1")
    assert layout.run_dir(layout.results_dir("quick"), "lth_lenet", 1) == Path("results/quick/runs/lth_lenet/seed1")
    assert Path("RUN/random_reinit/level_02/rep_0/summary.json").match(layout.JOB_GLOB)


def test_analysis_tables_are_named_after_the_level_and_the_branch_they_read():
    assert layout.analysis_name("instability", "copy", 3) == "level_03"  # the IMP subnetwork's copies
    assert layout.analysis_name("instability", "copy_random_reinit", 3) == "copy_random_reinit_level_03"
    assert layout.analysis_name("hessian", "finetune", 2) == "finetune_level_02"
    assert layout.analysis_name("successive", "imp", 0) == "level_00"
    assert layout.analysis_csv("RUN", "hessian", "imp_level_01") == Path("RUN/analysis/hessian/imp_level_01.csv")


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------


def test_the_plan_counts_every_job_of_every_kind(tmp_path):
    counts = plan.counts(resolved(tiny(tmp_path)), "results/tiny")
    levels = LEVELS + 1  # the dense network and the pruned levels
    assert counts == {
        "lth_tiny": {"imp": 2 * levels, "random_reinit": 2 * LEVELS * 2, "random_prune": 2 * 1},  # 2 seeds
        "stab_tiny_k0": {"imp": levels},
        # 2 pairs of copies at levels 0 and 2, and of random_reinit's replicate 0 at level 2 (pruned only)
        "stab_tiny_k10": {"imp": levels, "random_reinit": LEVELS, "copy": 2 * 4, "copy_random_reinit": 4,
                          "instability": 3},
        "saleem_tiny": {"imp": levels, "finetune": LEVELS, "hessian": 2 * 2, "successive": LEVELS},
    }


def test_the_plan_lists_the_files_the_workflow_asks_for(tmp_path):
    exp = resolved(tiny(tmp_path))["stab_tiny_k10"]
    targets = plan.targets(exp, "results/tiny")
    run = "results/tiny/runs/stab_tiny_k10/seed0"
    assert f"{run}/imp/level_00/summary.json" in targets
    assert f"{run}/copy_random_reinit/level_02/rep_3/summary.json" in targets
    assert f"{run}/analysis/instability/copy_random_reinit_level_02.csv" in targets
    assert f"{run}/analysis/instability/level_00.csv" in targets
    assert len(targets) == len(set(targets))


def test_the_schema_fills_its_defaults_without_sharing_them(tmp_path):
    cfg = plan.load_config(tiny(tmp_path), SCHEMA)
    assert cfg["threads"] == 1 and cfg["report"] is True
    a, b = cfg["experiments"]["lth_tiny"]["baselines"], cfg["experiments"]["stab_tiny_k0"]["baselines"]
    assert a["random_prune"]["replicates"] == 1 and b == {}
    b["oneshot"] = {}
    assert "oneshot" not in cfg["experiments"]["saleem_tiny"]["baselines"]


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["experiments"]["lth_tiny"].update(seeds=[]), "experiments.lth_tiny.seeds"),
    (lambda c: c["experiments"]["lth_tiny"]["baselines"].update(oneshot={"levels": [3]}),
     "experiments.lth_tiny.baselines.oneshot.levels: level 3 is outside 1..2 (imp.levels = 2)"),
    (lambda c: c["experiments"]["stab_tiny_k10"]["instability"].update(baselines=["random_prune"]),
     "experiments.stab_tiny_k10.instability.baselines: random_prune is not run at level 2 (add it under baselines)"),
    (lambda c: c["experiments"]["saleem_tiny"]["hessian"].update(branches=["oneshot"]),
     "experiments.saleem_tiny.hessian.branches: oneshot is not run by this experiment"),
    (lambda c: c["experiments"]["saleem_tiny"]["run"]["imp"].update(rewind="50it"),
     "experiments.saleem_tiny.run.imp.rewind"),
])
def test_an_invalid_config_is_one_error_naming_the_file_and_the_key(tmp_path, edit, message):
    path = tiny(tmp_path, edit)
    with pytest.raises(plan.WorkflowConfigError) as e:
        resolved(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_plan_command_counts_what_snakemake_counts(capsys):
    """config/smoke.yaml's jobs per kind add up to `snakemake -n`'s, less its report and all jobs."""
    assert cli.main(["plan", str(REPO / "config/smoke.yaml"), "--schema", str(SCHEMA), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["snakemake_also_counts"] == ["report", "all"]
    assert out["total"] == sum(SMOKE_JOBS.values()) - SMOKE_JOBS["report"] - SMOKE_JOBS["all"]
    kinds = {k: sum(e.get(k, 0) for e in out["experiments"].values()) for k in plan.KINDS}
    assert kinds["imp"] == SMOKE_JOBS["dense"] + SMOKE_JOBS["imp_level"]
    assert kinds["instability"] == SMOKE_JOBS["instability"] + SMOKE_JOBS["baseline_instability"]
    assert kinds["hessian"] == SMOKE_JOBS["hessian"] and kinds["finetune"] == SMOKE_JOBS["finetune"]
    assert cli.main(["plan", str(REPO / "config/smoke.yaml"), "--schema", str(SCHEMA)]) == 0
    table = capsys.readouterr().out
    assert [line.split() for line in table.splitlines() if line.startswith("total")][-1] == ["total", "all", str(out["total"])]
    assert "snakemake -n counts these jobs and its rules report and all" in table


def test_plan_of_a_broken_config_is_one_line_and_exit_2(tmp_path, capsys):
    path = tiny(tmp_path, lambda c: c["experiments"]["lth_tiny"].update(seeds=[]))
    assert cli.main(["plan", str(path), "--schema", str(SCHEMA)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ticketbench: error:") and "experiments.lth_tiny.seeds" in err[0]


# --------------------------------------------------------------------------------------------------
# Status
# --------------------------------------------------------------------------------------------------


def test_status_tells_done_running_checkpointed_diverged_and_missing_jobs_apart(tmp_path, capsys):
    def one_experiment_of_four_networks(c):
        c.update(experiments={"stab_tiny_k0": c["experiments"]["stab_tiny_k0"]})
        c["experiments"]["stab_tiny_k0"]["run"]["imp"]["levels"] = 3

    path = tiny(tmp_path, one_experiment_of_four_networks)
    results = tmp_path / "results" / "tiny"
    run = layout.run_dir(results, "stab_tiny_k0", 0)
    done, interrupted, running, lost = (layout.job_dir(run, "imp", lv) for lv in range(4))
    for folder in (done, interrupted, running, lost):
        folder.mkdir(parents=True)
    (lost / layout.CHECKPOINT).write_bytes(b"")  # its last good state, kept beside the record
    (lost / layout.METRICS).write_text("step,epoch,test_acc\n0,0.0,0.1\n")
    (lost / layout.DIVERGED).write_text('{"step": 7, "reason": "training loss became nan"}')
    (done / layout.SUMMARY).write_text("{}")
    (interrupted / layout.CHECKPOINT).write_bytes(b"")  # status never opens it (a torch file)
    (interrupted / layout.METRICS).write_text("step,epoch,test_acc\n0,0.0,0.1\n20,1.0,0.5\n")
    (running / layout.METRICS).write_text("step,epoch,test_acc\n10,0.5,0.3\n")
    with JobLock(running):
        states = {j.level: plan.status(j) for j in plan.jobs(resolved(path)["stab_tiny_k0"], results)}
        assert cli.main(["status", str(results), "--config", str(path), "--schema", str(SCHEMA), "--all"]) == 0
    assert states == {0: plan.Status("done"), 1: plan.Status("checkpointed", 20), 2: plan.Status("running", 10),
                      3: plan.Status("diverged", 0)}
    assert plan.status(plan.jobs(resolved(path)["stab_tiny_k0"], results)[2]) == plan.Status("missing", 10)
    out = capsys.readouterr().out
    assert [str(interrupted), "checkpointed", "20"] in [line.split() for line in out.splitlines()]
    summary = out.split("\n\n")[1].splitlines()
    assert summary[0].split()[2:] == list(plan.STATES)
    assert summary[2].split()[:6] == ["stab_tiny_k0", "imp", "1", "1", "1", "1"]


def test_status_finds_the_results_of_a_config_by_its_name(tmp_path, capsys, monkeypatch):
    path = tiny(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["status", str(path), "--schema", str(SCHEMA), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == sum(sum(c.values()) for c in plan.counts(resolved(path), "results/tiny").values())
    assert {r["state"] for r in rows} == {"missing"}
    assert all(r["output"].startswith(os.path.join("results", "tiny", "runs")) for r in rows)


# --------------------------------------------------------------------------------------------------
# Packs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_packs_hold_every_training_job_once_and_only_need_earlier_packs(tmp_path, size):
    """Each pack is one level and stage of one experiment; the packs it needs train what its jobs start
    from (plan.needs), and come before it, so the workflow's DAG of packs has no cycle."""
    for exp in resolved(tiny(tmp_path)).values():
        packs = plan.packs(exp, "results/tiny", size)
        training = [j for j in plan.jobs(exp, "results/tiny") if j.trains]
        assert sorted(map(str, (j.output for p in packs for j in p.jobs))) == sorted(str(j.output) for j in training)
        names = [p.name for p in packs]
        assert len(set(names)) == len(names)
        home = {(j.seed, j.branch, j.level, j.replicate): p.name for p in packs for j in p.jobs}
        for i, p in enumerate(packs):
            assert 1 <= len(p.jobs) <= size
            assert len({(j.level, plan.stage_of(j.branch)) for j in p.jobs}) == 1
            assert set(p.needs) <= set(names[:i])
            assert set(p.needs) == {home[(j.seed, *n)] for j in p.jobs for n in plan.needs(j.branch, j.level)}


def test_a_job_starts_from_what_the_papers_rewind_or_prune():
    assert plan.needs("imp", 0) == []
    assert plan.needs("imp", 3) == [("imp", 2, None)]
    assert plan.needs("random_prune", 3) == [("imp", 3, None)]
    assert plan.needs("copy_random_reinit", 3) == [("imp", 3, None), ("random_reinit", 3, 0)]
    assert plan.needs("finetune", 1) == [("imp", 0, None)]
    assert plan.needs("finetune", 2) == [("finetune", 1, None)]


def test_packs_put_the_seeds_of_a_level_side_by_side(tmp_path):
    cfg = workflow_config()
    cfg["experiments"]["lth_tiny"]["seeds"] = [0, 1, 2]
    path = tmp_path / "seeds.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    exp = resolved(path)["lth_tiny"]
    level_1 = next(p for p in plan.packs(exp, "results/tiny", 8) if p.name == "imp_level_01_00")
    assert level_1.members() == ["seed0/imp/level_01", "seed1/imp/level_01", "seed2/imp/level_01"]
    assert level_1.needs == ("imp_level_00_00",)
