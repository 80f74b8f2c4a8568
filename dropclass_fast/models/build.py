"""``build_model``: the reference models by name."""

from __future__ import annotations

from typing import Any

from .._checks import check_choice
from .base import SegmentationModel
from .deeplabv3 import deeplabv3_mobilenet_v3_large
from .hrnet import hrnet_w18_small

#: Names accepted by :func:`build_model`: the paper's HRNetV1, HRNetV2 and DeepLabV3.
MODEL_NAMES = ("hrnet_v1", "hrnet_v2", "deeplabv3")


def build_model(name: str, num_classes: int, dropclass: bool, **kwargs: Any) -> SegmentationModel:
    """A freshly initialised reference model.

    Args:
        name: one of :data:`MODEL_NAMES`: ``"hrnet_v1"`` / ``"hrnet_v2"``
            (HRNet-W18-small v1/v2, logits at 1/4 of the input) or
            ``"deeplabv3"`` (DeepLabV3-MobileNetV3-Large, logits at 1/16).
        num_classes: ``K``.
        dropclass: wrap the final classifier in :class:`~dropclass_fast.DropClass`.
        **kwargs: passed to ``DropClass`` (``per_sample``, ``seed``,
            ``bn_momentum``); only with ``dropclass=True``.

    Returns:
        a :class:`SegmentationModel`: ``model(images, progress=t)`` gives a
        ``DropClassOutput`` in training with DropClass, low-resolution logits
        ``[B, K, h, w]`` otherwise; ``model.dropclass`` is the ``DropClass`` or ``None``.
    """
    check_choice("name", name, MODEL_NAMES)
    if name == "deeplabv3":
        return deeplabv3_mobilenet_v3_large(num_classes, dropclass, **kwargs)
    return hrnet_w18_small(name.removeprefix("hrnet_"), num_classes, dropclass, **kwargs)
