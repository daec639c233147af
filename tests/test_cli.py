"""The command line: one-line errors with a non-zero exit, and kill-anywhere resume."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import torch

from ticketbench import checkpoints

from conftest import REPO, TICKETBENCH, make_mnist, tiny_run


def ticketbench(*args, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*TICKETBENCH, *map(str, args), "--threads", "1", "--no-progress"], capture_output=True,
                          text=True, cwd=REPO, env=env, **kw)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("ticketbench: error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_help_lists_the_subcommands():
    out = subprocess.run([*TICKETBENCH, "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0
    for cmd in ("dense", "imp", "branch", "finetune", "evaluate", "curves"):
        assert cmd in out.stdout


def test_version_and_every_option_has_help():
    import argparse

    from ticketbench import __version__
    from ticketbench.cli import build_parser

    out = subprocess.run([*TICKETBENCH, "--version"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == f"ticketbench {__version__}"
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    bare = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, sub in subparsers.choices.items()
            for a in sub._actions if not a.help and not isinstance(a, argparse._HelpAction)]
    assert not bare, f"options without help text: {', '.join(bare)}"



def test_only_training_subcommands_offer_the_flags_that_only_training_uses():
    """--download and --checkpoint-seconds act only where a network is trained; elsewhere they are not
    offered (instead of accepted and ignored)."""
    from ticketbench.cli import build_parser

    parser = build_parser()
    for argv in (["dense", "c.yaml"], ["imp", "c.yaml"], ["finetune", "c.yaml", "--level", "1"],
                 ["branch", "c.yaml", "--kind", "copy", "--level", "0"]):
        assert parser.parse_args([*argv, "--download", "--checkpoint-seconds", "5"]).checkpoint_seconds == 5
    for argv in (["evaluate", "job"], ["audit", "results"], ["hessian", "job", "-o", "h.csv"], ["instability", "run", "--level", "0", "--pairs", "1", "-o", "i.csv"]):
        parser.parse_args(argv)
        for flag in (["--download"], ["--checkpoint-seconds", "5"]):
            with pytest.raises(SystemExit):
                parser.parse_args([*argv, *flag])

def test_a_layout_that_would_crash_onednn_is_refused_in_one_line(tmp_path):
    """--memory-format channels_last on the quick ResNet-20 (width 4) is refused before any kernel runs."""
    r = ticketbench("imp", REPO / "config/quick.yaml", "--experiment", "saleem_resnet20", "--level", "0",
                    "--run-dir", tmp_path / "run", "--memory-format", "channels_last")
    if "files not found" in r.stderr:
        pytest.skip("Fashion-MNIST (Debian's dataset-fashion-mnist) is not installed")
    assert r.returncode == 2
    assert "blocks.3.shortcut.0" in one_line_error(r) and not (tmp_path / "run/imp/level_00/summary.json").exists()


@pytest.mark.parametrize("override, message", [
    ({"model": {"name": "resnet18"}}, "model.name: unknown value 'resnet18'"),
    ({"data": {"name": "imagenet"}}, "data.name: unknown value 'imagenet'"),
    ({"prune": {"strategy": "layerwise", "rates": {"fc": 1.5}}}, "prune.rates.fc: 1.5 is outside (0, 1)"),
    ({"imp": {"levels": 2, "rewind": "50it"}}, "imp.rewind: step 50"),
])
def test_bad_config_fails_with_one_line_and_exit_2(write_config, tmp_path, override, message):
    path = write_config(tiny_run(**override))
    result = ticketbench("imp", path, "--run-dir", tmp_path / "run")
    assert result.returncode == 2
    error = one_line_error(result)
    assert error.startswith(f"ticketbench: error: {path}: ") and error.count(str(path)) == 1  # names the file once
    assert message in error
    assert not (tmp_path / "run" / "imp").exists()  # nothing was started


def test_dataset_checksum_failure_fails_clearly(write_config, tmp_path):
    make_mnist(tmp_path / "data" / "mnist")
    cfg = tiny_run(data={"name": "mnist", "validation_size": 20})
    result = ticketbench("dense", write_config(cfg), "--run-dir", tmp_path / "run", "--data-root", tmp_path / "data")
    assert result.returncode == 2
    assert "MD5" in one_line_error(result)
    ok = ticketbench("dense", write_config(cfg), "--run-dir", tmp_path / "run", "--data-root", tmp_path / "data",
                     "--no-verify")
    assert ok.returncode == 0, ok.stderr


def test_corrupted_checkpoint_fails_clearly_and_is_kept(write_config, tmp_path):
    path = write_config(tiny_run())
    assert ticketbench("dense", path, "--run-dir", tmp_path / "run").returncode == 0
    final = tmp_path / "run" / "imp" / "level_00" / "final.pt"
    data = bytearray(final.read_bytes())
    data[len(data) // 2] ^= 0xFF
    final.write_bytes(bytes(data))
    result = ticketbench("imp", path, "--run-dir", tmp_path / "run", "--level", "1")
    assert result.returncode == 2
    assert "final.pt" in one_line_error(result)


def _train_until_checkpoint(path, run_dir, sig: int) -> subprocess.CompletedProcess:
    """Start level 0, wait for its first checkpoint to land, then send ``sig`` (the job is long enough,
    thousands of steps, that it is still training then, even on a fast machine)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ckpt = run_dir / "imp" / "level_00" / "checkpoint.pt"
    proc = subprocess.Popen([*TICKETBENCH, "dense", str(path), "--run-dir", str(run_dir), "--threads", "1",
                             "--no-progress", "--checkpoint-seconds", "0.05"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_training_resumes_to_identical_weights(write_config, tmp_path, sig):
    path = write_config(tiny_run(train={"steps": "3000it", "eval_every": "250it", "milestones": ["2000it"]}))
    assert ticketbench("dense", path, "--run-dir", tmp_path / "ref").returncode == 0
    killed = _train_until_checkpoint(path, tmp_path / "run", sig)
    if sig == signal.SIGTERM:
        assert killed.returncode == 143, killed.stderr  # checkpoint written, exit for requeue
        assert "checkpoint written" in killed.stderr
    else:
        assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "run" / "imp" / "level_00" / "checkpoint.pt").exists()
    assert not (tmp_path / "run" / "imp" / "level_00" / "summary.json").exists()
    resumed = ticketbench("dense", path, "--run-dir", tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr
    ref = checkpoints.load(tmp_path / "ref/imp/level_00/final.pt", kind="model", config_hash=None)["model"]
    got = checkpoints.load(tmp_path / "run/imp/level_00/final.pt", kind="model", config_hash=None)["model"]
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert (tmp_path / "ref/imp/level_00/metrics.csv").read_text() == (tmp_path / "run/imp/level_00/metrics.csv").read_text()
    assert not (tmp_path / "run" / "imp" / "level_00" / "checkpoint.pt").exists()


def test_branch_offers_every_kind_of_the_engine_and_refuses_others():
    from ticketbench import imp
    from ticketbench.cli import build_parser

    parser = build_parser()
    for kind in imp.BRANCHES:
        assert parser.parse_args(["branch", "run.yaml", "--kind", kind, "--level", "1"]).kind == kind
    assert {"copy_random_reinit", "copy_random_prune"} <= set(imp.BRANCHES)
    with pytest.raises(SystemExit):
        parser.parse_args(["branch", "run.yaml", "--kind", "copy_random", "--level", "1"])


def test_instability_interpolates_the_copies_of_a_random_baseline_and_names_that_branch(tmp_path, write_config):
    """``branch --kind copy_random_prune`` twice, then ``instability --branch copy_random_prune``: the table's
    branch column says which network was copied."""
    import pandas as pd

    from ticketbench import cli

    common = [str(write_config(tiny_run(imp={"levels": 1, "rewind": "5it"}))), "--run-dir", str(tmp_path / "run"),
              "--threads", "1", "--no-progress"]
    assert cli.main(["imp", *common]) == 0
    for r in (0, 1):
        assert cli.main(["branch", *common, "--kind", "copy_random_prune", "--level", "1", "--replicate", str(r)]) == 0
    out = tmp_path / "instability_copy_random_prune_level_01.csv"
    assert cli.main(["instability", str(tmp_path / "run"), "--level", "1", "--pairs", "1", "--points", "3",
                     "--branch", "copy_random_prune", "-o", str(out), "--threads", "1"]) == 0
    paths = pd.read_csv(out)
    assert set(paths["branch"]) == {"copy_random_prune"} and len(paths) == 3
    with pytest.raises(SystemExit):  # only copies form pairs
        cli.main(["instability", str(tmp_path / "run"), "--level", "1", "--pairs", "1", "--branch", "imp", "-o", str(out)])


def test_an_analysis_runs_the_networks_in_the_layout_they_were_trained_in(tmp_path, write_config, capsys):
    """As `ticketbench evaluate`: the path between two copies is evaluated in their recorded memory layout;
    copies recorded in different layouts are refused in one line unless --memory-format picks one."""
    import json

    from ticketbench import cli

    common = [str(write_config(tiny_run(imp={"levels": 1, "rewind": "5it"}))), "--run-dir", str(tmp_path / "run"),
              "--threads", "1", "--no-progress"]
    assert cli.main(["dense", *common]) == 0
    for r in (0, 1):
        assert cli.main(["branch", *common, "--kind", "copy", "--level", "0", "--replicate", str(r)]) == 0
    summary = tmp_path / "run" / "copy" / "level_00" / "rep_1" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "memory_format": "channels_last"}))
    argv = ["instability", str(tmp_path / "run"), "--level", "0", "--pairs", "1", "--points", "2",
            "-o", str(tmp_path / "i.csv"), "--threads", "1"]
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ran in memory format contiguous" in err[0] and "channels_last" in err[0], err
    assert cli.main([*argv, "--memory-format", "contiguous"]) == 0


def test_verbose_adds_the_debug_lines_a_user_needs_to_see_what_a_job_does(write_config, tmp_path):
    """-v shows the split sizes, each job's steps and seeds, and checkpoint writes; without it they are not shown."""
    path = write_config(tiny_run(imp={"levels": 0, "rewind": "0it"}))
    quiet = ticketbench("dense", path, "--run-dir", tmp_path / "a")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    loud = subprocess.run([*TICKETBENCH, "-v", "dense", str(path), "--run-dir", str(tmp_path / "b"), "--threads", "1",
                           "--no-progress", "--checkpoint-seconds", "0"], capture_output=True, text=True, cwd=REPO, env=env)
    assert quiet.returncode == loud.returncode == 0
    for line in ("train / 64 validation / 128 test examples", "data-order seed", "checkpoint of step"):
        assert line in loud.stderr and line not in quiet.stderr, line


def test_evaluate_reproduces_the_recorded_test_numbers_of_a_job(write_config, tmp_path):
    """`ticketbench evaluate` prepares a stored network as training did (mask, recorded layout): its test
    loss and accuracy are the ones summary.json recorded, to the last digit."""
    import json

    path = write_config(tiny_run(imp={"levels": 1, "rewind": "5it"}))
    assert ticketbench("imp", path, "--run-dir", tmp_path / "run").returncode == 0
    job = tmp_path / "run" / "imp" / "level_01"
    r = ticketbench("evaluate", job)
    assert r.returncode == 0, r.stderr
    got, recorded = json.loads(r.stdout.strip().splitlines()[-1]), json.loads((job / "summary.json").read_text())
    assert (got["test_loss"], got["test_acc"]) == (recorded["final_test_loss"], recorded["final_test_acc"])
    (job / "summary.json").rename(job / "summary.json.bak")  # as if the job had not finished
    unfinished = ticketbench("evaluate", job)
    assert unfinished.returncode == 2 and "has not finished training" in one_line_error(unfinished)


def test_hash_prints_the_config_hash_and_the_run_directory_the_training_commands_default_to(tmp_path, write_config):
    """With --experiment, the default run directory is the workflow's (results/<config name>/runs/<exp>/seed<S>),
    and the hash is the one the run records; a plain run config keeps results/runs/<name>-<hash>."""
    import synthetic_results
    import yaml

    synthetic_results.write_config(tmp_path / "tiny.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*args):
        return subprocess.run([*TICKETBENCH, *args], capture_output=True, text=True, cwd=tmp_path, env=env, check=True)

    config_hash, run_dir = run("hash", "tiny.yaml", "--experiment", "stab_tiny_k0", "--seed", "0").stdout.split()
    assert run_dir == "results/tiny/runs/stab_tiny_k0/seed0"
    run("dense", "tiny.yaml", "--experiment", "stab_tiny_k0", "--threads", "1", "--no-progress")
    assert yaml.safe_load((tmp_path / run_dir / "config.yaml").read_text())["hash"] == config_hash
    assert (tmp_path / run_dir / "imp" / "level_00" / "summary.json").is_file()

    plain = write_config(tiny_run(), "plain.yaml")
    config_hash, run_dir = run("hash", str(plain)).stdout.split()
    assert run_dir == f"results/runs/tiny-{config_hash}"
