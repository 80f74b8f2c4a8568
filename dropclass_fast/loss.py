"""``DropClassLoss``: the three-term DropClass objective as an ``nn.Module``."""

from __future__ import annotations

import torch
from torch import nn

from . import functional as dcf
from ._checks import check_finite, check_ignore_index
from .module import DropClassOutput


class DropClassLoss(nn.Module):
    """``lambda*CE(logits, y) + (1-lambda)*CE(drop_logits, y_drop) + alpha*L_sup`` with ``lambda = 1 - progress``.

    Args:
        alpha: weight of ``L_sup`` (paper: 10).
        ignore_index: label value that contributes nothing (255).
        align_corners: bilinear upsampling of the logits to the label size.

    ``forward(out, target, progress)`` takes the :class:`DropClassOutput` of
    :class:`DropClass`, integer labels ``[B, H, W]`` and the training progress
    in ``[0, 1]``, and returns ``(total, {"ce", "ce_drop", "sup"})`` (weighted
    terms, 0-dim float32; float64 for float64 logits).
    """

    def __init__(self, alpha: float = 10.0, ignore_index: int = 255, align_corners: bool = False) -> None:
        super().__init__()
        self.alpha = check_finite("alpha", alpha)
        self.ignore_index = check_ignore_index(ignore_index)
        self.align_corners = dcf.check_align_corners(align_corners)

    def forward(
        self, out: DropClassOutput, target: torch.Tensor, progress: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, {"ce", "ce_drop", "sup"})`` of ``out`` against ``target`` (integer ``[B, H, W]``) at
        ``progress`` in ``[0, 1]``; see the class docstring."""
        if not isinstance(out, DropClassOutput):
            raise TypeError(f"out must be the DropClassOutput of DropClass in training mode, got {type(out).__name__}")
        if not isinstance(out.logits, torch.Tensor):
            raise TypeError(
                f"out.logits must be the logits tensor [B, K, h, w], got {type(out.logits).__name__}: for a model "
                f"that returns several outputs (an auxiliary head, say), pass "
                f"DropClassOutput(main_logits, out.drop_logits, out.keep) and add the other outputs' losses yourself"
            )
        return dcf.dropclass_loss(
            out.logits,
            out.drop_logits,
            target,
            out.keep,
            progress,
            alpha=self.alpha,
            ignore_index=self.ignore_index,
            align_corners=self.align_corners,
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, ignore_index={self.ignore_index}, align_corners={self.align_corners}"
