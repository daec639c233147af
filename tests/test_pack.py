"""Packed training: several jobs in one process, each exactly the job it would be alone, up to rounding.

A pack's member keeps its own mask, start state, data order, augmentation, optimizer state, BatchNorm
statistics, evaluations and files; ``batched`` packs compute all members in one vmapped step, so they
round differently from lone jobs and are compared within noise, while ``sequential`` packs are lone jobs
bit for bit. For a given pack, training is deterministic and resumes bit for bit after an interruption.
"""

from __future__ import annotations

import contextlib
import io
import math
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from ticketbench import config, data, pack, train
from ticketbench.config import ConfigError
from ticketbench.imp import Run
from ticketbench.report import audit
from ticketbench.train import TrainingDiverged
from ticketbench.runtime import Runtime

from conftest import tiny_run

RUNTIME = Runtime(device="cpu", progress=False)
SEEDS = (0, 1, 2)


def seeded(seed: int, **overrides) -> dict:
    return tiny_run(seeds={"init": seed, "data_order": seed, "augmentation": seed}, **overrides)


def tiny_resnet(seed: int, **overrides) -> dict:
    """A width-4 ResNet-20 on 3x8x8 synthetic images: BatchNorm in every block, a few seconds per job."""
    return seeded(seed, model={"name": "resnet20", "width": 4, "init": "kaiming_normal", "batchnorm_init": "uniform"},
                  data={"synthetic_shape": [3, 8, 8]}, **overrides)


def runs(root: Path, make=seeded, runtime: Runtime = RUNTIME, **overrides) -> list[Run]:
    """One run directory per seed, as the workflow lays them out (``runs/<experiment>/seed<S>``)."""
    out, datasets = [], {}
    for seed in SEEDS:
        cfg = config.from_dict(make(seed, **overrides))
        ds = datasets.setdefault(cfg.data, data.load(cfg.data))
        out.append(Run(cfg, root / "runs" / "tiny" / f"seed{seed}", ds, runtime))
    return out


def train_levels(rs: list[Run], mode: str | None, levels=(0, 1, 2)) -> None:
    """Every IMP level of every run: packed across seeds in ``mode``, or lone jobs (``None``)."""
    for lv in levels:
        if mode is None:
            for r in rs:
                r.level(lv)
        else:
            pack.train([r.level_job(lv) for r in rs], mode)


def files(run: Run, level: int) -> tuple[str, dict]:
    folder = run.level_dir(level)
    return (folder / "metrics.csv").read_text(), run.final_state(folder)


def test_a_sequential_pack_is_its_lone_jobs_bit_for_bit(tmp_path):
    lone, packed = runs(tmp_path / "lone"), runs(tmp_path / "packed")
    train_levels(lone, None)
    train_levels(packed, "sequential")
    for a, b in zip(lone, packed):
        for lv in (0, 1, 2):
            (ma, wa), (mb, wb) = files(a, lv), files(b, lv)
            assert ma == mb
            assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("make", [seeded, tiny_resnet], ids=["lenet", "resnet20"])
def test_a_batched_pack_is_deterministic_and_every_member_is_its_own_run(tmp_path, make):
    a, b = runs(tmp_path / "a", make), runs(tmp_path / "b", make)
    train_levels(a, "batched", (0, 1))
    train_levels(b, "batched", (0, 1))
    for ra, rb in zip(a, b):
        for lv in (0, 1):
            (ma, wa), (mb, wb) = files(ra, lv), files(rb, lv)
            assert ma == mb and all(torch.equal(wa[k], wb[k]) for k in wa)
    # Members differ: each trained its own initialization on its own data order.
    assert files(a[0], 1)[0] != files(a[1], 1)[0]
    s = json.loads((a[1].level_dir(1) / "summary.json").read_text())
    assert s["pack"]["size"] == len(SEEDS) and s["pack"]["index"] == 1 and s["pack"]["mode"] == "batched"


@pytest.mark.parametrize("make", [seeded, tiny_resnet], ids=["lenet", "resnet20"])
def test_inside_a_batched_pack_pruned_weights_stay_zero_and_levels_start_from_the_rewound_weights(tmp_path, make):
    """The audit re-checks every member as it checks a lone job: final weights zero where the mask is,
    the recorded first evaluation equal to rewind ⊙ mask evaluated alone, the recorded final accuracy
    equal to the stored network's."""
    rs = runs(tmp_path, make)
    train_levels(rs, "batched", (0, 1, 2))
    for r in rs:
        for lv in (1, 2):
            w, m = r.final_state(r.level_dir(lv)), r.load_mask(r.level_dir(lv))
            assert all(bool((w[n][m[n] == 0] == 0).all()) for n in m)
            assert any(bool((m[n] == 0).any()) for n in m)
    findings = audit.audit(tmp_path, Runtime(device="cpu", progress=False))
    assert {f.check for f in findings if f.status == audit.OK} == set(audit.CHECKS)
    assert not [f for f in findings if f.status == audit.FAIL]


def test_batchnorm_running_statistics_stay_per_member_and_exact(tmp_path):
    """One batched step at learning rate 0 moves no weight; each member's running mean is then what its
    own batch gives a lone network (momentum 0.1 from zero), not a statistic pooled over the pack."""
    cfgs = [config.from_dict(tiny_resnet(seed)) for seed in SEEDS]
    ds = data.load(cfgs[0].data)
    rs = [Run(c, tmp_path / f"seed{c.seeds.init}", ds, RUNTIME) for c in cfgs]
    members = []
    for r in rs:
        p = r.level_job(0)
        p.job.lr = lambda step: 0.0
        members.append(train.Member(build=r.model, data=r.data, cfg=r.cfg, job=p.job))
    stack = train._Stack(members, torch.device("cpu"))
    xs = torch.stack([data.Batches(ds, 32, m.job.data_order_seed, m.job.augmentation_seed)[0][0] for m in members])
    stack.base.train()
    with torch.no_grad():
        stack.forward(xs)
    bn = next(k for k in stack.buffers if k.endswith("running_mean"))
    for i, m in enumerate(members):
        lone = m.build()
        lone.load_state_dict(m.job.state)
        lone.train()
        with torch.no_grad():
            lone(xs[i])
        assert torch.allclose(stack.buffers[bn][i], lone.state_dict()[bn], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(stack.buffers[bn][0], stack.buffers[bn][1])


def test_packed_and_lone_runs_agree_to_rounding_over_a_full_short_training(tmp_path):
    """The same config trained lone and in batched packs, 150 steps and three IMP levels: the same masks,
    weights within 1e-5 (measured: 2e-7), every evaluation's losses within 1e-5 (measured: 1e-7) and its
    accuracies within one example (measured: equal). A pooled loss, a shared data order or a member's
    optimizer state given to another moves them by orders of magnitude more; within-noise agreement of
    accuracy on 128 test images (a bound of about 9 points) could not tell."""
    steps = {"train": {"steps": "150it", "eval_every": "50it", "milestones": ["120it"]}}
    lone, packed = runs(tmp_path / "lone", **steps), runs(tmp_path / "packed", **steps)
    train_levels(lone, None)
    train_levels(packed, "batched")
    for a, b in zip(lone, packed):
        for lv in (0, 1, 2):
            (ma, wa), (mb, wb) = files(a, lv), files(b, lv)
            masks = a.load_mask(a.level_dir(lv)), b.load_mask(b.level_dir(lv))
            assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
            for k in wa:
                assert torch.allclose(wa[k].float(), wb[k].float(), rtol=1e-4, atol=1e-5), (a.root.name, lv, k)
            ra, rb = pd.read_csv(io.StringIO(ma)), pd.read_csv(io.StringIO(mb))
            assert list(ra["step"]) == list(rb["step"]) == [0 if lv == 0 else 5, 50, 100, 150]  # k = 5
            for col in ("train_loss", "val_loss", "test_loss"):
                assert (ra[col] - rb[col]).abs().max() <= 1e-5, (a.root.name, lv, col)
            for col, n in (("val_acc", len(a.data.val)), ("test_acc", len(a.data.test))):
                assert (ra[col] - rb[col]).abs().max() <= 1 / n + 1e-12, (a.root.name, lv, col)


@contextlib.contextmanager
def killed_mid_run(monkeypatch, batch: int = 3 * 23):
    """Inside the block, the ``batch``-th batch drawn (mid-run for a pack of 3, after a few pack checkpoints)
    raises KeyboardInterrupt, as a kill would; after it, batches are drawn as usual again."""
    original, calls = data.Batches.__getitem__, {"n": 0}

    def interrupted(self, step):
        calls["n"] += 1
        if calls["n"] == batch:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(data.Batches, "__getitem__", interrupted)
    try:
        yield
    finally:
        monkeypatch.setattr(data.Batches, "__getitem__", original)


def test_an_interrupted_pack_resumes_every_member_bit_for_bit(tmp_path, monkeypatch):
    reference = runs(tmp_path / "ref")
    train_levels(reference, "batched", (0,))
    rs = runs(tmp_path / "run", runtime=Runtime(device="cpu", progress=False, checkpoint_seconds=0))
    with killed_mid_run(monkeypatch), pytest.raises(KeyboardInterrupt):
        train_levels(rs, "batched", (0,))
    assert list((rs[0].level_dir(0)).glob("pack-*.pt")), "the pack checkpoint is kept"
    train_levels(rs, "batched", (0,))
    assert not list((rs[0].level_dir(0)).glob("pack-*.pt")), "a finished pack removes its checkpoint"
    for a, b in zip(reference, rs):
        (ma, wa), (mb, wb) = files(a, 0), files(b, 0)
        assert ma == mb and all(torch.equal(wa[k], wb[k]) for k in wa)
        assert torch.equal(a.rewind_state()["model"][next(iter(wa))], b.rewind_state()["model"][next(iter(wa))])


def test_a_pack_mixes_branches_and_levels_in_lockstep_groups(tmp_path):
    """Baselines of a level and random reinitialization from step 0 (other steps) share one pack."""
    rs = runs(tmp_path, imp={"levels": 1, "rewind": "5it", "reinit_start": "zero"})
    train_levels(rs, "batched", (0, 1))
    r = rs[0]
    jobs = [r.branch_job("random_prune", 1, 0), r.branch_job("random_reinit", 1, 0), rs[1].branch_job("random_prune", 1, 0)]
    groups = pack._lockstep_groups(jobs)
    assert [len(g) for g in groups] == [2, 1]
    summaries = pack.train(jobs, "batched")
    assert [s["branch"] for s in summaries] == ["random_prune", "random_reinit", "random_prune"]
    assert summaries[1]["start_step"] == 0 and summaries[0]["start_step"] == 5
    # Finished jobs are returned as stored.
    assert pack.train([r.branch_job("random_prune", 1, 0)], "batched")[0] == summaries[0]


def test_job_names_are_the_run_layout_and_bad_ones_say_how_to_write_them():
    assert pack.JobName.parse("seed1/imp/level_03") == pack.JobName(1, "imp", 3, None)
    assert pack.JobName.parse("seed0/random_reinit/level_02/rep_1") == pack.JobName(0, "random_reinit", 2, 1)
    for bad in ("seed0/imp/level_03/rep_0", "seed0/copy/level_01", "seed0/warp/level_01", "imp/level_01"):
        with pytest.raises(ConfigError, match="pack: "):
            pack.JobName.parse(bad)


LEVEL_0 = {"train": {"steps": "3it", "eval_every": "3it", "milestones": []}, "imp": {"levels": 0, "rewind": "0it"}}
"""Three steps of the dense network from initialization, with a fresh optimizer."""
LEVEL_1 = {"train": {"steps": "5it", "eval_every": "5it", "milestones": []},
           "imp": {"levels": 1, "rewind": "2it", "rewind_optimizer": True}}
"""Three steps of IMP level 1, from the weights and the optimizer state (momentum, Adam's moments and step
count) at the rewind point k = 2, masked."""
ADAM = {"optimizer": "adam", "lr": 1e-3, "momentum": 0.0}


@pytest.mark.parametrize("make, optimizer, level", [
    (seeded, "sgd", 0), (tiny_resnet, "sgd", 0),
    (seeded, "sgd", 1), (tiny_resnet, "sgd", 1), (seeded, "adam", 0), (seeded, "adam", 1), (tiny_resnet, "adam", 1),
], ids=["lenet-sgd-k0", "resnet20-sgd-k0", "lenet-sgd-k2-restored", "resnet20-sgd-k2-restored", "lenet-adam-k0",
        "lenet-adam-k2-restored", "resnet20-adam-k2-restored"])
def test_a_few_batched_steps_are_the_members_lone_steps_up_to_rounding(tmp_path, make, optimizer, level):
    """Each member's loss is the mean over its own batch and the optimizers are elementwise, so a batched
    step is P lone steps: after a few steps the weights agree to float rounding (a pooled loss would
    scale every gradient by 1/P; shared BN statistics or a shared data order would move them apart). At
    level 1 the members start from the rewind point k = 2 with the optimizer state stored there restored
    (split per member and stacked back: a member given another's moments, or none, would move apart);
    level 0 is trained lone once and copied, so both sides start from the same masks and rewind state."""
    schedule = LEVEL_1 if level else LEVEL_0
    overrides = {**schedule, "train": {**schedule["train"], **(ADAM if optimizer == "adam" else {})}}
    lone = runs(tmp_path / "lone", make, **overrides)
    if level:
        train_levels(lone, None, (0,))
        shutil.copytree(tmp_path / "lone", tmp_path / "packed")
    packed = runs(tmp_path / "packed", make, **overrides)
    if level:
        job = packed[0].level_job(1).job
        assert job.start == 2 and job.optimizer_state is not None and job.optimizer_state["state"]
    train_levels(lone, None, (level,))
    train_levels(packed, "batched", (level,))
    # Adam moves a weight by about lr per step whatever the size of its gradient, so rounding in a gradient
    # (the batched convolution is another kernel than the lone one) can shift a step by a part of lr: with
    # oneDNN held to AVX2 on an AVX-512 CPU the tiny ResNet's weights differed by up to 1.5e-4 after its 3
    # steps (lr 1e-3), 2e-7 as the machine is. A tenth of the 3 steps' largest move bounds rounding; a member
    # given another's moments or none, or shared BN statistics, moves weights by whole steps.
    atol = 0.1 * ADAM["lr"] * 3 if optimizer == "adam" else 1e-5
    for a, b in zip(lone, packed):
        wa, wb = files(a, level)[1], files(b, level)[1]
        assert json.loads((b.level_dir(level) / "summary.json").read_text())["pack"]["mode"] == "batched"
        for k in wa:
            assert torch.allclose(wa[k].float(), wb[k].float(), rtol=1e-4, atol=atol), k
        if level:  # the three steps moved the weights: the comparison is not of two copies of the rewind state
            rewound = a.rewind_state()["model"]
            assert any(not torch.allclose(wb[k].float(), rewound[k].float()) for k in wb if wb[k].is_floating_point())


def poison(state: dict[str, torch.Tensor], how: str) -> dict[str, torch.Tensor]:
    """A member's start state that diverges: NaN weights (the first evaluation is not finite), or weights a
    million times too large (finite at first; the first steps overflow the training loss)."""
    factor = math.nan if how == "nan" else 1e6
    return {k: v * factor if k.endswith("weight") else v for k, v in state.items()}


@pytest.mark.parametrize("how, mode", [("nan", "batched"), ("huge", "batched"), ("nan", "sequential")])
def test_a_diverging_member_is_stopped_and_recorded_and_the_others_finish_as_without_it(tmp_path, monkeypatch, how, mode):
    """One member of three diverges (the learning rate is the pack's, so its start state is made to): it
    gets diverged.json with the step and the reason in place of a summary, the other two finish with the
    files of the same pack in which nothing diverged, bit for bit, and the pack then fails with one line
    naming it. A rerun trains nothing: it names the job again and says how to proceed."""
    reference = runs(tmp_path / "ref")
    train_levels(reference, mode, (0,))
    rs = runs(tmp_path / "run")
    pendings = [r.level_job(0) for r in rs]
    pendings[1].job.state = poison(pendings[1].job.state, how)
    with pytest.raises(TrainingDiverged) as failed:
        pack.train(pendings, mode)
    message = str(failed.value)
    assert "\n" not in message and message.startswith("pack: 1 of 3 jobs diverged: seed1/imp/level_00 by step ")
    record = json.loads((rs[1].level_dir(0) / "diverged.json").read_text())
    if how == "nan":
        assert record["step"] == 0 and record["reason"] == "val loss is not finite"  # the first evaluation
    else:  # found by the first evaluation after the loss overflowed
        assert record["step"] > 0 and record["reason"].startswith("training loss became ")
    assert f"seed1/imp/level_00 by step {record['step']} ({record['reason']})" in message
    assert not (rs[1].level_dir(0) / "summary.json").exists() and not (rs[1].level_dir(0) / "final.pt").exists()
    for i in (0, 2):
        (ma, wa), (mb, wb) = files(reference[i], 0), files(rs[i], 0)
        assert ma == mb and all(torch.equal(wa[k], wb[k]) for k in wa), i
    assert not list(rs[0].level_dir(0).glob("pack-*.pt"))

    def no_step(self, step):
        raise AssertionError("a rerun trained")

    monkeypatch.setattr(data.Batches, "__getitem__", no_step)
    with pytest.raises(TrainingDiverged) as again:
        pack.train([r.level_job(0) for r in rs], mode)
    assert str(again.value) == message
    assert "delete that file" in message and "diverged.json" in message


def test_a_pack_resumed_after_a_member_diverged_keeps_it_stopped(tmp_path, monkeypatch):
    """Interrupted after one member was stopped, the pack resumes from its checkpoint with that member still
    stopped (its record says so); the others end as in a pack where nothing diverged."""
    reference = runs(tmp_path / "ref")
    train_levels(reference, "batched", (0,))
    rs = runs(tmp_path / "run", runtime=Runtime(device="cpu", progress=False, checkpoint_seconds=0))
    pendings = [r.level_job(0) for r in rs]
    pendings[1].job.state = poison(pendings[1].job.state, "nan")
    with killed_mid_run(monkeypatch), pytest.raises(KeyboardInterrupt):
        pack.train(pendings, "batched")
    assert (rs[1].level_dir(0) / "diverged.json").is_file() and list(rs[0].level_dir(0).glob("pack-*.pt"))
    with pytest.raises(TrainingDiverged, match="seed1/imp/level_00 by step 0"):
        pack.train([r.level_job(0) for r in rs], "batched")  # the start state is healthy now: the record stops it
    assert not (rs[1].level_dir(0) / "summary.json").exists()
    for i in (0, 2):
        (ma, wa), (mb, wb) = files(reference[i], 0), files(rs[i], 0)
        assert ma == mb and all(torch.equal(wa[k], wb[k]) for k in wa), i


def test_a_packed_member_records_the_layout_it_trained_in(tmp_path):
    """A width-8 ResNet-20 runs channels_last alone (``models.memory_format``, auto); the stacked computation
    of a batched pack runs NCHW, and its members are evaluated and recorded so. The audit re-evaluates each
    stored network in the recorded layout and finds the recorded numbers exactly."""
    def wide(seed: int, **overrides) -> dict:
        return seeded(seed, model={"name": "resnet20", "width": 8, "init": "kaiming_normal", "batchnorm_init": "uniform"},
                      data={"synthetic_shape": [3, 8, 8]}, **overrides)

    short = {"train": {"steps": "10it", "eval_every": "5it", "milestones": []}, "imp": {"levels": 0, "rewind": "0it"}}
    lone, packed = runs(tmp_path / "lone", wide, **short), runs(tmp_path / "packed", wide, **short)
    lone[0].level(0)
    train_levels(packed, "batched", (0,))
    assert json.loads((lone[0].level_dir(0) / "summary.json").read_text())["memory_format"] == "channels_last"
    for r in packed:
        assert json.loads((r.level_dir(0) / "summary.json").read_text())["memory_format"] == "contiguous"
    findings = audit.audit(tmp_path / "packed", Runtime(device="cpu", progress=False))
    assert not [f for f in findings if f.status == audit.FAIL]
    assert any(f.status == audit.OK for f in findings)
