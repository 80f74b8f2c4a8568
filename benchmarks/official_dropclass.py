"""DropClass written the way the official DropClass HRNet code does it, on a baseline ``dropclass_fast.models`` model.

The training-step benchmark compares this eager, per-op implementation with ``dropclass_fast``.
What it does, as the official code:

* ``A`` = the features the head feeds to its classifier ``h`` (1x1 conv, weight ``[K, C, 1, 1]``);
* importance per class ``ReLU(W)``; the kept classes' rows are averaged into ``s`` ``[C]``;
* ``A_drop = ReLU(BN(Conv1x1(A * s)))`` (``clsdrop_conv1``, ``clsdrop_bn1``, BN momentum 0.01);
* ``logits = h(A)``, ``drop_logits = h(A_drop)``;
* the loss: ``F.interpolate`` of both logits to the label size, ``nn.CrossEntropyLoss(ignore_index=255)``
  on each, ``y_drop`` built by a Python loop over the classes that sets each dropped class's pixels to
  ignore, and ``L_sup`` = the mean softmax probability of the dropped classes at the logits' resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def official_dropclass_loss(
    logits: torch.Tensor,
    drop_logits: torch.Tensor,
    target: torch.Tensor,
    keep: torch.Tensor,
    progress: float,
    alpha: float = 10.0,
    ignore_index: int = 255,
) -> torch.Tensor:
    """``(1 - t) CE(up(logits), y) + t CE(up(drop_logits), y_drop) + alpha L_sup`` as the official code computes it.

    ``logits``, ``drop_logits``: ``[B, K, h, w]`` floating; ``target``: integer ``[B, H, W]``; ``keep``: ``[K]``
    (0 = dropped). Returns a 0-dim tensor (float32 under autocast or for float32 logits).
    """
    criterion = nn.CrossEntropyLoss(ignore_index=ignore_index)
    size = target.shape[-2:]
    logits_up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    drop_up = F.interpolate(drop_logits, size=size, mode="bilinear", align_corners=False)
    dropped = [c for c, kept in enumerate(keep.tolist()) if kept == 0]
    y_drop = target.clone()
    for c in range(logits.shape[1]):
        if c in dropped:
            y_drop[target == c] = ignore_index
    ce = criterion(logits_up, target)
    ce_drop = criterion(drop_up, y_drop)
    sup = torch.softmax(drop_logits, dim=1)[:, dropped].mean() if dropped else ce.new_zeros(())
    return (1.0 - progress) * ce + progress * ce_drop + alpha * sup


class OfficialDropClassHead(nn.Module):
    """The official DropClass layers on a baseline ``dropclass_fast.models`` model (``model.dropclass is None``).

    ``forward(images, keep)`` returns ``(logits, drop_logits)``, both ``[B, K, h, w]`` at the model's
    output resolution. ``images``: ``[B, 3, H, W]`` float; ``keep``: ``[K]``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        classifier = model.head()[-1]
        if model.dropclass is not None or not isinstance(classifier, nn.Conv2d):
            raise ValueError("model must be a baseline (dropclass=False) whose head ends in an nn.Conv2d classifier")
        channels = classifier.in_channels
        self.model = model
        self.clsdrop_conv1 = nn.Conv2d(channels, channels, 1)
        self.clsdrop_bn1 = nn.BatchNorm2d(channels, momentum=0.01)
        nn.init.normal_(self.clsdrop_conv1.weight, std=0.001)  # HRNet's init of every conv, as the official code

    def forward(self, images: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        classifier = self.model.head()[-1]
        features = self.model.features(images)
        importance = F.relu(classifier.weight.flatten(1))  # [K, C]
        scale = importance[keep != 0].mean(dim=0)  # [C]
        masked = features * scale.view(1, -1, 1, 1)
        drop_features = F.relu(self.clsdrop_bn1(self.clsdrop_conv1(masked)))
        return classifier(features), classifier(drop_features)
