"""MobileNetV3-Large feature layers, module for module as torchvision's ``mobilenet_v3_large(dilated=True)``.

Only ``features`` (the 17 layers whose names torchvision checkpoints use:
``0.0.weight``, ``1.block.0.0.weight``, ``4.block.2.fc1.weight`` ...) is
built: DeepLabV3 uses them as its backbone. ``dilated=True`` replaces the
last stride-2 stage by dilation 2, so the output stride is 16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

BN_EPS = 0.001
BN_MOMENTUM = 0.01


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to a multiple of ``divisor``, never below 90% of it (torchvision's ``_make_divisible``)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class InvertedResidualConfig:
    """One bottleneck: ``in -> expanded (1x1) -> depthwise k x k -> [SE] -> out (1x1)``."""

    in_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    use_hardswish: bool
    stride: int
    dilation: int


def large_config(dilated: bool) -> list[InvertedResidualConfig]:
    """The 15 bottlenecks of MobileNetV3-Large (width 1.0); ``dilated`` sets dilation 2 on the last three."""
    d = 2 if dilated else 1
    rows = [
        (16, 3, 16, 16, False, False, 1, 1),
        (16, 3, 64, 24, False, False, 2, 1),
        (24, 3, 72, 24, False, False, 1, 1),
        (24, 5, 72, 40, True, False, 2, 1),
        (40, 5, 120, 40, True, False, 1, 1),
        (40, 5, 120, 40, True, False, 1, 1),
        (40, 3, 240, 80, False, True, 2, 1),
        (80, 3, 200, 80, False, True, 1, 1),
        (80, 3, 184, 80, False, True, 1, 1),
        (80, 3, 184, 80, False, True, 1, 1),
        (80, 3, 480, 112, True, True, 1, 1),
        (112, 3, 672, 112, True, True, 1, 1),
        (112, 5, 672, 160, True, True, 2, d),
        (160, 5, 960, 160, True, True, 1, d),
        (160, 5, 960, 160, True, True, 1, d),
    ]
    return [InvertedResidualConfig(*row) for row in rows]


class ConvBNActivation(nn.Sequential):
    """``Conv2d (no bias) -> BatchNorm2d(eps=1e-3, momentum=0.01) -> [activation]``, "same" padding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        activation: type[nn.Module] | None = None,
    ) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False),
            nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """``x * hardsigmoid(fc2(relu(fc1(avgpool(x)))))``, with 1x1 convs ``fc1``/``fc2``."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class InvertedResidual(nn.Module):
    """A MobileNetV3 bottleneck, with a residual connection when the shape is kept."""

    def __init__(self, config: InvertedResidualConfig) -> None:
        super().__init__()
        activation = nn.Hardswish if config.use_hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if config.expanded_channels != config.in_channels:
            layers.append(ConvBNActivation(config.in_channels, config.expanded_channels, 1, activation=activation))
        stride = 1 if config.dilation > 1 else config.stride
        layers.append(
            ConvBNActivation(
                config.expanded_channels,
                config.expanded_channels,
                config.kernel,
                stride=stride,
                groups=config.expanded_channels,
                dilation=config.dilation,
                activation=activation,
            )
        )
        if config.use_se:
            layers.append(SqueezeExcitation(config.expanded_channels, make_divisible(config.expanded_channels // 4)))
        layers.append(ConvBNActivation(config.expanded_channels, config.out_channels, 1))
        self.block = nn.Sequential(*layers)
        self.use_residual = config.stride == 1 and config.in_channels == config.out_channels
        self.out_channels = config.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


def mobilenet_v3_large_features(dilated: bool = True) -> nn.Sequential:
    """The ``features`` of MobileNetV3-Large: ``[B, 3, H, W]`` -> ``[B, 960, H/16, W/16]`` (``H/32`` undilated).

    Initialised as torchvision does: convs Kaiming-normal (fan out), biases
    zero, BatchNorm identity.
    """
    configs = large_config(dilated)
    layers: list[nn.Module] = [ConvBNActivation(3, configs[0].in_channels, 3, stride=2, activation=nn.Hardswish)]
    layers += [InvertedResidual(config) for config in configs]
    layers.append(ConvBNActivation(configs[-1].out_channels, 6 * configs[-1].out_channels, 1, activation=nn.Hardswish))
    features = nn.Sequential(*layers)
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return features
