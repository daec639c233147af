"""``ticketbench audit``: every recorded number is recomputed from the stored networks, and any tampering
with a metric, a checkpoint, a mask or the rewind snapshot is caught and fails the command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import synthetic_results
from ticketbench import checkpoints, cli
from ticketbench.report import audit

RUNTIME = ["--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return synthetic_results.tree(tmp_path_factory)


@pytest.fixture
def saleem_run(tree, tmp_path) -> Path:
    """A private copy of the run with the most branch kinds (IMP, one-shot, fine-tuning, random reinit,
    random pruning), laid out as results/N/runs/<experiment>/seed<S>."""
    results, _ = tree
    out = tmp_path / "results" / "tiny"
    shutil.copytree(results / "runs" / "saleem_tiny", out / "runs" / "saleem_tiny")
    return out


def findings_of(path: Path) -> list[audit.Finding]:
    from ticketbench.runtime import Runtime

    return audit.audit(path, Runtime(threads=1, progress=False))


def test_audit_passes_on_untouched_results_and_checks_every_job(tree, capsys):
    results, _ = tree
    assert cli.main(["audit", str(results), *RUNTIME]) == 0
    assert "0 failed" in capsys.readouterr().out
    findings = findings_of(results)
    jobs = len(list((results / "runs").glob("*/seed*/*/level_*/**/summary.json")))
    runs = len(list((results / "runs").glob("*/seed*/rewind.pt")))
    for check, n in (("hash", jobs + runs), ("accuracy", jobs), ("mask", jobs)):
        assert sum(f.check == check and f.status == audit.OK for f in findings) == n
    starts = {f.job.split("/")[0] for f in findings if f.check == "start" and f.status == audit.OK}
    assert starts == {"imp", "oneshot", "random_prune", "finetune", "copy", "rewind.pt"}  # all but random reinit


def test_a_changed_accuracy_in_summary_json_fails_the_audit(saleem_run, capsys):
    summary = saleem_run / "runs" / "saleem_tiny" / "seed0" / "imp" / "level_01" / "summary.json"
    s = json.loads(summary.read_text())
    s["final_test_acc"] = round(s["final_test_acc"] - 1 / 128, 6)  # one test image
    summary.write_text(json.dumps(s))
    assert cli.main(["audit", str(saleem_run), *RUNTIME]) == 1
    out = capsys.readouterr().out
    assert "FAIL saleem_tiny/seed0 imp/level_01 [accuracy]: test accuracy" in out


def test_a_corrupted_checkpoint_fails_the_audit(saleem_run):
    final = saleem_run / "runs" / "saleem_tiny" / "seed0" / "oneshot" / "level_02" / "rep_0" / "final.pt"
    raw = bytearray(final.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    final.write_bytes(bytes(raw))
    bad = audit.failures(findings_of(saleem_run))
    assert [(f.job, f.check) for f in bad] == [("oneshot/level_02/rep_0", "hash")]


def test_a_resealed_checkpoint_with_other_weights_fails_on_its_recorded_hash_and_accuracy(saleem_run):
    """A swapped final.pt in a valid envelope passes the file's own hash check but not summary.json's."""
    run = saleem_run / "runs" / "saleem_tiny" / "seed0"
    cfg_hash = json.loads((run / "imp" / "level_02" / "summary.json").read_text())["config_hash"]
    other = checkpoints.load(run / "imp" / "level_01" / "final.pt", kind="model", config_hash=cfg_hash)
    checkpoints.save(run / "imp" / "level_02" / "final.pt", other, kind="model", config_hash=cfg_hash)
    bad = {(f.job, f.check) for f in audit.failures(findings_of(saleem_run))}
    assert ("imp/level_02", "hash") in bad
    assert ("imp/level_02", "mask") in bad  # level 1's weights are not zero where level 2 pruned


def test_a_mask_with_the_wrong_sparsity_fails_the_audit(saleem_run):
    run = saleem_run / "runs" / "saleem_tiny" / "seed0"
    cfg_hash = json.loads((run / "imp" / "level_01" / "summary.json").read_text())["config_hash"]
    stored = checkpoints.load(run / "random_prune" / "level_01" / "rep_0" / "mask.pt", kind="mask", config_hash=cfg_hash)
    name = sorted(stored["mask"])[0]
    flat = stored["mask"][name].flatten()
    flat[torch.nonzero(~flat)[0]] = True  # keep one more weight than IMP level 1 does in this layer
    stored["mask"][name] = flat.view_as(stored["mask"][name])
    checkpoints.save(run / "random_prune" / "level_01" / "rep_0" / "mask.pt", stored, kind="mask", config_hash=cfg_hash)
    bad = {(f.job, f.check): f.detail for f in audit.failures(findings_of(saleem_run))}
    assert "per-layer table in mask.pt does not match" in bad[("random_prune/level_01/rep_0", "mask")]
    assert "per-layer counts differ from IMP level 1" in bad[("random_prune/level_01/rep_0", "mask")]


def test_a_rewind_snapshot_other_than_the_one_trained_from_fails_the_start_check(saleem_run):
    run = saleem_run / "runs" / "saleem_tiny" / "seed0"
    cfg_hash = json.loads((run / "imp" / "level_01" / "summary.json").read_text())["config_hash"]
    rewind = checkpoints.load(run / "rewind.pt", kind="rewind", config_hash=cfg_hash)
    for key, value in rewind["model"].items():
        if key.endswith("weight"):
            rewind["model"][key] = value * 1.01
    checkpoints.save(run / "rewind.pt", rewind, kind="rewind", config_hash=cfg_hash)
    bad = {(f.job, f.check) for f in audit.failures(findings_of(saleem_run))}
    rewound = {("imp/level_01", "start"), ("imp/level_02", "start"), ("oneshot/level_02/rep_0", "start"),
               ("random_prune/level_02/rep_0", "start")}
    assert rewound <= bad
    assert ("imp/level_00", "start") not in bad  # the dense run starts from the initialization, not the snapshot


def test_a_copy_of_the_random_pruning_is_audited_against_the_baseline_it_copies(tree, saleem_run):
    """An SGD-noise copy of a random baseline starts from the rewind snapshot under that baseline's random
    mask; a copy whose mask is another random draw of the same per-layer counts fails."""
    _, config_path = tree
    run = saleem_run / "runs" / "saleem_tiny" / "seed0"
    assert synthetic_results.ticketbench(
        "branch", str(config_path), "--experiment", "saleem_tiny", "--seed", "0", "--run-dir", str(run),
        "--kind", "copy_random_prune", "--level", "2", "--replicate", "1", *RUNTIME) == 0
    found = {(f.job, f.check): f for f in findings_of(saleem_run)}
    assert found[("copy_random_prune/level_02/rep_1", "mask")].status == audit.OK
    assert found[("copy_random_prune/level_02/rep_1", "start")].status == audit.OK

    cfg_hash = json.loads((run / "imp" / "level_02" / "summary.json").read_text())["config_hash"]
    stored = checkpoints.load(run / "random_prune" / "level_02" / "rep_0" / "mask.pt", kind="mask", config_hash=cfg_hash)
    name = sorted(stored["mask"])[0]
    flat = stored["mask"][name].flatten()
    kept, pruned = torch.nonzero(flat)[0], torch.nonzero(~flat)[0]
    flat[kept], flat[pruned] = False, True  # same counts, another pattern
    stored["mask"][name] = flat.view_as(stored["mask"][name])
    checkpoints.save(run / "random_prune" / "level_02" / "rep_0" / "mask.pt", stored, kind="mask", config_hash=cfg_hash)
    bad = {(f.job, f.check): f.detail for f in audit.failures(findings_of(saleem_run))}
    assert "differs from the random pruning of level 2" in bad[("copy_random_prune/level_02/rep_1", "mask")]
