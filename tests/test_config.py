"""The run configuration: step strings, validation at the edge, and stable run identities."""

from __future__ import annotations

import pytest

from ticketbench import config
from ticketbench.config import ConfigError

from conftest import tiny_run


def test_step_strings_convert_exactly():
    assert config.to_iterations("160ep", 391) == 62_560  # open_lth ResNet-20: ceil(50000/128) = 391 it/epoch
    assert config.to_iterations("80ep", 391) == 31_280
    assert config.to_iterations("500it", 391) == 500
    assert config.to_iterations("2ep10it", 100) == 210
    assert config.iterations_per_epoch(55_000, 60) == 917  # the last, partial batch counts


@pytest.mark.parametrize("bad", ["", "10", "ep", "1.5ep", "10 it", "it10"])
def test_malformed_step_string_names_the_key(bad):
    with pytest.raises(ConfigError, match="train.steps"):
        config.from_dict(tiny_run(train={"steps": bad}))


def test_schedule_resolves_warmup_and_milestone_drops():
    cfg = config.from_dict(tiny_run(train={"warmup": "10it", "milestones": ["20it", "30it"], "gamma": 0.1, "lr": 1.0}))
    s = cfg.schedule(320)
    assert s.total == 40 and s.rewind == 5 and s.iterations_per_epoch == 10
    assert s.lr_at(0, 1.0, 0.1) == 0.0  # linear warmup from zero
    assert s.lr_at(5, 1.0, 0.1) == 0.5
    assert s.lr_at(19, 1.0, 0.1) == 1.0
    assert s.lr_at(20, 1.0, 0.1) == pytest.approx(0.1)
    assert s.lr_at(35, 1.0, 0.1) == pytest.approx(0.01)


@pytest.mark.parametrize("override, key", [
    ({"model": {"name": "resnet18"}}, "model.name"),
    ({"data": {"name": "imagenet"}}, "data.name"),
    ({"prune": {"strategy": "layerwise", "rates": {"fc": 1.2}}}, "prune.rates.fc"),
    ({"prune": {"strategy": "layerwise", "rates": {"fc": 0.0}}}, "prune.rates.fc"),
    ({"prune": {"strategy": "global", "rates": {"fc": 0.2, "output": 0.1}}}, "prune.rates"),
    ({"train": {"lr": -1}}, "train.lr"),
    ({"train": {"batch_size": "big"}}, "train.batch_size"),
    ({"train": {"momentum": True}}, "train.momentum"),
    ({"imp": {"levels": 2, "rewnd": "5it"}}, "imp.rewnd"),
    ({"extra_section": {}}, "extra_section"),
])
def test_invalid_values_are_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.from_dict(tiny_run(**override))


def test_rewind_point_must_lie_before_the_end_of_training():
    cfg = config.from_dict(tiny_run(imp={"levels": 1, "rewind": "40it"}))
    with pytest.raises(ConfigError, match="imp.rewind"):
        cfg.schedule(320)


def test_hash_ignores_name_source_and_defaults_but_not_science():
    base = config.from_dict(tiny_run())
    assert config.from_dict(tiny_run(name="other", source="x")).hash() == base.hash()
    assert config.from_dict(tiny_run(train={"warmup": "0it"})).hash() == base.hash()  # explicit default
    assert config.from_dict(tiny_run(train={"lr": 0.06})).hash() != base.hash()
    assert config.from_dict(tiny_run(seeds={"init": 1})).hash() != base.hash()


PINNED_HASH = "e8d6a8fdff2e"


def test_run_identity_is_pinned():
    """Changing these hashes renames every existing run directory: do it only on purpose."""
    assert config.from_dict(tiny_run()).hash() == PINNED_HASH


def test_experiment_of_a_workflow_config_sets_name_all_seeds_and_source(tmp_path):
    import yaml

    spec = tiny_run()
    run = {k: spec[k] for k in ("data", "model", "train", "prune", "imp")}
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({"experiments": {"lenet": {"family": "lth", "source": "F&C 2019 App. G", "run": run}}}))
    cfg = config.load_experiment(path, "lenet", 3)
    assert cfg.name == "lenet" and (cfg.seeds.init, cfg.seeds.data_order, cfg.seeds.augmentation) == (3, 3, 3)
    assert cfg.source == "F&C 2019 App. G"
    with pytest.raises(ConfigError, match="no such experiment"):
        config.load_experiment(path, "conv2", 0)
    bad = {"experiments": {"lenet": {"run": {**run, "model": {"name": "lenet5"}}}}}
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"experiments\.lenet\.run\.model\.name"):
        config.load_experiment(path, "lenet", 0)


def test_a_seed_the_experiment_does_not_list_is_trained_with_a_warning_that_the_workflow_ignores_it(tmp_path, caplog):
    import logging

    import yaml

    spec = tiny_run()
    run = {k: spec[k] for k in ("data", "model", "train", "prune", "imp")}
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({"experiments": {"lenet": {"seeds": [0, 1], "run": run}}}))
    with caplog.at_level(logging.WARNING, logger="ticketbench"):
        assert config.load_experiment(path, "lenet", 1).seeds.init == 1
        assert not caplog.records
        assert config.load_experiment(path, "lenet", 7).seeds.init == 7
    assert "seed 7 is not one of experiments.lenet.seeds [0, 1]" in caplog.text

def test_malformed_yaml_is_reported_with_its_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndata: {name: mnist\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(path)


def test_reinit_start_is_validated_and_resolved_to_a_step():
    """imp.reinit_start: where fresh weights start training, k (open_lth's default) or 0."""
    assert config.from_dict(tiny_run()).imp.reinit_start == "rewind"
    assert config.from_dict(tiny_run()).schedule(320).reinit == 5  # k
    assert config.from_dict(tiny_run(imp={"levels": 2, "rewind": "5it", "reinit_start": "zero"})).schedule(320).reinit == 0
    with pytest.raises(ConfigError, match=r"imp\.reinit_start"):
        config.from_dict(tiny_run(imp={"levels": 2, "reinit_start": "step_k"}))


def test_reinit_start_at_its_default_keeps_every_run_identity():
    base = config.from_dict(tiny_run())
    explicit = config.from_dict(tiny_run(imp={"levels": 2, "rewind": "5it", "reinit_start": "rewind"}))
    assert explicit.hash() == base.hash() == PINNED_HASH
    assert config.from_dict(tiny_run(imp={"levels": 2, "rewind": "5it", "reinit_start": "zero"})).hash() != base.hash()


@pytest.mark.parametrize("results", ["quick", "smoke"])
def test_the_committed_results_keep_their_config_hash_with_reinit_start_written_out(results):
    """The configs that made the committed tables (read at the commit that wrote them) still hash to the
    recorded config_hash, with and without an explicit ``reinit_start: rewind``."""
    import io
    import subprocess

    import pandas as pd
    import yaml

    from conftest import REPO

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout

    table = f"results/{results}/tables/jobs.csv"
    commit = git("log", "-1", "--format=%H", "--", table).strip()
    if not commit:
        pytest.skip(f"not a git checkout with a committed {table}")
    jobs = pd.read_csv(io.StringIO(git("show", f"{commit}:{table}")))
    experiments = yaml.safe_load(git("show", f"{commit}:config/{results}.yaml"))["experiments"]
    recorded = set(zip(jobs["experiment"], jobs["seed"], jobs["config_hash"]))
    assert recorded
    for experiment, seed, config_hash in sorted(recorded):
        spec = experiments[experiment]
        written_out = {**spec, "run": {**spec["run"], "imp": {**spec["run"]["imp"], "reinit_start": "rewind"}}}
        for s in (spec, written_out):
            assert config.experiment_run(s, experiment, int(seed)).hash() == config_hash, experiment
