"""The smoke workflow through the SLURM executor (profiles/slurm) on a real single-node cluster.

tests/slurm/up.sh installs Debian's slurm-wlm + munge if needed and starts slurmctld/slurmd with two
fake GPUs (gres), so the rules that request `gpu` are scheduled as on a GPU cluster. The settings a
cluster without an accounting database needs (no account, status from squeue) and the partition are
passed on the command line, as a user would add them to the profile. The fake GPUs cannot run CUDA, so
the jobs train with device=cpu (with gpu > 0 and device auto they would stop: no usable CUDA device).
A training job requeued while it trains (SLURM's pre-emption with PreemptMode=REQUEUE) resumes from the
checkpoint it wrote on SIGTERM. Skipped, saying why, only where SLURM cannot be brought up (not root, no
apt)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_run
from ticketbench import layout

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

BIN = Path(sys.executable).parent
STATE = Path(os.environ.get("TICKETBENCH_SLURM_STATE", "/tmp/ticketbench-slurm"))
LOCAL_STATUS = ["--slurm-no-account", "--slurm-status-command", "squeue",
                "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "2"]
# --default-resources replaces the profile's whole list (its slurm_extra too); `debug` is also the default
# partition, so a test of the profile's own resources leaves it out.
LOCAL_CLUSTER = [*LOCAL_STATUS, "--default-resources", "slurm_partition=debug"]
TRAINING_RULES = {"dense", "imp_level", "branch", "finetune"}
ANALYSIS_RULES = {"hessian", "instability", "baseline_instability", "successive"}


@pytest.fixture(scope="module")
def cluster() -> dict[str, str]:
    if os.geteuid() != 0:
        pytest.skip("SLURM cannot be brought up here: tests/slurm/up.sh needs root (packages and daemons)")
    already_up = subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0 if shutil.which("sinfo") else False
    proc = subprocess.run(["bash", str(REPO / "tests/slurm/up.sh"), str(STATE)], capture_output=True, text=True,
                          timeout=1200)
    if proc.returncode == 3:
        pytest.skip(f"SLURM cannot be brought up here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    yield {"SLURM_CONF": str(STATE / "slurm.conf")}
    if not already_up:  # a cluster someone else started stays up
        subprocess.run(["bash", str(REPO / "tests/slurm/down.sh"), str(STATE)], capture_output=True, timeout=120)


def slurm_jobs(output: str) -> dict[str, str]:
    """SLURM job id -> rule, from the executor's submission messages."""
    found = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/", output)
    return {jobid: rule for jobid, rule in found}


def test_smoke_workflow_runs_through_the_slurm_executor_with_gpu_jobs(cluster, tmp_path):
    for name in ("workflow", "profiles"):
        (tmp_path / name).symlink_to(REPO / name)
    shutil.copytree(REPO / "config", tmp_path / "config")
    env = {**os.environ, **cluster, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    cmd = [str(BIN / "snakemake"), "--workflow-profile", "profiles/slurm", "--configfile", "config/smoke.yaml",
           "--config", "gpu=1", "device=cpu", "--jobs", "4", *LOCAL_CLUSTER]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert (tmp_path / "results/smoke/report.md").stat().st_size > 0

    jobs = slurm_jobs(out)
    rules = set(jobs.values())
    assert rules >= TRAINING_RULES | ANALYSIS_RULES | {"report"}, rules
    for jobid, rule in jobs.items():
        info = subprocess.run(["scontrol", "show", "job", jobid], env=env, capture_output=True, text=True).stdout
        assert "JobState=COMPLETED" in info, info
        gpus = re.search(r"TresPerJob=\S*gres:gpu:(\d+)", info)
        if rule in TRAINING_RULES | ANALYSIS_RULES:  # resources mapped: --gpus, --mem, --time
            assert gpus and gpus.group(1) == "1", (rule, info)
            assert "MinMemoryNode=2000M" in info and "TimeLimit=00:10:00" in info, (rule, info)
        else:
            assert gpus is None, (rule, info)

    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and "Nothing to be done" in rerun.stdout + rerun.stderr


def wait_for(what: str, found, proc: subprocess.Popen, log: Path, timeout: float = 600):
    """Poll ``found()`` every second until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := found():
            return result
        if proc.poll() is not None:
            raise AssertionError(f"snakemake exited ({proc.returncode}) before {what}:\n{log.read_text()[-5000:]}")
        time.sleep(1)
    raise AssertionError(f"no {what} after {timeout} s:\n{log.read_text()[-5000:]}")


def test_a_training_job_requeued_by_slurm_resumes_from_its_sigterm_checkpoint_to_the_same_network(cluster, tmp_path):
    """Pre-emption as SLURM does it on a partition with PreemptMode=REQUEUE: the running job is requeued
    (`scontrol requeue`), all its processes get SIGTERM, and it starts again under the same job id (after
    the hold SLURM puts on a requeued job, about 2 minutes, lifted here). ticketbench writes its checkpoint
    within the job and exits with status 143, which the rule's Snakemake waits for (bash exec()s the
    command); the restarted job resumes from that step and the workflow completes without a Snakemake
    retry. The network is the one the same job trains uninterrupted, bit for bit. The profile's SIGTERM
    before the time limit (slurm_extra) and --requeue reach sbatch."""
    for name in ("workflow", "profiles"):
        (tmp_path / name).symlink_to(REPO / name)
    run = tiny_run(train={"steps": "3000it", "eval_every": "500it", "milestones": []}, imp={"levels": 1, "rewind": "0it"})
    del run["name"]
    config = {"name": "requeue", "gpu": 0, "device": "cpu", "report": False,
              "resources": {kind: {"mem_mb": 1000, "runtime": 10} for kind in ("train", "analysis")},
              "experiments": {"lth_tiny": {"family": "lth", "source": "tests/test_slurm.py", "seeds": [0], "run": run}}}
    (tmp_path / "config").mkdir()
    (tmp_path / "config/requeue.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    results = layout.results_dir("requeue")
    job = layout.job_dir(layout.run_dir(results, "lth_tiny", 0), "imp", 0)
    job_log = tmp_path / results / layout.LOG_PATTERN.format(experiment="lth_tiny", seed=0) / "imp_level_00.log"
    env = {**os.environ, **cluster, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}

    uninterrupted = subprocess.Popen(
        [str(BIN / "ticketbench"), "dense", "config/requeue.yaml", "--experiment", "lth_tiny", "--seed", "0",
         "--run-dir", "uninterrupted", "--threads", "1", "--no-progress", "--device", "cpu"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out_path = tmp_path / "snakemake.out"
    cmd = [str(BIN / "snakemake"), str(job / layout.SUMMARY), "--workflow-profile", "profiles/slurm",
           "--configfile", "config/requeue.yaml", "--verbose", *LOCAL_STATUS]
    with out_path.open("w") as out_file:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out_file, stderr=subprocess.STDOUT)
    jobid = None
    try:
        jobid = wait_for("SLURM job", lambda: list(slurm_jobs(out_path.read_text())), proc, out_path)[0]
        wait_for("training", lambda: job_log.is_file() and re.search(r"step 0/\d+", job_log.read_text()), proc, out_path)
        subprocess.run(["scontrol", "requeue", jobid], env=env, check=True)

        def state() -> str:
            return subprocess.run(["squeue", "-h", "-j", jobid, "-o", "%T"], env=env, capture_output=True, text=True).stdout.strip()

        wait_for("requeued job", lambda: state() == "PENDING", proc, out_path, timeout=120)
        stopped = re.search(r"SIGTERM at step (\d+); checkpoint written to (\S+), rerun to resume", job_log.read_text())
        assert stopped, job_log.read_text()
        step, checkpoint = stopped.groups()
        assert (tmp_path / checkpoint).is_file()
        slurm_log = next((tmp_path / ".snakemake/slurm_logs/rule_dense").glob(f"*/{jobid}.log")).read_text()
        assert "returned non-zero exit status 143" in slurm_log, slurm_log[-5000:]  # not killed: it exited itself
        subprocess.run(["scontrol", "update", f"JobId={jobid}", "StartTime=now"], env=env, check=True)
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            uninterrupted.kill()
            if jobid:
                subprocess.run(["scancel", jobid], env=env)
    out = out_path.read_text()
    assert proc.returncode == 0, out[-5000:]

    assert f"resuming from {checkpoint} at step {step}" in job_log.read_text(), job_log.read_text()
    assert slurm_jobs(out) == {jobid: "dense"}  # requeued by SLURM, never resubmitted by Snakemake
    info = subprocess.run(["scontrol", "show", "job", jobid], env=env, capture_output=True, text=True).stdout
    assert "JobState=COMPLETED" in info and "Restarts=1" in info, info
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    sbatch = re.search(r"^sbatch call: (.*)$", out, flags=re.M).group(1)
    assert profile["default-resources"]["slurm_extra"].strip("'") in sbatch and " --requeue" in sbatch, sbatch

    _, err = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, err
    reference = tmp_path / layout.job_dir("uninterrupted", "imp", 0)
    assert (json.loads((tmp_path / job / layout.SUMMARY).read_text())["model_sha256"]
            == json.loads((reference / layout.SUMMARY).read_text())["model_sha256"])
    assert (tmp_path / job / layout.METRICS).read_text() == (reference / layout.METRICS).read_text()
    assert not (tmp_path / checkpoint).exists()
