"""How to run, not what to compute: the device, float32 precision, threads, data location, checkpoint
interval and layout of a job, and the CLI flags that set them.

This module sits below both the training code and the CLI, so that every subcommand (training,
analyses, audit) takes the same runtime flags without importing the CLI. It must not import torch at
module import time: the CLI builds its parser from here, and ``ticketbench --help`` has to answer at
once. torch is imported inside the methods that need it.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger("ticketbench")


class DeviceError(RuntimeError):
    """The device that was asked for is not usable here; the message names the likely cause."""


@dataclass(frozen=True)
class Runtime:
    """How to run, not what to compute: none of it is hashed. What changes the rounding (the device, the
    memory layout, the float32 precision) is recorded in every summary.json (``environment``)."""

    device: str = "auto"
    """cpu, cuda, cuda:N; auto = cuda if one is usable, else the CPU (logged). A CUDA device that was asked for
    and is not usable is an error (``DeviceError``), never a silent fallback to the CPU."""
    threads: int = 0
    """CPU threads for torch (0 = leave torch's default). Pin it on shared machines."""
    data_root: str | None = None
    verify: bool = True
    download: bool = False
    checkpoint_seconds: float = 300.0
    """Write a resumable checkpoint at most this often (wall clock), plus on SIGTERM."""
    deterministic: bool = False
    """Strict mode: torch.use_deterministic_algorithms(True) and no cuDNN autotuning. CPU runs are
    bitwise reproducible either way; on GPU, strict mode is slower but repeatable."""
    progress: bool = True
    memory_format: str = "auto"
    """Tensor layout of conv nets (``config.MEMORY_FORMATS``): auto = channels_last where ``models.memory_format``
    allows it. It changes rounding, not the math; every summary records the layout it ran in."""
    test_eval: str = "every"
    """When training evaluates the test set (``TEST_EVALS``): every = at every evaluation; early-stop = only
    where the validation loss reaches a new minimum (each step early stopping may pick) and at the end.
    The second records the same early-stop and final test numbers (every claim and figure reads those) at
    a fraction of the cost: a paper LeNet job spends about a third of its time on the 10,000 test images.
    Without a validation split every evaluation is an early-stop candidate, so the two are the same."""
    precision: str = "fp32"
    """float32 matmuls and convolutions on CUDA (``PRECISIONS``): fp32 = IEEE float32, the papers' arithmetic and
    what the CPU computes; tf32 = TensorFloat-32 (10-bit mantissas) on Ampere and newer GPUs, faster and a
    different environment: it changes results beyond the CPU-vs-GPU rounding, so summaries record it and
    ``ticketbench compare`` says so. No effect on the CPU."""
    pack_mode: str = "auto"
    """How ``ticketbench pack`` trains its jobs (``PACK_MODES``): batched = one vmapped computation (pays on
    a GPU, where a lone small network is launch-bound; rounds differently from a lone job), sequential =
    one lone job after another in the same process (bit-identical to lone jobs; saves only the per-job
    start-up), auto = batched on CUDA, sequential on the CPU, where a batched step measured slower than P
    lone ones (bench/README.md). Every packed job's summary records the mode it ran in."""

    def pack_mode_on(self, device: torch.device) -> str:
        if self.pack_mode != "auto":
            return self.pack_mode
        return "batched" if device.type == "cuda" else "sequential"

    def torch_device(self) -> torch.device:
        import torch

        if self.device == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            log.info("device auto: %s", f"cuda ({torch.cuda.get_device_name()})" if device.type == "cuda" else
                     "cpu (torch sees no usable CUDA device)")
            return device
        device = torch.device(self.device)
        if device.type == "cuda":
            from .environment import cuda_problem

            problem = cuda_problem(device.index)
            if problem is not None:
                raise DeviceError(f"--device {self.device}: {problem}")
        return device

    def apply(self) -> torch.device:
        import torch

        set_float32_precision(torch.backends, self.precision)
        if self.threads:
            torch.set_num_threads(self.threads)
        if self.deterministic:
            # cuBLAS needs a fixed workspace to be deterministic (PyTorch "Reproducibility" notes).
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=False)
            torch.backends.cudnn.benchmark = False
        else:
            torch.backends.cudnn.benchmark = True
        return self.torch_device()


def set_float32_precision(backends: Any, precision: str) -> None:
    """Set the float32 precision of CUDA matmuls (cuBLAS) and convolutions (cuDNN) explicitly: torch's own
    defaults differ between them (torch 2.14: IEEE matmuls, TF32 convolutions) and between versions.
    ``backends`` is ``torch.backends``. A torch with the ``fp32_precision`` settings (2.14 has them) gets
    those, an older one the ``allow_tf32`` flags; never both, since torch refuses to read a mix of the two
    (``allow_tf32`` raises after ``fp32_precision`` was set). The CPU is not touched."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    tf32 = precision == "tf32"
    if hasattr(backends.cuda.matmul, "fp32_precision") and hasattr(getattr(backends.cudnn, "conv", None), "fp32_precision"):
        backends.cuda.matmul.fp32_precision = "tf32" if tf32 else "ieee"
        backends.cudnn.conv.fp32_precision = "tf32" if tf32 else "ieee"
    else:
        backends.cuda.matmul.allow_tf32 = tf32
        backends.cudnn.allow_tf32 = tf32


PRECISIONS = ("fp32", "tf32")
PACK_MODES = ("auto", "batched", "sequential")
TEST_EVALS = ("every", "early-stop")


def add_arguments(p: argparse.ArgumentParser, training: bool = False, pack: bool = False) -> None:
    """The runtime flags of a subcommand that opens a run; ``from_args`` reads them back. Only training
    subcommands offer ``--download`` and ``--checkpoint-seconds``: evaluating, auditing and analysing read
    networks that were trained, so their data is there and they write no training checkpoint."""
    g = p.add_argument_group("runtime (not part of a run's identity; what changes rounding is recorded)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default auto: cuda if usable, else cpu; "
                                                    "an unusable cuda that was asked for is an error)")
    g.add_argument("--precision", choices=PRECISIONS, default=Runtime.precision,
                   help="float32 matmuls and convolutions on CUDA: fp32 = IEEE (default, as the CPU); tf32 = "
                        "TensorFloat-32, faster, and recorded as a different environment")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--data-root", help="directory with the dataset files (default: $TICKETBENCH_DATA or ./data)")
    g.add_argument("--no-verify", action="store_true", help="skip the MD5 check of user-supplied dataset copies")
    if training:
        g.add_argument("--download", action="store_true", help="download missing MNIST/CIFAR-10 files (needs a network)")
        g.add_argument("--checkpoint-seconds", type=float, default=Runtime.checkpoint_seconds,
                       help=f"checkpoint interval (default: {Runtime.checkpoint_seconds:g})")
        g.add_argument("--test-eval", choices=TEST_EVALS, default=Runtime.test_eval,
                       help="every: the test set at every evaluation (default); early-stop: only where the validation "
                            "loss reaches a new minimum and at the end (the same early-stop and final numbers, cheaper)")
    g.add_argument("--deterministic", action="store_true", help="strict deterministic kernels (repeatable on GPU, slower)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    from .config import MEMORY_FORMATS

    g.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto",
                   help="tensor layout of conv nets (default auto: channels_last except where oneDNN crashes on it)")
    if pack:
        g.add_argument("--pack-mode", choices=PACK_MODES, default="auto",
                       help="batched: one vmapped computation (rounds differently from lone jobs); sequential: "
                            "lone jobs one after another (default auto: batched on CUDA, sequential on CPU)")


def from_args(args: argparse.Namespace) -> Runtime:
    """The Runtime of parsed ``add_arguments`` flags (a flag the subcommand does not offer keeps its default)."""
    return Runtime(device=args.device, threads=args.threads, data_root=args.data_root, verify=not args.no_verify,
                   download=getattr(args, "download", Runtime.download),
                   checkpoint_seconds=getattr(args, "checkpoint_seconds", Runtime.checkpoint_seconds),
                   test_eval=getattr(args, "test_eval", Runtime.test_eval),
                   deterministic=args.deterministic, progress=not args.no_progress,
                   memory_format=args.memory_format, precision=args.precision,
                   pack_mode=getattr(args, "pack_mode", Runtime.pack_mode))
