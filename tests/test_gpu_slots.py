"""One GPU per job on a multi-GPU machine (ticketbench.gpu_slots, ``ticketbench gpu-slot``), tested with stand-ins:
CUDA_VISIBLE_DEVICES lists the machine's GPUs and the jobs are small shell commands that record the GPU they got.
No GPU is needed; what is tested is that concurrent jobs never share one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from ticketbench import gpu_slots

SLOT = [sys.executable, "-m", "ticketbench", "gpu-slot"]


def machine(tmp_path: Path, gpus: str) -> dict[str, str]:
    """The environment of a job on a machine whose GPUs are ``gpus``, outside any scheduler."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(CUDA_VISIBLE_DEVICES=gpus, TICKETBENCH_GPU_SLOTS=str(tmp_path / "slots"),
               PYTHONPATH=str(REPO / "src"))
    return env


def fake_job(record: Path, until: str) -> list[str]:
    """A job that writes the CUDA_VISIBLE_DEVICES it runs with to ``record``/<pid>, then keeps its GPU until the shell
    condition ``until`` holds (at most a minute)."""
    return ["sh", "-c", f"echo $CUDA_VISIBLE_DEVICES > {record}/$$; i=0; "
                        f"until {until} || [ $i -ge 600 ]; do sleep 0.1; i=$((i+1)); done"]


def recorded(record: Path) -> list[str]:
    return [p.read_text().strip() for p in sorted(record.iterdir(), key=lambda p: p.stat().st_mtime)]


def test_the_visible_gpus_are_cuda_visible_devices_or_none():
    assert gpu_slots.visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1, 3"}) == ["0", "1", "3"]
    assert gpu_slots.visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-5f1e,GPU-77aa"}) == ["GPU-5f1e", "GPU-77aa"]
    for none in ("", "-1", "NoDevFiles"):
        assert gpu_slots.visible_gpus({"CUDA_VISIBLE_DEVICES": none}) == []


def test_a_held_gpu_is_not_given_again_until_its_job_ends(tmp_path):
    gpus = ["0", "1"]
    first = gpu_slots.try_take(gpus, 1, tmp_path)
    second = gpu_slots.try_take(gpus, 1, tmp_path)
    assert first[0] == ["0"] and second[0] == ["1"]
    assert gpu_slots.try_take(gpus, 1, tmp_path) is None  # both held
    os.close(first[1][0])  # the first job exits: the kernel drops its lock
    third = gpu_slots.try_take(gpus, 1, tmp_path)
    assert third[0] == ["0"]


def test_a_job_that_needs_more_gpus_than_are_free_holds_none_while_it_waits(tmp_path):
    held = gpu_slots.try_take(["0", "1", "2"], 2, tmp_path)
    assert held[0] == ["0", "1"]
    assert gpu_slots.try_take(["0", "1", "2"], 2, tmp_path) is None
    # GPU 2 stayed free: a one-GPU job still gets it (no partial hold that could deadlock two waiting jobs)
    assert gpu_slots.try_take(["0", "1", "2"], 1, tmp_path)[0] == ["2"]


def test_concurrent_jobs_each_get_a_gpu_of_their_own(tmp_path):
    """Four jobs started at once on a four-GPU machine, through the real CLI and exec: each keeps its GPU until all
    four have started, so two jobs given the same GPU could not both be running."""
    record = tmp_path / "record"
    record.mkdir()
    env = machine(tmp_path, "0,1,2,3")
    all_started = f"[ $(ls {record} | wc -l) -ge 4 ]"
    jobs = [subprocess.Popen([*SLOT, "--gpus", "1", "--", *fake_job(record, all_started)], env=env, cwd=tmp_path,
                             stderr=subprocess.PIPE, text=True) for _ in range(4)]
    logs = [job.communicate(timeout=120)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0, 0, 0], logs
    assert sorted(recorded(record)) == ["0", "1", "2", "3"], logs
    assert all("gpu-slot: CUDA_VISIBLE_DEVICES=" in log for log in logs)


def test_a_job_waits_for_a_free_gpu_and_never_shares_one(tmp_path):
    """Three jobs on a two-GPU machine (as if snakemake had been given too many GPUs): two run on different GPUs,
    the third waits, starting only when one of them ends, on the GPU that one left."""
    record = tmp_path / "record"
    record.mkdir()
    env = machine(tmp_path, "0,1")
    release = tmp_path / "release"
    jobs = [subprocess.Popen([*SLOT, "--", *fake_job(record, f"[ -e {release} ]")], env=env, cwd=tmp_path,
                             stderr=subprocess.PIPE, text=True) for _ in range(3)]
    deadline = time.monotonic() + 120
    while len(recorded(record)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)  # the third job has had time to start, were a GPU free
    assert sorted(recorded(record)) == ["0", "1"]
    release.touch()
    logs = [job.communicate(timeout=120)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0, 0], logs
    assert sum("waiting for 1 to be free" in log for log in logs) == 1, logs
    assert recorded(record)[2] in ("0", "1")


@pytest.mark.parametrize("gpus, extra", [("0", {}), ("3", {"SLURM_JOB_ID": "41"}), ("", {})])
def test_a_job_runs_as_it_is_where_there_is_nothing_to_choose(tmp_path, gpus, extra):
    """One GPU for a one-GPU job (a scheduler's allocation, e.g. SLURM's CUDA_VISIBLE_DEVICES) or none at all (the
    job then says why itself): the devices are left as they are and nothing is locked."""
    env = {**machine(tmp_path, gpus), **extra}
    out = subprocess.run([*SLOT, "--gpus", "1", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES"], env=env,
                         capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == gpus
    assert "nothing to choose" in out.stderr
    assert not (tmp_path / "slots").exists()


def test_slots_of_a_slurm_allocation_are_its_own():
    """Two allocations on one node may both see CUDA_VISIBLE_DEVICES=0,1: their locks must not be shared."""
    a = gpu_slots.slots_folder({"SLURM_JOB_ID": "7"})
    b = gpu_slots.slots_folder({"SLURM_JOB_ID": "8"})
    assert a != b and a != gpu_slots.slots_folder({})
