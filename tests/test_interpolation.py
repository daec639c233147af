"""Linear interpolation and barriers against cases with known answers, and the analysis subcommands
(hessian, interpolate, instability) on a tiny synthetic run made with ``ticketbench imp`` / ``branch``."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ticketbench import cli
from ticketbench.analysis.commands import register
from ticketbench.analysis.barriers import barrier, barriers, spread
from ticketbench.analysis.interpolation import alphas, common_mask, endpoints, interpolate_state, path, recompute_batchnorm
from ticketbench.data import Split
from ticketbench.train import evaluate

from conftest import tiny_run

torch.set_num_threads(1)


class DoubleWell(nn.Module):
    """One scalar weight w; every example's logit margin for its (only) class is c - (w^2 - 1)^2.

    Minima at w = -1 and w = +1 (loss softplus(-c), error 0); on the line between them the margin
    is lowest at w = 0, where it is c - 1."""

    def __init__(self, w: float, c: float = 0.5):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = self.c - (self.w ** 2 - 1) ** 2
        return torch.stack([margin, torch.zeros_like(margin)]).expand(len(x), 2)


def well_data(n: int = 10) -> Split:
    return Split(torch.zeros(n, 1, dtype=torch.float64), torch.zeros(n, dtype=torch.long))


class SmallBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


def small_bn_pair() -> tuple[nn.Module, dict, dict, Split, Split]:
    torch.manual_seed(0)
    a, b = SmallBN(), SmallBN()
    g = torch.Generator().manual_seed(0)
    data = Split(torch.randn(64, 1, 6, 6, generator=g), torch.randint(0, 4, (64,), generator=g))
    for net in (a, b):  # give both networks their own, non-trivial BN statistics
        recompute_batchnorm(net, Split(data.x * torch.rand(1, generator=g) * 3, data.y))
    test = Split(torch.randn(32, 1, 6, 6, generator=g), torch.randint(0, 4, (32,), generator=g))
    return SmallBN(), a.state_dict(), b.state_dict(), data, test


# -- the path ----------------------------------------------------------------------------------------


def test_alphas_are_evenly_spaced_with_exact_endpoints():
    a = alphas(30)
    assert len(a) == 30 and a[0] == 0.0 and a[-1] == 1.0
    assert all(abs((y - x) - 1 / 29) < 1e-12 for x, y in zip(a, a[1:]))


def test_interpolating_a_network_with_itself_gives_a_flat_path_and_zero_barrier():
    model, a, _, train, test = small_bn_pair()
    df = path(model, a, a, train, test, points=7)
    for m in ("train_loss", "train_error", "test_loss", "test_error"):
        assert df[m].nunique() == 1
        assert barrier(df[m]) == 0.0


def test_endpoints_equal_the_endpoint_networks_metrics_exactly():
    model, a, b, train, test = small_bn_pair()
    df = path(model, a, b, train, test, points=5)
    for row, state in ((df.iloc[0], a), (df.iloc[-1], b)):
        net = SmallBN()
        net.load_state_dict(state)
        (trl, tra), (tel, tea) = evaluate(net, train), evaluate(net, test)
        assert (row.train_loss, row.train_error, row.test_loss, row.test_error) == (trl, 1 - tra, tel, 1 - tea)


def test_double_well_has_the_known_loss_and_error_barrier():
    data = well_data()
    a, b = DoubleWell(-1.0).state_dict(), DoubleWell(1.0).state_dict()
    df = path(DoubleWell(0.0), a, b, data, data, points=31)  # alpha = 0.5 (w = 0) is on the grid
    # Loss: softplus(-(c - 1)) - softplus(-c) = softplus(0.5) - softplus(-0.5) = 0.5 exactly.
    assert barrier(df["train_loss"]) == pytest.approx(0.5, abs=1e-12)
    assert df["train_loss"].idxmax() == 15
    # Error: the margin is negative for |w| < sqrt(1 - sqrt(0.5)), so the path passes through 100 % error.
    assert barrier(df["test_error"]) == 1.0
    wrong = df.loc[df["test_error"] == 1.0, "alpha"]
    w = 2 * wrong - 1
    assert (w.abs() < math.sqrt(1 - math.sqrt(0.5))).all() and len(wrong) > 1


def test_barrier_is_max_minus_mean_of_endpoints():
    assert barrier([0.1, 0.5, 0.3]) == pytest.approx(0.5 - 0.2)
    assert barrier([0.4, 0.3, 0.2]) == pytest.approx(0.4 - 0.3)  # the max may be an endpoint: never negative


def test_interpolate_state_lerps_floats_and_keeps_counters():
    a = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(5)}
    b = {"w": torch.tensor([1.0, 4.0]), "n": torch.tensor(9)}
    mid = interpolate_state(a, b, 0.25)
    assert torch.allclose(mid["w"], torch.tensor([0.25, 2.5])) and mid["n"] == 5
    with pytest.raises(ValueError, match="shapes"):
        interpolate_state(a, {"w": torch.zeros(3), "n": torch.tensor(1)}, 0.5)


def test_common_mask_restricts_both_endpoints_to_the_sparser_nested_mask():
    dense_level = torch.tensor([True, True, True, False])
    sparser = torch.tensor([True, False, True, False])  # IMP masks are nested
    a = {"w": torch.tensor([1.0, 2.0, 3.0, 0.0]), "b": torch.tensor([7.0])}
    b = {"w": torch.tensor([4.0, 0.0, 6.0, 0.0]), "b": torch.tensor([8.0])}
    ma, mb = {"w": dense_level}, {"w": sparser}
    assert torch.equal(common_mask(ma, mb)["w"], sparser)
    ea, eb = endpoints(a, b, ma, mb, "common")
    assert torch.equal(ea["w"], torch.tensor([1.0, 0.0, 3.0, 0.0])) and torch.equal(eb["w"], b["w"])
    assert ea["b"].item() == 7.0  # unprunable parameters are untouched
    na, nb = endpoints(a, b, ma, mb, "none")
    assert na is a and nb is b


def test_recomputed_batchnorm_statistics_are_size_weighted_chunk_statistics():
    model, a, _, train, _ = small_bn_pair()
    model.load_state_dict(a)
    recompute_batchnorm(model, train, batch_size=10)  # uneven chunks: 64 = 6*10 + 4
    with torch.no_grad():
        pre = model.conv(train.x).transpose(0, 1)  # (channels, examples, h, w)
    assert torch.allclose(model.bn.running_mean, pre.mean((1, 2, 3)), atol=1e-6)  # the exact data mean
    chunks = [pre[:, i:i + 10].flatten(1) for i in range(0, 64, 10)]
    weighted_var = sum(c.var(1, unbiased=True) * (c.shape[1] / 16) for c in chunks) / 64
    assert torch.allclose(model.bn.running_var, weighted_var, rtol=1e-5)
    assert not model.training and model.bn.momentum == 0.1


def test_recomputed_bn_changes_the_interior_of_a_path_only_through_the_statistics():
    model, a, b, train, test = small_bn_pair()
    as_is = path(model, a, b, train, test, points=3)
    fresh = path(model, a, b, train, test, points=3, bn="recompute", bn_data=train)
    assert not as_is.equals(fresh)
    with pytest.raises(ValueError, match="bn_data"):
        path(model, a, b, train, test, points=3, bn="recompute")


def test_barriers_and_spread_over_pairs():
    rows = []
    for pair, peak in ((0, 0.3), (1, 0.5)):
        for i, alpha in enumerate(alphas(3)):
            v = [0.1, peak, 0.1][i]
            rows.append({"pair": pair, "alpha": alpha, "train_loss": v, "train_error": v, "test_loss": v, "test_error": v})
    per_pair = barriers(pd.DataFrame(rows), ["pair"])
    assert per_pair["test_error_barrier"].tolist() == pytest.approx([0.2, 0.4])
    assert per_pair["test_error_a"].tolist() == pytest.approx([0.1, 0.1])
    s = spread(per_pair.assign(level=3), ["level"]).iloc[0]
    assert s["pairs"] == 2
    assert s["test_error_barrier_mean"] == pytest.approx(0.3)
    assert s["test_error_barrier_std"] == pytest.approx(math.sqrt(0.02))


# -- the subcommands on a tiny run ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """IMP levels 0-2 and two SGD-noise copies at level 1, through the real CLI."""
    import yaml

    folder = tmp_path_factory.mktemp("analysis")
    config, run = folder / "run.yaml", folder / "run"
    config.write_text(yaml.safe_dump(tiny_run()))
    common = [str(config), "--run-dir", str(run), "--threads", "1", "--no-progress"]
    assert cli.main(["imp", *common]) == 0
    for r in (0, 1):
        assert cli.main(["branch", *common, "--kind", "copy", "--level", "1", "--replicate", str(r)]) == 0
    return config, run


def analysis_cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    handlers = register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    handlers[args.command](args)


def test_hessian_command_writes_tidy_eigenvalues_trace_and_volumes(tiny):
    _, run = tiny
    out = run / "analysis" / "hessian" / "imp_level_01.csv"
    analysis_cli(["hessian", str(run / "imp" / "level_01"), "-o", str(out), "--top-k", "3", "--max-hvps", "40",
                  "--tol", "1e-2", "--trace-samples", "3", "--density-probes", "1", "--density-steps", "5",
                  "--threads", "1"])
    df = pd.read_csv(out)
    assert {"experiment", "run", "seed", "level", "branch", "quantity", "index", "value"} <= set(df.columns)
    eig = df[df.quantity == "eigenvalue"]
    assert eig["index"].tolist() == [0, 1, 2]
    assert (eig["value"].diff().dropna() <= 0).all()  # descending
    assert (eig["level"] == 1).all() and (eig["branch"] == "imp").all() and (eig["run"] == run.name).all()
    assert eig["converged"].all() and (eig["relative_residual"] <= 1e-2).all()
    # The subnetwork's dimension: kept weights plus all biases (LeNet 64-300-100-10).
    biases = 300 + 100 + 10
    assert eig["dim"].iloc[0] == round(eig["density"].iloc[0] * (64 * 300 + 300 * 100 + 100 * 10)) + biases
    assert set(df["quantity"]) == {"eigenvalue", "trace", "log_volume", "log_volume_ellipsoid", "log_volume_laplace"}
    assert df.loc[df.quantity == "log_volume", "value"].item() == df.loc[df.quantity == "log_volume_ellipsoid", "value"].item()
    dens = pd.read_csv(out.with_name("imp_level_01_density.csv"))
    assert len(dens) == 5 and dens["weight"].sum() == pytest.approx(1.0)


def test_instability_command_interpolates_the_copy_pairs(tiny):
    _, run = tiny
    out = run / "analysis" / "instability" / "level_01.csv"
    analysis_cli(["instability", str(run), "--level", "1", "--pairs", "1", "--points", "5", "-o", str(out),
                  "--barriers", str(out.with_name("level_01_barriers.csv")), "--threads", "1"])
    paths = pd.read_csv(out)
    assert len(paths) == 5 and paths["alpha"].tolist() == alphas(5)
    assert {"experiment", "run", "seed", "level", "branch", "pair", "point", "alpha", "test_error"} <= set(paths.columns)
    per_pair = pd.read_csv(out.with_name("level_01_barriers.csv"))
    assert len(per_pair) == 1 and per_pair["test_error_barrier"].item() >= 0
    # The endpoints are the two trained copies: their metrics are the ones their jobs recorded.
    import json

    s0 = json.loads((run / "copy" / "level_01" / "rep_0" / "summary.json").read_text())
    s1 = json.loads((run / "copy" / "level_01" / "rep_1" / "summary.json").read_text())
    assert paths["test_error"].iloc[0] == pytest.approx(1 - s0["final_test_acc"], abs=1e-12)
    assert paths["test_error"].iloc[-1] == pytest.approx(1 - s1["final_test_acc"], abs=1e-12)
    assert paths["train_loss"].iloc[0] == pytest.approx(s0["final_train_loss"], rel=1e-9)


def test_interpolate_command_runs_successive_levels_with_both_mask_modes(tiny):
    _, run = tiny
    out = run / "analysis" / "successive" / "level_01.csv"
    analysis_cli(["interpolate", str(run / "imp" / "level_01"), str(run / "imp" / "level_02"), "--mask", "common", "none",
                  "--points", "4", "--train-examples", "100", "-o", str(out),
                  "--barriers", str(out.with_name("level_01_barriers.csv")), "--threads", "1"])
    paths = pd.read_csv(out)
    assert sorted(paths["mask"].unique()) == ["common", "none"] and len(paths) == 8
    assert (paths["level"] == 1).all() and (paths["level_b"] == 2).all()
    per = pd.read_csv(out.with_name("level_01_barriers.csv")).set_index("mask")
    # Endpoint b (level 2, the sparser mask) is the same network in both modes; endpoint a is projected.
    assert per.loc["common", "test_loss_b"] == per.loc["none", "test_loss_b"]
    assert per.loc["common", "test_loss_a"] != per.loc["none", "test_loss_a"]


def test_interpolate_command_refuses_jobs_of_two_runs(tiny, tmp_path):
    from ticketbench.config import ConfigError

    _, run = tiny
    other = tmp_path / "other"
    (other / "imp" / "level_00").mkdir(parents=True)
    (other / "config.yaml").write_text((run / "config.yaml").read_text())
    with pytest.raises(ConfigError, match="one run directory"):
        analysis_cli(["interpolate", str(run / "imp" / "level_01"), str(other / "imp" / "level_00"), "-o",
                      str(tmp_path / "x.csv")])
