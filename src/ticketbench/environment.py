"""What a job ran on: the environment every summary.json records, the one place that reads a recorded
layout and environment back, and why a CUDA device that was asked for is not usable.

The same config gives the same numbers on the CPU, up to the last digits that kernels round differently
(docs/results.md). On a GPU, TF32 matmuls and convolutions (10-bit mantissas) are a different environment
altogether, so a result says where it came from: device, GPU, the torch / CUDA / cuDNN build, the float32
precision, cuDNN autotuning and strict determinism. Reports, the audit, the analyses and ``compare`` read
it back through :func:`recorded_layout` and :func:`recorded_precision`, which also say what a summary
written before these were recorded means.

Torch-free at import, as ``runtime`` (which the CLI's parser imports) is.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DEFAULT_PRECISION = "fp32"
"""What jobs stored before the precision was recorded ran in: every one of them ran on the CPU (the CUDA path
had not run yet), which computes float32 as IEEE float32."""


def current(device: torch.device, precision: str) -> dict[str, Any]:
    """The environment of a job that runs on ``device`` now: what its summary.json records as
    ``environment``. ``precision`` is the runtime's; it acts on CUDA only, so a CPU job records fp32."""
    import torch

    cuda = device.type == "cuda"
    return {
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "precision": precision if cuda else DEFAULT_PRECISION,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


def recorded_layout(summary: dict[str, Any]) -> str:
    """The memory layout a job ran in; summaries written before it was recorded ran in today's ``auto`` choice."""
    return summary.get("memory_format", "auto")


def recorded_environment(summary: dict[str, Any]) -> dict[str, Any]:
    """The environment a job recorded (:func:`current`); empty for summaries written before it was recorded."""
    return dict(summary.get("environment") or {})


def recorded_precision(summary: dict[str, Any]) -> str:
    """The float32 precision a job ran in (``runtime.PRECISIONS``); :data:`DEFAULT_PRECISION` where none is recorded."""
    return recorded_environment(summary).get("precision") or DEFAULT_PRECISION


# --------------------------------------------------------------------------------------------------
# Why CUDA is not usable
# --------------------------------------------------------------------------------------------------


def cuda_problem(index: int | None = None) -> str | None:
    """None if CUDA device ``index`` (default: the current one) is usable, else the likeliest reason it is
    not, in one sentence with what to do."""
    import torch

    if torch.cuda.is_available() and (index is None or index < torch.cuda.device_count()):
        return None
    return explain_no_cuda(build=torch.version.cuda, visible=os.environ.get("CUDA_VISIBLE_DEVICES"),
                           kernel_driver=_kernel_driver(), driver_cuda=_driver_cuda(),
                           devices=torch.cuda.device_count() if torch.cuda.is_available() else 0, index=index)


def explain_no_cuda(build: str | None, visible: str | None, kernel_driver: str | None, driver_cuda: int | None,
                    devices: int, index: int | None = None) -> str:
    """The likeliest reason CUDA is not usable, from what the machine shows: the CUDA version torch was built
    for (``build``, None for a CPU-only build), ``CUDA_VISIBLE_DEVICES`` (None if unset), the kernel driver's
    version (/proc/driver/nvidia/version, None if no driver is loaded), the CUDA version the user-space
    driver library supports (``cuDriverGetVersion``, e.g. 12040; None if libcuda cannot be loaded) and the
    number of devices torch sees."""
    if build is None:
        return "this torch is a CPU-only build; install a CUDA build of torch (or run with --device cpu)"
    if visible is not None and visible.strip() in ("", "-1", "NoDevFiles"):
        return (f"CUDA_VISIBLE_DEVICES is {repr(visible.strip()) if visible.strip() else 'empty'}, so no GPU is visible "
                f"to this job: request one from the scheduler (SLURM --gpus / --gres=gpu:1, the workflow's gpu resource)")
    if driver_cuda is None:
        if kernel_driver is None:
            return ("no NVIDIA driver is loaded (no /proc/driver/nvidia/version): run on a GPU node, or pass "
                    "--device cpu")
        return (f"the NVIDIA driver ({kernel_driver}) is loaded but its library libcuda.so.1 is not visible: inside "
                f"an Apptainer/Singularity container, pass --nv (snakemake --apptainer-args=\"--nv\"); in Docker, "
                f"--gpus all")
    need = _version(build)
    if driver_cuda // 1000 < need[0]:
        return (f"the NVIDIA driver{f' ({kernel_driver})' if kernel_driver else ''} supports CUDA up to "
                f"{driver_cuda // 1000}.{driver_cuda % 1000 // 10}, older than the CUDA {build} this torch was built "
                f"for: update the driver (CUDA 13 needs R580 or newer) or use an image built for an older CUDA")
    if devices and index is not None and index >= devices:
        return (f"cuda:{index} was asked for, but only {devices} CUDA device(s) are visible"
                f"{f' (CUDA_VISIBLE_DEVICES={visible})' if visible is not None else ''}")
    return (f"torch sees no usable CUDA device (driver {kernel_driver or 'unknown'}, CUDA {build} build); "
            f"`nvidia-smi` on the node shows whether the GPU is there and healthy")


def _version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor.partition(".")[0] or 0)


def _kernel_driver() -> str | None:
    """The loaded NVIDIA kernel module's version, e.g. ``580.65.06``."""
    try:
        words = Path("/proc/driver/nvidia/version").read_text().split()
    except OSError:
        return None
    return next((w for w in words if w[:1].isdigit() and w.count(".") >= 1), "unknown version")


def _driver_cuda() -> int | None:
    """The CUDA version the driver library supports (1000 * major + 10 * minor), or None if it cannot be loaded."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    return version.value if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 else None
