"""Random inputs of the op tests (CPU, Triton and CUDA alike): keep masks and labels.

Drawn from ``generator`` where one is given (on its device), else from torch's default generator on ``device``.
"""

from __future__ import annotations

import torch

IGNORE = 255


def _device(generator: torch.Generator | None, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


def make_keep(
    mode: str,
    batch: int,
    num_classes: int,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor | None:
    """``mode``: ``"none"`` (None), ``"batch"`` (``[K]``, a quarter of the classes dropped, at least one) or
    ``"sample"`` (``[B, K]``, each class dropped with probability 0.3, class 0 always kept); float32."""
    device = _device(generator, device)
    if mode == "none":
        return None
    if mode == "batch":
        keep = torch.ones(num_classes, device=device)
        keep[torch.randperm(num_classes, device=device, generator=generator)[: max(1, num_classes // 4)]] = 0
        return keep
    keep = (torch.rand(batch, num_classes, device=device, generator=generator) > 0.3).float()
    keep[:, 0] = 1
    return keep


def make_target(
    batch: int,
    num_classes: int,
    size: tuple[int, int],
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.int64,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """``[B, H, W]`` labels of ``dtype``: uniform classes, about 10% of the pixels ``IGNORE`` (255)."""
    device = _device(generator, device)
    target = torch.randint(0, num_classes, (batch, *size), device=device, generator=generator)
    target[torch.rand(batch, *size, device=device, generator=generator) < 0.1] = IGNORE
    return target.to(dtype)
