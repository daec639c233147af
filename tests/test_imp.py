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


def metrics_of(folder) -> "pd.DataFrame":
    import pandas as pd

    return pd.read_csv(folder / "metrics.csv")


def test_every_summary_records_both_densities_unpruned_weights_counted_in_density_total(tmp_path):
    """Output layer left unpruned: density counts the prunable weights, density_total all of them (P_m)."""
    run = make_run(tmp_path, prune={"strategy": "layerwise", "rates": {"fc": 0.2}}, imp={"levels": 1, "rewind": "5it"})
    dense, level = run.level(0), run.level(1)
    assert dense["density"] == dense["density_total"] == 1.0
    net = run.model()
    out = net.fc_out.weight.numel()
    prunable = sum(m.numel() for m in run.load_mask(run.level_dir(1)).values())
    kept = level["density"] * prunable
    assert level["density_total"] == pytest.approx((kept + out) / (prunable + out), rel=1e-12)
    assert level["density_total"] > level["density"]


@pytest.mark.parametrize("reinit_start, first_step", [("rewind", 5), ("zero", 0)])
def test_random_reinit_trains_from_k_or_from_zero_at_that_steps_learning_rate(tmp_path, reinit_start, first_step):
    """With k = 5 and a 10-step warmup, 'rewind' trains T - k = 35 steps starting at the learning rate of
    step k (half of it); 'zero' trains all T = 40 steps from a learning rate of 0, the full schedule."""
    run = make_run(tmp_path, train={"warmup": "10it"}, imp={"levels": 1, "rewind": "5it", "reinit_start": reinit_start})
    run.all_levels()
    s = run.branch("random_reinit", 1, 0)
    assert s["reinit_start"] == reinit_start
    assert (s["start_step"], s["end_step"]) == (first_step, 40)
    metrics = metrics_of(run.level_dir(1, "random_reinit", 0))
    assert metrics["step"].iloc[0] == first_step and metrics["step"].iloc[-1] == 40
    assert metrics["lr"].iloc[0] == pytest.approx(run.schedule.lr_at(first_step, 0.05, 0.1))
    assert metrics["lr"].iloc[0] == pytest.approx({"rewind": 0.025, "zero": 0.0}[reinit_start])
    # the other branches never start anywhere but k, and do not record the option
    assert "reinit_start" not in run.level(1) and "reinit_start" not in run.branch("random_prune", 1, 0)
    assert run.branch("random_prune", 1, 0)["start_step"] == 5


def test_reinit_start_changes_only_where_the_fresh_weights_start(tmp_path):
    """Same mask, same fresh weights: the first evaluation of a 'zero' reinit (step 0) and of a 'rewind'
    reinit (step k) sees the same network."""
    a = make_run(tmp_path, "a")
    b = make_run(tmp_path, "b", imp={"levels": 2, "rewind": "5it", "reinit_start": "zero"})
    for run in (a, b):
        run.level(0), run.level(1)
        run.branch("random_reinit", 1, 0)
    assert all(torch.equal(a.load_mask(a.level_dir(1))[n], m) for n, m in b.load_mask(b.level_dir(1)).items())
    ma, mb = (metrics_of(r.level_dir(1, "random_reinit", 0)) for r in (a, b))
    assert ma["test_loss"].iloc[0] == mb["test_loss"].iloc[0]


@pytest.mark.parametrize("kind, baseline", [("copy_random_prune", "random_prune"), ("copy_random_reinit", "random_reinit")])
def test_copies_of_a_random_baseline_share_its_network_and_differ_in_sgd_noise(tmp_path, kind, baseline):
    """LMC Sec. 4's instability of random baselines: every copy is the network of the baseline's
    replicate 0 (its mask, its starting weights), trained with data order and augmentation of its own."""
    run = make_run(tmp_path)
    run.all_levels()
    run.branch(baseline, 1, 0)
    a, b = run.branch(kind, 1, 0), run.branch(kind, 1, 1)
    folders = [run.level_dir(1, baseline, 0), run.level_dir(1, kind, 0), run.level_dir(1, kind, 1)]
    masks = [run.load_mask(f) for f in folders]
    assert all(torch.equal(m[n], masks[0][n]) for m in masks[1:] for n in masks[0])
    if baseline == "random_prune":
        imp_mask = run.load_mask(run.level_dir(1))
        assert any(not torch.equal(masks[0][n], imp_mask[n]) for n in imp_mask)
    first = [metrics_of(f).iloc[0] for f in folders]  # evaluated before the first step: the start network
    assert all(r["step"] == 5 and r["test_loss"] == first[0]["test_loss"] for r in first)
    assert a["final_test_loss"] != b["final_test_loss"]  # different data order and augmentation
    for folder, mask in zip(folders[1:], masks[1:]):
        final = final_weights(run, folder)
        assert all(torch.count_nonzero(final[n][~m]) == 0 for n, m in mask.items())
    assert (a["branch"], a["replicate"], b["replicate"]) == (kind, 0, 1)


def test_test_set_at_early_stop_points_only_records_the_same_early_stop_and_final_numbers(tmp_path):
    """--test-eval early-stop evaluates the test set only where the validation loss reaches a new
    minimum and at the end: every number early stopping and the final accuracy read is the same as when
    the test set is evaluated every time, and the rows in between hold NaN (nothing else is computed)."""
    import math

    import pandas as pd

    cfg = config.from_dict(tiny_run(train={"steps": "200it", "eval_every": "10it", "lr": 0.3}))
    loaded = data.load(cfg.data)
    every_run = Run(cfg, tmp_path / "every", loaded, RUNTIME)
    lean_run = Run(cfg, tmp_path / "lean", loaded, Runtime(device="cpu", progress=False, test_eval="early-stop"))
    every_run.level(0), lean_run.level(0)
    every, lean = every_run.level(1), lean_run.level(1)
    for key in ("early_stop_step", "early_stop_test_acc", "early_stop_val_loss", "final_test_acc", "final_test_loss",
                "final_train_acc", "model_sha256"):
        assert lean[key] == every[key], key
    rows = pd.read_csv(lean_run.level_dir(1) / "metrics.csv")
    best = rows["val_loss"].cummin()
    new_minimum = rows["val_loss"] < best.shift(fill_value=math.inf)
    tested = rows["test_acc"].notna()
    assert (tested == (new_minimum | (rows["step"] == rows["step"].max()))).all()
    assert not tested.all(), "the tiny run should have evaluations that are not new minima"
