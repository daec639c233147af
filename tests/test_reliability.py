"""Pre-emption safety and failure on bad input: nothing computed is lost, nothing half-written is read."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from ticketbench import checkpoints, config, data
from ticketbench.checkpoints import CheckpointError, JobLock, WriteError, atomic_write
from ticketbench.imp import Run
from ticketbench.runtime import Runtime
from ticketbench.train import TrainingDiverged

from conftest import REPO, TICKETBENCH, tiny_run
from test_cli import one_line_error, ticketbench


@pytest.mark.slow
def test_training_survives_many_kills_at_random_points_bit_for_bit(write_config, tmp_path):
    """SIGKILL and SIGTERM at random moments, including while a checkpoint is being written (one is
    written every few steps), then resume: the result equals an uninterrupted run exactly."""
    path = write_config(tiny_run(train={"steps": "400it", "eval_every": "25it", "milestones": ["300it"]},
                                 imp={"levels": 1, "rewind": "50it"}))
    assert ticketbench("imp", path, "--run-dir", tmp_path / "ref").returncode == 0
    rng = random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kills, finished = 0, False
    for attempt in range(40):
        proc = subprocess.Popen([*TICKETBENCH, "imp", str(path), "--run-dir", str(tmp_path / "run"), "--threads", "1",
                                 "--no-progress", "--checkpoint-seconds", "0"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # Wait until the job is past start-up (a checkpoint file or the next level appears), then kill soon.
        time.sleep(rng.uniform(0.0, 0.4))
        marker_seen = _wait_for_progress(tmp_path / "run", proc)
        if proc.poll() is not None:
            finished = proc.returncode == 0
            break
        time.sleep(rng.uniform(0.0, 0.3))
        sig = signal.SIGTERM if rng.random() < 0.3 else signal.SIGKILL
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            finished = True
            break
        assert proc.returncode in (-signal.SIGKILL, 143, -signal.SIGTERM), err
        kills += marker_seen
    if not finished:
        assert ticketbench("imp", path, "--run-dir", tmp_path / "run").returncode == 0
    assert kills >= 5, f"only {kills} kills landed mid-training"
    print(f"survived {kills} kills")
    for level in ("level_00", "level_01"):
        ref = checkpoints.load(tmp_path / "ref/imp" / level / "final.pt", kind="model", config_hash=None)["model"]
        got = checkpoints.load(tmp_path / "run/imp" / level / "final.pt", kind="model", config_hash=None)["model"]
        assert all(torch.equal(ref[k], got[k]) for k in ref), level
        assert (tmp_path / "ref/imp" / level / "metrics.csv").read_bytes() == (tmp_path / "run/imp" / level / "metrics.csv").read_bytes()
    assert not list((tmp_path / "run").rglob(".*.tmp-*"))  # no temporary file was left behind


def _wait_for_progress(run_dir, proc, timeout=60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if list(run_dir.glob("imp/level_*/checkpoint.pt")):
            return True
        time.sleep(0.02)
    return False


def test_a_nan_loss_stops_the_job_naming_the_step_and_keeps_nothing_diverged(write_config, tmp_path):
    path = write_config(tiny_run(train={"lr": 1e12, "momentum": 0.0}))
    result = ticketbench("dense", path, "--run-dir", tmp_path / "run")
    assert result.returncode == 1
    message = one_line_error(result)
    assert "level 0" in message and "step" in message and "learning rate" in message
    job = tmp_path / "run" / "imp" / "level_00"
    assert not (job / "summary.json").exists() and not (job / "final.pt").exists()


def test_diverged_run_keeps_the_last_good_checkpoint(tmp_path):
    cfg = config.from_dict(tiny_run(train={"steps": "60it", "eval_every": "30it"}))
    run = Run(cfg, tmp_path / "run", data.load(cfg.data), Runtime(device="cpu", progress=False, checkpoint_seconds=0))
    with pytest.MonkeyPatch.context() as mp:
        real = torch.nn.functional.cross_entropy
        calls = {"n": 0}

        def poisoned(*a, **k):  # the loss turns NaN at step 40
            calls["n"] += 1
            out = real(*a, **k)
            return out * float("nan") if calls["n"] > 40 and out.requires_grad else out

        mp.setattr(torch.nn.functional, "cross_entropy", poisoned)
        with pytest.raises(TrainingDiverged, match="step"):
            run.level(0)
    ck = checkpoints.load(run.level_dir(0) / "checkpoint.pt", kind="checkpoint", config_hash=cfg.hash())
    assert ck["step"] <= 41
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_the_log_says_nan_only_for_a_loss_that_is_nan(tmp_path, caplog):
    """The evaluation before the first step has no training loss yet: its log line says ``train loss -``
    (a ``nan`` there reads as a diverged run) and metrics.csv has a missing value. A loss that does turn NaN
    is still named as such, in the one error that stops the job."""
    import logging

    import pandas as pd

    cfg = config.from_dict(tiny_run(train={"steps": "40it", "eval_every": "10it"}))
    run = Run(cfg, tmp_path / "run", data.load(cfg.data), Runtime(device="cpu", progress=False))
    caplog.set_level(logging.INFO, logger="ticketbench")
    with pytest.MonkeyPatch.context() as mp:
        real = torch.nn.functional.cross_entropy
        steps = {"n": 0}

        def poisoned(*a, **k):  # training losses turn NaN from step 15 on; evaluations are untouched
            out = real(*a, **k)
            steps["n"] += out.requires_grad
            return out * float("nan") if steps["n"] > 15 and out.requires_grad else out

        mp.setattr(torch.nn.functional, "cross_entropy", poisoned)
        with pytest.raises(TrainingDiverged, match="training loss became nan before step 20"):
            run.level(0)
    lines = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    assert len(lines) == 2 and "step 0/40 train loss - val loss" in lines[0] and "nan" not in lines[0].lower()
    assert "step 10/40 train loss " in lines[1] and "nan" not in lines[1].lower()
    metrics = pd.read_csv(run.level_dir(0) / "metrics.csv")
    assert list(metrics["step"]) == [0, 10] and metrics["train_loss"].isna().tolist() == [True, False]


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only")])
def test_a_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch, code, words):
    target = tmp_path / "metrics.csv"
    atomic_write(target, "old complete content\n")

    def fail(*_a, **_k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(WriteError, match=words):
        atomic_write(target, "new content that never lands\n")
    assert target.read_text() == "old complete content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # the temporary file is removed


def test_disk_full_during_training_exits_cleanly(write_config, tmp_path):
    """A results directory on a full file system: a tiny tmpfs where one is mountable, else skipped."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root); the unit test above simulates ENOSPC")
    try:
        result = ticketbench("dense", write_config(tiny_run()), "--run-dir", mnt / "run")
        assert result.returncode == 2
        assert "disk is full" in one_line_error(result)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_two_processes_cannot_train_into_the_same_job(tmp_path):
    with JobLock(tmp_path / "job"):
        other = subprocess.run([sys.executable, "-c",
                                "from ticketbench.checkpoints import JobLock\n"
                                f"JobLock({str(tmp_path / 'job')!r}).__enter__()"], capture_output=True, text=True)
        assert other.returncode != 0 and "already being trained by pid" in other.stderr
    with JobLock(tmp_path / "job"):  # released on exit
        pass


def test_truncated_checkpoint_is_refused_not_resumed(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoints.save(path, {"step": 3, "w": torch.ones(10)}, kind="checkpoint", config_hash="abc")
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoints.load(path, kind="checkpoint", config_hash="abc")


def test_malformed_yaml_fails_with_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntrain: [unclosed\n")
    result = ticketbench("imp", path, "--run-dir", tmp_path / "run")
    assert result.returncode == 2
    error = one_line_error(result)
    assert error.startswith(f"ticketbench: error: {path}: line 3 is not valid YAML") and error.count(str(path)) == 1


class _Killed(Exception):
    """Stands for a SIGKILL at a chosen moment."""


@pytest.mark.parametrize("kill_at", [20, 21])  # an evaluation step (eval_every 10) and the step after it
def test_a_kill_right_after_a_checkpoint_at_an_evaluation_step_resumes_identically(tmp_path, monkeypatch, kill_at):
    """The checkpoint written at an evaluation step already holds that step's metrics row: resuming from
    it must not evaluate that step again (a second row, with no training loss behind it)."""
    cfg = config.from_dict(tiny_run())
    ds = data.load(cfg.data)
    Run(cfg, tmp_path / "ref", ds, Runtime(device="cpu", progress=False)).dense()
    real_save = checkpoints.save

    def save_then_die(path, payload, **kw):
        real_save(path, payload, **kw)
        if kw.get("kind") == "checkpoint" and payload["step"] == kill_at:
            raise _Killed

    run = Run(cfg, tmp_path / "run", ds, Runtime(device="cpu", progress=False, checkpoint_seconds=0))
    with monkeypatch.context() as mp:
        mp.setattr(checkpoints, "save", save_then_die)
        with pytest.raises(_Killed):
            run.dense()
    run.dense()
    for name in ("metrics.csv", "final.pt"):
        ref, got = (tmp_path / d / "imp/level_00" / name for d in ("ref", "run"))
        if name == "final.pt":
            a, b = (checkpoints.load(p, kind="model", config_hash=None)["model"] for p in (ref, got))
            assert all(torch.equal(a[k], b[k]) for k in a)
        else:
            assert got.read_text() == ref.read_text()


def test_a_running_job_can_be_watched_and_a_finished_one_says_it_is_done(tmp_path, monkeypatch, caplog):
    """Mid-run, metrics.csv already holds every evaluation so far (a reader can draw the curves) and the
    log has one line per evaluation with the step, accuracy, speed and time left; a rerun of a finished
    job trains nothing and says so."""
    import logging

    import pandas as pd

    cfg = config.from_dict(tiny_run())
    ds = data.load(cfg.data)
    real_save = checkpoints.save

    def save_then_die(path, payload, **kw):
        real_save(path, payload, **kw)
        if kw.get("kind") == "checkpoint" and payload["step"] == 25:
            raise _Killed

    run = Run(cfg, tmp_path / "run", ds, Runtime(device="cpu", progress=False, checkpoint_seconds=0))
    caplog.set_level(logging.INFO, logger="ticketbench")
    with monkeypatch.context() as mp:
        mp.setattr(checkpoints, "save", save_then_die)
        with pytest.raises(_Killed):
            run.dense()
    folder = tmp_path / "run" / "imp" / "level_00"
    assert not (folder / "summary.json").exists()
    assert list(pd.read_csv(folder / "metrics.csv")["step"]) == [0, 10, 20]
    lines = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    assert len(lines) == 3 and "step 20/" in lines[-1] and "test acc" in lines[-1] and "img/s" in lines[-1]

    run.dense()
    caplog.clear()
    run.dense()
    assert any("already done" in r.getMessage() for r in caplog.records)
