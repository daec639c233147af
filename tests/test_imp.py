"""IMP with rewinding and its baselines, end to end on a tiny problem."""

from __future__ import annotations

import json

import pytest
import torch

from ticketbench import checkpoints, config, data
from ticketbench.imp import Run
from ticketbench.runtime import Runtime

from conftest import tiny_run

RUNTIME = Runtime(device="cpu", progress=False)


def make_run(tmp_path, name="run", **overrides) -> Run:
    cfg = config.from_dict(tiny_run(**overrides))
    return Run(cfg, tmp_path / name, data.load(cfg.data), RUNTIME)


def final_weights(run: Run, folder) -> dict:
    return run.final_state(folder)


def test_same_seeds_give_identical_metrics_and_weights(tmp_path):
    a, b = make_run(tmp_path, "a"), make_run(tmp_path, "b")
    sa, sb = a.level(0), b.level(0)
    assert (a.level_dir(0) / "metrics.csv").read_text() == (b.level_dir(0) / "metrics.csv").read_text()
    assert sa["final_test_loss"] == sb["final_test_loss"]
    wa, wb = final_weights(a, a.level_dir(0)), final_weights(b, b.level_dir(0))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_every_summary_records_the_memory_layout_it_ran_in(tmp_path):
    """Layouts round differently, so a result says which one made it (the tiny net is fully connected)."""
    assert make_run(tmp_path).level(0)["memory_format"] == "contiguous"


def test_changing_only_the_data_order_seed_changes_training_but_not_the_init(tmp_path):
    a = make_run(tmp_path, "a")
    b = make_run(tmp_path, "b", seeds={"init": 0, "data_order": 1, "augmentation": 0})
    assert all(torch.equal(x, y) for x, y in zip(a.model().state_dict().values(), b.model().state_dict().values()))
    a.level(0), b.level(0)
    assert (a.level_dir(0) / "metrics.csv").read_text() != (b.level_dir(0) / "metrics.csv").read_text()


def test_levels_rewind_survivors_bit_for_bit_to_the_state_at_step_k(tmp_path):
    run = make_run(tmp_path)
    run.all_levels()
    rewind = run.rewind_state()
    assert rewind["step"] == run.schedule.rewind == 5
    # The state at k is the dense run's own trajectory: retraining 5 steps from init reproduces it.
    probe = make_run(tmp_path, "probe", train={"steps": "5it"}, imp={"levels": 0, "rewind": "0it"})
    probe.level(0)
    assert all(torch.equal(rewind["model"][k], probe.final_state(probe.level_dir(0))[k].cpu()) for k in rewind["model"])
    # Each level's starting weights are rewind ⊙ mask: check through a level's first checkpointed state.
    for level in (1, 2):
        mask = run.load_mask(run.level_dir(level))
        state, _ = run._start_state(mask)
        for name, m in mask.items():
            assert torch.equal(state[name][m], rewind["model"][name][m])
        final = final_weights(run, run.level_dir(level))
        for name, m in mask.items():
            assert torch.count_nonzero(final[name][~m]) == 0
        assert json.loads((run.level_dir(level) / "summary.json").read_text())["start_step"] == 5


def test_imp_densities_follow_the_per_layer_rates(tmp_path):
    run = make_run(tmp_path)
    summaries = run.all_levels()
    densities = [s["density"] for s in summaries]
    assert densities[0] == 1.0 and densities[0] > densities[1] > densities[2]
    table = checkpoints.load(run.level_dir(2) / "mask.pt", kind="mask", config_hash=run.hash)["layers"]
    by_layer = {row["layer"]: row["density"] for row in table}
    assert by_layer["fc_out.weight"] == pytest.approx(0.81, abs=0.01)  # output layer at half the rate: 0.9^2
    assert by_layer["fcs.0.weight"] == pytest.approx(0.64, abs=0.01)  # hidden layers at 20 %: 0.8^2


def test_finished_levels_are_not_recomputed(tmp_path):
    run = make_run(tmp_path)
    run.level(0)
    before = (run.level_dir(0) / "final.pt").stat().st_mtime_ns
    run.level(0)
    run.level(1)
    assert (run.level_dir(0) / "final.pt").stat().st_mtime_ns == before


def test_baselines_share_the_level_sparsity(tmp_path):
    run = make_run(tmp_path)
    run.all_levels()
    imp_mask = run.load_mask(run.level_dir(2))
    counts = {n: int(m.sum()) for n, m in imp_mask.items()}
    for kind in ("random_reinit", "random_prune", "oneshot", "copy"):
        s = run.branch(kind, 2, 0)
        mask = run.load_mask(run.level_dir(2, kind, 0))
        assert {n: int(m.sum()) for n, m in mask.items()} == counts, kind
        assert s["density"] == pytest.approx(run.level(2)["density"])
    assert all(torch.equal(run.load_mask(run.level_dir(2, "random_reinit", 0))[n], imp_mask[n]) for n in imp_mask)
    assert any(not torch.equal(run.load_mask(run.level_dir(2, "random_prune", 0))[n], imp_mask[n]) for n in imp_mask)
    reinit = run.model(seed=12345).state_dict()
    assert not torch.equal(reinit["fcs.0.weight"], run.rewind_state()["model"]["fcs.0.weight"])


def test_copies_differ_only_in_sgd_noise(tmp_path):
    run = make_run(tmp_path)
    run.all_levels()
    a, b = run.branch("copy", 1, 0), run.branch("copy", 1, 1)
    assert a["final_test_loss"] != b["final_test_loss"]
    assert torch.equal(run.load_mask(run.level_dir(1, "copy", 0))["fcs.0.weight"],
                       run.load_mask(run.level_dir(1))["fcs.0.weight"])


def test_finetuning_keeps_trained_weights_and_uses_the_final_learning_rate(tmp_path):
    run = make_run(tmp_path)
    run.level(0)
    s = run.finetune(1)
    metrics = (run.level_dir(1, "finetune") / "metrics.csv").read_text().splitlines()
    lrs = {float(line.split(",")[2]) for line in metrics[1:]}
    assert len(lrs) == 1 and lrs.pop() == pytest.approx(0.05 * 0.1)
    assert s["start_step"] == 40 and s["end_step"] == 75  # T, then T - k more steps


def test_a_checkpoint_from_another_config_is_refused(tmp_path):
    import shutil

    a = make_run(tmp_path, "a")
    a.level(0)
    b = make_run(tmp_path, "b", train={"lr": 0.04})
    shutil.copytree(a.level_dir(0), b.level_dir(0))  # a's level 0 placed in b's run directory
    shutil.copy(a.root / "rewind.pt", b.root / "rewind.pt")
    with pytest.raises(checkpoints.CheckpointError, match="made by config"):
        b.level(1)
    with pytest.raises(config.ConfigError, match="holds a run of config"):
        Run(b.cfg, a.root, b.data, RUNTIME)
