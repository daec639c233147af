"""The Snakemake workflow: the job plan per config, config rejection before any job, and (slow) the smoke
workflow end to end with its rerun behaviour.

Every snakemake call runs in a scratch working directory that links the repository's workflow/ (whose
Snakefile Snakemake finds without -s) and profiles/ and copies config/, so results, .snakemake/ metadata
and config edits stay out of the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

BIN = Path(sys.executable).parent
SNAKEMAKE = [str(BIN / "snakemake")]

# Jobs of `snakemake -n --configfile config/smoke.yaml`, per rule, derived from config/smoke.yaml:
SMOKE_JOBS = {
    "dense": 3,  # 3 experiments x 1 seed
    "imp_level": 5,  # levels 1-2 (lth_lenet) + 1 (stabilized_k10) + 1-2 (saleem)
    # lth_lenet: random_reinit at levels 1, 2 + random_prune at level 2; stabilized_k10: 2 copies at
    # levels 0 and 1, random_reinit and random_prune at level 1 and 2 copies of each; saleem: oneshot
    # at level 2
    "branch": 3 + (4 + 2 + 4) + 1,
    "finetune": 2,  # saleem: fine-tuning levels 1, 2
    "instability": 2,  # stabilized_k10: levels 0, 1
    "baseline_instability": 2,  # stabilized_k10: the copies of random_reinit and random_prune at level 1
    "hessian": 3,  # saleem: imp, oneshot, finetune at level 2
    "successive": 2,  # saleem: levels 0->1, 1->2
    "report": 1,
    "all": 1,
}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name in ("workflow", "profiles"):
        (tmp_path / name).symlink_to(REPO / name)
    shutil.copytree(REPO / "config", tmp_path / "config")
    return tmp_path


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    # Snakemake logs to both streams; stdout gets both, in order.
    proc = subprocess.run([*SNAKEMAKE, *args], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> number of jobs."""
    table = output[output.index("Job stats:"):]
    rows = re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)
    return {rule: int(n) for rule, n in rows if rule != "total"}


def scheduled_jobs(output: str) -> list[dict[str, str]]:
    """Rule and wildcards of every job a dry run would execute."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if m:
            w = re.search(r"^\s+wildcards: (.*)$", block, flags=re.M)
            wildcards = dict(kv.split("=", 1) for kv in w.group(1).split(", ")) if w else {}
            jobs.append({"rule": m.group(1), **wildcards})
    return jobs


def edit_config(path: Path, edit) -> None:
    """Edit a config file. Experiments that share a YAML anchor share objects once loaded: a JSON round
    trip unshares them, so an edit reaches only the experiment it names."""
    cfg = json.loads(json.dumps(yaml.safe_load(path.read_text())))
    edit(cfg)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


# --------------------------------------------------------------------------------------------------
# The job plan
# --------------------------------------------------------------------------------------------------


def test_smoke_dry_run_lists_every_rule_with_the_expected_job_counts(workdir):
    out = snakemake(workdir, "-n", "--configfile", "config/smoke.yaml").stdout
    assert job_counts(out) == SMOKE_JOBS


def test_snakemake_run_from_the_repository_root_finds_workflow_snakefile(tmp_path):
    """The Snakemake workflow catalog looks only for workflow/Snakefile once a workflow/ folder exists; so does
    Snakemake run from the repository root with no -s when no top-level Snakefile takes precedence, and the
    file it finds plans the whole smoke workflow."""
    assert not [p.name for p in REPO.iterdir() if p.name.lower() == "snakefile"]
    # The repository root as it is, but for the configs (copied) and what a run writes.
    for entry in REPO.iterdir():
        if entry.name not in ("config", "results", ".snakemake", ".git"):
            (tmp_path / entry.name).symlink_to(entry)
    shutil.copytree(REPO / "config", tmp_path / "config")
    out = snakemake(tmp_path, "-n", "--verbose", "--configfile", "config/smoke.yaml").stdout
    assert re.search(r"^\s*Snakefile: (.*)$", out, flags=re.M).group(1) == str(tmp_path / "workflow" / "Snakefile")
    assert job_counts(out) == SMOKE_JOBS


def test_the_configuration_guide_names_every_config_file_and_every_key_of_the_schema():
    """config/README.md is the configuration guide the workflow catalog shows: a key added to the schema or a
    config file added to config/ without a line there is caught here."""
    guide = (REPO / "config/README.md").read_text()
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    keys = [*schema["properties"], *schema["$defs"]["experiment"]["properties"]]
    files = [str(p.relative_to(REPO / "config")) for p in (REPO / "config").rglob("*.yaml")]
    assert [k for k in keys if f"`{k}`" not in guide] == []
    assert [f for f in files if f"`{f}`" not in guide] == []


def test_every_training_job_runs_the_cli_on_its_experiment_and_seed(workdir):
    out = snakemake(workdir, "-n", "--printshellcmds", "--configfile", "config/smoke.yaml").stdout
    commands = re.findall(r"^Shell command: (ticketbench (?:dense|imp|branch|finetune) .*)$", out, flags=re.M)
    assert len(commands) == SMOKE_JOBS["dense"] + SMOKE_JOBS["imp_level"] + SMOKE_JOBS["branch"] + SMOKE_JOBS["finetune"]
    for cmd in commands:
        exp, seed = re.search(r"--experiment (\S+) --seed (\d+)", cmd).groups()
        assert cmd.startswith(tuple(f"ticketbench {rule} config/smoke.yaml" for rule in ("dense", "imp", "branch", "finetune")))
        assert f"--run-dir results/smoke/runs/{exp}/seed{seed} " in cmd
        assert "--threads 1 --no-progress" in cmd


def test_the_default_config_is_the_paper_scale_and_all_configs_pass_the_linter(workdir):
    """`snakemake --lint` parses the workflow with a config (schema, every run config, every level) and
    exits 1 on any finding; with no --configfile it reads config/config.yaml."""
    for args in ([], ["--configfile", "config/quick.yaml"], ["--configfile", "config/smoke.yaml"]):
        proc = snakemake(workdir, "--lint", *args)
        assert "Congratulations" in proc.stdout
    paper = yaml.safe_load((REPO / "config/config.yaml").read_text())
    assert paper["name"] == "paper" and paper["gpu"] == 1
    assert {spec["family"] for spec in paper["experiments"].values()} == {"lth", "stabilized", "saleem"}


def test_the_workflow_files_are_formatted():
    proc = subprocess.run([str(BIN / "snakefmt"), "--check", "workflow"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def rewind(spec) -> int:
    return int(spec["run"]["imp"]["rewind"].removesuffix("it"))


def test_paper_config_follows_the_papers_protocols():
    """Spot checks against ../shared/papers/reported_numbers.md (P-LTHv5 Fig. 2 table and App. G-I)."""
    exps = yaml.safe_load((REPO / "config/config.yaml").read_text())["experiments"]
    lenet = exps["lth_lenet"]["run"]
    assert lenet["train"] == {"optimizer": "adam", "lr": 0.0012, "batch_size": 60, "steps": "50000it",
                              "eval_every": "100it"}
    assert lenet["data"]["validation_size"] == 5000 and lenet["model"]["init"] == "glorot_normal"
    assert lenet["prune"] == {"strategy": "layerwise", "rates": {"fc": 0.2, "output": 0.1}}
    assert len(exps["lth_lenet"]["seeds"]) == 5 and exps["lth_lenet"]["baselines"]["random_reinit"]["replicates"] == 3
    resnet = exps["lth_resnet20"]["run"]
    assert resnet["prune"] == {"strategy": "global", "rates": {"conv": 0.2}}  # shortcuts and output kept
    assert resnet["train"]["steps"] == "30000it" and resnet["train"]["milestones"] == ["20000it", "25000it"]
    assert exps["lth_resnet20_warmup"]["run"]["train"]["warmup"] == "20000it"
    for net in ("resnet20", "vgg16"):  # LMC's grid, extended past its onsets (2000 and 1000)
        ks = sorted(rewind(spec) for eid, spec in exps.items() if eid.startswith(f"stabilized_{net}_k"))
        assert ks == [0, 100, 500, 1000, 2000, 3000, 5000]
    saleem = exps["saleem_resnet20"]
    assert saleem["run"]["imp"] == {"levels": 10, "rewind": "2000it"}
    assert saleem["run"]["train"]["steps"] == "160ep" and saleem["run"]["train"]["milestones"] == ["80ep", "120ep"]
    assert set(saleem["baselines"]) == {"oneshot", "random_reinit", "random_prune"} and saleem["finetune"]["levels"] == 10
    assert saleem["successive"]["mask"] == ["common", "none"]


def test_paper_config_has_an_experiment_for_every_rewinding_claim():
    """P-STAB's rewinding (Fig. 5) on the LTH's own standard Resnet-18 / VGG-19, LTH App. I.1's
    layer-wise VGG-19 and LMC's LeNet: each the protocol of its paper, changed only where the paper
    changes it."""
    exps = yaml.safe_load((REPO / "config/config.yaml").read_text())["experiments"]
    for net, levels in (("resnet20", 8), ("vgg19", 17)):
        rewound = {eid: spec for eid, spec in exps.items() if eid.startswith(f"lth_{net}_k")}
        assert sorted(rewind(spec) for spec in rewound.values()) == [100, 500, 1000, 2000]
        for spec in rewound.values():
            assert spec["family"] == "stabilized" and len(spec["seeds"]) == 3  # P-STAB: three trials
            assert {**spec["run"], "imp": None} == {**exps[f"lth_{net}"]["run"], "imp": None}
            assert spec["run"]["imp"]["levels"] == levels
    layerwise, warmup = exps["lth_vgg19_layerwise"]["run"], exps["lth_vgg19_warmup"]["run"]
    assert layerwise["prune"] == {"strategy": "layerwise", "rates": {"conv": 0.2}}
    assert {**layerwise, "prune": None} == {**warmup, "prune": None}
    lenets = {eid: spec for eid, spec in exps.items() if eid.startswith("stabilized_lenet_k")}
    assert sorted(rewind(spec) for spec in lenets.values()) == [0, 100, 500, 1000, 2000]
    for spec in lenets.values():
        train = spec["run"]["train"]
        assert (train["optimizer"], train["lr"], train["steps"]) == ("adam", 0.0012, "24000it")  # LMC Table 1
        assert spec["run"]["imp"]["levels"] == 15 and spec["instability"]["levels"] == [0, 15]  # 0.8^15 = 3.5 %


def test_every_protocol_the_claims_name_has_an_experiment_at_paper_scale():
    """A claim is "not run at this scale" only if config/config.yaml runs its protocol: every protocol
    of config/claims.yaml matches at least one paper-scale experiment's run config."""
    from dataclasses import asdict

    from ticketbench.config import experiment_run
    from ticketbench.report.claims import _equal, _get

    protocols = yaml.safe_load((REPO / "config/claims.yaml").read_text())["protocols"]
    exps = yaml.safe_load((REPO / "config/config.yaml").read_text())["experiments"]
    runs = [json.loads(json.dumps(asdict(experiment_run(spec, eid, spec["seeds"][0], "config.yaml"))))
            for eid, spec in exps.items()]
    unmatched = [name for name, p in protocols.items()
                 if not any(all(_equal(_get(run, k), v, k) for k, v in p["match"].items()) for run in runs)]
    assert unmatched == []


def test_the_paper_dry_run_plans_the_new_jobs(workdir):
    """Random-baseline copies and their instability for every LMC ResNet-20 / VGG-16 / LeNet rewind
    point, the finetune branch (LTH App. B) on LeNet and Conv-2/4/6, the new experiments' chains."""
    jobs = scheduled_jobs(snakemake(workdir, "-n", "--configfile", "config/config.yaml").stdout)
    exps = yaml.safe_load((REPO / "config/config.yaml").read_text())["experiments"]
    lmc = [eid for eid in exps if re.match(r"stabilized_(resnet20|vgg16|lenet)_k\d+$", eid)]
    assert len(lmc) == 19
    for eid in lmc:
        level = f"{exps[eid]['instability']['levels'][-1]:02d}"
        for copied in ("copy_random_reinit", "copy_random_prune"):
            analysed = [j for j in jobs if j["rule"] == "baseline_instability" and j["experiment"] == eid
                        and j["branch"] == copied]
            assert sorted((j["seed"], j["level"]) for j in analysed) == [(s, level) for s in "012"]
            copies = [j for j in jobs if j["rule"] == "branch" and j["experiment"] == eid and j["kind"] == copied]
            assert len(copies) == 3 * 6  # 3 seeds x 3 pairs
    for eid in ("lth_lenet", "lth_conv2", "lth_conv4", "lth_conv6"):
        assert sum(j["rule"] == "finetune" and j["experiment"] == eid for j in jobs) == 5 * 20
    for eid, chain in (("lth_resnet20_k500", 3 * 9), ("lth_vgg19_k100", 3 * 18), ("lth_vgg19_layerwise", 5 * 21),
                       ("stabilized_resnet20_k5000", 3 * 12), ("stabilized_lenet_k0", 3 * 16)):
        assert sum(j["rule"] in ("dense", "imp_level") and j["experiment"] == eid for j in jobs) == chain


def test_quick_runs_the_new_branches_and_both_successive_masks(workdir):
    """The quick run exercises every new job kind: LeNet's finetune chain (LTH App. B), the SGD-noise
    copies of k20's random baselines, and successive-level interpolation with and without the common mask.
    Counted one job per network (pack=1; quick packs them, which test_packs_* covers)."""
    out = snakemake(workdir, "-n", "--printshellcmds", "--configfile", "config/quick.yaml", "--config", "pack=1").stdout
    jobs = scheduled_jobs(out)
    assert sum(j["rule"] == "finetune" and j["experiment"] == "lth_lenet" for j in jobs) == 2 * 10
    analysed = {(j["experiment"], j["branch"], j["level"]) for j in jobs if j["rule"] == "baseline_instability"}
    assert analysed == {("stabilized_resnet20_k20", b, "03") for b in ("copy_random_reinit", "copy_random_prune")}
    successive = re.findall(r"^Shell command: (ticketbench interpolate .*)$", out, flags=re.M)
    assert len(successive) == 3 and all(" --mask common none " in cmd for cmd in successive)


def test_a_copy_of_a_random_baseline_shares_that_baselines_replicate_0(workdir):
    """Every SGD-noise copy of a random baseline starts from the baseline's replicate 0 (its fresh
    init or random mask), so it waits for that job; the instability job interpolates pair r = copies
    2r, 2r+1 of that branch."""
    target = "results/smoke/runs/stabilized_k10/seed0/analysis/instability/copy_random_prune_level_01.csv"
    out = snakemake(workdir, "-n", "--printshellcmds", "--configfile", "config/smoke.yaml", "--", target).stdout
    jobs = scheduled_jobs(out)
    trained = sorted((j["rule"], j.get("kind", ""), j.get("level"), j.get("replicate")) for j in jobs)
    assert trained == [("baseline_instability", "", "01", None), ("branch", "copy_random_prune", "01", "0"),
                       ("branch", "copy_random_prune", "01", "1"), ("branch", "random_prune", "01", "0"),
                       ("dense", "", None, None), ("imp_level", "", "01", None)]
    assert "ticketbench instability results/smoke/runs/stabilized_k10/seed0 --level 01 --branch copy_random_prune" in out


# --------------------------------------------------------------------------------------------------
# Invalid configs are rejected at parse time, naming the key, before any job starts
# --------------------------------------------------------------------------------------------------


def _set(*path_and_value):
    *path, value = path_and_value

    def edit(cfg):
        node = cfg
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


INVALID = {
    "unknown run key": (_set("experiments", "saleem", "run", "train", "lr_decay", 0.1),
                        "experiments.saleem.run.train.lr_decay: unknown key"),
    "wrong type": (_set("experiments", "saleem", "run", "train", "batch_size", "32"),
                   "experiments.saleem.run.train.batch_size: expected an integer"),
    "rate outside (0, 1)": (_set("experiments", "saleem", "run", "prune", "rates", {"fc": 1.2}),
                            "experiments.saleem.run.prune.rates.fc: 1.2 is outside (0, 1)"),
    # 320 training examples / batch 32 = 10 iterations per epoch; training lasts 40 iterations
    "rewind past the end of training": (_set("experiments", "saleem", "run", "imp", {"levels": 2, "rewind": "5ep"}),
                                        "experiments.saleem.run.imp.rewind: step 50 (5ep) is not before the end"),
    "unknown workflow key": (_set("experiments", "saleem", "hesian", {"levels": "all"}),
                             "experiments.saleem: Additional properties are not allowed ('hesian'"),
    "wrong workflow type": (_set("threads", "two"), "threads: 'two' is not of type 'integer'"),
    "level beyond imp.levels": (_set("experiments", "saleem", "baselines", "oneshot", {"levels": [3]}),
                                "experiments.saleem.baselines.oneshot.levels: level 3 is outside 1..2"),
    "hessian of a branch that is not run": (_set("experiments", "saleem", "hessian", {"branches": ["random_prune"]}),
                                            "experiments.saleem.hessian.branches: random_prune is not run"),
    "copies of a baseline that is not run": (
        _set("experiments", "stabilized_k10", "baselines", {"random_reinit": {"levels": "all"}}),
        "experiments.stabilized_k10.instability.baselines: random_prune is not run at level 1 (add it under baselines)"),
    "copies of a baseline of the dense network": (
        _set("experiments", "stabilized_k10", "instability", {"levels": [0], "baselines": ["random_prune"]}),
        "experiments.stabilized_k10.instability.baselines: random_prune needs an instability level >= 1"),
}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_an_invalid_config_is_rejected_before_any_job_naming_the_key(workdir, case):
    edit, message = INVALID[case]
    config = workdir / "config/smoke.yaml"
    edit_config(config, edit)
    proc = snakemake(workdir, "--cores", "1", "--configfile", "config/smoke.yaml", check=False)
    assert proc.returncode != 0
    assert f"config/smoke.yaml: {message}" in proc.stdout
    assert not (workdir / "results").exists()


def test_experiments_changed_on_the_command_line_are_refused(workdir):
    """The jobs read the config file, so an override with --config would not be what trains."""
    proc = snakemake(workdir, "-n", "--configfile", "config/smoke.yaml", "--config",
                     'experiments={"saleem": {"seeds": [1]}}', check=False)
    assert proc.returncode != 0
    assert "experiments: differ from config/smoke.yaml" in proc.stdout


def test_runtime_keys_of_the_config_reach_every_job(workdir):
    """The dataset checksum opt-out, strict determinism, the device, the float32 precision and the layout are
    config keys; they change how every job runs (training and analyses), never its identity."""
    def edit(cfg):
        cfg.update(verify_data=False, deterministic=True, device="cpu", memory_format="contiguous", precision="tf32")

    edit_config(workdir / "config/smoke.yaml", edit)
    out = snakemake(workdir, "-n", "--printshellcmds", "--configfile", "config/smoke.yaml").stdout
    commands = re.findall(r"^Shell command: (ticketbench (?!report).*)$", out, flags=re.M)
    assert len(commands) == sum(n for rule, n in SMOKE_JOBS.items() if rule not in ("report", "all"))
    for cmd in commands:
        assert all(flag in cmd for flag in ("--no-verify", "--deterministic", "--device cpu",
                                            "--memory-format contiguous", "--precision tf32")), cmd


@pytest.mark.parametrize("gpu, device", [(1, "cuda"), (0, "auto")])
def test_jobs_of_a_config_that_asks_for_gpus_require_cuda_instead_of_falling_back_to_the_cpu(workdir, gpu, device):
    """device auto with gpu > 0 becomes --device cuda: a job without a usable GPU stops with an error naming the
    cause (driver, --nv, CUDA_VISIBLE_DEVICES) instead of training on CPU threads inside a GPU allocation."""
    edit_config(workdir / "config/smoke.yaml", lambda cfg: cfg.update(gpu=gpu, device="auto"))
    out = snakemake(workdir, "-n", "--printshellcmds", "--configfile", "config/smoke.yaml").stdout
    commands = re.findall(r"^Shell command: (ticketbench (?!report).*)$", out, flags=re.M)
    assert commands and all(f"--device {device} " in cmd for cmd in commands)
    # ... and each job that asks for a GPU takes one of its own (ticketbench gpu-slot; tests/test_gpu_slots.py)
    slot = "ticketbench gpu-slot --gpus 1 -- ticketbench "
    assert all(cmd.startswith(slot) == (gpu > 0) for cmd in commands), commands


def test_a_data_root_that_does_not_exist_stops_the_workflow_before_any_job(workdir):
    edit_config(workdir / "config/quick.yaml", lambda cfg: cfg.update(data_root="/nonexistent/datasets"))
    proc = snakemake(workdir, "-n", "--configfile", "config/quick.yaml", check=False)
    assert proc.returncode != 0
    assert "config/quick.yaml: data_root: /nonexistent/datasets is not a directory" in proc.stdout


@pytest.mark.parametrize("target, message", [
    ("results/smoke/runs/nope/seed0/imp/level_00/summary.json",
     "config/smoke.yaml has no experiment 'nope' (known: lth_lenet, saleem, stabilized_k10)"),
    ("results/smoke/runs/saleem/seed7/imp/level_00/summary.json",
     "experiment saleem of config/smoke.yaml has no seed 7 (seeds: 0)"),
])
def test_a_target_of_an_unknown_experiment_or_seed_names_the_known_ones(workdir, target, message):
    proc = snakemake(workdir, "-n", "--configfile", "config/smoke.yaml", "--", target, check=False)
    assert proc.returncode != 0
    assert f"WorkflowConfigError: {message}" in proc.stdout and "KeyError" not in proc.stdout


# --------------------------------------------------------------------------------------------------
# End to end (slow): the smoke workflow, a rerun, and a change of one experiment
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_done(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("smoke")
    for name in ("workflow", "profiles"):
        (work / name).symlink_to(REPO / name)
    shutil.copytree(REPO / "config", work / "config")
    snakemake(work, "--cores", "2", "--configfile", "config/smoke.yaml", timeout=1800)
    return work


@pytest.mark.slow
def test_smoke_workflow_runs_end_to_end(smoke_done):
    results = smoke_done / "results/smoke"
    summaries = list(results.glob("runs/*/seed*/**/summary.json"))
    trained = sum(SMOKE_JOBS[r] for r in ("dense", "imp_level", "branch", "finetune"))
    assert len(summaries) == trained
    assert len(list(results.glob("runs/saleem/seed0/analysis/hessian/*.csv"))) == SMOKE_JOBS["hessian"]
    assert len(list(results.glob("runs/*/seed0/analysis/instability/*.csv"))) == (SMOKE_JOBS["instability"]
                                                                                 + SMOKE_JOBS["baseline_instability"])
    assert len(list(results.glob("runs/*/seed0/analysis/successive/*.csv"))) == SMOKE_JOBS["successive"]
    for name in ("report.md", "report.html", "metrics.json"):
        assert (results / name).stat().st_size > 0


@pytest.mark.slow
def test_a_rerun_does_nothing(smoke_done):
    out = snakemake(smoke_done, "--cores", "2", "--configfile", "config/smoke.yaml").stdout
    assert "Nothing to be done" in out


@pytest.mark.slow
def test_changing_one_experiment_reruns_only_its_jobs(smoke_done):
    changed = smoke_done / "config/smoke_changed.yaml"
    shutil.copy(smoke_done / "config/smoke.yaml", changed)
    edit_config(changed, _set("experiments", "lth_lenet", "run", "train", "lr", 0.04))
    out = snakemake(smoke_done, "-n", "--configfile", "config/smoke_changed.yaml").stdout
    jobs = scheduled_jobs(out)
    assert {j.get("experiment") for j in jobs if j["rule"] not in ("report", "all")} == {"lth_lenet"}
    lth = 3 + 3  # lth_lenet: levels 0-2 and its 3 baselines
    assert sum(j["rule"] not in ("report", "all") for j in jobs) == lth
    assert {j["rule"] for j in jobs} >= {"report", "all"}


def test_packs_replace_the_training_jobs_and_feed_the_analyses(workdir):
    """pack: P > 1 plans one job per pack of up to P training jobs (ticketbench.plan.packs) and nothing
    else changes: the analyses and the report wait for the packs that train what they read."""
    out = snakemake(workdir, "-n", "--printshellcmds", "--configfile", "config/smoke.yaml", "--config", "pack=4").stdout
    counts = job_counts(out)
    training = ("dense", "imp_level", "branch", "finetune")
    assert not set(training) & set(counts)
    analyses = {k: v for k, v in SMOKE_JOBS.items() if k not in training}
    assert {k: v for k, v in counts.items() if k != "pack"} == analyses
    # 3 experiments: level 0, 1 (2) of each chain, the branches of each level, saleem's fine-tuning levels.
    assert counts["pack"] < sum(SMOKE_JOBS[r] for r in training)
    commands = re.findall(r"^Shell command: (ticketbench pack .*)$", out, flags=re.M)
    assert len(commands) == counts["pack"]
    assert all("--pack-mode auto" in c and "--manifest results/smoke/runs/" in c for c in commands)
    members = [(re.search(r"--experiment (\S+)", c).group(1), m)
               for c in commands for m in re.findall(r" (seed\d+/\S+/level_\d\d(?:/rep_\d+)?)", c)]
    assert len(members) == len(set(members)) == sum(SMOKE_JOBS[r] for r in training)


def test_the_plan_command_counts_the_packs_snakemake_runs(workdir, capsys):
    """config/quick.yaml packs its training jobs (pack: 8): `ticketbench plan` counts the workflow's jobs
    as `snakemake -n` does."""
    from ticketbench import cli

    counts = job_counts(snakemake(workdir, "-n", "--configfile", "config/quick.yaml").stdout)
    assert cli.main(["plan", str(REPO / "config/quick.yaml"), "--schema", str(REPO / "workflow/schemas/config.schema.yaml"),
                     "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["pack"] == 8 and sum(planned["packs"].values()) == counts["pack"]
    assert planned["workflow_jobs"] == sum(counts.values())


@pytest.mark.slow
def test_a_packed_workflow_writes_the_tables_of_the_lone_one(smoke_done, tmp_path):
    """On the CPU a pack trains its jobs one after another in one process (pack_mode auto): the same
    networks bit for bit, so the tables equal those of one job per network, byte for byte, while each
    job's summary records the pack it ran in."""
    for name in ("workflow", "profiles"):
        (tmp_path / name).symlink_to(REPO / name)
    shutil.copytree(REPO / "config", tmp_path / "config")
    snakemake(tmp_path, "--cores", "2", "--configfile", "config/smoke.yaml", "--config", "pack=4", timeout=1800)
    lone, packed = smoke_done / "results/smoke/tables", tmp_path / "results/smoke/tables"
    for table in sorted(lone.glob("*.csv")):
        assert (packed / table.name).read_bytes() == table.read_bytes(), table.name
    summary = json.loads(next((tmp_path / "results/smoke/runs").glob("*/seed0/imp/level_01/summary.json")).read_text())
    assert summary["pack"]["mode"] == "sequential" and summary["pack"]["size"] >= 1
    assert "Nothing to be done" in snakemake(tmp_path, "--cores", "2", "--configfile", "config/smoke.yaml",
                                             "--config", "pack=4").stdout


@pytest.mark.slow
def test_a_stopped_workflow_continues_without_recomputing_finished_jobs(workdir):
    """Stopped after saleem's levels 0 and 1 (here: by asking only for them), the full workflow runs
    everything else and never those two."""
    done = "results/smoke/runs/saleem/seed0/imp/level_01/summary.json"
    snakemake(workdir, "--cores", "2", "--configfile", "config/smoke.yaml", "--", done)
    jobs = scheduled_jobs(snakemake(workdir, "-n", "--configfile", "config/smoke.yaml").stdout)
    assert sum(j["rule"] not in ("report", "all") for j in jobs) == sum(SMOKE_JOBS.values()) - 2 - 2
    saleem_chain = [j for j in jobs if j.get("experiment") == "saleem" and j["rule"] in ("dense", "imp_level")]
    assert [j["level"] for j in saleem_chain] == ["02"]
