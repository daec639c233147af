"""The smoke workflow through the SLURM executor (profiles/slurm) on a real single-node cluster.

tests/slurm/up.sh installs Debian's slurm-wlm + munge if needed and starts slurmctld/slurmd with two
fake GPUs (gres), so the rules that request `gpu` are scheduled as on a GPU cluster. The settings a
cluster without an accounting database needs (no account, status from squeue) and the partition are
passed on the command line, as a user would add them to the profile. The fake GPUs cannot run CUDA, so
the jobs train with device=cpu (with gpu > 0 and device auto they would stop: no usable CUDA device).
Skipped, saying why, only where SLURM cannot be brought up (not root, no apt)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

BIN = Path(sys.executable).parent
STATE = Path(os.environ.get("TICKETBENCH_SLURM_STATE", "/tmp/ticketbench-slurm"))
LOCAL_CLUSTER = ["--slurm-no-account", "--slurm-status-command", "squeue",
                 "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "2",
                 "--default-resources", "slurm_partition=debug"]
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
