"""One GPU per job on a multi-GPU machine: a job takes a free *slot* (a lock file per GPU, held with flock for
as long as the job runs) and runs with ``CUDA_VISIBLE_DEVICES`` naming the GPU(s) it took.

Snakemake on one machine (``--cores all --resources gpu=G``) starts up to G jobs that asked for a GPU at once,
but tells none of them which GPU is theirs: every job would train on device 0. The workflow's training and
analysis rules therefore start their command through ``ticketbench gpu-slot --gpus N -- <command>`` when they
ask for GPUs (common.smk, ``gpu_slot``). The wrapper locks N free GPUs, sets ``CUDA_VISIBLE_DEVICES`` and
exec()s the command: the job *is* the process that holds the locks, so they are released when it exits,
however it exits (SIGTERM checkpoint, crash, kill -9), and nothing is left to clean up.

Nothing is chosen where there is nothing to choose: no GPU visible (the job then says why, ``--device cuda``),
or no more GPUs visible than the job asked for, which is how a scheduler that assigns devices hands out a
job's share (SLURM sets ``CUDA_VISIBLE_DEVICES`` to the job's allocation). Inside a SLURM allocation the lock
folder is the allocation's own, so two allocations that share a node never wait on each other's indices.

The locks are per machine and per user, in ``/tmp`` (``$TICKETBENCH_GPU_SLOTS`` names another folder): flock
is reliable on a local file system, not on every network one, and Apptainer binds ``/tmp`` into the job's
container. Jobs of other users or other programs are not seen.

Torch-free: it runs before the job's interpreter imports anything heavy.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

FOLDER_VARIABLE = "TICKETBENCH_GPU_SLOTS"


def visible_gpus(env: Mapping[str, str]) -> list[str]:
    """The GPUs a job may be given, as ``CUDA_VISIBLE_DEVICES`` names them: that variable's entries if it is
    set (indices or UUIDs; empty or -1 = none), else the indices of the GPUs the driver lists."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        return [] if entries[:1] in ([], ["-1"], ["NoDevFiles"]) else entries
    return [str(i) for i in range(gpu_count())]


def gpu_count() -> int:
    """GPUs on this machine: ``nvidia-smi -L`` (what Apptainer's --nv binds in), else the driver's /proc entries."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
            return sum(1 for line in out.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            pass
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def slots_folder(env: Mapping[str, str]) -> Path:
    """Where the lock files are: ``$TICKETBENCH_GPU_SLOTS``, else per user in /tmp (per SLURM allocation inside one)."""
    if env.get(FOLDER_VARIABLE):
        return Path(env[FOLDER_VARIABLE])
    allocation = f"-slurm{env['SLURM_JOB_ID']}" if env.get("SLURM_JOB_ID") else ""
    return Path("/tmp") / f"ticketbench-gpu-slots-{os.getuid()}{allocation}"


def lock_path(folder: Path, gpu: str) -> Path:
    return folder / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.lock"


def try_take(gpus: Sequence[str], count: int, folder: Path) -> tuple[list[str], list[int]] | None:
    """Lock ``count`` of ``gpus`` that no other job holds, in order: their names and the open lock files.
    None if fewer are free; nothing stays locked then, so jobs waiting for several GPUs never deadlock."""
    folder.mkdir(parents=True, exist_ok=True)
    taken: list[str] = []
    fds: list[int] = []
    for gpu in gpus:
        fd = os.open(lock_path(folder, gpu), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        taken.append(gpu)
        fds.append(fd)
        if len(taken) == count:
            return taken, fds
    for fd in fds:
        os.close(fd)
    return None


def take(gpus: Sequence[str], count: int, folder: Path, poll_seconds: float = 2.0) -> tuple[list[str], list[int]]:
    """``try_take`` until it succeeds, saying once (on stderr, the job's log) that the job waits."""
    said = False
    while (got := try_take(gpus, count, folder)) is None:
        if not said:
            print(f"gpu-slot: all of the {len(gpus)} GPUs ({','.join(gpus)}) are taken by other jobs; waiting for "
                  f"{count} to be free (locks in {folder}; give snakemake --resources gpu=<number of GPUs>)",
                  file=sys.stderr, flush=True)
            said = True
        time.sleep(poll_seconds)
    return got


def run(command: Sequence[str], count: int, env: Mapping[str, str] | None = None) -> NoReturn:
    """Run ``command`` (exec, never returns) on ``count`` GPUs of its own."""
    env = dict(os.environ if env is None else env)
    if not command:
        raise SystemExit("gpu-slot: no command given (ticketbench gpu-slot --gpus N -- COMMAND ...)")
    gpus = visible_gpus(env)
    if count > 0 and len(gpus) > count:
        folder = slots_folder(env)
        taken, fds = take(gpus, count, folder)
        for fd in fds:  # the exec'd job holds the locks until it exits
            os.set_inheritable(fd, True)
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}: {' '.join(command)[:200]}".encode())
        env["CUDA_VISIBLE_DEVICES"] = ",".join(taken)
        print(f"gpu-slot: CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} (of {','.join(gpus)}; locks in {folder})",
              file=sys.stderr, flush=True)
    else:
        why = "no GPU is visible" if not gpus else f"{len(gpus)} visible GPU(s) ({','.join(gpus)}) for {count} asked"
        print(f"gpu-slot: nothing to choose ({why}); running as is", file=sys.stderr, flush=True)
    try:
        os.execvpe(command[0], list(command), env)
    except OSError as e:
        raise SystemExit(f"gpu-slot: cannot run {command[0]}: {e.strerror}") from None
