"""HRNet-W18-small v1/v2 for segmentation, as in the official DropClass code (HRNet-Semantic-Segmentation).

Module names follow the official checkpoints (``conv1``, ``layer1``,
``transition1``, ``stage2.0.branches.0.0.conv1``, ``stage2.0.fuse_layers.1.0``,
``last_layer.0`` ...), so ImageNet-pretrained HRNet files load unchanged. The
head is ``last_layer = Sequential(Conv1x1(C, C), BN, ReLU, classifier)``: its
output before the classifier is ``A`` (C = 240 for v1, 270 for v2) at 1/4 of
the input resolution, and ``last_layer.3`` is the ``nn.Conv2d(C, K, 1)``
classifier or the :class:`~dropclass_fast.DropClass` around it. The official
DropClass names (``_classifier``, ``clsdrop_conv1``, ``clsdrop_bn1``) are mapped
by :func:`dropclass_fast.models.load_official_checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..module import DropClass
from .base import SegmentationModel, check_model_options

BN_MOMENTUM = 0.01
ALIGN_CORNERS = False


@dataclass(frozen=True)
class StageConfig:
    """One HRNet stage: ``num_modules`` high-resolution modules of ``num_branches`` parallel branches."""

    num_modules: int
    block: str
    num_blocks: tuple[int, ...]
    num_channels: tuple[int, ...]

    @property
    def num_branches(self) -> int:
        """The number of parallel resolutions in the stage."""
        return len(self.num_channels)


#: The official ``seg_hrnet_w18_small_v1/v2`` configs (stages 1-4; fuse method SUM, 1x1 final kernel).
HRNET_CONFIGS: dict[str, tuple[StageConfig, ...]] = {
    "v1": (
        StageConfig(1, "BOTTLENECK", (1,), (32,)),
        StageConfig(1, "BASIC", (2, 2), (16, 32)),
        StageConfig(1, "BASIC", (2, 2, 2), (16, 32, 64)),
        StageConfig(1, "BASIC", (2, 2, 2, 2), (16, 32, 64, 128)),
    ),
    "v2": (
        StageConfig(1, "BOTTLENECK", (2,), (64,)),
        StageConfig(1, "BASIC", (2, 2), (18, 36)),
        StageConfig(3, "BASIC", (2, 2, 2), (18, 36, 72)),
        StageConfig(2, "BASIC", (2, 2, 2, 2), (18, 36, 72, 144)),
    ),
}


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}


def _make_blocks(
    block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, num_blocks: int
) -> nn.Sequential:
    """``num_blocks`` blocks at stride 1; the first projects ``inplanes`` to ``planes * expansion`` when they differ."""
    downsample = None
    if inplanes != planes * block.expansion:
        downsample = _conv_bn(inplanes, planes * block.expansion, 1)
    layers = [block(inplanes, planes, downsample=downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, num_blocks)]
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches, then every output branch sums all inputs brought to its resolution and channels.

    Lower-resolution inputs go through Conv1x1-BN and a bilinear upsample,
    higher-resolution ones through a chain of stride-2 Conv3x3-BN(-ReLU).
    """

    def __init__(self, config: StageConfig, in_channels: list[int]) -> None:
        super().__init__()
        block = BLOCKS[config.block]
        self.branches = nn.ModuleList(
            _make_blocks(block, in_channels[i], config.num_channels[i], config.num_blocks[i])
            for i in range(config.num_branches)
        )
        self.out_channels = [c * block.expansion for c in config.num_channels]
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(self._fuse_layer(j, i) for j in range(config.num_branches))
            for i in range(config.num_branches)
        )
        self.relu = nn.ReLU(inplace=True)

    def _fuse_layer(self, source: int, target: int) -> nn.Module | None:
        channels = self.out_channels
        if source == target:
            return None
        if source > target:
            return _conv_bn(channels[source], channels[target], 1)
        steps = []
        for k in range(target - source):
            if k == target - source - 1:
                steps.append(_conv_bn(channels[source], channels[target], 3, stride=2))
            else:
                steps.append(nn.Sequential(*_conv_bn(channels[source], channels[source], 3, stride=2), nn.ReLU()))
        return nn.Sequential(*steps)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, inputs)]
        fused = []
        for target, layers in enumerate(self.fuse_layers):
            y = xs[target]
            for source, layer in enumerate(layers):
                if source == target:
                    continue
                z = layer(xs[source])
                if source > target:
                    z = F.interpolate(z, size=xs[target].shape[-2:], mode="bilinear", align_corners=ALIGN_CORNERS)
                y = y + z
            fused.append(self.relu(y))
        return fused


def _make_transition(pre_channels: list[int], cur_channels: tuple[int, ...]) -> nn.ModuleList:
    """Adapts the branches of one stage to the next: a Conv3x3-BN-ReLU where channels change, a new branch
    by stride-2 Conv3x3-BN-ReLU steps from the lowest-resolution one."""
    layers: list[nn.Module | None] = []
    for i, channels in enumerate(cur_channels):
        if i < len(pre_channels):
            changed = channels != pre_channels[i]
            layers.append(
                nn.Sequential(*_conv_bn(pre_channels[i], channels, 3), nn.ReLU(inplace=True)) if changed else None
            )
            continue
        steps = []
        for j in range(i + 1 - len(pre_channels)):
            out_channels = channels if j == i - len(pre_channels) else pre_channels[-1]
            steps.append(nn.Sequential(*_conv_bn(pre_channels[-1], out_channels, 3, stride=2), nn.ReLU(inplace=True)))
        layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


class HRNet(SegmentationModel):
    """HRNet-W18-small v1 or v2 with the segmentation head of the official code; logits at 1/4 resolution.

    Args:
        version: ``"v1"`` (channels 16-32-64-128, A: 240) or ``"v2"`` (18-36-72-144, A: 270).
        num_classes: ``K``.
        dropclass: wrap the classifier in :class:`~dropclass_fast.DropClass` (``last_layer.3``).
        **dropclass_kwargs: ``per_sample``, ``seed``, ``bn_momentum`` of ``DropClass``.

    Weights are initialised as the official code does before loading a
    checkpoint: every conv from ``N(0, 0.001)``, BatchNorm to identity.
    """

    def __init__(
        self, version: str = "v2", num_classes: int = 19, dropclass: bool = True, **dropclass_kwargs: Any
    ) -> None:
        super().__init__()
        if version not in HRNET_CONFIGS:
            raise ValueError(f"version must be one of {sorted(HRNET_CONFIGS)}, got {version!r}")
        num_classes = check_model_options(num_classes, dropclass, dropclass_kwargs)
        self.version = version
        stage1, *stages = HRNET_CONFIGS[version]

        self.conv1 = _conv3x3(3, 64, stride=2)
        self.bn1 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.conv2 = _conv3x3(64, 64, stride=2)
        self.bn2 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        block = BLOCKS[stage1.block]
        self.layer1 = _make_blocks(block, 64, stage1.num_channels[0], stage1.num_blocks[0])

        channels = [stage1.num_channels[0] * block.expansion]
        for index, config in enumerate(stages, start=1):
            setattr(self, f"transition{index}", _make_transition(channels, config.num_channels))
            channels = list(config.num_channels)
            modules = []
            for _ in range(config.num_modules):
                modules.append(HighResolutionModule(config, channels))
                channels = modules[-1].out_channels
            setattr(self, f"stage{index + 1}", nn.Sequential(*modules))

        width = sum(channels)
        classifier = nn.Conv2d(width, num_classes, 1)
        self.last_layer = nn.Sequential(
            nn.Conv2d(width, width, 1),
            nn.BatchNorm2d(width, momentum=BN_MOMENTUM),
            nn.ReLU(),
            DropClass(classifier, **dropclass_kwargs) if dropclass else classifier,
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.001)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def head(self) -> nn.Sequential:
        """``last_layer``: 1x1 conv, BatchNorm, ReLU and the classifier, as the official code names them."""
        return self.last_layer

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The four stage-4 branches, upsampled to the first one's size (1/4) and concatenated, ``[B, C, h, w]``."""
        x = self.relu(self.bn1(self.conv1(images)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for index in range(1, 4):
            transition = getattr(self, f"transition{index}")
            inputs = []
            for i, layer in enumerate(transition):
                if layer is None:
                    inputs.append(xs[i])
                else:
                    inputs.append(layer(xs[i] if i < len(xs) else xs[-1]))
            xs = getattr(self, f"stage{index + 1}")(inputs)
        size = xs[0].shape[-2:]
        upsampled = [F.interpolate(x, size=size, mode="bilinear", align_corners=ALIGN_CORNERS) for x in xs[1:]]
        return torch.cat([xs[0], *upsampled], dim=1)


def hrnet_w18_small(
    version: str = "v2", num_classes: int = 19, dropclass: bool = True, **dropclass_kwargs: Any
) -> HRNet:
    """HRNet-W18-small ``version`` (``"v1"``/``"v2"``, the paper's HRNetV1/V2); see :class:`HRNet`."""
    return HRNet(version, num_classes, dropclass, **dropclass_kwargs)
