"""DeepLabV3 with a MobileNetV3-Large backbone (output stride 16), parameter for parameter torchvision's.

``backbone`` holds the MobileNetV3-Large ``features`` (torchvision's
``IntermediateLayerGetter`` keeps their names), ``classifier`` the
``DeepLabHead``: ``ASPP(960, rates 12/24/36) -> Conv3x3(256) -> BN -> ReLU ->
classifier``. ``A`` is the output of that ReLU (256 channels, 1/16 of the
input), ``classifier.4`` the ``nn.Conv2d(256, K, 1)`` or the
:class:`~dropclass_fast.DropClass` around it. No auxiliary head.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..module import DropClass
from .base import SegmentationModel, check_model_options
from .mobilenetv3 import mobilenet_v3_large_features

ASPP_CHANNELS = 256
ATROUS_RATES = (12, 24, 36)


class ASPPPooling(nn.Sequential):
    """Image-level features: global average, Conv1x1-BN-ReLU, broadcast back to the input size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for layer in self:
            x = layer(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
    padding = dilation if kernel_size == 3 else 0
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 conv, three dilated 3x3 convs and image pooling, projected to 256."""

    def __init__(
        self, in_channels: int, rates: tuple[int, ...] = ATROUS_RATES, out_channels: int = ASPP_CHANNELS
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [_conv_bn_relu(in_channels, out_channels, 1)]
        branches += [_conv_bn_relu(in_channels, out_channels, 3, dilation=rate) for rate in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Dropout(0.5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabV3(SegmentationModel):
    """DeepLabV3-MobileNetV3-Large; logits at 1/16 of the input resolution.

    Args:
        num_classes: ``K`` (torchvision's VOC checkpoint: 21).
        dropclass: wrap the classifier ``classifier.4`` in :class:`~dropclass_fast.DropClass`.
        **dropclass_kwargs: ``per_sample``, ``seed``, ``bn_momentum`` of ``DropClass``.
    """

    def __init__(self, num_classes: int = 21, dropclass: bool = True, **dropclass_kwargs: Any) -> None:
        super().__init__()
        num_classes = check_model_options(num_classes, dropclass, dropclass_kwargs)
        self.backbone = mobilenet_v3_large_features(dilated=True)
        classifier = nn.Conv2d(ASPP_CHANNELS, num_classes, 1)
        self.classifier = nn.Sequential(
            ASPP(self.backbone[-1].out_channels),
            nn.Conv2d(ASPP_CHANNELS, ASPP_CHANNELS, 3, padding=1, bias=False),
            nn.BatchNorm2d(ASPP_CHANNELS),
            nn.ReLU(),
            DropClass(classifier, **dropclass_kwargs) if dropclass else classifier,
        )

    def head(self) -> nn.Sequential:
        """``classifier``: the ASPP block, 3x3 conv, BatchNorm, ReLU and the classifier, as torchvision names them."""
        return self.classifier

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's last layer, ``[B, 960, H/16, W/16]``."""
        return self.backbone(images)


def deeplabv3_mobilenet_v3_large(num_classes: int = 21, dropclass: bool = True, **dropclass_kwargs: Any) -> DeepLabV3:
    """DeepLabV3 with a MobileNetV3-Large backbone at output stride 16; see :class:`DeepLabV3`."""
    return DeepLabV3(num_classes, dropclass, **dropclass_kwargs)
