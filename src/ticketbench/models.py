"""The networks of the three paper families, with the papers' initializers.

- LeNet-300-100 and Conv-2/4/6: Frankle & Carbin 2019, Fig. 2 (3x3 'same' convolutions, 2x2 max-pool,
  FC 256-256-10), Gaussian Glorot initialization.
- CIFAR ResNet-20 (the LTH paper's "Resnet-18"; He et al. 2016): 16-32-64 filters, 3 blocks per
  stage, 1x1 stride-2 convolutions on downsampling shortcuts, average pool, FC; as open_lth's
  ``cifar_resnet_20`` (Kaiming-normal weights, BN scale U[0,1)).
- VGG-16 / VGG-19 for CIFAR-10 (Liu et al. 2019 via open_lth ``cifar_vgg``): 3x3 conv + BN + ReLU,
  2x2 max-pool between stages, 2x2 average pool, one FC layer 512 -> 10.

Every prunable weight gets a *kind* (conv, shortcut, fc, output) so that pruning rates are written
per kind in the config, the way the papers state them ("conv 15 %, fc 20 %, output 10 %").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import MEMORY_FORMATS, ConfigError, ModelConfig


class LeNet(nn.Module):
    def __init__(self, in_features: int, classes: int, hidden: tuple[int, ...] = (300, 100)):
        super().__init__()
        sizes = (in_features, *hidden)
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.fc_out = nn.Linear(sizes[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x))
        return self.fc_out(x)


class ConvNet(nn.Module):
    """Conv-2/4/6: pairs of 3x3 convolutions, each pair followed by 2x2 max-pooling, then FC 256-256."""

    def __init__(self, in_shape: tuple[int, int, int], classes: int, plan: tuple[int, ...]):
        super().__init__()
        c, h, w = in_shape
        layers: list[nn.Module] = []
        for i, filters in enumerate(plan):
            layers += [nn.Conv2d(c, filters, 3, padding=1), nn.ReLU()]
            c = filters
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.fcs = nn.ModuleList([nn.Linear(c * h * w, 256), nn.Linear(256, 256)])
        self.fc_out = nn.Linear(256, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x))
        return self.fc_out(x)


class ResidualBlock(nn.Module):
    def __init__(self, f_in: int, f_out: int, downsample: bool):
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        self.shortcut = nn.Sequential()
        if downsample or f_in != f_out:
            self.shortcut = nn.Sequential(nn.Conv2d(f_in, f_out, 1, stride=stride, bias=False), nn.BatchNorm2d(f_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2 (n=3: ResNet-20)."""

    def __init__(self, in_channels: int, classes: int, depth: int = 20, width: int = 16):
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, f_in = [], width
        for stage, f_out in enumerate((width, 2 * width, 4 * width)):
            for b in range(n):
                blocks.append(ResidualBlock(f_in, f_out, downsample=stage > 0 and b == 0))
                f_in = f_out
        self.blocks = nn.Sequential(*blocks)
        self.fc_out = nn.Linear(f_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc_out(F.adaptive_avg_pool2d(out, 1).flatten(1))


VGG_PLANS = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512),
}


class VGG(nn.Module):
    def __init__(self, in_channels: int, classes: int, plan: tuple):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
                c = item
        self.features = nn.Sequential(*layers)
        self.fc_out = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def build(cfg: ModelConfig, in_shape: tuple[int, int, int], classes: int, seed: int) -> nn.Module:
    """Construct and initialize a model on the CPU from ``seed`` alone.

    Construction runs under a forked RNG seeded with ``seed``, so the weights depend on nothing but the
    seed (not on what ran before), and are the same whichever device the run later moves them to.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _construct(cfg, in_shape, classes)
        _initialize(model, cfg)
    return model


def _construct(cfg: ModelConfig, in_shape: tuple[int, int, int], classes: int) -> nn.Module:
    c, h, w = in_shape
    if cfg.name == "lenet_300_100":
        return LeNet(c * h * w, classes)
    if cfg.name in ("conv2", "conv4", "conv6"):
        plan = {"conv2": (64, 64), "conv4": (64, 64, 128, 128), "conv6": (64, 64, 128, 128, 256, 256)}[cfg.name]
        return ConvNet(in_shape, classes, plan)
    if cfg.name == "resnet20":
        return ResNet(c, classes, depth=20, width=cfg.width)
    if cfg.name in VGG_PLANS:
        return VGG(c, classes, VGG_PLANS[cfg.name])
    raise ValueError(f"unknown model {cfg.name!r}")  # config validation rejects this earlier


def _initialize(model: nn.Module, cfg: ModelConfig) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if cfg.init == "glorot_normal":
                # The LTH's TensorFlow code: Glorot-normal weights, zero biases.
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            else:
                # open_lth's kaiming_normal: weights only; biases keep PyTorch's default init.
                nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            if cfg.batchnorm_init == "uniform":
                nn.init.uniform_(m.weight)
            else:
                nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def layer_kinds(model: nn.Module) -> dict[str, str]:
    """Map every prunable weight (conv and linear weights; never biases or BN) to its kind."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    kinds = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            kinds[f"{name}.weight"] = "shortcut" if "shortcut" in name else "conv"
        elif isinstance(m, nn.Linear):
            kinds[f"{name}.weight"] = "output" if name == linears[-1] else "fc"
    return kinds


class LayoutError(ConfigError):
    """A memory layout was asked for that this network must not run in."""


def channels_last_hazards(model: nn.Module) -> list[str]:
    """Convolutions that must not run in channels_last: 1x1 strided convolutions with fewer than 8 input
    channels (the downsampling shortcuts of a ResNet-20 narrower than width 8).

    oneDNN v3.12.0 (bundled with torch 2.14.1) corrupts the heap in the backward pass of exactly these on
    AVX2 CPUs (segfault, bus error, ``double free or corruption``; AMD EPYC family 25 model 1, and any CPU
    with ``ONEDNN_MAX_CPU_ISA=AVX2``). ``bench/layout.py`` measured the boundary in subprocesses: 2-7 input
    channels crash, 1 and 8-24 do not, nor do stride 1, 3x3 kernels or NCHW. A crash may also corrupt
    memory silently, so the rule is applied on every CPU, not only where the crash was seen: the layout,
    and with it the rounding, is then the same on every machine. 1 input channel is included to keep the
    rule a plain bound."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels < 8]


def memory_format(model: nn.Module, requested: str = "auto") -> torch.memory_format:
    """The memory layout a network trains and is evaluated in. Layout only: the math is the same.

    Convolutional nets run faster in channels_last on CPU and GPU (ResNet-20 width 16: 433 vs 538 ms a
    step on one CPU thread, bench/layout.py), except where :func:`channels_last_hazards` forbids it (at
    width 4 both layouts take 133 ms, so NCHW costs nothing there). Fully connected nets have no 4-D
    weights, so their layout is always contiguous. Asking for channels_last where it is forbidden is an
    error, never a silent switch."""
    if requested not in MEMORY_FORMATS:
        raise LayoutError(f"memory format {requested!r}: choose one of {', '.join(MEMORY_FORMATS)}")
    if requested == "contiguous" or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return torch.contiguous_format
    hazards = channels_last_hazards(model)
    if requested == "channels_last" and hazards:
        raise LayoutError(f"--memory-format channels_last: {', '.join(hazards)} are 1x1 strided convolutions with "
                          f"fewer than 8 input channels, which crash oneDNN's channels_last kernels on AVX2 CPUs; "
                          f"use --memory-format auto (NCHW for this network)")
    return torch.contiguous_format if hazards else torch.channels_last


def layout_name(fmt: torch.memory_format) -> str:
    """The name a summary records for a layout (one of ``config.MEMORY_FORMATS``)."""
    return "channels_last" if fmt == torch.channels_last else "contiguous"
