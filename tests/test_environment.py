"""Where a job ran, and how: no silent CPU when a GPU was asked for, float32 precision set explicitly (IEEE by
default, TF32 by name), and the environment recorded in every summary.json and read back from one place."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
import yaml

from ticketbench import cli, config, data, environment
from ticketbench.imp import Run
from ticketbench.report import tables
from ticketbench.runtime import PRECISIONS, Runtime, set_float32_precision

from conftest import tiny_run

# -- no silent CPU ----------------------------------------------------------------------------------


@pytest.mark.parametrize("facts, cause", [
    ({"build": None}, "CPU-only build"),
    ({"visible": ""}, "CUDA_VISIBLE_DEVICES is empty, so no GPU is visible to this job"),
    ({"visible": "-1"}, "CUDA_VISIBLE_DEVICES is '-1'"),
    ({"kernel_driver": None, "driver_cuda": None}, "no NVIDIA driver is loaded"),
    ({"driver_cuda": None}, "pass --nv"),
    ({"driver_cuda": 12040}, "supports CUDA up to 12.4, older than the CUDA 13.0 this torch was built for"),
    ({"devices": 1, "index": 1}, "cuda:1 was asked for, but only 1 CUDA device(s) are visible"),
    ({}, "nvidia-smi"),
])
def test_an_unusable_cuda_is_explained_by_its_likeliest_cause(facts, cause):
    found = {"build": "13.0", "visible": None, "kernel_driver": "580.65.06", "driver_cuda": 13000, "devices": 0,
             **facts}
    text = environment.explain_no_cuda(**found)
    assert cause in text and "\n" not in text


def no_gpu(monkeypatch) -> None:
    """A machine whose scheduler gave the job no GPU (whatever this one has)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_asking_for_cuda_without_a_usable_one_is_a_one_line_error_with_exit_status_2(tmp_path, monkeypatch, capsys,
                                                                                      device):
    no_gpu(monkeypatch)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run()))
    code = cli.main(["dense", str(cfg), "--run-dir", str(tmp_path / "run"), "--device", device, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith(f"ticketbench: error: --device {device}: CUDA_VISIBLE_DEVICES is empty")
    assert not (tmp_path / "run" / "imp").exists()  # nothing trained on the CPU instead


def test_device_auto_without_a_gpu_runs_on_the_cpu_and_says_so(monkeypatch, caplog):
    no_gpu(monkeypatch)
    with caplog.at_level(logging.INFO, logger="ticketbench"):
        assert Runtime(device="auto").torch_device() == torch.device("cpu")
    assert "device auto: cpu (torch sees no usable CUDA device)" in caplog.text


# -- float32 precision ------------------------------------------------------------------------------


def test_the_float32_precision_of_cuda_matmuls_and_convolutions_is_set_explicitly_ieee_by_default():
    try:
        for precision, mode in (("tf32", "tf32"), ("fp32", "ieee")):
            Runtime(device="cpu", precision=precision).apply()
            assert torch.backends.cuda.matmul.fp32_precision == mode
            assert torch.backends.cudnn.conv.fp32_precision == mode
    finally:
        set_float32_precision(torch.backends, "fp32")
    assert Runtime().precision == "fp32" and PRECISIONS == ("fp32", "tf32")


def test_a_torch_without_fp32_precision_settings_gets_the_allow_tf32_flags():
    """torch versions before the fp32_precision settings (the GPU node's may be one) have only allow_tf32."""
    old = SimpleNamespace(cuda=SimpleNamespace(matmul=SimpleNamespace(allow_tf32=True)),
                          cudnn=SimpleNamespace(allow_tf32=True))
    set_float32_precision(old, "fp32")
    assert (old.cuda.matmul.allow_tf32, old.cudnn.allow_tf32) == (False, False)
    set_float32_precision(old, "tf32")
    assert (old.cuda.matmul.allow_tf32, old.cudnn.allow_tf32) == (True, True)
    with pytest.raises(ValueError, match="choose one of fp32, tf32"):
        set_float32_precision(old, "bf16")


# -- recorded and read back -------------------------------------------------------------------------


def test_every_summary_records_its_environment_and_the_jobs_table_its_precision(tmp_path):
    cfg = config.from_dict(tiny_run(imp={"levels": 0, "rewind": "0it"}))
    run = Run(cfg, tmp_path / "run", data.load(cfg.data), Runtime(device="cpu", progress=False, precision="tf32"))
    env = run.level(0)["environment"]
    # TF32 acts on CUDA only: the CPU computed IEEE float32, and that is what is recorded.
    assert env == {"device": "cpu", "gpu": None, "torch": torch.__version__, "cuda": torch.version.cuda,
                   "cudnn": env["cudnn"], "precision": "fp32", "cudnn_benchmark": env["cudnn_benchmark"],
                   "deterministic": False}
    assert tables.collect([run.root])["precision"].tolist() == ["fp32"]


def test_a_summary_from_before_the_environment_was_recorded_reads_as_fp32_in_its_auto_layout():
    old = {"density": 1.0}
    assert environment.recorded_environment(old) == {}
    assert environment.recorded_precision(old) == "fp32"
    assert environment.recorded_layout(old) == "auto"
    new = {"memory_format": "contiguous", "environment": {"precision": "tf32"}}
    assert (environment.recorded_precision(new), environment.recorded_layout(new)) == ("tf32", "contiguous")
