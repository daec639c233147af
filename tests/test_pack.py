"""Packed training: several jobs in one process, each exactly the job it would be alone, up to rounding.

A pack's member keeps its own mask, start state, data order, augmentation, optimizer state, BatchNorm
statistics, evaluations and files; ``batched`` packs compute all members in one vmapped step, so they
round differently from lone jobs and are compared within noise, while ``sequential`` packs are lone jobs
bit for bit. For a given pack, training is deterministic and resumes bit for bit after an interruption.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ticketbench import config, data, pack, train
from ticketbench.config import ConfigError
from ticketbench.imp import Run
from ticketbench.report import audit, compare, tables
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


def test_packed_and_lone_runs_agree_within_noise_over_a_full_short_training(tmp_path):
    """The judgement ``ticketbench compare`` makes between two reproductions, applied to the same config
    trained lone and in batched packs: every level's accuracy agrees within noise."""
    steps = {"train": {"steps": "150it", "eval_every": "50it", "milestones": ["120it"]}}
    lone, packed = runs(tmp_path / "lone", **steps), runs(tmp_path / "packed", **steps)
    train_levels(lone, None)
    train_levels(packed, "batched")
    n_test = {"tiny": len(lone[0].data.test)}
    rows = compare.compare_rows(compare.row_stats(tables.jobs(tmp_path / "lone"), n_test),
                                compare.row_stats(tables.jobs(tmp_path / "packed"), n_test), alpha=0.05)
    assert len(rows) == 3 * 2  # levels 0-2, final and early-stop accuracy
    assert (rows["status"] == compare.WITHIN).all(), rows[["level", "metric", "a", "b", "bound"]]


def test_an_interrupted_pack_resumes_every_member_bit_for_bit(tmp_path, monkeypatch):
    reference = runs(tmp_path / "ref")
    train_levels(reference, "batched", (0,))
    rs = runs(tmp_path / "run", runtime=Runtime(device="cpu", progress=False, checkpoint_seconds=0))
    original, calls = data.Batches.__getitem__, {"n": 0}

    def interrupted(self, step):
        calls["n"] += 1
        if calls["n"] == 3 * 23:  # mid-run, after a few pack checkpoints
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(data.Batches, "__getitem__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_levels(rs, "batched", (0,))
    assert list((rs[0].level_dir(0)).glob("pack-*.pt")), "the pack checkpoint is kept"
    monkeypatch.setattr(data.Batches, "__getitem__", original)
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


@pytest.mark.parametrize("make", [seeded, tiny_resnet], ids=["lenet", "resnet20"])
def test_a_few_batched_steps_are_the_members_lone_steps_up_to_rounding(tmp_path, make):
    """Each member's loss is the mean over its own batch and the optimizers are elementwise, so a batched
    step is P lone steps: after a few steps the weights agree to float rounding (a pooled loss would
    scale every gradient by 1/P; shared BN statistics or a shared data order would move them apart)."""
    short = {"train": {"steps": "3it", "eval_every": "3it", "milestones": []}, "imp": {"levels": 0, "rewind": "0it"}}
    lone, packed = runs(tmp_path / "lone", make, **short), runs(tmp_path / "packed", make, **short)
    train_levels(lone, None, (0,))
    train_levels(packed, "batched", (0,))
    for a, b in zip(lone, packed):
        wa, wb = files(a, 0)[1], files(b, 0)[1]
        for k in wa:
            assert torch.allclose(wa[k].float(), wb[k].float(), rtol=1e-4, atol=1e-5), k
