"""Every code path that touches tensors keeps them on the run's device, checked here without a GPU.

No GPU is needed: ``FakeCuda`` runs every operation on the CPU, while a tensor made for or moved to a
CUDA device carries the class ``OnCuda`` and tells Python that it is on ``cuda:0``. An operation that
mixes such a tensor with a CPU tensor raises as CUDA does ("Expected all tensors to be on the same
device"), and the operations that make a real GPU wait for the host are counted (``.item()``, a copy to
the host, a host-to-device copy that is not a non-blocking copy from pinned memory). It checks what
``torch._subclasses.fake_tensor.FakeTensorMode`` with a fake CUDA device checks, but with real values:
under FakeTensorMode every ``float(loss)``, Lanczos coefficient and checkpoint raises
(DataDependentOutputException), so no training loop, evaluation or Lanczos run gets past its first number.
``test_fake_cuda_refuses_a_cpu_cuda_mix_as_cuda_does`` is the proof that a mix is caught.

What it cannot see: CUDA kernels themselves (cuDNN, TF32, memory), and ops that CUDA accepts but this
harness refuses or the other way round beyond the rule below (zero-dimensional CPU tensors are accepted
by pointwise and foreach ops only, as by CUDA's TensorIterator). The device check (bench/) covers a GPU.

Run them with ``pytest -k fake_cuda``.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from ticketbench import checkpoints, cli, config, data, pack, train
from ticketbench.analysis import HessianConfig, hessian, interpolation
from ticketbench.imp import Run
from ticketbench.report import audit
from ticketbench.runtime import Runtime

from conftest import tiny_run

aten = torch.ops.aten
CUDA, CPU, META = torch.device("cuda", 0), torch.device("cpu"), torch.device("meta")


# --------------------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------------------


def _is_cuda(device) -> bool:
    """A device the fake GPU stands for: cuda, and meta, where C++ makes tensors like an OnCuda tensor."""
    return device is not None and torch.device(device).type in ("cuda", "meta")


class OnCuda(torch.Tensor):
    """Real CPU data that tells Python it is on cuda:0. To C++ (autograd, device guards, the tensors that
    batching rules make with ``x.options()``) it is a meta tensor, so no CUDA runtime is ever called, and
    ``FakeCuda`` treats whatever C++ makes on the meta device as made on the GPU."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(cls, inner.shape, strides=inner.stride(),
                                                   storage_offset=inner.storage_offset(), dtype=inner.dtype,
                                                   layout=inner.layout, device=META, requires_grad=inner.requires_grad)

    def __init__(self, inner: torch.Tensor):
        self.inner = inner

    def __repr__(self) -> str:
        return f"OnCuda({self.inner!r})"

    device = property(lambda self: CUDA)
    is_cuda = property(lambda self: True)
    is_meta = property(lambda self: False)

    def get_device(self) -> int:
        return 0

    def __reduce_ex__(self, protocol):
        raise RuntimeError("a tensor on the GPU is being saved (torch.save of a CUDA tensor)")

    def __tensor_flatten__(self):  # a traceable wrapper: Module.to swaps parameters in place
        return ["inner"], None

    @staticmethod
    def __tensor_unflatten__(inner_tensors, meta, outer_size, outer_stride):
        return OnCuda(inner_tensors["inner"])

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func}: a fake CUDA tensor used outside FakeCuda")


_MIXED_OK = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
"""CUDA accepts CPU indices of a CUDA tensor (copying them to the device first, a blocking copy)."""
_SYNCING = {aten.nonzero.default, aten.masked_select.default, aten.equal.default, aten.is_nonzero.default}


class FakeCuda(TorchDispatchMode):
    """Every op runs on the CPU; ``OnCuda`` marks what is on the fake GPU. ``syncs`` counts what would make
    a real GPU wait for the host, by kind."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: Counter[str] = Counter()
        self.pinned = WeakIdKeyDictionary()

    def __enter__(self):
        # As FakeTensorMode does without a GPU: a no-op CUDA device guard, torch.tensor(..., device="cuda")
        # made on the CPU and then moved (through this mode), and no CUDA initialization.
        torch._C._ensureCUDADeviceGuardSet()
        self._lift = torch._C._only_lift_cpu_tensors()
        torch._C._set_only_lift_cpu_tensors(True)
        self._lazy_init, torch.cuda._lazy_init = torch.cuda._lazy_init, lambda: None
        return super().__enter__()

    def __exit__(self, *exc):
        torch._C._set_only_lift_cpu_tensors(self._lift)
        torch.cuda._lazy_init = self._lazy_init
        return super().__exit__(*exc)

    def blocking(self) -> int:
        return sum(self.syncs.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_gpu = any(isinstance(t, OnCuda) for t in tensors)
        on_cpu = [t for t in tensors if not isinstance(t, OnCuda)]
        unwrap = lambda t: t.inner if isinstance(t, OnCuda) else t  # noqa: E731
        uargs, ukwargs = tree_map(unwrap, args), tree_map(unwrap, kwargs)
        if "device" in kwargs:
            ukwargs["device"] = CPU
            ukwargs.pop("pin_memory", None)
        to_gpu = _is_cuda(kwargs["device"]) if kwargs.get("device") is not None else on_gpu

        if func is aten._efficientzerotensor.default:  # forward AD's zero tangent: a ZeroTensor has no data
            func = aten.zeros.default
        if func is aten.is_pinned.default:
            return args[0] in self.pinned
        if func is aten._pin_memory.default:
            out = args[0].clone()
            self.pinned[out] = True
            return out
        if func is aten._to_copy.default and kwargs.get("device") == META and not on_gpu:
            return func(*args, **kwargs)  # module.to("meta") of CPU tensors: real meta tensors (shapes only)
        if func in (aten._to_copy.default, aten.copy_.default):
            src, dst_on_gpu = args[0 if func is aten._to_copy.default else 1], to_gpu
            if func is aten.copy_.default:
                dst_on_gpu = isinstance(args[0], OnCuda)
                non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
            else:
                non_blocking = kwargs.get("non_blocking", False)
            if isinstance(src, OnCuda) and not dst_on_gpu:
                self.syncs["copy to the host"] += 1
            elif not isinstance(src, OnCuda) and dst_on_gpu and not (non_blocking and src in self.pinned):
                self.syncs["blocking copy to the device"] += 1
            out = func(*uargs, **ukwargs)
            if func is aten.copy_.default:
                return args[0]
            return OnCuda(out) if dst_on_gpu else out
        if func is aten._local_scalar_dense.default:
            if on_gpu:
                self.syncs["item"] += 1
            return func(*uargs, **ukwargs)
        if on_gpu:
            scalars_ok = torch.Tag.pointwise in func.tags or func.overloadpacket.__name__.startswith("_foreach")
            bad = [t for t in on_cpu if func not in _MIXED_OK and not (t.dim() == 0 and scalars_ok)]
            if bad:
                raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                                   f"cuda:0 and cpu! ({func} with CPU operands of shapes {[tuple(t.shape) for t in bad]})")
            if func in _MIXED_OK and any(t.dim() > 0 for t in on_cpu):
                self.syncs["CPU indices of a device tensor"] += 1
            if func in _SYNCING:
                self.syncs[func.overloadpacket.__name__] += 1
        out = func(*uargs, **ukwargs)
        if not to_gpu:
            return out
        given = {id(t.inner): t for t in tensors if isinstance(t, OnCuda)}  # in-place and out= ops return these

        def wrap(t):
            return (given[id(t)] if id(t) in given else OnCuda(t)) if isinstance(t, torch.Tensor) else t

        return tree_map(wrap, out)


@pytest.fixture
def fake_cuda(monkeypatch):
    """A GPU as far as the package can tell: ``torch.cuda`` says one device is there, and tensors put on it
    are checked by ``FakeCuda``."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    with FakeCuda() as mode:
        yield mode


def on_gpu(t: torch.Tensor) -> bool:
    return isinstance(t, OnCuda)


# --------------------------------------------------------------------------------------------------
# The harness catches what CUDA refuses
# --------------------------------------------------------------------------------------------------


def test_fake_cuda_refuses_a_cpu_cuda_mix_as_cuda_does(fake_cuda):
    x = torch.ones(4, 3, device="cuda")
    assert x.device == CUDA and on_gpu(x) and on_gpu(x * 2)
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        x + torch.ones(4, 3)
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        torch.ones(2, 4) @ x
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        x.index_select(0, torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        torch.nn.Linear(3, 2)(x)
    assert on_gpu(x * torch.tensor(2.0))  # a CPU scalar tensor in a pointwise op is fine on CUDA too
    assert fake_cuda.blocking() == 0


def test_fake_cuda_counts_what_makes_a_gpu_wait_for_the_host(fake_cuda):
    x = torch.arange(6.0).to("cuda")
    assert dict(fake_cuda.syncs) == {"blocking copy to the device": 1}
    fake_cuda.syncs.clear()
    float(x.sum()), x.cpu(), x[torch.tensor([0, 2])]
    assert dict(fake_cuda.syncs) == {"item": 1, "copy to the host": 1, "CPU indices of a device tensor": 1}
    fake_cuda.syncs.clear()
    y = torch.arange(6.0).pin_memory().to("cuda", non_blocking=True)
    assert on_gpu(y) and fake_cuda.blocking() == 0
    assert torch.equal(y.cpu(), torch.arange(6.0))


def test_fake_cuda_trains_a_conv_net_with_batchnorm_through_autograd_and_both_optimizers(fake_cuda):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 10)).to("cuda", memory_format=torch.channels_last)
    assert all(on_gpu(t) for t in [*net.parameters(), *net.buffers()])
    x = torch.randn(5, 3, 8, 8, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (5,), device="cuda")
    for opt in (torch.optim.Adam(net.parameters(), fused=True), torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)):
        F.cross_entropy(net(x), y).backward()
        opt.step()
    assert all(on_gpu(p.grad) for p in net.parameters())
    with pytest.raises(RuntimeError, match="saved"):
        torch.save(net.state_dict(), "/dev/null")


# --------------------------------------------------------------------------------------------------
# The package on a (fake) GPU
# --------------------------------------------------------------------------------------------------

GPU = Runtime(device="cuda", progress=False, checkpoint_seconds=0)
SHORT = {"train": {"steps": "6it", "eval_every": "3it", "milestones": ["4it"]}, "imp": {"levels": 1, "rewind": "2it"}}
MODELS = {  # (model, input shape): every family, BatchNorm in ResNet and VGG, augmentation on the conv nets
    "lenet": ({"name": "lenet_300_100", "init": "glorot_normal"}, [1, 8, 8]),
    "conv2": ({"name": "conv2", "init": "glorot_normal"}, [3, 8, 8]),
    "resnet20": ({"name": "resnet20", "width": 8, "init": "kaiming_normal"}, [3, 8, 8]),
    "vgg16": ({"name": "vgg16", "init": "kaiming_normal"}, [3, 16, 16]),
}


def gpu_run(root: Path, model: str = "resnet20", runtime: Runtime = GPU, data_size: int = 256, **overrides) -> Run:
    net, shape = MODELS[model]
    cfg = config.from_dict(tiny_run(model=net, data={"synthetic_shape": shape, "augment": model != "lenet",
                                                     "synthetic_train": data_size, "synthetic_test": data_size // 2},
                                    **{**SHORT, **overrides}))
    return Run(cfg, root, data.load(cfg.data, torch.device("cuda")), runtime)


def stored_on_cpu(folder: Path) -> list[str]:
    """Every tensor of every .pt file under ``folder`` loads onto the CPU as stored (no map_location)."""
    checked = []
    for path in sorted(folder.rglob("*.pt")):
        envelope = torch.load(path, weights_only=True)
        body = torch.load(io.BytesIO(envelope["body"]), weights_only=True)
        devices = {t.device.type for t in tree_flatten(body)[0] if isinstance(t, torch.Tensor)}
        assert devices <= {"cpu"}, f"{path} holds tensors on {devices}"
        checked.append(path.name)
    return checked


@pytest.mark.parametrize("model", list(MODELS))
def test_fake_cuda_every_model_trains_evaluates_rewinds_and_saves_cpu_tensors(fake_cuda, tmp_path, model):
    train_cfg = {**SHORT["train"], **({"optimizer": "adam", "lr": 1e-3} if model == "conv2" else {}),
                 **({"steps": "2it", "eval_every": "2it", "milestones": [], "batch_size": 8} if model == "vgg16" else {})}
    # VGG-16 has 15 M parameters (a file of 60 MB takes seconds to write): a few examples and steps, the dense
    # network only, and no checkpoint at every step.
    vgg = model == "vgg16"
    run = gpu_run(tmp_path / "run", model, runtime=Runtime(device="cuda", progress=False) if vgg else GPU,
                  data_size=96 if vgg else 256, train=train_cfg, imp={"levels": 0 if vgg else 1, "rewind": "1it"})
    assert on_gpu(run.data.train.x) and on_gpu(run.data.test.x)
    for level in range(run.cfg.imp.levels + 1):
        summary = run.level(level)
        assert 0.0 <= summary["final_test_acc"] <= 1.0
    assert {"final.pt", "mask.pt", "rewind.pt"} <= set(stored_on_cpu(run.root))


class _Killed(Exception):
    """Stands for a SIGKILL right after a checkpoint."""


def kill_after_checkpoint(mp: pytest.MonkeyPatch, step: int) -> None:
    real_save = checkpoints.save

    def save_then_die(path, payload, **kw):
        real_save(path, payload, **kw)
        if kw.get("kind") == "checkpoint" and payload["step"] == step:
            raise _Killed

    mp.setattr(checkpoints, "save", save_then_die)


def test_fake_cuda_a_killed_job_resumes_from_its_checkpoint(fake_cuda, tmp_path, monkeypatch):
    run = gpu_run(tmp_path / "run")
    with monkeypatch.context() as mp:
        kill_after_checkpoint(mp, 4)
        with pytest.raises(_Killed):
            run.level(0)
    assert "checkpoint.pt" in stored_on_cpu(run.level_dir(0))
    assert run.level(0)["end_step"] == 6


def test_fake_cuda_a_batched_pack_trains_evaluates_checkpoints_and_resumes_on_the_device(fake_cuda, tmp_path, monkeypatch):
    runs = [gpu_run(tmp_path / "runs" / "tiny" / f"seed{s}", seeds={"init": s, "data_order": s, "augmentation": s})
            for s in (0, 1)]
    with monkeypatch.context() as mp:
        kill_after_checkpoint(mp, 4)
        with pytest.raises(_Killed):
            pack.train([r.level_job(0) for r in runs], "batched")
    assert any(name.startswith("pack-") for name in stored_on_cpu(runs[0].level_dir(0)))
    for level in (0, 1):
        summaries = pack.train([r.level_job(level) for r in runs], "batched")
        assert [s["pack"]["mode"] for s in summaries] == ["batched", "batched"]
    for r in runs:
        assert {"final.pt", "mask.pt", "rewind.pt"} <= set(stored_on_cpu(r.root))


def test_fake_cuda_hessian_hvps_lanczos_trace_and_density_stay_on_the_device(fake_cuda, tmp_path):
    run = gpu_run(tmp_path / "run")
    run.level(0)
    net, mask = run.network(run.level_dir(0)), run.load_mask(run.level_dir(0))
    cfg = HessianConfig(top_k=2, subset_fraction=0.25, max_hvps=6, tol=1e-1, trace_samples=2, density_probes=1,
                        density_steps=3)
    for method in ("forward_over_reverse", "double_backward"):
        result = hessian.analyse(net, mask, run.data.train_unpadded(), cfg, method=method)
        assert len(result.eigen.values) == 2 and on_gpu(result.eigen.vectors)  # Ritz vectors where the model is
        assert result.trace is not None and len(result.density) == 1


@pytest.mark.parametrize("bn", ["as_is", "recompute"])
def test_fake_cuda_interpolation_between_two_networks_on_the_device(fake_cuda, tmp_path, bn):
    run = gpu_run(tmp_path / "run")
    run.level(0)
    run.level(1)
    a, b = (run.final_state(run.level_dir(level)) for level in (0, 1))
    ma, mb = (run.load_mask(run.level_dir(level)) for level in (0, 1))
    a, b = interpolation.endpoints(a, b, ma, mb, "common")
    train_split = interpolation.seeded_subset(run.data.train_unpadded(), 64)
    df = interpolation.path(run.model().to("cuda"), a, b, train_split, run.data.test, points=3, bn=bn, bn_data=train_split)
    assert len(df) == 3


def test_fake_cuda_analysis_evaluation_and_audit_commands_run_on_the_device(fake_cuda, tmp_path):
    cfg_path, root = tmp_path / "run.yaml", tmp_path / "run"
    net, shape = MODELS["resnet20"]
    cfg_path.write_text(yaml.safe_dump(tiny_run(model=net, data={"synthetic_shape": shape, "augment": True}, **SHORT)))
    common = ["--run-dir", str(root), "--device", "cuda", "--no-progress"]
    assert cli.main(["imp", str(cfg_path), *common]) == 0
    for r in (0, 1):
        assert cli.main(["branch", str(cfg_path), *common, "--kind", "copy", "--level", "1", "--replicate", str(r)]) == 0
    gpu = ["--device", "cuda", "--no-progress"]
    out = tmp_path / "out"
    assert cli.main(["hessian", str(root / "imp" / "level_01"), "-o", str(out / "h.csv"), "--top-k", "2",
                     "--max-hvps", "5", "--trace-samples", "1", *gpu]) == 0
    assert cli.main(["interpolate", str(root / "imp" / "level_00"), str(root / "imp" / "level_01"), "--mask", "common",
                     "none", "--points", "3", "--train-examples", "50", "-o", str(out / "i.csv"), *gpu]) == 0
    assert cli.main(["instability", str(root), "--level", "1", "--pairs", "1", "--points", "3", "--bn", "recompute",
                     "--train-examples", "50", "-o", str(out / "s.csv"), *gpu]) == 0
    assert cli.main(["evaluate", str(root / "imp" / "level_01"), *gpu]) == 0
    findings = audit.audit(root, Runtime(device="cuda", progress=False))
    assert audit.failures(findings) == [] and len(findings) > 10
    summary = json.loads((root / "imp" / "level_01" / "summary.json").read_text())
    assert summary["final_test_acc"] >= 0


# --------------------------------------------------------------------------------------------------
# No step makes the GPU wait; files and summaries are the same whatever the device
# --------------------------------------------------------------------------------------------------


def syncs_between_evaluations(mode: FakeCuda, monkeypatch) -> list[Counter]:
    """What made the GPU wait between one evaluation and the next (``train._evaluate`` reads numbers and
    may wait; the steps between evaluations must not)."""
    gaps: list[Counter] = []
    last: list[Counter] = []
    real = train._evaluate

    def marked(*args, **kwargs):
        if last:
            gaps.append(mode.syncs - last[0])
        real(*args, **kwargs)
        last[:] = [mode.syncs.copy()]

    monkeypatch.setattr(train, "_evaluate", marked)
    return gaps


NO_EVALUATIONS = {"train": {"steps": "14it", "eval_every": "14it", "milestones": ["10it"]}, "imp": {"levels": 0, "rewind": "0it"}}
"""Two epochs and a bit (192 training examples, batch 32) between the evaluations at the first and the last step."""


@pytest.mark.parametrize("model", ["lenet", "resnet20"])
def test_fake_cuda_no_training_step_makes_the_gpu_wait_for_the_host(fake_cuda, tmp_path, monkeypatch, model):
    """Batches (the epoch's data order, the step's crops and flips) reach the device in non-blocking copies
    from pinned memory, and the loop reads no number from the device between evaluations."""
    gaps = syncs_between_evaluations(fake_cuda, monkeypatch)
    run = gpu_run(tmp_path / "run", model, runtime=Runtime(device="cuda", progress=False), **NO_EVALUATIONS)
    run.level(0)
    assert gaps == [Counter()]


def test_fake_cuda_no_step_of_a_batched_pack_makes_the_gpu_wait_for_the_host(fake_cuda, tmp_path, monkeypatch):
    gaps = syncs_between_evaluations(fake_cuda, monkeypatch)
    runs = [gpu_run(tmp_path / f"seed{s}", runtime=Runtime(device="cuda", progress=False),
                    seeds={"init": s, "data_order": s, "augmentation": s}, **NO_EVALUATIONS) for s in (0, 1)]
    pack.train([r.level_job(0) for r in runs], "batched")
    # Evaluations: members 0 and 1 at step 0 (member 1's rewind snapshot, written to disk, comes between them),
    # then the steps, then members 0 and 1 at the end.
    assert gaps[1:] == [Counter(), Counter()]


def test_fake_cuda_the_same_weights_make_the_same_file_on_the_cpu_and_the_gpu(fake_cuda, tmp_path):
    """Checkpoints hold CPU tensors: a network saved from the GPU is the same bytes, and hash, as from the CPU."""
    run = gpu_run(tmp_path / "run", "resnet20")
    on_device = run.model().to("cuda").state_dict()
    assert on_gpu(on_device["conv.weight"]) and on_gpu(on_device["bn.running_mean"])
    digests = [checkpoints.save(tmp_path / f"{name}.pt", {"model": state}, kind="model", config_hash=run.hash)
               for name, state in (("cpu", run.model().state_dict()), ("gpu", on_device))]
    assert digests[0] == digests[1] and (tmp_path / "cpu.pt").read_bytes() == (tmp_path / "gpu.pt").read_bytes()


def test_fake_cuda_every_summary_records_the_gpu_environment(fake_cuda, tmp_path):
    summary = gpu_run(tmp_path / "run", "lenet", runtime=Runtime(device="cuda", progress=False, precision="tf32"),
                      **NO_EVALUATIONS).level(0)
    env = summary["environment"]
    assert (env["device"], env["gpu"], env["precision"]) == ("cuda", "Fake GPU", "tf32")
    assert env["torch"] == torch.__version__ and env["cuda"] == torch.version.cuda
